"""Detection of memorized prompts (docs/metrics.md#wens-magnitude-m4, docs/metrics.md#detection).

Scores per prompt (averaged over seeds); AUC (Hanley-McNeil stderr, stratified bootstrap CI) and
TPR at 1% FPR (interpolated on the ROC; ``detect_tpr1_wen...``: at the last ROC point below
1% FPR, as Wen et al.'s code reads it) over the first k sampling steps, k in {1, 5, 50} (clipped
to --steps).  Two labellings:

* ``detect_auc.<score>.k<k>`` (the headline): positives are the prompts *measured* memorized
  (the run's rule, e.g. mean SSCD >= 0.75, on the generations against the training images),
  negatives the scored prompts measured not memorized, both sets pooled.  A list of
  "memorized" prompts holds many that a given model does not reproduce; scoring a detector
  against them measures the list, not the detector.
* ``detect_auc_set.<score>.k<k>`` (the variant): the sets' own labels, memorized set vs
  non-memorized set, as most papers report it; needs no training image.

Scores: every declared detector (``memberbench.metrics.declare.detector``, out-of-tree ones
through the entry-point group ``memberbench.detectors``), each at its own windows, with its
better direction, and its cost per prompt (``detect_unet_evals.<score>.k<k>``,
``detect_grad_passes.<score>.k<k>``, and the seconds measured on the run's device,
``detect_s_per_prompt.<score>.k<k>``).  A detector that cannot run on the run's model (gradients
in fp16, no unconditional branch) is skipped with its reason; a NaN score marks that prompt
failed for that detector (left out, counted in the description) and the rest go on.
docs/detectors.md lists them with their sources; the built-in trace scores:

* ``wen``    Wen et al.'s text-conditional noise magnitude ||eps_c - eps_u||, mean over the
             first k steps (needs no training image); ``wen_raw`` the same on the UNet's raw
             output, as Wen et al.'s code takes it (v for a v-prediction model);
* ``d1_paper`` D1 of the first k states with the paper code's conventions (each state fitted on
             the trajectory's own final latent and x_T): image-free;
* ``nsupp``  an overestimation score that needs no training image either: how far the initial
             noise's share of the latent (projection on x_T) falls below the schedule's
             sqrt(1 - abar), summed over the first k states (an image-free D2);
* ``d1``     D1 over the first k states, against each prompt's training image (an oracle score:
             it needs the training image, here the nearest one for non-memorized prompts).

Where the memorized set has groups (the bundled set's duplication levels "dup=N", Webster's
verbatim types), each group is also scored on its own against all non-memorized prompts
(``detect_auc.<score>.k<k>.<group>``, set labels): a set whose lightly duplicated prompts are
not actually memorized by a model drags the pooled AUC down, and the per-group values show where
a detector works.

Also the mean of Wen's magnitude per set (``wen.k1``, ``wen.k1.nonmem``).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from memberbench.benchrun import DETECTION_WINDOWS, SIDES, SUFFIX
from memberbench.metrics.declare import detectors, get_detector
from memberbench.metrics.noise_magnitude import wen_magnitudes, wen_raw_magnitudes
from memberbench.metrics.stats import (
    mean_stat,
    roc_auc,
    roc_points,
    tpr_at_fpr,
    tpr_at_fpr_last_point,
)

pytestmark = pytest.mark.memberbench
SCORES = tuple(d.name for d in detectors())  # every declared detector (entry points included)


def _windows(mb, score: str) -> list[int]:
    return get_detector(score).windows_for(mb.config.steps, DETECTION_WINDOWS)


def _runnable(mb, score: str):
    """The detector, or a skip with the reason it cannot run on this run's model."""
    det = get_detector(score)
    why = det.skip_reason(mb)
    if why:
        pytest.skip(why)
    return det


