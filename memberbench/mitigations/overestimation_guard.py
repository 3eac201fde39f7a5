"""``overestimation-guard``: cap the early overestimation of the guided clean estimate, online.

Our own method, from the theory of Kim, Kim & Lee, "How Diffusion Models Memorize" (arXiv
2509.25705): memorization is driven by *early overestimation*: under CFG the guided clean
estimate ``x0_hat_g = x0_hat_u + g (x0_hat_c - x0_hat_u)`` overshoots the training latent in the
first, high-noise steps (``k_g`` near g instead of 1), suppressing the initial noise faster than
the schedule.  None of the published mitigations watches that quantity directly; this one does,
without the training image.

Signal.  At step i the sampler has both Tweedie estimates, so the *overestimation ratio*

    r_i(g) = ||x0_hat_u + g (x0_hat_c - x0_hat_u)|| / ||x0_hat_c||

is free to compute.  Without guidance (g = 1) it is exactly 1.  For a memorized prompt the
conditional estimate already points at the training latent while the unconditional one sits near
the data mean, so r grows like g (the guided estimate is about g times the training latent: the
paper's overestimation); for a generalising prompt x0_hat_c and x0_hat_u stay close at high noise
and r stays small.

Control.  During the first ``window`` fraction of the updates, if ``r_i(g) > threshold`` the
effective guidance is lowered to the scale at which the ratio equals the threshold: the larger
root of ``||x0_u + gamma d||^2 = threshold^2 ||x0_c||^2`` (``d = x0_c - x0_u``), which lies in
[1, g] because r(1) = 1 <= threshold and the left side is convex in gamma; it is never raised and
never set below ``min_guidance``.  Samples whose ratio stays below the threshold are sampled
exactly as without the guard, and after the window every sample gets the request's scale back.
The scale used is written into the trace's ``guidance`` series; ``Sample.meta`` gets
``guard_ratio`` (the ratio at the request's scale, per step, NaN outside the window) and
``guard_steps`` (how many updates were limited).  No extra UNet evaluations.
"""

from __future__ import annotations

import math

import torch

from memberbench.mitigations.base import Mitigation, Param, per_batch, record_meta
from memberbench.sampling import schedulers as _sched
from memberbench.sampling.hooks import SamplerState, StepHook


def limit_guidance(
    x0_u: torch.Tensor, x0_c: torch.Tensor, g: torch.Tensor, threshold: float, min_guidance: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ratio at g, limited g)`` per sample for flattened (B, d) clean estimates (float64)."""
    d = x0_c - x0_u
    g64 = g.to(torch.float64)
    A = (d * d).sum(1)
    Bq = 2 * (x0_u * d).sum(1)
    nu2 = (x0_u * x0_u).sum(1)
    nc2 = (x0_c * x0_c).sum(1).clamp_min(1e-30)
    ratio = (A * g64**2 + Bq * g64 + nu2).clamp_min(0).sqrt() / nc2.sqrt()
    C = nu2 - threshold**2 * nc2
    disc = (Bq * Bq - 4 * A * C).clamp_min(0)
    root = (-Bq + disc.sqrt()) / (2 * A.clamp_min(1e-30))
    limited = torch.minimum(g64, torch.clamp(root, min=min_guidance))
    over = ratio > threshold
    return ratio, torch.where(over, limited, g64)


class _Guard(StepHook):
    def __init__(self, threshold: float, window: float, min_guidance: float) -> None:
        self.threshold = threshold
        self.window = window
        self.min_guidance = min_guidance

    def on_start(self, state: SamplerState) -> None:
        s = per_batch(state, self)
        T, B = state.num_steps, len(state.requests)
        s["abar_t"], _ = _sched.noise_levels(state.scheduler)
        s["steps"] = int(math.ceil(self.window * T - 1e-9))
        s["ratio"] = torch.full((B, T), float("nan"), dtype=torch.float64)
        s["limited"] = torch.zeros(B, dtype=torch.long)
        record_meta(state, "guard_ratio", s["ratio"])
        record_meta(state, "guard_steps", s["limited"])

    def guidance(
        self, state: SamplerState, i: int, t: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        # a fresh tensor that combine may overwrite with the scale it actually used
        fresh = g.detach().clone()
        per_batch(state, self)["g"] = fresh
        return fresh

    def combine(self, state, i, t, eps_u, eps_c, g):
        s = per_batch(state, self)
        if i >= s["steps"]:
            return None
        B = eps_u.shape[0]
        a = float(s["abar_t"][i])
        xin = state.scheduler.scale_model_input(state.latents, t).to(torch.float64).reshape(B, -1)
        sa, sb = math.sqrt(a), math.sqrt(1.0 - a)
        x0_u = (xin - sb * eps_u.to(torch.float64).reshape(B, -1)) / sa
        x0_c = (xin - sb * eps_c.to(torch.float64).reshape(B, -1)) / sa
        ratio, g_used = limit_guidance(x0_u, x0_c, g, self.threshold, self.min_guidance)
        s["ratio"][:, i] = ratio.cpu()
        s["limited"] += (g_used < g.to(torch.float64) - 1e-12).cpu().long()
        record_meta(state, "guard_ratio", s["ratio"])
        record_meta(state, "guard_steps", s["limited"])
        g_used = g_used.to(g.dtype)
        if g is s.get("g"):  # report the scale used in the tensor the trace records
            g.copy_(g_used)
        gv = g_used.to(eps_u.dtype).view(-1, *([1] * (eps_u.ndim - 1)))
        return eps_u + gv * (eps_c - eps_u)


class OverestimationGuard(Mitigation):
    """Limit the guidance scale during the early steps whenever the guided clean estimate would
    exceed ``threshold`` times the conditional one (see the module docstring)."""

    name = "overestimation-guard"
    families = frozenset(
        {"sd", "sdxl", "pixart"}
    )  # acts on the noise predictions and abar of a DDPM-family schedule
    citation = (
        "memberbench's own method, from the early-overestimation account of memorization in Kim, "
        "Kim & Lee, 'How Diffusion Models Memorize', arXiv 2509.25705 (2025)"
    )
    params = {
        "threshold": Param(
            float,
            2.0,
            "largest allowed ||x0_hat_g|| / ||x0_hat_c|| during the window (1: no guidance effect)",
            1.0,
            100.0,
        ),
        "window": Param(
            float, 0.3, "fraction of the first updates in which the guard is active", 0.0, 1.0
        ),
        "min_guidance": Param(float, 1.0, "never limit the scale below this", 0.0, 50.0),
    }

    def hooks(self) -> list[StepHook]:
        c = self.config
        return [_Guard(c["threshold"], c["window"], c["min_guidance"])]
