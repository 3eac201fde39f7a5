"""Detection and correlation statistics with standard errors and seeded bootstrap intervals.

Every function returns a :class:`Stat`.  Degenerate input (one class only for a ROC, zero
variance for a correlation, too few points) gives ``value = NaN`` and a ``reason`` that says why;
nothing here raises on such data or quietly returns a number.

Conventions:

* labels: 1 = positive (memorized), 0 = negative; a higher score means "more likely positive".
* bootstrap: resampling *over prompts* (rows), with a ``numpy.random.Generator`` seeded by
  ``seed``; percentile intervals at ``level``; replicates whose statistic is NaN (e.g. a
  resample with zero variance) are dropped and counted in ``note``.  ROC statistics resample
  within each class (stratified) so that every replicate has both classes.
* point estimates come from sklearn (``roc_auc_score``, ``roc_curve``) and scipy.stats; bootstrap
  replicates of ROC statistics use equivalent rank/cumsum forms (tested equal) for speed.
* ``stderr``: analytic where a standard formula exists (Hanley & McNeil for AUC, binomial for a
  TPR, ``sqrt((1 - r^2) / (n - 2))`` for a correlation, ``sd / sqrt(n)`` for a mean).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from memberbench.metrics.declare import Headline, Placement, declare

NAN = float("nan")


@dataclass(frozen=True)
class Stat:
    """A statistic with its uncertainty.  ``reason`` is non-empty exactly when value is NaN."""

    value: float
    stderr: float = NAN
    ci_low: float = NAN
    ci_high: float = NAN
    n: int = 0
    reason: str = ""
    note: str = ""  # informational (dropped points, coarse FPR resolution, ...)

    @classmethod
    def nan(cls, reason: str, n: int = 0, note: str = "") -> Stat:
        return cls(value=NAN, n=int(n), reason=reason, note=note)

    @property
    def ok(self) -> bool:
        return math.isfinite(self.value)

    def __float__(self) -> float:
        return float(self.value)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # JSON has no NaN: write null
        for k in ("value", "stderr", "ci_low", "ci_high"):
            if not math.isfinite(d[k]):
                d[k] = None
        return d


# --------------------------------------------------------------------------------------------
# helpers


def stderr(values: Any, ddof: int = 1) -> float:
    """Standard error of the mean of the finite values (NaN for fewer than 2)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2:
        return NAN
    return float(v.std(ddof=ddof) / math.sqrt(v.size))


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: Any,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    strata: Any = None,
) -> tuple[float, float, float, int]:
    """Percentile bootstrap over rows (prompts) of ``arrays`` (resampled jointly).

    ``statistic(*resampled_arrays) -> float``.  With ``strata`` (one label per row) rows are
    resampled within each stratum, keeping its size.  Returns ``(low, high, boot_sd, n_valid)``;
    NaN replicates are dropped (``n_valid`` counts the rest).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    arrs = [np.asarray(a) for a in arrays]
    n = len(arrs[0])
    if any(len(a) != n for a in arrs):
        raise ValueError("bootstrap_ci: arrays must have the same number of rows")
    if n == 0 or n_boot <= 0:
        return NAN, NAN, NAN, 0
    rng = np.random.default_rng(seed)
    if strata is None:
        groups = [np.arange(n)]
    else:
        s = np.asarray(strata)
        groups = [np.flatnonzero(s == u) for u in np.unique(s)]
    reps = np.empty(n_boot, dtype=np.float64)
    for b in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        reps[b] = statistic(*(a[idx] for a in arrs))
    reps = reps[np.isfinite(reps)]
    if reps.size < 2:
        return NAN, NAN, NAN, int(reps.size)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha])
    return float(lo), float(hi), float(reps.std(ddof=1)), int(reps.size)


def _boot_note(n_valid: int, n_boot: int) -> str:
    if n_boot > 0 and n_valid < n_boot:
        return f"{n_boot - n_valid} of {n_boot} bootstrap replicates were NaN and dropped"
    return ""


def mean_stat(
    values: Any,
    what: str = "",
    *,
    n_boot: int = 0,
    seed: int = 0,
    level: float = 0.95,
) -> Stat:
    """Mean with standard error (and a bootstrap CI if ``n_boot > 0``).  Any NaN -> NaN."""
    v = np.asarray(values, dtype=np.float64).ravel()
    label = f"{what}: " if what else ""
    if v.size == 0:
        return Stat.nan(f"{label}no values")
    bad = int((~np.isfinite(v)).sum())
    if bad:
        return Stat.nan(f"{label}{bad} of {v.size} values are NaN/inf", n=v.size)
    lo = hi = NAN
    note = ""
    if n_boot > 0:
        lo, hi, _, nv = bootstrap_ci(np.mean, v, n_boot=n_boot, seed=seed, level=level)
        note = _boot_note(nv, n_boot)
    return Stat(float(v.mean()), stderr(v), lo, hi, int(v.size), "", note)


# --------------------------------------------------------------------------------------------
# ROC statistics


def _check_binary(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, str]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    y = y.astype(bool) if y.dtype != bool else y
    if s.size == 0:
        return s, y, "no scores"
    if not np.isfinite(s).all():
        return s, y, f"{int((~np.isfinite(s)).sum())} scores are NaN/inf"
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return s, y, f"only one class present (n_pos={n_pos}, n_neg={n_neg}); ROC undefined"
    return s, y, ""


def _auc(s: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if y.all() or not y.any():
        return NAN
    return float(roc_auc_score(y, s))


def _auc_fast(s: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney form of the AUC (ties count 1/2), equal to sklearn's; used in bootstraps."""
    from scipy.stats import rankdata

    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return NAN
    r = rankdata(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _roc_fast(
    s: np.ndarray, y: np.ndarray, drop_intermediate: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``roc_curve(y, s, drop_intermediate=...)``'s (fpr, tpr) without sklearn's checks.

    With ``drop_intermediate`` a point is dropped, as sklearn does, where both the false- and
    the true-positive counts change by the same amount before and after it (a point inside a
    straight run of the curve); the first and last points are kept.
    """
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), ss.size - 1]  # last index of each distinct score
    tp = np.cumsum(yy)[last]
    fp = (last + 1) - tp
    if drop_intermediate and tp.size > 2:
        bend = (np.diff(fp, 2) != 0) | (np.diff(tp, 2) != 0)
        keep = np.r_[True, bend, True]
        tp, fp = tp[keep], fp[keep]
    tpr = np.r_[0.0, tp / tp[-1]]
    fpr = np.r_[0.0, fp / fp[-1]]
    return fpr, tpr


def roc_points(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sklearn.metrics.roc_curve`` with every point kept: ``(fpr, tpr, thresholds)``."""
    from sklearn.metrics import roc_curve

    return roc_curve(np.asarray(labels).astype(int), scores, drop_intermediate=False)


def interp_tpr(fpr: np.ndarray, tpr: np.ndarray, at: float) -> float:
    """TPR of the piecewise-linear ROC at FPR ``at``.

    At an FPR where the curve has a vertical segment the top of the segment is taken; between
    two FPR values it is the straight line from the last point at the lower FPR to the first
    point at the higher one (what ``np.interp`` gives; ties in scores are diagonal segments).
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    i = int(np.searchsorted(fpr, at, side="right")) - 1  # last point with fpr <= at
    if i < 0:
        return float(tpr[0])
    if fpr[i] == at or i == len(fpr) - 1:
        return float(tpr[i])
    f0, f1, t0, t1 = fpr[i], fpr[i + 1], tpr[i], tpr[i + 1]
    return float(np.interp(at, [f0, f1], [t0, t1]))


def _tpr_at(s: np.ndarray, y: np.ndarray, fpr: float, fast: bool = False) -> float:
    if y.all() or not y.any():
        return NAN
    f, t = _roc_fast(s, y) if fast else roc_points(s, y)[:2]
    return interp_tpr(f, t, fpr)


def roc_auc(
    scores: Any, labels: Any, *, n_boot: int = 0, seed: int = 0, level: float = 0.95
) -> Stat:
    """Area under the ROC (sklearn), Hanley-McNeil stderr, stratified bootstrap CI."""
    s, y, why = _check_binary(scores, labels)
    if why:
        return Stat.nan(why, n=s.size)
    auc = _auc(s, y)
    n1, n0 = int(y.sum()), int((~y).sum())
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n1 - 1) * (q1 - auc * auc) + (n0 - 1) * (q2 - auc * auc)) / (n1 * n0)
    se = math.sqrt(max(var, 0.0))
    lo = hi = NAN
    note = ""
    if n_boot > 0:
        lo, hi, _, nv = bootstrap_ci(
            _auc_fast, s, y, n_boot=n_boot, seed=seed, level=level, strata=y
        )
        note = _boot_note(nv, n_boot)
    return Stat(auc, se, lo, hi, int(s.size), "", note)


def tpr_at_fpr(
    scores: Any,
    labels: Any,
    fpr: float = 0.01,
    *,
    n_boot: int = 0,
    seed: int = 0,
    level: float = 0.95,
) -> Stat:
    """TPR at the given FPR, interpolated linearly on the ROC (not the nearest ROC point)."""
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    s, y, why = _check_binary(scores, labels)
    if why:
        return Stat.nan(why, n=s.size)
    val = _tpr_at(s, y, fpr)
    n1, n0 = int(y.sum()), int((~y).sum())
    se = math.sqrt(val * (1 - val) / n1)
    notes = []
    if n0 * fpr < 1:
        notes.append(
            f"only {n0} negatives: FPR {fpr} lies below one false positive (1/{n0}), so the "
            "value is interpolated between the ROC's first points"
        )
    return _tpr_stat(
        val, se, notes, s, y, lambda a, b: _tpr_at(a, b, fpr, fast=True), n_boot, seed, level
    )


def _tpr_stat(val, se, notes, s, y, point, n_boot: int, seed: int, level: float) -> Stat:
    """A TPR Stat with the stratified bootstrap CI of ``point(scores, labels)``."""
    lo = hi = NAN
    if n_boot > 0:
        lo, hi, _, nv = bootstrap_ci(point, s, y, n_boot=n_boot, seed=seed, level=level, strata=y)
        if _boot_note(nv, n_boot):
            notes.append(_boot_note(nv, n_boot))
    return Stat(val, se, lo, hi, int(s.size), "", "; ".join(notes))


def _tpr_last_point(s: np.ndarray, y: np.ndarray, fpr: float, fast: bool = False) -> float:
    """TPR of the last point of sklearn's default ROC (drop_intermediate=True) whose FPR is
    strictly below ``fpr`` -- Wen et al.'s ``tpr[np.where(fpr < .01)[0][-1]]``."""
    if y.all() or not y.any():
        return NAN
    if fast:
        f, t = _roc_fast(s, y, drop_intermediate=True)
    else:
        from sklearn.metrics import roc_curve

        f, t, _ = roc_curve(y.astype(int), s)
    return float(t[np.flatnonzero(f < fpr)[-1]])  # (0, 0) always qualifies for fpr > 0


def tpr_at_fpr_last_point(
    scores: Any,
    labels: Any,
    fpr: float = 0.01,
    *,
    n_boot: int = 0,
    seed: int = 0,
    level: float = 0.95,
) -> Stat:
    """Wen et al.'s TPR@``fpr``: the TPR of the last ROC point with FPR strictly below ``fpr``.

    The ROC is ``sklearn.metrics.roc_curve`` with its default ``drop_intermediate=True`` (which
    can matter: points inside straight runs are gone).  No interpolation, so it is at most
    :func:`tpr_at_fpr`'s value.  Standard error and stratified bootstrap CI as in
    :func:`tpr_at_fpr`.
    """
    if not 0 < fpr <= 1:
        raise ValueError(f"fpr must be in (0, 1], got {fpr}")
    s, y, why = _check_binary(scores, labels)
    if why:
        return Stat.nan(why, n=s.size)
    val = _tpr_last_point(s, y, fpr)
    n1, n0 = int(y.sum()), int((~y).sum())
    se = math.sqrt(val * (1 - val) / n1)
    notes = []
    if n0 * fpr <= 1:
        notes.append(
            f"only {n0} negatives: an FPR below {fpr} allows no false positive, so this is the "
            "TPR at zero false positives"
        )
    point = lambda a, b: _tpr_last_point(a, b, fpr, fast=True)  # noqa: E731
    return _tpr_stat(val, se, notes, s, y, point, n_boot, seed, level)


def detection(
    positive_scores: Any,
    negative_scores: Any,
    *,
    fpr: float = 0.01,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Stat]:
    """AUC and TPR@``fpr`` for memorized (positive) vs non-memorized (negative) prompt scores."""
    p = np.asarray(positive_scores, dtype=np.float64).ravel()
    q = np.asarray(negative_scores, dtype=np.float64).ravel()
    s = np.concatenate([p, q])
    y = np.concatenate([np.ones(p.size, bool), np.zeros(q.size, bool)])
    kw = {"n_boot": n_boot, "seed": seed, "level": level}
    key = f"tpr_at_{fpr:g}_fpr"
    return {"auc": roc_auc(s, y, **kw), key: tpr_at_fpr(s, y, fpr, **kw)}


# --------------------------------------------------------------------------------------------
# correlations


def _clean_pairs(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray, int]:
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"x {a.shape} and y {b.shape} differ in length")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep], int((~keep).sum())


