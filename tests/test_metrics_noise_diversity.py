"""M4 (Wen et al.'s magnitude, noise cosines) and M5 (collapse / diversity)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from memberbench.metrics.diversity import (
    LatentDiversity,
    SeedSimilarity,
    across_seed_variance,
    diversity_profile,
    mean_pairwise_similarity,
    pairwise_l2_by_state,
)
from memberbench.metrics.noise_magnitude import (
    NoiseMagnitude,
    noise_cosines,
    text_conditional_magnitude,
)
from memberbench.registry import METRICS
from memberbench.types import MemberbenchError, Trace


def vec_trace(rng, T=5, d=32, with_x=True):
    """A trace built from explicit vectors, so cosines can be checked against numpy."""
    xT = rng.normal(size=d)
    x = rng.normal(size=d)
    eps = {b: rng.normal(size=(T, d)) for b in "ucg"}
    ser = {f"eps_{b}_norm": np.linalg.norm(e, axis=1) for b, e in eps.items()}
    ser |= {f"eps_{b}_dot_xT": e @ xT for b, e in eps.items()}
    ser["eps_diff_norm"] = np.linalg.norm(eps["c"] - eps["u"], axis=1)
    sc = {"xT_norm2": float(xT @ xT)}
    if with_x:
        ser |= {f"eps_{b}_dot_x": e @ x for b, e in eps.items()}
        sc["x_norm2"] = float(x @ x)
    return Trace(series=ser, scalars=sc), eps, x, xT


def cos(a, b):
    return a @ b / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b))


def test_wen_magnitude():
    rng = np.random.default_rng(0)
    t1, eps1, *_ = vec_trace(rng)
    t2, eps2, *_ = vec_trace(rng)
    d1 = np.linalg.norm(eps1["c"] - eps1["u"], axis=1)
    d2 = np.linalg.norm(eps2["c"] - eps2["u"], axis=1)
    assert text_conditional_magnitude(t1) == pytest.approx(d1[0])
    assert text_conditional_magnitude(t1, 3) == pytest.approx(d1[:3].mean())
    st = NoiseMagnitude()([t1, t2])
    assert st.value == pytest.approx((d1[0] + d2[0]) / 2) and st.n == 2
    assert st.stderr == pytest.approx(abs(d1[0] - d2[0]) / 2)
    assert NoiseMagnitude(first_k=5)(t1).value == pytest.approx(d1.mean())
    assert NoiseMagnitude.higher_is_better is False
    assert METRICS.get("wen_magnitude") is NoiseMagnitude
    with pytest.raises(MemberbenchError, match="eps_diff_norm"):
        NoiseMagnitude()([Trace(series={"timestep": np.ones(3)})])
    with pytest.raises(MemberbenchError, match="only 5 steps"):
        text_conditional_magnitude(t1, 6)
    with pytest.raises(MemberbenchError):
        NoiseMagnitude(first_k=0)


def test_noise_cosines():
    rng = np.random.default_rng(1)
    tr, eps, x, xT = vec_trace(rng)
    out = noise_cosines(tr)
    for b in "ucg":
        np.testing.assert_allclose(out[f"eps_{b}_cos_xT"], cos(eps[b], xT))
        np.testing.assert_allclose(out[f"eps_{b}_cos_x"], cos(eps[b], x))
    tr2, *_ = vec_trace(rng, with_x=False)
    assert set(noise_cosines(tr2)) == {"eps_u_cos_xT", "eps_c_cos_xT", "eps_g_cos_xT"}


def test_pairwise_l2_and_variance_brute_force():
    rng = np.random.default_rng(2)
    S, T = 4, 6
    lat = rng.normal(size=(S, T, 2, 3, 3))
    flat = lat.reshape(S, T, -1)
    expect = np.zeros(T)
    n = 0
    for i, j in itertools.permutations(range(S), 2):  # s != s', ordered pairs
        expect += np.linalg.norm(flat[i] - flat[j], axis=1)
        n += 1
    np.testing.assert_allclose(pairwise_l2_by_state(lat), expect / n)
    var = across_seed_variance(lat)
    np.testing.assert_allclose(var, flat.var(axis=0, ddof=1).mean(-1))
    # mean squared pairwise distance = 2 d var
    sq = np.mean(
        [((flat[i] - flat[j]) ** 2).sum(-1) for i, j in itertools.permutations(range(S), 2)], 0
    )
    np.testing.assert_allclose(sq, 2 * flat.shape[-1] * var)


def test_collapse_is_visible_and_precise():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(1, 5, 64)) * 100
    lat = base + np.r_[1.0, 1e-3, 1e-6, 1e-9, 0.0][None, :, None] * rng.normal(size=(3, 5, 64))
    d = pairwise_l2_by_state(lat)
    assert d[-1] == 0.0 and 1e-10 < d[3] < 1e-7  # tiny distances keep their precision
    assert np.all(np.diff(d) < 0)
    st = LatentDiversity()(lat)
    assert st.value == 0.0 and st.n == 3
    assert LatentDiversity(state=0)(lat).value == pytest.approx(d[0])
    assert LatentDiversity(state="mean")(lat).value == pytest.approx(d.mean())
    assert LatentDiversity.higher_is_better is True
    one = LatentDiversity()(lat[:1])
    assert math.isnan(one.value) and "2 seeds" in one.reason
    with pytest.raises(MemberbenchError):
        pairwise_l2_by_state(np.zeros((3, 4)))


def test_seed_similarity():
    e = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # pairs: 0, 1/sqrt2, 1/sqrt2
    assert mean_pairwise_similarity(e) == pytest.approx(2 / np.sqrt(2) / 3)
    st = SeedSimilarity()(e)
    assert st.value == pytest.approx(2 / np.sqrt(2) / 3) and st.n == 3
    assert SeedSimilarity.higher_is_better is False
    assert math.isnan(SeedSimilarity()(e[:1]).value)
    bad = SeedSimilarity()(np.zeros((2, 2)))
    assert math.isnan(bad.value) and "zero" in bad.reason


def test_diversity_profile():
    rng = np.random.default_rng(4)
    lat = rng.normal(size=(3, 4, 8))
    emb = rng.normal(size=(3, 5))
    prof = diversity_profile(lat, emb)
    np.testing.assert_allclose(prof["pairwise_l2"], pairwise_l2_by_state(lat))
    np.testing.assert_allclose(prof["variance"], across_seed_variance(lat))
    assert prof["sscd_pairwise"] == pytest.approx(mean_pairwise_similarity(emb))
    assert prof["n_seeds"] == 3 and "sscd_pairwise" not in diversity_profile(lat)