def _scores(mb, score: str, side: str, k: int) -> tuple[dict[str, float], list[str]]:
    """({prompt_id: finite score, oriented so that higher = memorized}, [failed prompt ids]):
    a NaN score marks that prompt failed for this detector; the rest go on."""
    det = get_detector(score)
    mb.ok_gens(side)  # the run's generations exist before the clock starts: not its cost
    t0 = time.perf_counter()
    vals = det.compute(mb, side, k)
    # the first computation is the real one (later calls read the run's memo)
    mb._memo.setdefault(("detector_s", score, side, k), (time.perf_counter() - t0, len(vals)))
    sign = 1.0 if det.higher_is_memorized else -1.0
    ok = {p: sign * float(v) for p, v in vals.items() if np.isfinite(v)}
    return ok, sorted(p for p in vals if p not in ok)


def _failed_note(failed: list[str]) -> str:
    if not failed:
        return ""
    head = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
    return f"; {len(failed)} prompt(s) failed for this detector (NaN score, left out: {head})"


def _labelled(pos, neg) -> tuple[np.ndarray, np.ndarray]:
    """Scores of positives then negatives, and their 1/0 labels (ROC inputs)."""
    s = np.array(list(pos) + list(neg), dtype=np.float64)
    return s, np.array([1] * len(pos) + [0] * len(neg))


def _record_roc(record_metric, record_series, variant: str, score_k: str, pos, neg, nb, what):
    """AUC, interpolated TPR at 1% FPR and the ROC curve of positives vs negatives, recorded as
    ``detect_auc<variant>.<score_k>`` (variant "" or "_set"), ``detect_tpr1...``, ``roc...``."""
    s, y = _labelled(pos, neg)
    auc = roc_auc(s, y, n_boot=nb, seed=0)
    stat = variant
    record_metric(
        f"detect_auc{stat}.{score_k}",
        auc,
        prompt_set="both",
        description=f"ROC AUC of {score_k}, {what}",
    )
    record_metric(
        f"detect_tpr1{stat}.{score_k}",
        tpr_at_fpr(s, y, 0.01, n_boot=nb, seed=0),
        prompt_set="both",
        description=f"TPR at 1% FPR (interpolated) of {score_k}, {what}",
    )
    record_metric(
        f"detect_tpr1_wen{stat}.{score_k}",
        tpr_at_fpr_last_point(s, y, 0.01, n_boot=nb, seed=0),
        prompt_set="both",
        description=f"TPR at the last ROC point below 1% FPR (Wen et al.'s) of {score_k}, {what}",
    )
    if auc.ok and np.isfinite(s).all():
        fpr, tpr, _ = roc_points(s, y)
        record_series(f"roc{stat}.{score_k}", {"fpr": fpr, "tpr": tpr, "auc": auc.value})


@pytest.mark.parametrize("score", SCORES)
def test_detection(mb, record_metric, record_series, score):
    """The headline: prompts labelled by what the model does (``mb.measured_labels()``, the
    run's memorization rule on SSCD against the training images), pooled over both sets."""
    _runnable(mb, score)  # a detector this model cannot run is skipped first, with its reason
    labels = mb.measured_labels()
    if not any(labels.values()):
        pytest.skip(
            "no measured memorization labels: no prompt has a training image to score its "
            "generations against (the set-label variant detect_auc_set.* still runs)"
        )
    nb = mb.config.n_boot
    n_mem = sum(v for lab in labels.values() for v in lab.values())
    n_all = sum(len(lab) for lab in labels.values())
    if n_mem in (0, n_all):
        pytest.skip(
            f"measured labels are all {'non-' if n_mem == 0 else ''}memorized ({n_all} prompts, "
            f"rule {mb.mem_rule()['rule']}): detection is undefined"
        )
    for k in _windows(mb, score):
        pos, neg, failed = [], [], []
        for side in SIDES:
            if not labels[side]:
                continue
            vals, bad = _scores(mb, score, side, k)
            failed += [p for p in bad if p in labels[side]]
            for pid, memorized in labels[side].items():
                if pid in vals:
                    (pos if memorized else neg).append(vals[pid])
        if not pos or not neg:
            pytest.skip(f"{score}: no scores for the measured positives or negatives")
        what = (
            f"over the first {k} steps, prompts measured memorized ({mb.mem_rule()['rule']}) "
            f"vs not, both sets pooled{_failed_note(failed)}"
        )
        _record_roc(record_metric, record_series, "", f"{score}.k{k}", pos, neg, nb, what)


