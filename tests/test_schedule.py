"""The one schedule (memberbench/sampling/schedule.py): its reduction to today's DDIM formulas on
the real DDIMScheduler, and the flow-matching Euler oracle driven through the traced sampler and
diffusers' own FlowMatchEulerDiscreteScheduler.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memberbench.metrics.decomposition import deviation_from_traces, schedule_reference
from memberbench.metrics.noise_magnitude import raw_output_factor
from memberbench.metrics.overestimation import trajectory_k
from memberbench.sampling.sampler import TracedSampler
from memberbench.sampling.schedule import Schedule
from memberbench.sampling.schedulers import noise_levels
from memberbench.types import GenerationRequest, MemberbenchError

SHAPE = (4, 8, 8)


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


@pytest.mark.parametrize("steps", [50, 7])
def test_reduces_exactly_to_ddim_ideal_on_the_real_ddim_scheduler(steps):
    """omega_T,i = b_i / b_1 and omega_0,i = a_i - a_1 b_i / b_1 with a = sqrt(abar),
    b = sqrt(1 - abar) is, bit for bit, the DDIM-ideal formula the decomposition used before."""
    s = sd1_ddim(steps)
    abar_t, abar_next = (v.numpy() for v in noise_levels(s))
    a1 = float(abar_t[0])
    # the previous formula, written out independently
    omT = np.sqrt(1.0 - abar_next) / np.sqrt(1.0 - a1)
    om0 = np.sqrt(abar_next) - np.sqrt(a1) * omT
    sch = Schedule.from_scheduler(s)
    assert sch.family == "vp" and len(sch) == steps
    w0, wT = sch.ideal()
    np.testing.assert_array_equal(w0, om0)
    np.testing.assert_array_equal(wT, omT)
    np.testing.assert_array_equal(sch.reference("sqrt_abar")[0], np.sqrt(abar_next))
    np.testing.assert_array_equal(sch.reference("sqrt_abar", "paper")[1], np.sqrt(1 - abar_t))
    # the legacy entry point (states' levels + first level) gives the same numbers
    r0, rT = schedule_reference(abar_next, a1, "ddim_ideal")
    np.testing.assert_array_equal(r0, om0)
    np.testing.assert_array_equal(rT, omT)
    # the VP-equivalent levels a trace records are alphas_cumprod itself (to the last ulp)
    ab_t, ab_n = sch.abar_equivalent()
    np.testing.assert_allclose(ab_t, abar_t, rtol=1e-15)
    np.testing.assert_allclose(ab_n, abar_next, rtol=1e-15)
    # Wen's raw-output factors: the closed forms of noise_magnitude's docstring
    np.testing.assert_allclose(raw_output_factor(abar_t, "v_prediction"), 1 / np.sqrt(abar_t))
    np.testing.assert_allclose(
        raw_output_factor(abar_t, "sample"), np.sqrt(1 - abar_t) / np.sqrt(abar_t)
    )


def test_flow_levels_round_trip_and_bad_input():
    sig = np.array([1.0, 0.9, 0.5, 0.1])
    nxt = np.array([0.9, 0.5, 0.1, 0.0])
    s = Schedule.flow(sig, nxt)
    np.testing.assert_array_equal(s.a_t + s.b_t, np.ones(4))  # a + b = 1
    back = Schedule.from_levels(*s.abar_equivalent(), family="flow")
    np.testing.assert_allclose(back.b_t, sig, atol=1e-15)
    np.testing.assert_allclose(back.b_next, nxt, atol=1e-15)
    # velocity v = eps - x0 splits without dividing by a (a = 0 at sigma = 1)
    x0, eps = np.array([2.0, -1.0]), np.array([0.5, 3.0])
    for i in range(4):
        x = s.a_t[i] * x0 + s.b_t[i] * eps
        e_hat, x0_hat = s.split(x, eps - x0, i, "flow")
        np.testing.assert_allclose(e_hat, eps, atol=1e-15)
        np.testing.assert_allclose(x0_hat, x0, atol=1e-15)
    with pytest.raises(MemberbenchError, match="flow-matching scheduler"):
        Schedule.vp([0.5], [0.6]).split(x, x, 0, "flow")
    with pytest.raises(MemberbenchError, match="unknown prediction_type 'v_prediction'"):
        s.raw_output_factor("v_prediction")
    f = s.raw_output_factor("flow")
    np.testing.assert_allclose(f[1:], 1 / (1 - sig[1:]))
    assert np.isnan(f[0])  # sigma = 1: eps_hat = x_t, no velocity difference survives


# --------------------------------------------------------------------------------------------
# flow-matching Euler oracle


class OracleFlowAdapter:
    """A flow-matching "model" whose clean estimate is x0_hat = k x at every step: it returns the
    velocity v = (x_t - k x) / sigma_t that the sampler's x0_hat = x_t - sigma v inverts."""

    name = "flow-oracle"
    prediction = "flow"
    device = torch.device("cpu")
    dtype = torch.float32
    latent_shape = SHAPE

    def __init__(self, x: torch.Tensor, k: float, sigmas=None, shift: float = 3.0) -> None:
        self.x, self.k, self.sigmas, self.shift = x, float(k), sigmas, shift
        self.sched = None

    def fingerprint(self) -> str:
        return "flow-oracle"

    def make_scheduler(self, name: str = "ddim"):
        from diffusers import FlowMatchEulerDiscreteScheduler

        custom = self.sigmas

        class FlowMatchCustomGrid(FlowMatchEulerDiscreteScheduler):
            def set_timesteps(self, num_inference_steps=None, device=None, **kw):
                if custom is None:
                    return super().set_timesteps(num_inference_steps, device=device, **kw)
                return super().set_timesteps(sigmas=list(custom), device=device)

        self.sched = FlowMatchCustomGrid(shift=1.0 if custom is not None else self.shift)
        return self.sched

    def encode_prompts(self, prompts):
        return torch.zeros(len(prompts), 1, 1)

    def predict_velocity(self, latents, t, embeds):
        i = self.sched.step_index or 0  # the update about to be taken
        sigma = float(self.sched.sigmas[i])
        return (latents - self.k * self.x.to(latents.dtype)) / sigma

    def decode(self, latents):
        return np.zeros((len(latents), 8, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("k", "sigmas"),
    [(1.0, None), (7.5, None), (7.5, np.linspace(0.8, 0.05, 12)), (0.5, np.linspace(0.6, 0.1, 5))],
)
def test_flow_euler_oracle_closed_form(k, sigmas, tmp_path):
    r"""Flow-matching Euler with an oracle x0_hat = k x has a closed-form trajectory and D1.

    The Euler step of ``FlowMatchEulerDiscreteScheduler`` is ``x_{i+1} = x_i + (s_{i+1} - s_i) v_i``
    with the velocity ``v_i = (x_i - x0_hat) / s_i`` (from ``x_i = (1 - s_i) x0 + s_i eps``,
    ``v = eps - x0``).  With x0_hat = k x:

        x_{i+1} = (s_{i+1} / s_i) x_i - k (s_{i+1} - s_i) / s_i x.

    Write x_i = k alpha_i x + beta_i x_T with x_0 = x_T at s_1 (the first sigma; the noise is
    not scaled, init_noise_sigma = 1).  Then beta_{i+1} = (s_{i+1}/s_i) beta_i, so
    beta_i = s_i / s_1, and alpha_{i+1} - 1 = (s_{i+1}/s_i)(alpha_i - 1) with alpha_0 = 0, so
    alpha_i = 1 - s_i / s_1.  That is x_i = k omega0_i x + omegaT_i x_T with the ideal
    coefficients of the one schedule, a = 1 - s, b = s:

        omegaT_i = b_i / b_1 = s_i / s_1,   omega0_i = a_i - a_1 b_i / b_1 = 1 - s_i / s_1.

    So, over the states i = 1..T (s_i the sigma after update i):

        D1 = sum_i (k (1 - s_i/s_1) - (1 - s_i)),   D2 = -sum_i (s_i/s_1 - s_i),

    and against the ideal reference D1 = (k - 1) sum_i (1 - s_i/s_1), D2 = 0.  With the standard
    grid (s_1 = 1) D2 vanishes; the custom grids starting below 1 make it non-zero.  The clean
    estimates the sampler records give k_i = <x0_hat_i, x>/||x||^2 = k at every step.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g)
    ad = OracleFlowAdapter(x, k, sigmas)
    req = GenerationRequest("a prompt", seed=3, steps=10, guidance=4.0)
    smp = TracedSampler(ad, record_latents_dir=tmp_path)
    (s,) = smp.sample([req], references=[x])
    assert s.status == "ok" and s.meta["scheduler"] == "FlowMatchCustomGrid"
    sig = ad.sched.sigmas.double().numpy()  # the scheduler's own (shifted) sigmas
    T = len(ad.sched.timesteps)
    s1, si = sig[0], sig[1 : T + 1]
    assert (sigmas is None) == (s1 == 1.0)
    if sigmas is None:
        assert T == 10 and 0.0 < si[0] < 1.0 and si[-1] == 0.0

    # the trajectory itself (fp32 scheduler arithmetic: 1e-5)
    lat = np.load(s.trace.latents_path)["latents"].astype(np.float64).reshape(T + 1, -1)
    xT = lat[0]
    X = x.double().numpy().reshape(-1)
    for i in range(1, T + 1):
        expect = k * (1 - sig[i] / s1) * X + (sig[i] / s1) * xT
        np.testing.assert_allclose(lat[i], expect, rtol=1e-5, atol=1e-5)
    tr = s.trace
    np.testing.assert_allclose(tr.series["w0"], k * (1 - si / s1), atol=2e-5)
    np.testing.assert_allclose(tr.series["wT"], si / s1, atol=2e-5)
    # the schedule recorded on the trace is the scheduler's
    back = Schedule.from_trace(tr)
    assert back.family == "flow"
    np.testing.assert_allclose(back.b_t, sig[:T], atol=1e-12)
    np.testing.assert_allclose(back.b_next, si, atol=1e-12)

    out = deviation_from_traces([tr])
    d1 = float((k * (1 - si / s1) - (1 - si)).sum())
    d2 = -float((si / s1 - si).sum())
    assert out["D1"] == pytest.approx(d1, abs=2e-4)
    assert out["D2"] == pytest.approx(d2, abs=2e-4)
    ideal = deviation_from_traces([tr], schedule="ddim_ideal")
    assert ideal["D1"] == pytest.approx((k - 1) * float((1 - si / s1).sum()), abs=2e-4)
    assert ideal["D2"] == pytest.approx(0.0, abs=2e-4)
    # the clean estimates: x0_hat = k x in every branch; no guidance signal (cond = uncond)
    np.testing.assert_allclose(trajectory_k(tr, "g"), k, rtol=2e-5)
    np.testing.assert_allclose(trajectory_k(tr, "u"), k, rtol=2e-5)
    np.testing.assert_allclose(tr.series["eps_diff_norm"], 0.0, atol=1e-6)


def test_flow_prediction_needs_a_flow_scheduler():
    from diffusers import DDIMScheduler

    x = torch.zeros(SHAPE)
    ad = OracleFlowAdapter(x, 1.0)
    ad.make_scheduler = lambda name="ddim": DDIMScheduler()
    with pytest.raises(MemberbenchError, match="predicts 'flow' but scheduler DDIMScheduler"):
        TracedSampler(ad).sample([GenerationRequest("p", seed=0, steps=2)])


def _flow_trace(sigmas, eps_diff, x0_diff=None):
    """A flow-matching trace by hand: levels sigma_t, and the recorded difference norms."""
    from memberbench.types import Trace

    sig = np.asarray(sigmas, dtype=np.float64)
    abar = (1 - sig) ** 2 / ((1 - sig) ** 2 + sig**2)  # the VP-equivalent level traces record
    ser = {"abar_t": abar, "abar_next": abar, "eps_diff_norm": np.asarray(eps_diff, float)}
    if x0_diff is not None:
        ser["x0_diff_norm"] = np.asarray(x0_diff, float)
    return Trace(series=ser, scalars={"flow_matching": 1.0})


def test_wen_magnitude_of_a_flow_trace_is_the_velocity_difference_by_hand():
    """Hand-computed: at sigma = 1 then 0.5, ||x0_c - x0_u|| = 3 then 2 (so ||eps_c - eps_u|| =
    ((1 - sigma) / sigma) ||x0_c - x0_u|| = 0 then 2).  Wen's magnitude of a flow model is
    ||v_c - v_u|| = ||x0_c - x0_u|| / sigma: 3 at step 1 (not the degenerate 0), 4 at step 2."""
    from memberbench.metrics.noise_magnitude import (
        raw_output_magnitude,
        text_conditional_magnitude,
    )

    tr = _flow_trace([1.0, 0.5], eps_diff=[0.0, 2.0], x0_diff=[3.0, 2.0])
    assert text_conditional_magnitude(tr, 1) == pytest.approx(3.0)
    assert text_conditional_magnitude(tr, 2) == pytest.approx((3.0 + 4.0) / 2)
    assert raw_output_magnitude(tr, 1, "flow") == pytest.approx(3.0)
    assert raw_output_magnitude(tr, 2, "flow") == pytest.approx(3.5)
    # = ||eps_c - eps_u|| + ||x0_c - x0_u|| where both are defined (step 2: 2 + 2)
    # a trace from before x0_diff_norm (sampler version 2): undefined at sigma = 1, not 0
    old = _flow_trace([1.0, 0.5], eps_diff=[0.0, 2.0])
    assert np.isnan(text_conditional_magnitude(old, 1))
    # step 2 alone from eps: ||dv|| = ||d eps|| / (1 - sigma) = 2 / 0.5
    from memberbench.metrics.noise_magnitude import flow_velocity_diff

    assert flow_velocity_diff(old)[1] == pytest.approx(4.0)
    # a DDPM-family trace keeps the epsilon-space definition
    from memberbench.types import Trace

    vp = Trace(series={"abar_t": np.array([0.01]), "eps_diff_norm": np.array([0.7])})
    assert text_conditional_magnitude(vp, 1) == pytest.approx(0.7)


class PromptFlowAdapter(OracleFlowAdapter):
    """The oracle plus a prompt-dependent velocity: v = (x_t - k x) / sigma + c * 1, with c = 1
    for a prompt and 0 for the empty (unconditional) one, so v_c - v_u = 1 everywhere."""

    def encode_prompts(self, prompts):
        return torch.tensor([[[0.0 if p == "" else 1.0]] for p in prompts])

    def predict_velocity(self, latents, t, embeds):
        c = embeds.reshape(-1, 1, 1, 1).to(latents.dtype)
        return super().predict_velocity(latents, t, embeds) + c


def test_wen_magnitude_at_sigma_one_through_the_sampler():
    """Through the traced sampler on FlowMatchEuler (sigma_1 = 1): ||v_c - v_u|| = ||1|| =
    sqrt(d) = 16 for the (4, 8, 8) latent at every step; the epsilon difference is 0 at step 1
    (eps_hat = x_t in both branches) and x0_diff_norm carries the signal."""
    from memberbench.metrics.noise_magnitude import raw_output_magnitude, text_conditional_magnitude

    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    ad = PromptFlowAdapter(x, 1.0)
    (s,) = TracedSampler(ad).sample([GenerationRequest("a prompt", seed=0, steps=4, guidance=3.0)])
    tr = s.trace
    sig = ad.sched.sigmas.double().numpy()[:4]
    assert sig[0] == pytest.approx(1.0)
    assert tr.series["eps_diff_norm"][0] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(tr.series["x0_diff_norm"], 16.0 * sig, rtol=1e-5)
    assert text_conditional_magnitude(tr, 1) == pytest.approx(16.0, rel=1e-5)
    assert text_conditional_magnitude(tr, 4) == pytest.approx(16.0, rel=1e-5)
    assert raw_output_magnitude(tr, 1, "flow") == pytest.approx(16.0, rel=1e-5)
