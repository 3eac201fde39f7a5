"""Detection and correlation statistics against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from memberbench.metrics.stats import (
    Stat,
    bootstrap_ci,
    correlation,
    detection,
    interp_tpr,
    mean_stat,
    pearson,
    roc_auc,
    spearman,
    stderr,
    tpr_at_fpr,
    tpr_at_fpr_last_point,
)


def labels(n_pos: int, n_neg: int) -> np.ndarray:
    return np.r_[np.ones(n_pos), np.zeros(n_neg)]


def test_auc_hand_computed_no_ties():
    pos, neg = [0.9, 0.8, 0.4], [0.7, 0.3, 0.2, 0.1]
    # pairs (pos > neg): 4 + 4 + 3 of 12
    st = roc_auc(pos + neg, labels(3, 4))
    assert st.value == pytest.approx(11 / 12) and st.n == 7 and st.reason == ""


def test_auc_with_ties_and_hanley_mcneil_stderr():
    st = roc_auc([0.9, 0.5, 0.5, 0.1], labels(2, 2))
    assert st.value == pytest.approx(3.5 / 4)  # the tie counts one half
    a, n1, n0 = 0.875, 2, 2
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0))
    assert st.stderr == pytest.approx(se) and se == pytest.approx(0.2077, abs=1e-4)


def test_tpr_interpolated_on_diagonal_segment():
    # ROC: (0,0) -> (0, 1/2) [0.9] -> (1/2, 1) [tie at 0.5: diagonal] -> (1, 1)
    s, y = [0.9, 0.5, 0.5, 0.1], labels(2, 2)
    assert tpr_at_fpr(s, y, 0.01).value == pytest.approx(0.5 + 0.01)  # not 0.5 nor 1.0
    assert tpr_at_fpr(s, y, 0.25).value == pytest.approx(0.75)
    assert tpr_at_fpr(s, y, 0.0).value == pytest.approx(0.5)
    assert tpr_at_fpr(s, y, 1.0).value == pytest.approx(1.0)


def test_tpr_at_vertical_segment_takes_top_and_flat_between():
    # ROC: (0, .5) [0.9] -> (.5, .5) [0.85] -> (.5, 1) [0.8] -> (1, 1)
    s, y = [0.9, 0.8, 0.85, 0.1], labels(2, 2)
    assert tpr_at_fpr(s, y, 0.5).value == pytest.approx(1.0)
    assert tpr_at_fpr(s, y, 0.25).value == pytest.approx(0.5)
    assert tpr_at_fpr(s, y, 0.49).value == pytest.approx(0.5)  # nearest point would say 1.0


def test_tpr_at_1pct_larger_case():
    # 200 negatives 0..199; positives: 30 above every negative, 1 tied with the top negative
    # (199), the rest low.  FPR 1% = 2 negatives.
    neg = np.arange(200.0)
    pos = np.r_[np.full(30, 500.0), [199.0], np.full(69, -1.0)]
    st = tpr_at_fpr(np.r_[pos, neg], labels(100, 200), 0.01)
    # ROC: (0, .30) -> tie at 199: (1/200, .31) -> 198: (2/200, .31): TPR(0.01) = 0.31
    assert st.value == pytest.approx(0.31)
    assert st.note == ""  # 200 negatives resolve 1%
    st = tpr_at_fpr(np.r_[pos, neg], labels(100, 200), 0.0025)  # halfway along the tie
    assert st.value == pytest.approx(0.305)
    assert "below one false positive" in st.note


def test_interp_tpr_matches_np_interp_off_grid():
    rng = np.random.default_rng(0)
    from sklearn.metrics import roc_curve

    y = rng.integers(0, 2, 300)
    s = rng.normal(size=300) + y + np.round(rng.normal(size=300), 1)  # some ties
    f, t, _ = roc_curve(y, s)
    for at in [0.013, 0.05, 0.1234, 0.5]:
        if at not in f:
            assert interp_tpr(f, t, at) == pytest.approx(np.interp(at, f, t))


@pytest.mark.parametrize("fn", [roc_auc, tpr_at_fpr])
def test_single_class_is_nan_with_reason(fn):
    st = fn([0.1, 0.5, 0.9], [1, 1, 1])
    assert math.isnan(st.value) and "one class" in st.reason and not st.ok
    st = fn([0.1, float("nan")], [1, 0])
    assert math.isnan(st.value) and "NaN" in st.reason


def test_few_negatives_note():
    st = tpr_at_fpr([0.9, 0.8, 0.1, 0.2], labels(2, 2), 0.01)
    assert st.ok and "negatives" in st.note


def test_detection_with_bootstrap_reproducible():
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(2, 1, 40), rng.normal(0, 1, 60)
    a = detection(pos, neg, n_boot=300, seed=7)
    b = detection(pos, neg, n_boot=300, seed=7)
    c = detection(pos, neg, n_boot=300, seed=8)
    assert set(a) == {"auc", "tpr_at_0.01_fpr"}
    assert a["auc"] == b["auc"] and a["tpr_at_0.01_fpr"] == b["tpr_at_0.01_fpr"]
    assert (a["auc"].ci_low, a["auc"].ci_high) != (c["auc"].ci_low, c["auc"].ci_high)
    assert a["auc"].ci_low < a["auc"].value < a["auc"].ci_high
    from sklearn.metrics import roc_auc_score

    assert a["auc"].value == pytest.approx(roc_auc_score(labels(40, 60), np.r_[pos, neg]))


def test_pearson_spearman_against_reference():
    rng = np.random.default_rng(2)
    x = rng.normal(size=50)
    y = 0.7 * x + rng.normal(size=50) ** 3
    p = pearson(x, y)
    assert p.value == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert p.stderr == pytest.approx(math.sqrt((1 - p.value**2) / 48))
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))  # no ties
    assert spearman(x, y).value == pytest.approx(np.corrcoef(rx, ry)[0, 1])


def test_correlation_bootstrap_seeded_and_nan_pairs_dropped():
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    a = pearson(x, y, n_boot=200, seed=0)
    assert a == pearson(x, y, n_boot=200, seed=0)
    assert a.ci_low < a.value < a.ci_high
    # manual percentile bootstrap with the same generator protocol
    g = np.random.default_rng(0)
    reps = []
    for _ in range(200):
        idx = g.integers(0, 40, 40)
        reps.append(np.corrcoef(x[idx], y[idx])[0, 1])
    lo, hi = np.quantile(reps, [0.025, 0.975])
    assert (a.ci_low, a.ci_high) == pytest.approx((lo, hi))
    x2 = np.r_[x, np.nan]
    y2 = np.r_[y, 1.0]
    b = pearson(x2, y2)
    assert b.value == pytest.approx(a.value) and b.n == 40 and "dropped 1" in b.note


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_degenerate_correlations(method):
    st = correlation([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], method)
    assert math.isnan(st.value) and "zero variance" in st.reason
    st = correlation([1.0, 2.0], [2.0, 1.0], method)
    assert math.isnan(st.value) and "fewer than 3" in st.reason
    with pytest.raises(ValueError):
        correlation([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], "kendall")


def test_mean_stat_and_stderr():
    v = [1.0, 2.0, 4.0, 7.0]
    st = mean_stat(v, n_boot=100, seed=0)
    assert st.value == pytest.approx(3.5)
    assert st.stderr == pytest.approx(np.std(v, ddof=1) / 2) == stderr(v)
    assert st.ci_low <= 3.5 <= st.ci_high
    bad = mean_stat([1.0, float("nan")], "d1")
    assert math.isnan(bad.value) and "1 of 2" in bad.reason
    assert math.isnan(stderr([1.0]))
    assert math.isnan(mean_stat([]).value)


def test_bootstrap_ci_stratified_keeps_class_sizes():
    y = labels(3, 5)
    seen = []

    def stat(a):
        seen.append(a.sum())
        return float(a.sum())

    bootstrap_ci(stat, y, n_boot=20, seed=0, strata=y)
    assert set(seen) == {3.0}


def test_stat_to_dict_is_json():
    d = Stat.nan("only one class").to_dict()
    assert d["value"] is None and d["reason"] == "only one class"
    json.dumps(d)
    assert float(Stat(0.5)) == 0.5


def test_fast_bootstrap_forms_equal_sklearn():
    from sklearn.metrics import roc_auc_score, roc_curve

    from memberbench.metrics.stats import _auc_fast, _roc_fast

    rng = np.random.default_rng(4)
    for _ in range(5):
        y = rng.integers(0, 2, 80).astype(bool)
        s = np.round(rng.normal(size=80) + y, 1)  # many ties
        assert _auc_fast(s, y) == pytest.approx(roc_auc_score(y, s))
        f, t, _ = roc_curve(y, s, drop_intermediate=False)
        f2, t2 = _roc_fast(s, y)
        np.testing.assert_allclose(f2, f)
        np.testing.assert_allclose(t2, t)


# --------------------------------------------------------------------------------------------
# Wen et al.'s ROC point: the last point with FPR strictly below the target


def _wen_reference(s, y, at):
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(y).astype(int), s)
    return tpr[np.where(fpr < at)[0][-1]]


def test_last_point_differs_from_interpolation_with_ties():
    # 200 negatives: one at 300, two tied with 10 positives at 250, 197 low; 100 positives:
    # 30 at 500, 10 at 250, 60 below everything.  ROC: (0, .30) [500] -> (.005, .30) [300]
    # -> (.015, .40) [tie at 250] -> ... FPR 1% falls inside the diagonal tie segment.
    neg = np.r_[[300.0, 250.0, 250.0], np.arange(197.0)]
    pos = np.r_[np.full(30, 500.0), np.full(10, 250.0), np.full(60, -1.0)]
    s, y = np.r_[pos, neg], labels(100, 200)
    st = tpr_at_fpr_last_point(s, y, 0.01)
    assert st.value == pytest.approx(0.30) and st.note == "" and st.n == 300
    assert st.stderr == pytest.approx(math.sqrt(0.3 * 0.7 / 100))
    assert tpr_at_fpr(s, y, 0.01).value == pytest.approx(0.35)  # halfway along the tie
    assert st.value == _wen_reference(s, y, 0.01)
    # strictly below: at 1.5% the tie's top point (FPR exactly .015) does not count
    assert tpr_at_fpr_last_point(s, y, 0.015).value == pytest.approx(0.30)
    assert tpr_at_fpr_last_point(s, y, 0.0151).value == pytest.approx(0.40)


def test_last_point_uses_sklearns_dropped_intermediate_points():
    # tie groups of one positive and one negative: the ROC is a straight diagonal, and
    # sklearn's default curve keeps only (0, 0), (.25, .25) and (1, 1)
    s, y = [3, 3, 2, 2, 1, 1, 0, 0], [1, 0, 1, 0, 1, 0, 1, 0]
    st = tpr_at_fpr_last_point(s, y, 0.6)
    assert st.value == pytest.approx(0.25)  # every point kept would say 0.5 (at FPR .5)
    assert tpr_at_fpr(s, y, 0.6).value == pytest.approx(0.6)
    assert st.value == _wen_reference(s, y, 0.6)
    # few negatives: with 2 negatives FPR < 1% means no false positive at all
    st = tpr_at_fpr_last_point([0.9, 0.5, 0.5, 0.1], labels(2, 2), 0.01)
    assert st.value == pytest.approx(0.5) and "no false positive" in st.note
    assert tpr_at_fpr([0.9, 0.5, 0.5, 0.1], labels(2, 2), 0.01).value == pytest.approx(0.51)
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr_last_point(s, y, 0.0)
    bad = tpr_at_fpr_last_point([0.1, 0.2], [1, 1])
    assert math.isnan(bad.value) and "one class" in bad.reason


def test_last_point_fast_form_and_bootstrap():
    from memberbench.metrics.stats import _tpr_last_point

    rng = np.random.default_rng(5)
    for _ in range(20):
        y = rng.integers(0, 2, 150).astype(bool)
        sc = np.round(rng.normal(size=150) + y, 1)  # many ties
        for at in (0.01, 0.05, 0.2):
            ref = _wen_reference(sc, y, at)
            assert _tpr_last_point(sc, y, at, fast=True) == ref
            assert _tpr_last_point(sc, y, at) == ref
    pos, neg = rng.normal(2, 1, 60), rng.normal(0, 1, 240)
    sc, yy = np.r_[pos, neg], labels(60, 240)
    a = tpr_at_fpr_last_point(sc, yy, n_boot=300, seed=3)
    assert a == tpr_at_fpr_last_point(sc, yy, n_boot=300, seed=3)
    assert a.ci_low <= a.value <= a.ci_high and a.ci_low < a.ci_high
    # the replicates are the same statistic on stratified resamples (same generator protocol)
    g = np.random.default_rng(3)
    groups = [np.flatnonzero(~yy.astype(bool)), np.flatnonzero(yy.astype(bool))]
    reps = []
    for _ in range(300):
        idx = np.concatenate([gr[g.integers(0, len(gr), len(gr))] for gr in groups])
        reps.append(_wen_reference(sc[idx], yy[idx], 0.01))
    assert (a.ci_low, a.ci_high) == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])))