@pytest.mark.parametrize("score", SCORES)
def test_detection_set_labels(mb, record_metric, record_series, score):
    """The variant: the prompt sets' own labels (memorized set vs non-memorized set), as
    papers that take a list of memorized prompts at its word report it; and per group of the
    memorized set against all non-memorized prompts.  Also the detector's cost per prompt."""
    det = _runnable(mb, score)
    groups = mb.memorized_groups()
    nb = mb.config.n_boot
    for k in _windows(mb, score):
        pos, bad_pos = _scores(mb, score, "memorized", k)
        neg, bad_neg = _scores(mb, score, "nonmemorized", k)
        if not pos or not neg:
            pytest.skip(
                f"{score}: no scores on one side (memorized {len(pos)}, non-memorized "
                f"{len(neg)}){_failed_note(bad_pos + bad_neg)}"
            )
        evals, grads = det.cost(k, len(mb.config.seeds), mb.config.steps)
        how = "its own model calls" if det.own_calls else "a share of the run's generations"
        record_metric(
            f"detect_unet_evals.{score}.k{k}",
            evals,
            prompt_set="both",
            description=f"UNet evaluations per prompt of {score} at k={k} "
            f"({len(mb.config.seeds)} seeds; {how})",
        )
        timed = [mb._memo.get(("detector_s", score, side, k)) for side in SIDES]
        timed = [t for t in timed if t and t[1]]
        if timed:
            device = str(getattr(mb.adapter, "device", None) or "?")
            record_metric(
                f"detect_s_per_prompt.{score}.k{k}",
                sum(t[0] for t in timed) / sum(t[1] for t in timed),
                prompt_set="both",
                description=f"wall seconds per prompt of {score} at k={k} on {device} "
                f"({len(mb.config.seeds)} seeds; {how}; measured the first time the run "
                "computed it, after its generations)",
                note=f"device {device}",
            )
        record_metric(
            f"detect_grad_passes.{score}.k{k}",
            grads,
            prompt_set="both",
            description=f"gradient passes through the UNet per prompt of {score} at k={k}",
        )
        what = (
            f"over the first {k} steps, memorized set vs non-memorized set (set labels)"
            f"{_failed_note(bad_pos + bad_neg)}"
        )
        _record_roc(
            record_metric,
            record_series,
            "_set",
            f"{score}.k{k}",
            pos.values(),
            neg.values(),
            nb,
            what,
        )
        for group, ids in sorted(groups.items()):
            gs = [pos[p] for p in ids if p in pos]
            if not gs:
                continue
            record_metric(
                f"detect_auc.{score}.k{k}.{group}",
                roc_auc(*_labelled(gs, neg.values()), n_boot=nb, seed=0),
                prompt_set="both",
                description=(
                    f"ROC AUC of {score} over the first {k} steps, memorized prompts of group "
                    f"{group!r} vs all non-memorized prompts (set labels)"
                ),
            )


def test_noise_magnitude_m4(mb, record_metric):
    mb.require_unconditional("Wen's magnitude (M4, ||cond - uncond||)")
    for side in SIDES:
        raw = wen_raw_magnitudes(mb, side, 1)
        if raw:
            record_metric(
                f"wen_raw.k1{SUFFIX[side]}",
                mean_stat(list(raw.values()), "wen_raw"),
                per_prompt=raw,
                prompt_set=side,
                description="M4, Wen et al.'s convention: ||out_c - out_u|| of the UNet's raw "
                "output (v for a v-prediction model) at the first step, mean over seeds",
            )
        vals = wen_magnitudes(mb, side, 1)
        if not vals:
            pytest.skip(f"no {side} traces with eps_diff_norm")
        record_metric(
            f"wen.k1{SUFFIX[side]}",
            mean_stat(list(vals.values()), "wen"),
            per_prompt=vals,
            prompt_set=side,
            description="M4: Wen's ||eps_c - eps_u|| at the first step, mean over seeds",
        )
