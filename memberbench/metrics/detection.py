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

_WHAT = {
    "auc": "ROC AUC",
    "tpr1": "TPR at 1% FPR (interpolated on the ROC)",
    "tpr1_wen": "TPR at the last ROC point below 1% FPR (Wen et al.'s reading)",
}
for _stat, _what in _WHAT.items():
    declare(
        f"detect_{_stat}",
        keys=(f"detect_{_stat}.{{score}}.k{{k}}",)
        + ((f"detect_{_stat}.{{score}}.k{{k}}.{{group}}",) if _stat == "auc" else ()),
        family="detection",
        higher_is_better=True,
        needs_training_image=True,
        description=f"{_what} of a detection score over the first k steps, prompts measured "
        "memorized vs not (both sets pooled); .<group>: a memorized group vs all non-memorized "
        "prompts (set labels)",
        sections=(
            ()
            if _stat == "tpr1_wen"
            else (Placement("detection", (f"detect_{_stat}.{{score}}.k{{k}}",)),)
        )
        + (
            (
                Placement(
                    "detection_by_group", ("detect_auc.wen.k1.{group}", "detect_auc.d1.k5.{group}")
                ),
            )
            if _stat == "auc"
            else ()
        ),
        headline=(
            Headline("detect_auc.wen.k1", "AUC Wen@1", 60),
            Headline("detect_auc.d1.k5", "AUC D1@5", 62, leaderboard=False),
            Headline("detect_auc.d1.k50", "AUC D1", 65, summary=False),
        )
        if _stat == "auc"
        else (),
    )
    declare(
        f"detect_{_stat}_set",
        keys=(f"detect_{_stat}_set.{{score}}.k{{k}}",),
        family="detection",
        higher_is_better=True,
        description=f"{_what} of a detection score over the first k steps, memorized set vs "
        "non-memorized set (the sets' own labels)",
    )
