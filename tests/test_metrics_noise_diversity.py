"""M4 (Wen et al.'s magnitude, noise cosines) and M5 (collapse / diversity)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from memberbench.metrics.declare import lookup
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
    RawOutputMagnitude,
    noise_cosines,
    raw_output_magnitude,
    text_conditional_magnitude,
)
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
    assert lookup("wen.k1").higher_is_better is NoiseMagnitude.higher_is_better
    with pytest.raises(MemberbenchError, match="eps_diff_norm"):
        NoiseMagnitude()([Trace(series={"timestep": np.ones(3)})])
    with pytest.raises(MemberbenchError, match="only 5 steps"):
        text_conditional_magnitude(t1, 6)
    with pytest.raises(MemberbenchError):
        NoiseMagnitude(first_k=0)


def test_raw_output_magnitude_by_hand():
    """||raw_c - raw_u|| from ||eps_c - eps_u||: x1 (epsilon), /sqrt(abar_t) (v),
    *sqrt(1-abar_t)/sqrt(abar_t) (x0), per step before the mean over the first k."""
    tr = Trace(
        series={
            "eps_diff_norm": np.array([2.0, 4.0, 6.0]),
            "abar_t": np.array([0.04, 0.25, 0.64]),
            "guidance": np.full(3, 7.5),
        }
    )
    assert raw_output_magnitude(tr, 2, "epsilon") == pytest.approx(3.0)
    assert raw_output_magnitude(tr, 1, "v_prediction") == pytest.approx(2 / 0.2)
    assert raw_output_magnitude(tr, 2, "v_prediction") == pytest.approx((10 + 8) / 2)
    assert raw_output_magnitude(tr, 3, "v_prediction") == pytest.approx((10 + 8 + 7.5) / 3)
    x0 = (2 * math.sqrt(0.96) / 0.2 + 4 * math.sqrt(0.75) / 0.5) / 2
    assert raw_output_magnitude(tr, 2, "sample") == pytest.approx(x0)
    with pytest.raises(MemberbenchError, match=r"'flow'.*epsilon, v_prediction, sample"):
        raw_output_magnitude(tr, 1, "flow")
    with pytest.raises(MemberbenchError, match="prediction_type"):
        RawOutputMagnitude(prediction_type="x0")
    with pytest.raises(MemberbenchError, match="only 3 steps"):
        raw_output_magnitude(tr, 4)
    m = RawOutputMagnitude(first_k=2, prediction_type="v_prediction")
    assert m([tr, tr]).value == pytest.approx(9.0)
    assert m.describe()["prediction_type"] == "v_prediction"
    assert lookup("wen_raw.k1").higher_is_better is RawOutputMagnitude.higher_is_better
    # guidance <= 1: Wen's pipeline has no unconditional branch -> NaN with a reason
    g1 = Trace(series={**tr.series, "guidance": np.array([7.5, 1.0, 7.5])})
    assert raw_output_magnitude(g1, 1, "v_prediction") == pytest.approx(10.0)
    assert math.isnan(raw_output_magnitude(g1, 2, "v_prediction"))
    st = m([g1])
    assert math.isnan(st.value) and "unconditional" in st.reason


def test_raw_output_magnitude_equals_v_unet_output(tiny_pipeline_dir):
    """On a real (tiny, random) v-prediction UNet: the function's value at step 1 equals
    ||v_c - v_u|| computed directly with the UNet on x_T at the first timestep, and the
    sampler's own eps_diff_norm is that times sqrt(abar_t)."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from memberbench.adapters.stable_diffusion import StableDiffusionAdapter
    from memberbench.bundled.card import BUNDLED
    from memberbench.sampling.sampler import TracedSampler, initial_noise
    from memberbench.types import GenerationRequest

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir), safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config, prediction_type="v_prediction"
    )
    ad = StableDiffusionAdapter(pipe, BUNDLED, device="cpu")
    req = GenerationRequest("a red circle", seed=4, steps=3, guidance=7.5)
    (s,) = TracedSampler(ad).sample([req])
    sched = ad.make_scheduler("ddim")
    sched.set_timesteps(3)
    t0 = sched.timesteps[0]
    z = initial_noise(4, ad.latent_shape)[0][None] * sched.init_noise_sigma
    z = sched.scale_model_input(z, t0)
    emb = ad.encode_prompts([req.prompt, ""])
    with torch.no_grad():
        v = pipe.unet(torch.cat([z, z]), t0, encoder_hidden_states=emb).sample.double()
    direct = float((v[0] - v[1]).norm())
    assert raw_output_magnitude(s.trace, 1, "v_prediction") == pytest.approx(direct, rel=1e-5)
    a = float(sched.alphas_cumprod[int(t0)])
    assert s.trace["eps_diff_norm"][0] == pytest.approx(direct * math.sqrt(a), rel=1e-5)


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
