"""SAIL (Jeon et al., ICML 2025): the objective, the Adam polish, candidate choice and cost.

The closed-form cases use a toy noise model ``eps_u(x) = 0``, ``eps_c(x) = a x``: then
``d(x) = a x``, the probe direction is ``x / ||x||`` and the objective is exactly
``L(x) = (a + lam) ||x|| + a r``, whose gradient ``(a + lam) x / ||x||`` makes Adam's first step
``x - lr * sign(x)`` (bias-corrected m / sqrt(v) = g / |g|).  The curvature case checks the
finite-difference proxy against autograd's Jacobian-vector product on a nonlinear toy.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from memberbench.mitigations import build_mitigation
from memberbench.mitigations.sail import candidate_seed, sail_objective
from memberbench.sampling.hooks import SamplerState
from memberbench.sampling.sampler import initial_noise
from memberbench.types import GenerationRequest

A, LAM = 0.5, 0.05
SHAPE = (2, 3, 3)


class LinearToy:
    """eps = a * x for rows whose embedding flag is 1 (conditional), 0 otherwise."""

    name = "toy"
    unet = None

    def predict_noise(self, x, t, emb):
        flag = emb[:, 0, 0].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return A * x * flag


def toy_state(seeds, latents=None):
    reqs = [GenerationRequest("p", seed=s, steps=3, guidance=7.5) for s in seeds]
    B = len(reqs)
    if latents is None:
        latents = torch.stack([initial_noise(s, SHAPE)[0] for s in seeds])
    sched = SimpleNamespace(scale_model_input=lambda x, t: x, init_noise_sigma=1.0)
    return SamplerState(
        requests=reqs,
        adapter=LinearToy(),
        scheduler=sched,
        timesteps=torch.tensor([900, 500, 100]),
        latents=latents.clone(),
        cond_embeds=torch.ones(B, 1, 1),
        uncond_embeds=torch.zeros(B, 1, 1),
        guidance=torch.full((B,), 7.5),
        unet_evals=torch.zeros(B, dtype=torch.long),
    )


def closed_form(x: torch.Tensor, r: float) -> float:
    return (A + LAM) * float(x.norm()) + A * r


def meta(state, key):
    return state.extra["meta"][key]


def test_objective_matches_its_closed_form_on_the_linear_toy():
    x = initial_noise(3, SHAPE)[0][None].double()
    r = 0.7

    def pair(xx):
        return torch.zeros_like(xx), A * xx

    got = sail_objective(pair, x, r, LAM)
    assert float(got[0]) == pytest.approx(closed_form(x[0], r), rel=1e-12)


def test_objective_is_the_text_added_jvp_to_first_order():
    """||d(x + r u)|| = ||d(x) + r (J_c - J_u) u|| + O(r^2), u = d(x)/||d(x)||."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(18, 18, generator=g, dtype=torch.float64) / 4
    V = torch.randn(18, 18, generator=g, dtype=torch.float64) / 4
    x = torch.randn(1, 18, generator=g, dtype=torch.float64)

    def eps_u(xx):
        return torch.tanh(xx @ V.T)

    def eps_c(xx):
        return torch.sin(xx @ W.T)

    def pair(xx):
        return eps_u(xx), eps_c(xx)

    d0 = eps_c(x) - eps_u(x)
    u = d0 / d0.norm()
    _, jd = torch.func.jvp(lambda xx: eps_c(xx) - eps_u(xx), (x,), (u,))
    errs = []
    for r in (1e-2, 5e-3, 2.5e-3):
        proxy = float(sail_objective(pair, x, r, 0.0)[0])
        linear = float((d0 + r * jd).norm())
        errs.append(abs(proxy - linear))
    # second-order remainder: halving r quarters the error
    assert errs[1] / errs[0] == pytest.approx(0.25, abs=0.03)
    assert errs[2] / errs[1] == pytest.approx(0.25, abs=0.03)


def test_one_adam_step_is_a_sign_step_and_stops_at_the_target():
    m = build_mitigation("sail:rho=0.1,lam=0.05,lr=0.01,max_iters=5,target=0")
    state = toy_state([4])
    x0 = state.latents[0].clone()
    r = 0.1 * math.sqrt(x0.numel())
    x1 = x0 - 0.01 * torch.sign(x0)
    L0, L1 = closed_form(x0, r), closed_form(x1, r)
    # a target between the first and second objective: exactly one Adam step
    m = build_mitigation(m, target=(L0 + L1) / 2)
    m.hooks()[0].on_start(state)
    torch.testing.assert_close(state.latents[0], x1, rtol=0, atol=1e-6)
    assert meta(state, "sail_initial")[0] == pytest.approx(L0, rel=1e-6)
    assert meta(state, "sail_final")[0] == pytest.approx(L1, rel=1e-6)
    assert meta(state, "sail_iters") == [1]
    assert meta(state, "sail_passed") == [True] and meta(state, "sail_candidate") == [0]
    # 4 forward passes for each of the two objectives, 4 backward passes (2 each) for one step
    assert state.unet_evals.tolist() == [4 + 8 + 4]


