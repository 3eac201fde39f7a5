"""Detection of memorized prompts: the declarations of the detection statistics.

The scores are declared as detectors next to their formulas (``wen``, ``wen_raw`` in
``noise_magnitude.py``; ``nsupp``, ``d1_paper``, ``d1`` in ``decomposition.py``); the statistics
over them (AUC, TPR at 1% FPR) are computed with :mod:`memberbench.metrics.stats` by
``tasks/test_detection.py`` and recorded under the names declared here:
``detect_<stat>.<score>.k<k>`` against measured labels, ``detect_<stat>_set.<score>.k<k>``
against the sets' own labels, ``detect_auc.<score>.k<k>.<group>`` per memorized group.
"""

from __future__ import annotations

from memberbench.metrics import decomposition, noise_magnitude  # noqa: F401  (the detectors)
from memberbench.metrics.declare import Headline, Placement, declare

_POOLED = "prompts measured memorized vs not (both sets pooled)"
_SET = "memorized set vs non-memorized set (the sets' own labels)"
_AUC = "ROC AUC of a detection score over the first k steps"
_TPR = "TPR at 1% FPR (interpolated on the ROC) of a detection score over the first k steps"
_TPR_WEN = "TPR at the last ROC point below 1% FPR (Wen et al.'s reading) of a detection score"

declare(
    "detect_auc",
    keys=("detect_auc.{score}.k{k}", "detect_auc.{score}.k{k}.{group}"),
    family="detection",
    higher_is_better=True,
    needs_training_image=True,
    description=f"{_AUC}, {_POOLED}; .<group>: a memorized group vs all non-memorized prompts "
    "(set labels)",
    sections=(
        Placement("detection", ("detect_auc.{score}.k{k}",)),
        # per group: the headline detectors' windows only
        Placement("detection_by_group", ("detect_auc.wen.k1.{group}", "detect_auc.d1.k5.{group}")),
    ),
    headline=(
        Headline("detect_auc.wen.k1", "AUC Wen@1", 60),
        Headline("detect_auc.d1.k5", "AUC D1@5", 62, leaderboard=False),
        Headline("detect_auc.d1.k50", "AUC D1", 65, summary=False),
    ),
)
declare(
    "detect_tpr1",
    keys=("detect_tpr1.{score}.k{k}",),
    family="detection",
    higher_is_better=True,
    needs_training_image=True,
    description=f"{_TPR}, {_POOLED}",
    sections=(Placement("detection", ("detect_tpr1.{score}.k{k}",)),),
)
declare(
    "detect_tpr1_wen",
    keys=("detect_tpr1_wen.{score}.k{k}",),
    family="detection",
    higher_is_better=True,
    needs_training_image=True,
    description=f"{_TPR_WEN}, {_POOLED}",
)
for _stat, _what in (("auc", _AUC), ("tpr1", _TPR), ("tpr1_wen", _TPR_WEN)):
    declare(
        f"detect_{_stat}_set",
        keys=(f"detect_{_stat}_set.{{score}}.k{{k}}",),
        family="detection",
        higher_is_better=True,
        description=f"{_what}, {_SET}",
    )

# the cost of each detector at each window (recorded by the set-label test, which always runs)
declare(
    "detect_unet_evals",
    keys=("detect_unet_evals.{score}.k{k}",),
    family="detection",
    higher_is_better=False,
    unit="evaluations",
    description="UNet evaluations per prompt a detection score costs at window k (over the "
    "run's seeds; a score that reads the run's generations counts the share it reads)",
)
declare(
    "detect_s_per_prompt",
    keys=("detect_s_per_prompt.{score}.k{k}",),
    family="detection",
    higher_is_better=False,
    unit="s",
    description="wall seconds per prompt of a detection score at window k, measured the first "
    "time the run computes it, on the run's device, after the run's generations exist (its own "
    "model calls and read-out; a score that reads the generations adds no generation time)",
)
declare(
    "detect_grad_passes",
    keys=("detect_grad_passes.{score}.k{k}",),
    family="detection",
    higher_is_better=False,
    unit="passes",
    description="gradient (Jacobian/Hessian-vector product) passes through the UNet per "
    "prompt a detection score costs at window k (over the run's seeds)",
)
