"""The detectors' formulas (memberbench/metrics/detectors.py) on cases whose answer is known
independently: hand-computed numbers, a trajectory built from known coefficients, Webster's
variance-exploding form, and the sharpness against autograd's full Hessian and against finite
differences on a tiny differentiable model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memberbench.metrics.declare import get_detector
from memberbench.metrics.decomposition import deviation_from_latents
from memberbench.metrics.detectors import (
    anisotropy_parts,
    anisotropy_score,
    realtime_d1,
    realtime_w0,
    sharpness,
    webster_score,
)
from memberbench.types import MemberbenchError, Trace

# --------------------------------------------------------------------------------------------
# real-time D1


def test_realtime_d1_by_hand():
    # ||x_1||^2 = 25, <x_1, x_T> = 6, ||x_T||^2 = 4: the part orthogonal to x_T has
    # 25 - 36 / 4 = 16, length 4; ||x0_hat|| = 8 -> W0 = 0.5; sqrt(abar) = 0.3 -> D1 = 0.2
    t = Trace(
        series={
            "latent_norm": np.array([5.0]),
            "latent_dot_xT": np.array([6.0]),
            "x0_g_norm": np.array([8.0]),
            "abar_next": np.array([0.09]),
        },
        scalars={"xT_norm2": 4.0},
    )
    assert realtime_w0(t, 1) == pytest.approx([0.5])
    assert realtime_d1(t, 1) == pytest.approx(0.2)
    with pytest.raises(MemberbenchError, match="window k=2 outside the trace's 1..1 steps"):
        realtime_d1(t, 2)
    with pytest.raises(MemberbenchError, match="lacks fields"):
        realtime_d1(Trace(series={"latent_norm": np.array([1.0])}), 1)


def _trajectory(a, b, seed=0, d=64):
    """States x_i = a_i x0 + b_i x_T with x0 exactly orthogonal to x_T; the trace of them."""
    rng = np.random.default_rng(seed)
    xT = rng.standard_normal(d)
    x0 = rng.standard_normal(d)
    x0 -= (x0 @ xT) / (xT @ xT) * xT
    states = np.array([ai * x0 + bi * xT for ai, bi in zip(a, b, strict=True)])
    abar = np.linspace(0.2, 0.9, len(a))
    trace = Trace(
        series={
            "latent_norm": np.linalg.norm(states, axis=1),
            "latent_dot_xT": states @ xT,
            "x0_g_norm": np.full(len(a), np.linalg.norm(x0)),
            "abar_next": abar,
        },
        scalars={"xT_norm2": float(xT @ xT)},
    )
    return trace, states, xT, abar


def test_realtime_w0_recovers_the_coefficients_and_matches_the_final_basis_fit():
    a = [0.3, 0.55, 0.8, 1.0]
    b = [0.9, 0.7, 0.4, 0.0]
    trace, states, xT, abar = _trajectory(a, b)
    for k in (1, 2, 4):
        assert realtime_w0(trace, k) == pytest.approx(a[:k], rel=1e-12)
        assert realtime_d1(trace, k) == pytest.approx(sum(np.array(a[:k]) - np.sqrt(abar[:k])))
    # the trajectory ends on x0, so the paper's fit on [x_final, x_T] (known only at the end)
    # gives the same D1 as the real-time one at every window
    for k in (1, 3, 4):
        ref = deviation_from_latents(
            states[None], None, xT[None], abar, float(abar[0]), basis="final", window=k
        )
        assert realtime_d1(trace, k) == pytest.approx(ref["D1"], rel=1e-10)


def test_realtime_d1_is_declared_image_free_at_the_runs_windows():
    det = get_detector("d1_rt")
    assert not det.needs_training_image and det.windows is None and not det.own_calls
    assert det.cost(5, 2, 50) == (2 * 5 * 2, 0)


# --------------------------------------------------------------------------------------------
# Webster


def test_webster_score_by_hand_and_in_variance_exploding_form():
    t = Trace(series={"abar_t": np.array([0.2, 0.5]), "eps_g_norm": np.array([3.0, 1.0])})
    assert webster_score(t) == pytest.approx((0.8 / 0.2) * 9.0)  # 36, from the first step only
    # Webster's code: one step to sigma = 0 from z_0 = x_T / sqrt(abar); score mean((z_0 - x0)^2)
    rng = np.random.default_rng(1)
    d, a = 1024, 0.0047
    x_T = rng.standard_normal(d)
    eps = rng.standard_normal(d) * 0.9
    z0 = x_T / np.sqrt(a)
    x0_hat = (x_T - np.sqrt(1 - a) * eps) / np.sqrt(a)
    theirs = np.mean((z0 - x0_hat) ** 2)
    t = Trace(series={"abar_t": np.array([a]), "eps_g_norm": np.array([np.linalg.norm(eps)])})
    assert webster_score(t) / d == pytest.approx(theirs, rel=1e-12)
    det = get_detector("webster")
    assert det.windows == (1,) and det.higher_is_memorized


# --------------------------------------------------------------------------------------------
# anisotropy


def test_anisotropy_by_hand():
    # one sample, 2 channels, a 1 x 2 latent
    z = torch.zeros(1, 2, 1, 2)
    c_hi = z.clone()
    c_hi[0, 0, 0, 0], c_hi[0, 1, 0, 0] = 3.0, 4.0  # ||eps_c - eps_u|| = 5
    u_lo = z.clone()
    u_lo[0, 0] = 1.0  # eps_u = (1, 0) over the channels at both positions
    c_lo = u_lo.clone()
    c_lo[0, 0, 0, 0] = 2.0  # position 0: guidance (1, 0), cosine with (1, 0) = 1
    c_lo[0, 1, 0, 1] = 1.0  # position 1: guidance (0, 1), cosine 0
    norm, cos = anisotropy_parts(z, c_hi, u_lo, c_lo)
    assert norm.tolist() == pytest.approx([5.0])
    assert cos.tolist() == pytest.approx([0.5])
    assert anisotropy_score(norm, cos) == pytest.approx(5.0 + 2.0 * 0.5)
    # over seeds: the means
    assert anisotropy_score([5.0, 1.0], [0.5, -0.5], (1.0, 2.0)) == pytest.approx(3.0)
    det = get_detector("anisotropy")
    assert det.windows == (0,) and det.own_calls and det.cost(0, 3, 50) == (12, 0)


# --------------------------------------------------------------------------------------------
# sharpness


def _tiny_density(seed: int, d: int):
    """log p(x) = -x^T A x / 2 + sum(tanh(W x)) for one flattened sample; its gradient."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    A = A @ A.T / d + torch.eye(d, dtype=torch.float64)
    W = torch.randn(3, d, generator=g, dtype=torch.float64)

    def logp(x):
        return -0.5 * x @ A @ x + torch.tanh(W @ x).sum()

    return logp