def test_a_sample_already_below_the_target_is_left_alone():
    state = toy_state([1])
    x0 = state.latents.clone()
    build_mitigation("sail:target=1e6").hooks()[0].on_start(state)
    torch.testing.assert_close(state.latents, x0, rtol=0, atol=0)
    assert meta(state, "sail_iters") == [0] and state.unet_evals.tolist() == [4]


def test_candidates_first_to_pass_is_chosen_in_seed_order():
    seed, K = 7, 4
    norms = [float(initial_noise(candidate_seed(seed, j), SHAPE)[0].norm()) for j in range(K)]
    r = (1.0 / 128.0) * math.sqrt(math.prod(SHAPE))
    # accept every candidate at least as good as the second-best one; no polishing
    cut = sorted(norms)[1]
    want = next(j for j, n in enumerate(norms) if n <= cut)
    target = closed_form(torch.tensor([cut]), r) + 1e-9
    state = toy_state([seed])
    build_mitigation(f"sail:candidates={K},max_iters=0,target={target!r}").hooks()[0].on_start(
        state
    )
    z = initial_noise(candidate_seed(seed, want), SHAPE)[0]
    torch.testing.assert_close(state.latents[0], z, rtol=0, atol=0)
    assert meta(state, "sail_candidate") == [want] and meta(state, "sail_passed") == [True]
    assert state.unet_evals.tolist() == [4 * K]
    # none passes: the lowest objective wins and the sample says so
    state = toy_state([seed])
    build_mitigation(f"sail:candidates={K},max_iters=0,target=0").hooks()[0].on_start(state)
    assert meta(state, "sail_candidate") == [min(range(K), key=norms.__getitem__)]
    assert meta(state, "sail_passed") == [False]


def test_a_requests_result_does_not_depend_on_its_batch():
    spec = "sail:candidates=2,max_iters=3,lr=0.05,target=0"
    alone = toy_state([5])
    build_mitigation(spec).hooks()[0].on_start(alone)
    both = toy_state([9, 5])
    build_mitigation(spec).hooks()[0].on_start(both)
    torch.testing.assert_close(both.latents[1], alone.latents[0], rtol=0, atol=1e-7)
    assert both.unet_evals[1] == alone.unet_evals[0]


def test_sail_through_the_sampler_on_the_tiny_pipeline(tiny_pipeline_dir):
    from memberbench.adapters import load_adapter
    from memberbench.runner import run_generation

    ad = load_adapter(f"bundled:path={tiny_pipeline_dir}", device="cpu", dtype="fp32")
    reqs = [GenerationRequest("a red circle", seed=s, steps=4, guidance=7.5) for s in (0, 1)]
    base = run_generation(ad, reqs, mitigation=None, progress=False)
    out = run_generation(ad, reqs, mitigation="sail:target=0,max_iters=2,lr=0.05", progress=False)
    sched = ad.make_scheduler("ddim")
    sched.set_timesteps(4)
    t0 = sched.timesteps[0]
    emb = ad.encode_prompts(["a red circle", ""])
    for s, b in zip(out, base):
        assert s.meta["sail_iters"] == 2 and s.meta["sail_passed"] is False
        assert s.meta["sail_final"] < s.meta["sail_initial"]
        # the recorded starting objective is the objective of the plain run's x_T
        x = torch.as_tensor(initial_noise(b.request.seed, ad.latent_shape)[0])[None]

        def pair(xx):
            eps = ad.predict_noise(torch.cat([xx, xx]), t0, emb[[1, 0]])
            return eps.chunk(2)

        want = float(sail_objective(pair, x, math.sqrt(x.numel()) / 128.0, 0.05)[0])
        assert s.meta["sail_initial"] == pytest.approx(want, rel=1e-4)
        assert s.trace.scalars["xT_norm2"] != b.trace.scalars["xT_norm2"]
        assert s.unet_evals == 2 * 4 + 2 * (4 + 8) + 4
