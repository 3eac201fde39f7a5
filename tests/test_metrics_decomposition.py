"""M6: the decomposition, D1/D2, and the DDIM oracle anchor of
docs/metrics.md#the-ddim-ideal-schedule.

The oracle trajectories are produced by diffusers' own DDIMScheduler.step, not by our formulas.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memberbench.metrics.declare import lookup
from memberbench.metrics.decomposition import (
    D1,
    D2,
    decompose,
    decompose_batch,
    decompose_from_inner_products,
    deviation_from_latents,
    deviation_from_traces,
    deviation_scores,
    final_basis_fit,
    paper_deviation_from_traces,
    resolve_convention,
    schedule_reference,
    trace_deviation,
)
from memberbench.types import MemberbenchError, Trace

SHAPE = (4, 16, 16)


def sd1_ddim(steps: int = 50):
    from diffusers import DDIMScheduler

    s = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        num_train_timesteps=1000,
        steps_offset=1,
        set_alpha_to_one=False,
        clip_sample=False,
        timestep_spacing="leading",
    )
    s.set_timesteps(steps)
    return s


def oracle_run(k: float, seed: int = 0):
    """DDIM (eta 0) with an oracle predicting x0_hat = k * x; returns states 0..T and schedule."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    xT = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    s = sd1_ddim()
    # run the scheduler's arithmetic in fp64 so the identity can be checked to ~1e-10
    s.alphas_cumprod = s.alphas_cumprod.double()
    s.final_alpha_cumprod = torch.as_tensor(s.final_alpha_cumprod).double()
    ac = s.alphas_cumprod
    states = [xT.clone()]
    lat = xT.clone()
    for t in s.timesteps:
        ab = ac[int(t)]
        eps = (lat - ab.sqrt() * k * x) / (1 - ab).sqrt()
        lat = s.step(eps, t, lat, eta=0.0).prev_sample.double()
        states.append(lat.clone())
    ts = s.timesteps.numpy()
    abar_t = ac[ts].numpy()
    abar_next = np.append(ac[ts[1:]].numpy(), float(s.final_alpha_cumprod))
    return x, xT, torch.stack(states), ts, abar_t, abar_next


def trace_from_states(x, xT, states, ts, abar_t, abar_next, with_w=True, with_final=False) -> Trace:
    X, N, L = x.reshape(-1), xT.reshape(-1), states[1:].reshape(len(ts), -1)
    ser = {
        "timestep": ts.astype(np.float64),
        "abar_t": abar_t,
        "abar_next": abar_next,
        "latent_dot_x": (L @ X).numpy(),
        "latent_dot_xT": (L @ N).numpy(),
        "latent_norm": L.norm(dim=1).numpy(),
    }
    if with_w:
        w0, wT, r = decompose_batch(L, X[None].expand_as(L), N[None].expand_as(L))
        ser.update(w0=w0.numpy(), wT=wT.numpy(), resid_rms=r.numpy())
    sc = {
        "x_norm2": float(X @ X),
        "xT_norm2": float(N @ N),
        "x_dot_xT": float(X @ N),
        "dim": float(X.numel()),
    }
    if with_final:  # what the sampler records on every trace for the final-latent basis
        F = L[-1]
        ser["latent_dot_final"] = (L @ F).numpy()
        sc.update(final_norm2=float(F @ F), final_dot_xT=float(F @ N))
    return Trace(series=ser, scalars=sc)


def test_sd1_grid():
    s = sd1_ddim()
    ts = s.timesteps.tolist()
    assert ts[:3] == [981, 961, 941] and ts[-1] == 1 and len(ts) == 50