def test_sharpness_against_the_full_hessian_and_finite_differences():
    d, one_minus = 8, 0.7
    logp_u, logp_c = _tiny_density(0, d), _tiny_density(1, d)
    c = one_minus**0.5

    def eps_fn(z):  # eps_b = -sqrt(1 - abar) grad log p_b, batched over samples
        out = []
        with torch.enable_grad():
            for logp in (logp_u, logp_c):
                rows = []
                for zi in z.reshape(z.shape[0], -1):
                    zi = zi if zi.requires_grad else zi.detach().requires_grad_(True)
                    (gr,) = torch.autograd.grad(logp(zi), zi, create_graph=True)
                    rows.append(-c * gr)
                out.append(torch.stack(rows).reshape(z.shape))
        return out[0], out[1]

    x = torch.randn(2, 2, 2, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = sharpness(eps_fn, x, one_minus)
    for i in range(2):
        xi = x[i].reshape(-1)
        H_u = torch.autograd.functional.hessian(logp_u, xi)
        H_c = torch.autograd.functional.hessian(logp_c, xi)
        s_u = torch.func.grad(logp_u)(xi)
        s_c = torch.func.grad(logp_c)(xi)
        want = ((H_c - H_u) @ (s_c - s_u)).norm()
        assert float(got[i]) == pytest.approx(float(want), rel=1e-9)

        # central finite differences of the score difference along v
        def ds(z):
            return torch.func.grad(logp_c)(z) - torch.func.grad(logp_u)(z)

        v, h = s_c - s_u, 1e-5
        fd = (ds(xi + h * v) - ds(xi - h * v)) / (2 * h)
        assert float(got[i]) == pytest.approx(float(fd.norm()), rel=1e-6)


def test_sharpness_is_declared_with_gradient_passes_and_the_fp16_skip():
    det = get_detector("sharpness")
    assert det.needs_gradients and det.own_calls and det.windows == (1,)
    assert det.cost(1, 2, 50) == (8, 8)

    class Adapter:
        dtype = torch.float16

    class Run:
        adapter = Adapter()

    assert "--dtype fp32" in det.skip_reason(Run())


# --------------------------------------------------------------------------------------------
# the own-call detectors on a real (tiny) UNet


class _Rec:
    def __init__(self, pid, caption):
        self.prompt_id, self.caption = pid, caption


def _run(adapter, seeds=(0, 1), steps=4):
    class Cfg:
        pass

    cfg = Cfg()
    cfg.seeds, cfg.steps, cfg.scheduler = list(seeds), steps, "ddim"

    class Run:
        config = cfg
        _memo: dict = {}

        def __init__(self):
            self.adapter = adapter
            self._memo = {}

        def prompt_set(self, side):
            return [_Rec("a", "a red square"), _Rec("b", "a painting of a house")]

        def log(self, msg):
            pass

    return Run()


def _cfg_eps(adapter, caption, x, t):
    emb = adapter.encode_prompts(["", caption])
    n = x.shape[0]
    e = torch.cat([emb[:1].expand(n, -1, -1), emb[1:].expand(n, -1, -1)])
    with torch.no_grad():
        out = adapter.predict_noise(torch.cat([x, x]), t, e)
    return out[:n].double(), out[n:].double()


def test_anisotropy_on_a_tiny_unet_uses_the_runs_initial_noise_and_grid(tiny_adapter):
    from memberbench.metrics.detectors import anisotropy_scores
    from memberbench.sampling.sampler import initial_noise

    mb = _run(tiny_adapter)
    got = anisotropy_scores(mb, "memorized", 0)
    sched = tiny_adapter.make_scheduler("ddim")
    sched.set_timesteps(4)
    t_hi, t_lo = sched.timesteps[0], sched.timesteps[-3]  # 4 steps: the third-last is index 1
    assert int(t_lo) == int(sched.timesteps[1])
    x = torch.stack([initial_noise(s, tiny_adapter.latent_shape)[0] for s in (0, 1)])
    for pid, caption in (("a", "a red square"), ("b", "a painting of a house")):
        u_hi, c_hi = _cfg_eps(tiny_adapter, caption, x, t_hi)
        u_lo, c_lo = _cfg_eps(tiny_adapter, caption, x, t_lo)
        norm = (c_hi - u_hi).flatten(1).norm(dim=1)
        cos = (u_lo * (c_lo - u_lo)).sum(1) / (u_lo.norm(dim=1) * (c_lo - u_lo).norm(dim=1))
        want = float(norm.mean() + 2.0 * cos.flatten(1).mean(1).mean())
        assert got[pid] == pytest.approx(want, rel=1e-5)
    assert anisotropy_scores(mb, "memorized", 0) is got  # memoized in the run


def test_sharpness_on_a_tiny_unet_matches_finite_differences(tiny_adapter):
    from memberbench.metrics.detectors import sharpness_scores
    from memberbench.sampling.sampler import initial_noise

    mb = _run(tiny_adapter, seeds=(3,))
    got = sharpness_scores(mb, "memorized", 1)
    sched = tiny_adapter.make_scheduler("ddim")
    sched.set_timesteps(4)
    t = sched.timesteps[0]
    c = (1.0 - float(sched.alphas_cumprod[int(t)])) ** -0.5
    x = initial_noise(3, tiny_adapter.latent_shape)[0][None]

    def ds(z):  # s_c - s_u = -(eps_c - eps_u) / sqrt(1 - abar)
        u, cc = _cfg_eps(tiny_adapter, "a red square", z.float(), t)
        return -(cc - u) * c

    v = ds(x.double())
    h = 1e-2 / float(v.norm())
    fd = (ds(x.double() + h * v) - ds(x.double() - h * v)) / (2 * h)
    assert got["a"] == pytest.approx(float(fd.norm()), rel=2e-2)
    assert np.isfinite(got["b"]) and got["b"] > 0


def test_an_own_call_detector_marks_a_failing_prompt_nan_and_goes_on(tiny_adapter):
    from memberbench.metrics.detectors import anisotropy_scores

    class Flaky:  # the tiny adapter, whose text encoder fails on one caption
        def __getattr__(self, name):
            return getattr(tiny_adapter, name)

        def encode_prompts(self, prompts):
            if "house" in prompts[-1]:
                raise RuntimeError("CUDA out of memory (a test's failure)")
            return tiny_adapter.encode_prompts(prompts)

    mb = _run(Flaky())
    logged = []
    mb.log = logged.append
    got = anisotropy_scores(mb, "memorized", 0)
    assert np.isnan(got["b"]) and np.isfinite(got["a"])
    assert logged == [
        "memberbench: detector anisotropy: prompt b failed: CUDA out of memory (a test's failure)"
    ]