def _degenerate_corr(a: np.ndarray, b: np.ndarray) -> str:
    if a.size < 3:
        return f"fewer than 3 finite pairs (n={a.size}); correlation undefined"
    if np.ptp(a) == 0:
        return "x has zero variance; correlation undefined"
    if np.ptp(b) == 0:
        return "y has zero variance; correlation undefined"
    return ""


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import pearsonr

    if _degenerate_corr(a, b):
        return NAN
    return float(pearsonr(a, b).statistic)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if _degenerate_corr(a, b):
        return NAN
    return float(spearmanr(a, b).statistic)


def correlation(
    x: Any,
    y: Any,
    method: str = "pearson",
    *,
    n_boot: int = 0,
    seed: int = 0,
    level: float = 0.95,
) -> Stat:
    """Pearson r or Spearman rho (scipy.stats) over prompts, with a bootstrap CI over prompts.

    Pairs with a NaN on either side are dropped (counted in ``note``).
    """
    fn = {"pearson": _pearson, "spearman": _spearman}.get(method)
    if fn is None:
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    a, b, dropped = _clean_pairs(x, y)
    notes = [f"dropped {dropped} pairs with NaN"] if dropped else []
    why = _degenerate_corr(a, b)
    if why:
        return Stat.nan(why, n=a.size, note="; ".join(notes))
    r = fn(a, b)
    se = math.sqrt(max(1 - r * r, 0.0) / (a.size - 2)) if a.size > 2 else NAN
    lo = hi = NAN
    if n_boot > 0:
        lo, hi, _, nv = bootstrap_ci(fn, a, b, n_boot=n_boot, seed=seed, level=level)
        if _boot_note(nv, n_boot):
            notes.append(_boot_note(nv, n_boot))
    return Stat(r, se, lo, hi, int(a.size), "", "; ".join(notes))


def pearson(x: Any, y: Any, **kw: Any) -> Stat:
    return correlation(x, y, "pearson", **kw)


def spearman(x: Any, y: Any, **kw: Any) -> Stat:
    return correlation(x, y, "spearman", **kw)


# --------------------------------------------------------------------------------------------
# declarations (tasks/test_overestimation.py records the M7 correlations)


declare(
    "corr",
    keys=("corr_{method}.{quantity}_sscd[.pooled]",),
    family="overestimation",
    higher_is_better=None,
    needs_training_image=True,
    description="M7: Pearson / Spearman correlation of a per-prompt quantity with per-prompt "
    "mean SSCD over the memorized set's prompts (.pooled: both sets); CI: bootstrap",
    sections=(
        Placement(
            "overestimation",
            (
                "corr_pearson.d1_sscd",
                "corr_spearman.d1_sscd",
                "corr_pearson.d2_sscd",
                "corr_pearson.wen_sscd",
                "corr_pearson.d1_sscd.pooled",
            ),
            rank=50,
        ),
    ),
    headline=(Headline("corr_pearson.d1_sscd", "r(D1, SSCD)", 70),),
)