@pytest.mark.parametrize("k", [1.0, 7.5])
def test_oracle_states_match_ddim_ideal(k):
    x, xT, states, ts, abar_t, abar_next = oracle_run(k)
    a1 = abar_t[0]
    # independent closed form (not our schedule_reference)
    om0 = np.sqrt(abar_next) - np.sqrt(a1) * np.sqrt(1 - abar_next) / np.sqrt(1 - a1)
    omT = np.sqrt(1 - abar_next) / np.sqrt(1 - a1)
    for i in range(1, 51):
        expect = k * om0[i - 1] * x + omT[i - 1] * xT
        torch.testing.assert_close(states[i], expect, rtol=1e-9, atol=1e-9)
    # least squares recovers exactly these coefficients, residual ~ 0
    w0, wT, r = decompose(states[1:], x, xT)
    np.testing.assert_allclose(w0, k * om0, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(wT, omT, rtol=1e-9, atol=1e-10)
    assert r.max() < 1e-9
    # our schedule helper agrees with the closed form
    r0, rT = schedule_reference(abar_next, a1, "ddim_ideal")
    np.testing.assert_allclose(r0, om0, rtol=1e-12)
    np.testing.assert_allclose(rT, omT, rtol=1e-12)


@pytest.mark.parametrize(("k", "d1_expected"), [(1.0, -2.7433), (7.5, 160.151)])
def test_oracle_d1_anchor(k, d1_expected):
    x, xT, states, ts, abar_t, abar_next = oracle_run(k)
    tr = trace_from_states(x, xT, states, ts, abar_t, abar_next)
    out = deviation_from_traces([tr], schedule="sqrt_abar", window="all")
    assert out["D1"] == pytest.approx(d1_expected, abs=2e-3)
    # docs/metrics.md#the-ddim-ideal-schedule: about -2.74 at k = 1 and 160.15 at k = 7.5
    assert round(out["D1"], 2) == pytest.approx({1.0: -2.74, 7.5: 160.15}[k], abs=0.011)
    # D2 against sqrt(1-abar): WT = omegaT independent of k
    omT = np.sqrt(1 - abar_next) / np.sqrt(1 - abar_t[0])
    assert out["D2"] == pytest.approx(-(omT - np.sqrt(1 - abar_next)).sum(), rel=1e-8)
    # against the DDIM-ideal schedule: D1 = (k - 1) sum omega0, D2 = 0
    ideal = deviation_from_traces([tr], schedule="ddim_ideal")
    om0 = np.sqrt(abar_next) - np.sqrt(abar_t[0]) * omT
    assert ideal["D1"] == pytest.approx((k - 1) * om0.sum(), abs=1e-7)
    assert ideal["D2"] == pytest.approx(0.0, abs=1e-7)
    # early window = the first 10 states
    early = deviation_from_traces([tr], window="early")
    assert early["D1"] == pytest.approx((k * om0 - np.sqrt(abar_next))[:10].sum(), abs=1e-7)


def test_trace_without_w_series_uses_inner_products():
    x, xT, states, ts, abar_t, abar_next = oracle_run(7.5, seed=3)
    full = trace_from_states(x, xT, states, ts, abar_t, abar_next, with_w=True)
    partial = trace_from_states(x, xT, states, ts, abar_t, abar_next, with_w=False)
    a = deviation_from_traces([full])
    b = deviation_from_traces([partial])
    assert b["D1"] == pytest.approx(a["D1"], rel=1e-9)
    assert b["D2"] == pytest.approx(a["D2"], rel=1e-9)
    # residual of the inner-product route on a generic (noisy) fit
    rng = np.random.default_rng(0)
    X, N = rng.standard_normal(100), rng.standard_normal(100)
    L = 0.3 * X[None] + 0.5 * N[None] + 0.1 * rng.standard_normal((5, 100))
    w0, wT, r = decompose(L, X, N)
    w0b, wTb, rb = decompose_from_inner_products(
        L @ X, L @ N, np.linalg.norm(L, axis=1), X @ X, N @ N, X @ N, 100
    )
    np.testing.assert_allclose(w0b, w0, rtol=1e-10)
    np.testing.assert_allclose(wTb, wT, rtol=1e-10)
    np.testing.assert_allclose(rb, r, rtol=1e-8)


def test_decompose_batch_against_lstsq():
    g = torch.Generator().manual_seed(1)
    B = 3
    x = torch.randn(B, *SHAPE, generator=g)
    xT = torch.randn(B, *SHAPE, generator=g)
    lat = 0.4 * x - 1.3 * xT + 0.2 * torch.randn(B, *SHAPE, generator=g)
    w0, wT, r = decompose_batch(lat, x, xT)
    assert w0.dtype == torch.float64 and w0.shape == (B,)
    for b in range(B):
        A = np.stack([x[b].double().flatten().numpy(), xT[b].double().flatten().numpy()], 1)
        y = lat[b].double().flatten().numpy()
        coef, *_ = np.linalg.lstsq(A, y, rcond=None)
        res = y - A @ coef
        assert w0[b].item() == pytest.approx(coef[0], rel=1e-10)
        assert wT[b].item() == pytest.approx(coef[1], rel=1e-10)
        assert r[b].item() == pytest.approx(np.sqrt(np.mean(res**2)), rel=1e-10)
    # numpy in, numpy out; a single x broadcast over the batch
    w0n, _, _ = decompose_batch(lat.numpy(), x[:1].numpy(), xT.numpy())
    assert isinstance(w0n, np.ndarray) and w0n.shape == (B,)


def test_decompose_batch_degenerate_is_nan():
    g = torch.Generator().manual_seed(2)
    xT = torch.randn(4, *SHAPE, generator=g)
    lat = torch.randn(4, *SHAPE, generator=g)
    x = torch.stack([torch.zeros(SHAPE), 2 * xT[1], -xT[2], torch.randn(SHAPE, generator=g)])
    w0, wT, r = decompose_batch(lat, x, xT)
    assert torch.isnan(w0[:3]).all() and torch.isnan(wT[:3]).all() and torch.isnan(r[:3]).all()
    assert torch.isfinite(w0[3]) and torch.isfinite(r[3])
    # all-zero noise too
    w0z, _, _ = decompose_batch(lat[:1], x[3:], torch.zeros(1, *SHAPE))
    assert torch.isnan(w0z).all()


def test_metric_classes_and_degenerate_reason():
    x, xT, states, ts, abar_t, abar_next = oracle_run(7.5)
    tr = trace_from_states(x, xT, states, ts, abar_t, abar_next)
    d1, d2 = D1(), D2(schedule="ddim_ideal", window="early")
    assert d1.higher_is_better is False and d2.higher_is_better is False
    # the classes agree with the declarations of the names the tasks record
    assert lookup("d1").higher_is_better is D1.higher_is_better
    assert lookup("d2").higher_is_better is D2.higher_is_better
    st = d1([tr, tr])
    assert st.value == pytest.approx(160.151, abs=2e-3) and st.n == 2 and st.reason == ""
    assert d2.describe()["schedule"] == "ddim_ideal"
    # zero training latent -> NaN with a reason, no crash
    zero = Trace(
        series=dict(tr.series),
        scalars={**tr.scalars, "x_norm2": 0.0, "x_dot_xT": 0.0},
    )
    zero.series.pop("w0")
    zero.series.pop("wT")
    bad = d1([zero])
    assert np.isnan(bad.value) and "zero" in bad.reason


def test_missing_fields_error_names_them():
    tr = Trace(series={"abar_t": np.ones(3) * 0.5, "abar_next": np.ones(3) * 0.6})
    with pytest.raises(MemberbenchError, match=r"latent_dot_x.*reference"):
        D1()([tr])
    with pytest.raises(MemberbenchError, match="abar_next"):
        D1()([Trace(series={"abar_t": np.ones(3)})])


def test_basis_final_and_seed_average_from_latents():
    x, xT, states, ts, abar_t, abar_next = oracle_run(7.5)
    x2, xT2, states2, *_ = oracle_run(7.5, seed=5)
    st = torch.stack([states[1:], states2[1:]]).numpy()
    out = deviation_from_latents(
        st, x.numpy(), torch.stack([xT, xT2]).numpy(), abar_next, abar_t[0]
    )
    assert out["w0"].shape == (2, 50)
    # seed 2 has its own x; seed average of seed 1 alone is the anchor
    one = deviation_from_latents(st[:1], x.numpy(), xT[None].numpy(), abar_next, abar_t[0])
    assert one["D1"] == pytest.approx(160.151, abs=2e-3)
    # basis "final": x_i = (omega0_i / omega0_T) x_T_final-part ... ; the final state has w0=1,wT=0
    fin = deviation_from_latents(
        st, None, torch.stack([xT, xT2]).numpy(), abar_next, abar_t[0], basis="final"
    )
    assert fin["w0"][:, -1] == pytest.approx([1.0, 1.0], abs=1e-9)
    assert fin["wT"][:, -1] == pytest.approx([0.0, 0.0], abs=1e-9)
    # in this oracle the final latent is 7.5*om0_T x + omT_T x_T, so x_i expands exactly in it
    omT = np.sqrt(1 - abar_next) / np.sqrt(1 - abar_t[0])
    om0 = np.sqrt(abar_next) - np.sqrt(abar_t[0]) * omT
    w0_exp = om0 / om0[-1]
    np.testing.assert_allclose(fin["w0"][0], w0_exp, rtol=1e-7)
    np.testing.assert_allclose(fin["wT"][0], omT - w0_exp * omT[-1], atol=1e-7)


def test_basis_final_from_trace_latents_path(tmp_path):
    x, xT, states, ts, abar_t, abar_next = oracle_run(1.0)
    tr = trace_from_states(x, xT, states, ts, abar_t, abar_next)
    with pytest.raises(MemberbenchError, match="latents"):
        D1(basis="final")([tr])
    p = tmp_path / "lat.npy"
    np.save(p, states.numpy())
    tr.latents_path = str(p)
    st = D1(basis="final")([tr])
    ref = deviation_from_latents(
        states[1:][None].numpy(), None, xT[None].numpy(), abar_next, abar_t[0], basis="final"
    )
    assert st.value == pytest.approx(ref["D1"], rel=1e-10)


def test_deviation_scores_by_hand_and_bad_args():
    ab = np.array([0.25, 0.64, 1.0])
    d1, d2 = deviation_scores([0.6, 0.8, 1.0], [0.9, 0.6, 0.0], ab, 0.25)
    assert d1 == pytest.approx((0.6 - 0.5) + (0.8 - 0.8) + 0.0)
    assert d2 == pytest.approx(-((0.9 - np.sqrt(0.75)) + (0.6 - 0.6) + 0.0))
    with pytest.raises(MemberbenchError, match="window"):
        deviation_scores([1.0], [1.0], [0.5], 0.5, window="late")
    with pytest.raises(MemberbenchError, match="schedule"):
        schedule_reference([0.5], 0.5, "linear")
    with pytest.raises(MemberbenchError, match="same length"):
        deviation_scores([1.0, 2.0], [1.0], [0.5], 0.5)


# --------------------------------------------------------------------------------------------
# the final-latent basis from recorded inner products, and the paper code's alignment


def test_final_basis_from_inner_products_matches_saved_latents(tiny_adapter, tmp_path):
    """(a) On real traces of the tiny pipeline, the fit on [x_final, x_T] from the recorded
    inner products equals decompose() on the saved full latents (1e-8), with and without a
    reference latent, and so do the paper-convention D1/D2."""
    from memberbench.sampling.sampler import TracedSampler
    from memberbench.types import GenerationRequest

    reqs = [
        GenerationRequest("a red circle", seed=0, steps=8),
        GenerationRequest("a blue square on green", seed=1, steps=8),
    ]
    ref = tiny_adapter.encode_images(np.full((1, 64, 64, 3), 200, dtype=np.uint8))[0]
    samples = TracedSampler(tiny_adapter, record_latents_dir=tmp_path).sample(reqs, [ref, None])
    for s in samples:
        tr = s.trace
        assert tr.has("latent_dot_final", "final_norm2", "final_dot_xT")
        lat = np.load(tr.latents_path)["latents"].astype(np.float64).reshape(9, -1)
        w0, wT, r = decompose(lat[1:], lat[-1], lat[0])
        w0b, wTb, rb = final_basis_fit(tr)
        np.testing.assert_allclose(w0b, w0, rtol=0, atol=1e-8)
        np.testing.assert_allclose(wTb, wT, rtol=0, atol=1e-8)
        assert w0b[-1] == pytest.approx(1.0, abs=1e-12) and wTb[-1] == pytest.approx(0, abs=1e-12)
        # the residual from inner products (||l||^2 - w0 p - wT q) loses digits: looser
        np.testing.assert_allclose(rb[:-1], r[:-1], rtol=1e-5)
        # the same trace without the inner products falls back to the full latents
        bare = Trace(
            series={k: v for k, v in tr.series.items() if k != "latent_dot_final"},
            scalars=dict(tr.scalars),
            latents_path=tr.latents_path,
        )
        w0c, wTc, _ = final_basis_fit(bare)
        np.testing.assert_array_equal(w0c, w0)
        np.testing.assert_array_equal(wTc, wT)
        a, b = paper_deviation_from_traces([tr]), paper_deviation_from_traces([bare])
        assert a["D1"] == pytest.approx(b["D1"], abs=1e-8)
        assert a["D2"] == pytest.approx(b["D2"], abs=1e-8)
        assert (a["basis"], a["schedule"], a["convention"]) == ("final", "sqrt_abar", "paper")
        m6 = deviation_from_traces([tr], basis="final")
        m6b = deviation_from_traces([bare], basis="final")
        assert m6["D1"] == pytest.approx(m6b["D1"], abs=1e-8)
        # neither inner products nor latents: one error naming both
        bare.latents_path = None
        with pytest.raises(MemberbenchError, match=r"latent_dot_final.*full latents"):
            final_basis_fit(bare)


def _synthetic_final_trace(a, b, abar_t, abar_next, seed=0, d=300) -> Trace:
    rng = np.random.default_rng(seed)
    xf, xT = rng.standard_normal(d), rng.standard_normal(d)
    S = np.asarray(a)[:, None] * xf[None] + np.asarray(b)[:, None] * xT[None]
    return Trace(
        series={
            "timestep": np.arange(len(a), 0, -1, dtype=np.float64),
            "abar_t": np.asarray(abar_t, dtype=np.float64),
            "abar_next": np.asarray(abar_next, dtype=np.float64),
            "latent_dot_final": S @ xf,
            "latent_dot_xT": S @ xT,
            "latent_norm": np.linalg.norm(S, axis=1),
        },
        scalars={
            "final_norm2": float(xf @ xf),
            "xT_norm2": float(xT @ xT),
            "final_dot_xT": float(xf @ xT),
            "dim": float(d),
        },
    )


def test_paper_convention_by_hand():
    """(b) States x_i = a_i x_f + b_i x_T (a_T = 1, b_T = 0) are recovered exactly, and the
    paper alignment compares state i with sqrt(abar_t_i), sqrt(1 - abar_t_i)."""
    abar_t, abar_next = [0.04, 0.25, 0.64], [0.25, 0.64, 0.81]
    a, b = [0.3, 0.6, 1.0], [0.9, 0.5, 0.0]
    tr = _synthetic_final_trace(a, b, abar_t, abar_next)
    w0, wT, r = final_basis_fit(tr)
    np.testing.assert_allclose(w0, a, rtol=0, atol=1e-12)
    np.testing.assert_allclose(wT, b, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r, 0.0, atol=1e-6)  # sqrt of a cancelled ~1e-14
    out = paper_deviation_from_traces([tr])
    d1 = (0.3 - 0.2) + (0.6 - 0.5) + (1.0 - 0.8)
    d2 = -((0.9 - np.sqrt(0.96)) + (0.5 - np.sqrt(0.75)) + (0.0 - 0.6))
    assert out["D1"] == pytest.approx(d1, abs=1e-12) and out["D1"] == pytest.approx(0.4)
    assert out["D2"] == pytest.approx(d2, abs=1e-12)
    np.testing.assert_allclose(out["W0"], a, atol=1e-12)
    # m6 alignment of the same coefficients: sqrt(abar_next) = 0.5, 0.8, 0.9
    m6 = deviation_from_traces([tr], basis="final")
    assert m6["D1"] == pytest.approx((0.3 - 0.5) + (0.6 - 0.8) + (1.0 - 0.9), abs=1e-12)
    # two seeds: W0/WT are seed means before the sum
    tr2 = _synthetic_final_trace([0.5, 0.8, 1.0], [0.7, 0.3, 0.0], abar_t, abar_next, seed=1)
    two = paper_deviation_from_traces([tr, tr2])
    np.testing.assert_allclose(two["W0"], [0.4, 0.7, 1.0], atol=1e-12)
    assert two["D1"] == pytest.approx((0.4 - 0.2) + (0.7 - 0.5) + (1.0 - 0.8), abs=1e-12)
    assert two["n_seeds"] == 2
    # first k states; the metric classes and trace_deviation agree
    early = paper_deviation_from_traces([tr], window=2)
    assert early["D1"] == pytest.approx(0.2, abs=1e-12)
    assert D1(convention="paper")([tr]).value == pytest.approx(0.4, abs=1e-12)
    assert D2(convention="paper")([tr]).value == pytest.approx(d2, abs=1e-12)
    assert trace_deviation(tr, convention="paper") == pytest.approx((d1, d2), abs=1e-12)
    assert D1(convention="paper").describe()["basis"] == "final"


def test_paper_convention_bad_args():
    assert resolve_convention("m6") == ("x", "sqrt_abar")
    assert resolve_convention("paper") == ("final", "sqrt_abar")
    with pytest.raises(MemberbenchError, match="basis 'final'"):
        resolve_convention("paper", basis="x")
    with pytest.raises(MemberbenchError, match="sqrt_abar"):
        D1(convention="paper", schedule="ddim_ideal")
    with pytest.raises(MemberbenchError, match="convention"):
        deviation_from_traces([Trace()], convention="wen")


@pytest.mark.parametrize("k", [1.0, 7.5])
def test_paper_vs_m6_alignment_constant_shift(k):
    """(c) For the final basis, D1_paper - D1_m6 = sum sqrt(abar_next) - sum sqrt(abar_t) and
    D2_paper - D2_m6 = sum sqrt(1 - abar_t) - sum sqrt(1 - abar_next), whatever the
    trajectory; on DDIM's grid the sums telescope to the first and final noise levels."""
    x, xT, states, ts, abar_t, abar_next = oracle_run(k, seed=2)
    tr = trace_from_states(x, xT, states, ts, abar_t, abar_next, with_final=True)
    for window, n in (("all", 50), ("early", 10), (3, 3)):
        p = deviation_from_traces([tr], convention="paper", window=window)
        m = deviation_from_traces([tr], basis="final", window=window)
        sa, sn = np.sqrt(abar_t[:n]), np.sqrt(abar_next[:n])
        assert p["D1"] - m["D1"] == pytest.approx(sn.sum() - sa.sum(), abs=1e-12)
        c1, cn = np.sqrt(1 - abar_t[:n]), np.sqrt(1 - abar_next[:n])
        assert p["D2"] - m["D2"] == pytest.approx(c1.sum() - cn.sum(), abs=1e-12)
        assert p["D1"] - m["D1"] == pytest.approx(sn[-1] - sa[0], abs=1e-12)  # telescoped
    # SD 1.x, 50 DDIM steps: sqrt(abar_final) - sqrt(abar_981) and its D2 counterpart
    shift1 = np.sqrt(abar_next[-1]) - np.sqrt(abar_t[0])
    shift2 = np.sqrt(1 - abar_t[0]) - np.sqrt(1 - abar_next[-1])
    assert (round(shift1, 4), round(shift2, 4)) == (0.9236, 0.968)


@pytest.mark.parametrize("k", [1.0, 7.5])
def test_oracle_closed_form_basis_final(k):
    """(d) DDIM with an oracle x0_hat = k x: x_i = k om0_i x + omT_i x_T, so in the basis
    [x_final, x_T] w0_i = om0_i / om0_T and wT_i = omT_i - w0_i omT_T, independent of k;
    D1/D2 follow in closed form in both alignments."""
    x, xT, states, ts, abar_t, abar_next = oracle_run(k)
    tr = trace_from_states(x, xT, states, ts, abar_t, abar_next, with_final=True)
    omT = np.sqrt(1 - abar_next) / np.sqrt(1 - abar_t[0])
    om0 = np.sqrt(abar_next) - np.sqrt(abar_t[0]) * omT
    w0_exp = om0 / om0[-1]
    wT_exp = omT - w0_exp * omT[-1]
    w0, wT, _ = final_basis_fit(tr)
    np.testing.assert_allclose(w0, w0_exp, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(wT, wT_exp, rtol=1e-7, atol=1e-9)
    p = paper_deviation_from_traces([tr])
    assert p["D1"] == pytest.approx((w0_exp - np.sqrt(abar_t)).sum(), abs=1e-6)
    assert p["D2"] == pytest.approx(-(wT_exp - np.sqrt(1 - abar_t)).sum(), abs=1e-6)
    m = deviation_from_traces([tr], basis="final")
    assert m["D1"] == pytest.approx((w0_exp - np.sqrt(abar_next)).sum(), abs=1e-6)
    # anchors on SD 1.x's 50-step DDIM grid (docs/metrics-conventions.md), any k
    assert (round(p["D1"], 4), round(p["D2"], 4)) == (-1.7532, 1.5983)
    assert (round(m["D1"], 4), round(m["D2"], 4)) == (-2.6768, 0.6303)
