"""``sail``: choose the initial noise by a sharpness criterion (Jeon et al., ICML 2025).

Jeon, Kim & No, "Understanding and Mitigating Memorization in Generative Models via Sharpness of
Probability Landscapes", ICML 2025 (arXiv 2412.04140; code:
github.com/Dongjae0324/sharpness_memorization_diffusion).  Memorized prompts sit in sharp
regions of the conditional log-density already at the first sampling step, and the sharpness
that matters is the one the text adds: the difference of the conditional and unconditional
Hessians along the text-conditional score difference (the ``sharpness`` detector,
:mod:`memberbench.metrics.detectors`).  SAIL (SharpnessAware Initialization for Latent
diffusion) looks for an initial noise x_T where that quantity is small and samples from it with
plain CFG, so no step of sampling is changed.

The objective of the paper's Algorithm 2, with ``d(x) = eps_c(x, t_1) - eps_u(x, t_1)`` at the
first sampling timestep, is the finite-difference proxy::

    L(x) = || d(x + r * d(x) / ||d(x)||) || + lam * ||x||

(``||d(x + r u)|| ~ ||d(x) + r (J_c - J_u) u||``: the text-conditional magnitude one probe step
along its own direction, i.e. Wen's magnitude plus the text-added curvature; the second term
keeps x near the Gaussian shell).  It is minimised by Adam on x (the gradient flows through the
probe direction too), and a sample is accepted as soon as ``L <= target``.  The paper draws a
batch of ``budget`` candidate noises, optimises them together and keeps the first ones that pass;
here every request keeps its own seed and adds ``candidates - 1`` more noises drawn from seeds
derived from it, so the result of a request does not depend on its batch or on other requests:
the first candidate (in order, the request's own noise first) to pass is used, or the one with
the lowest objective when none passes within ``max_iters`` Adam steps (the paper instead raises
the threshold and redraws; ``Sample.meta["sail_passed"]`` says which happened).

Units.  ``r`` is given relative to the expected norm of x_T (``sqrt(d) * init_noise_sigma``):
the paper's r = 1 on SD's 4x64x64 latents is ``rho = 1/128``.  ``target`` and ``lam`` are in the
paper's units (absolute L2 norms, which grow with the latent size): 8.2 and 0.05 are the paper's
values for SD 1.x, whose ``lam * ||x_T||`` alone is about 6.4; other models need their own
target (sweep it).  Epsilon-prediction models only: v-prediction adapters are converted to
epsilon by memberbench's adapters before any hook sees them.

Cost per candidate: the objective is 4 UNet forward passes (eps_u and eps_c at x and at the probe
point) and its gradient 4 backward passes (counted 2 each); a candidate that passes at once costs
4.  ``Sample.meta`` gets ``sail_initial`` / ``sail_final`` (the chosen candidate's objective before
and after), ``sail_iters``, ``sail_candidate`` and ``sail_passed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from memberbench.mitigations._grad import RowAdamW, model_input
from memberbench.mitigations.base import Mitigation, Param, count_unet_evals, record_meta
from memberbench.sampling.hooks import SamplerState, StepHook

Pair = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# a candidate's seed: far from the small seeds benchmarks use, and different per candidate
_SEED_STRIDE = 1_000_003


def candidate_seed(seed: int, j: int) -> int:
    """The seed of candidate ``j`` of a request with seed ``seed`` (j = 0: the seed itself)."""
    return int(seed) if j == 0 else (int(seed) * _SEED_STRIDE + j) % (2**63 - 1)


def sail_objective(pair: Pair, x: torch.Tensor, radius: float, lam: float) -> torch.Tensor:
    """Per-row ``||d(x + radius d(x)/||d(x)||)|| + lam ||x||`` with ``d = eps_c - eps_u`` from
    ``pair(x) -> (eps_u, eps_c)`` (differentiable in ``x``; fp32 or wider)."""
    eps_u, eps_c = pair(x)
    d = (eps_c - eps_u).flatten(1)
    if d.dtype in (torch.float16, torch.bfloat16):
        d = d.float()
    u = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
    probe = x + (radius * u).view_as(x).to(x.dtype)
    eps_u2, eps_c2 = pair(probe)
    d2 = (eps_c2 - eps_u2).flatten(1)
    if d2.dtype in (torch.float16, torch.bfloat16):
        d2 = d2.float()
    return d2.norm(dim=1) + lam * x.flatten(1).to(d2.dtype).norm(dim=1)


class _SailHook(StepHook):
    def __init__(
        self, target: float, max_iters: int, lr: float, rho: float, lam: float, candidates: int
    ) -> None:
        self.target = target
        self.max_iters = max_iters
        self.lr = lr
        self.rho = rho
        self.lam = lam
        self.K = candidates

    def on_start(self, state: SamplerState) -> None:
        from memberbench.sampling.sampler import initial_noise

        B, K = len(state.requests), self.K
        t0 = state.timesteps[0]
        sigma = float(state.scheduler.init_noise_sigma)
        shape = tuple(state.latents.shape[1:])
        dev, dt = state.latents.device, state.latents.dtype
        # rows b*K + j: candidate j of request b; candidate 0 is the sampler's own x_T
        rows = []
        for b, r in enumerate(state.requests):
            rows.append(state.latents[b].detach().to(torch.float32))
            for j in range(1, K):
                z, _ = initial_noise(candidate_seed(r.seed, j), shape)
                rows.append((z * sigma).to(dev))
        x = torch.stack(rows).to(dev)
        owner = torch.arange(B).repeat_interleave(K)
        radius = self.rho * math.sqrt(x[0].numel()) * sigma
        n = B * K

        def pair_for(ix: torch.Tensor) -> Pair:
            own = owner[ix.cpu()].to(dev)
            u = state.uncond_embeds[own]
            c = state.cond_embeds[own]

            def pair(xx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                inp = model_input(state, torch.cat([xx, xx]).to(dt), t0)
                eps = state.adapter.predict_noise(inp, t0, torch.cat([u, c]))
                return eps.chunk(2)

            return pair

        opt = RowAdamW(x, self.lr, weight_decay=0.0)  # the paper uses plain Adam
        active = torch.ones(n, dtype=torch.bool)
        initial = torch.full((n,), float("nan"), dtype=torch.float64)
        last = torch.full((n,), float("nan"), dtype=torch.float64)
        iters = torch.zeros(n, dtype=torch.long)
        evals = torch.zeros(n, dtype=torch.long)
        for it in range(self.max_iters + 1):
            idx = torch.nonzero(active).flatten()
            if idx.numel() == 0:
                break
            ix = idx.to(dev)
            final_check = it == self.max_iters
            with torch.enable_grad():
                xi = x[ix].clone().requires_grad_(not final_check)
                loss = sail_objective(pair_for(idx), xi, radius, self.lam)
            evals[idx] += 4
            lv = loss.detach().to("cpu", torch.float64)
            initial[idx] = torch.where(initial[idx].isnan(), lv, initial[idx])
            last[idx] = lv
            go = lv > self.target
            active[idx[~go]] = False
            if final_check or not bool(go.any()):
                break
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(loss[go.to(loss.device)].sum(), xi)
            full = torch.zeros_like(x)
            full[ix] = grad.to(x.dtype)
            step_rows = torch.zeros(n, dtype=torch.bool)
            step_rows[idx[go]] = True
            opt.step(full, step_rows)
            evals[step_rows] += 8  # four backward passes
            iters += step_rows.long()

        passed = (last <= self.target).view(B, K)
        lastK = last.view(B, K)
        first_pass = torch.where(passed, torch.arange(K).expand(B, K), K).min(dim=1).values
        best = torch.where(lastK.isnan(), math.inf, lastK).argmin(dim=1)
        choice = torch.where(passed.any(dim=1), first_pass, best)
        pick = torch.arange(B) * K + choice
        state.latents = x[pick.to(dev)].to(dt)
        count_unet_evals(state, evals.view(B, K).sum(dim=1))
        record_meta(state, "sail_initial", initial[pick])
        record_meta(state, "sail_final", last[pick])
        record_meta(state, "sail_iters", iters[pick])
        record_meta(state, "sail_candidate", choice)
        record_meta(state, "sail_passed", passed.any(dim=1))


class SAIL(Mitigation):
    """Pick (and polish) an initial noise whose text-added sharpness at the first step is small,
    then sample from it with plain CFG."""

    name = "sail"
    families = frozenset(
        {"sd", "sdxl", "pixart"}
    )  # differentiates predict_noise w.r.t. x_T; any conditioning
    citation = (
        "Jeon, Kim & No, 'Understanding and Mitigating Memorization in Generative Models via "
        "Sharpness of Probability Landscapes', ICML 2025 (arXiv 2412.04140)"
    )
    params = {
        "target": Param(
            float,
            8.2,
            "accept a candidate when its objective is at most this (paper: 8.2 on SD 1.x)",
            0.0,
            1e6,
        ),
        "max_iters": Param(int, 10, "Adam steps per candidate (paper: 10)", 0, 1000),
        "lr": Param(float, 0.05, "Adam learning rate on x_T (paper: 0.05)", 1e-5, 10.0),
        "rho": Param(
            float,
            1.0 / 128.0,
            "probe length relative to the expected norm of x_T (paper: 1/128 on SD)",
            0.0,
            10.0,
        ),
        "lam": Param(float, 0.05, "weight of ||x_T|| (paper: 0.05 on SD 1.x)", 0.0, 100.0),
        "candidates": Param(
            int, 1, "noises tried per request, its own seed first (paper: a batch of 8)", 1, 64
        ),
    }

    def hooks(self) -> list[StepHook]:
        c = self.config
        return [
            _SailHook(c["target"], c["max_iters"], c["lr"], c["rho"], c["lam"], c["candidates"])
        ]
