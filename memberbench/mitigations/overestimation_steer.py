"""``overestimation-steer``: flag a prompt before sampling, steer only its early steps.

memberbench's own method, the successor of ``overestimation-guard``, from the account of Kim,
Kim & Lee ("How Diffusion Models Memorize", arXiv 2509.25705): a memorized sample is decided in
the first, high-noise steps, where CFG multiplies the text-conditional pull towards the training
image (early overestimation); the later steps only refine it.  Two consequences shape the
method.  It has to act in that early window, and it has to leave every other prompt alone,
because a change of the early steps of a generalising prompt costs its prompt alignment (a
global guidance schedule that reverses guidance early halves the copying on the bundled model,
and loses far more CLIP score than two standard errors: see the mitigation sweep).  The first
version (``overestimation-guard``) watched the overestimation ratio online, which is not specific
to memorized prompts; this one decides before sampling, with a score that is.

Flag.  Where a prompt is memorized, the conditional density has a sharp peak that the
unconditional one lacks (Jeon et al., ICML 2025), and the pull that CFG multiplies grows fast
as the state moves towards it.  At the first sampling timestep t_1, with
``d(x) = eps_c(x) - eps_u(x)``, the score is the finite-difference form of that text-added
sharpness, ``||(H_c - H_u)(s_c - s_u)||`` with ``s = -eps / sqrt(1 - abar)``::

    S(x) = ||d(x)|| * ||d(x + h u) - d(x)|| / h / (1 - abar_1),   u = d(x) / ||d(x)||,

averaged over ``probes`` noises x drawn from seeds derived from the prompt's text (so every seed
of a prompt gets the same verdict, whatever its batch).  ``h = rho * sqrt(dim) * sigma_init``.
A prompt is flagged when the mean exceeds ``threshold``.  Calibrate the threshold on
non-memorized prompts that are not in the evaluation (the bundled model's value and how it was
chosen are in docs/mitigations.md#overestimation-steer-on-the-bundled-model).

Steer.  For flagged prompts only, the guidance scale is ``before`` while the timestep is above
``transition_t`` (default: reversed guidance, -2, until t = 600 of 1000: the window in which the
overestimation happens), then the request's scale.  Unflagged prompts are sampled exactly as
without the method.

Cost per sample: 4 UNet evaluations per probe (eps_u, eps_c at x and at the probe point), i.e.
16 with the default 4 probes: 1.16x plain sampling at 50 DDIM steps.  ``Sample.meta`` gets
``steer_score`` and ``steer_flagged``.

Trace flag (``flag=trace``), for every family with a CFG branch, flow matching included.  The
probe score needs the first step of a DDPM-family schedule: at sigma = 1 a flow model's ideal
velocity difference ``v_c - v_u = E[x0 | u] - E[x0 | c]`` does not depend on x at all, so it has
no sharpness to probe (on the bundled flow transformer the probe score ranks the 64-copy
canaries *below* held-out prompts).  What does separate them there is how long the text's pull
lasts: memorized trajectories keep a large ``||pred_c - pred_u||`` well into sampling while a
generalising prompt's decays (bundled flow transformer, step 8 of 50: AUC 0.985 for the 64-copy
canaries against held-out prompts, docs/mitigations.md).  By then, though, the sample is
decided: steering from step k on leaves the copying as it was.  So the trace flag runs the
first ``flag_step`` steps of each trajectory itself, from the sample's own x_T, with plain CFG
at the request's scale (a fresh scheduler; other hooks are not applied to this pre-pass), takes
Wen's magnitude ``||pred_c - pred_u||`` of step ``flag_step`` (noise, or velocity on flow
models) as the score, and then the sampler starts from x_T as usual, steering the flagged
trajectories from the first step.  The verdict is per trajectory (per seed), not per prompt.
Cost: ``2 * flag_step`` evaluations per sample, 16 at the default 8: 1.16x plain sampling at 50
steps.  Unflagged trajectories are sampled exactly as without the method.
"""

from __future__ import annotations

import math

import torch

from memberbench.mitigations._grad import model_input
from memberbench.mitigations.base import (
    Mitigation,
    Param,
    count_unet_evals,
    per_batch,
    record_meta,
)
from memberbench.sampling import schedulers as _sched
from memberbench.sampling.hooks import SamplerState, StepHook
from memberbench.types import MemberbenchError, stable_hash


def probe_seeds(prompt: str, n: int) -> list[int]:
    """The seeds of a prompt's probe noises (a function of its text only)."""
    base = int(stable_hash({"steer-probe": prompt}, 15), 16)
    return [base + j for j in range(n)]


def sharpness_fd(
    pair, x: torch.Tensor, h: float, one_minus_abar: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S, ||d||)`` per row of ``x`` (see the module docstring); ``pair(x) -> (eps_u, eps_c)``."""
    eu, ec = pair(x)
    d0 = (ec - eu).flatten(1).to(torch.float64)
    n0 = d0.norm(dim=1)
    u = d0 / n0.clamp_min(1e-30)[:, None]
    eu2, ec2 = pair(x + (h * u).view_as(x).to(x.dtype))
    d1 = (ec2 - eu2).flatten(1).to(torch.float64)
    return n0 * (d1 - d0).norm(dim=1) / h / one_minus_abar, n0


class _Steer(StepHook):
    def __init__(self, c: dict) -> None:
        self.threshold = c["threshold"]
        self.probes = c["probes"]
        self.rho = c["rho"]
        self.transition_t = c["transition_t"]
        self.before = c["before"]

    def on_start(self, state: SamplerState) -> None:
        from memberbench.sampling.sampler import initial_noise

        B, K = len(state.requests), self.probes
        t0 = state.timesteps[0]
        abar0 = float(_sched.noise_levels(state.scheduler)[0][0])
        shape = tuple(state.latents.shape[1:])
        dev, dt = state.latents.device, state.latents.dtype
        sigma = float(state.scheduler.init_noise_sigma)
        xs = [
            initial_noise(s, shape)[0] * sigma
            for r in state.requests
            for s in probe_seeds(r.prompt, K)
        ]
        x = torch.stack(xs).to(dev, dt)
        own = torch.arange(B).repeat_interleave(K).to(dev)
        u, c = state.uncond_embeds[own], state.cond_embeds[own]

        def pair(z: torch.Tensor):
            eps = state.adapter.predict_noise(
                model_input(state, torch.cat([z, z]), t0), t0, torch.cat([u, c])
            )
            return eps.chunk(2)

        h = self.rho * math.sqrt(x[0].numel()) * sigma
        with torch.no_grad():
            score, _ = sharpness_fd(pair, x, h, 1.0 - abar0)
        count_unet_evals(state, 4 * K)
        score = score.view(B, K).mean(dim=1).cpu()
        flagged = score > self.threshold
        per_batch(state, self)["flagged"] = flagged
        record_meta(state, "steer_score", score)
        record_meta(state, "steer_flagged", flagged)

    def guidance(self, state, i, t, g):
        flagged = per_batch(state, self)["flagged"]
        if float(t) <= self.transition_t or not bool(flagged.any()):
            return g
        g = torch.as_tensor(g).clone()
        if g.ndim == 0:
            g = g.expand(len(state.requests)).clone()
        g[flagged.to(g.device)] = self.before
        return g


class _TraceSteer(_Steer):
    """The trace flag (module docstring): Wen's magnitude at step ``flag_step`` of a plain-CFG
    pre-pass from the sample's own x_T; the steering is the probe flag's (``_Steer.guidance``)."""

    def __init__(self, c: dict) -> None:
        super().__init__(c)
        self.flag_step = c["flag_step"]

    def on_start(self, state: SamplerState) -> None:
        ad, r0 = state.adapter, state.requests[0]
        k = self.flag_step
        if state.num_steps < k:
            raise MemberbenchError(
                f"overestimation-steer: flag_step={k} is beyond the {state.num_steps} sampling "
                "steps; use a smaller flag_step"
            )
        flow = getattr(ad, "prediction", "epsilon") == "flow"
        sched = ad.make_scheduler(r0.scheduler)  # the pre-pass's own, so the sampler's is untouched
        sched.set_timesteps(r0.steps, device=state.latents.device)
        x = state.latents.clone()
        emb = torch.cat([state.uncond_embeds, state.cond_embeds])
        g = torch.as_tensor(state.guidance, dtype=x.dtype, device=x.device)
        g = g.expand(len(state.requests)) if g.ndim == 0 else g
        gv = g.view(-1, *([1] * (x.ndim - 1)))
        unet = getattr(ad, "unet", None)
        with torch.no_grad():
            for i, t in enumerate(sched.timesteps[:k]):
                inp = torch.cat([x, x])
                if hasattr(sched, "scale_model_input"):
                    inp = sched.scale_model_input(inp, t)
                inp = inp.to(getattr(unet, "dtype", inp.dtype))
                if flow:
                    out = ad.predict_velocity(inp, t, emb)
                else:
                    out = ad.predict_noise(inp, t, emb)
                pu, pc = out.to(x.dtype).chunk(2)
                if i == k - 1:
                    break
                x = sched.step(pu + gv * (pc - pu), t, x, return_dict=False)[0]
        count_unet_evals(state, 2 * k)
        score = (pc - pu).flatten(1).to(torch.float64).norm(dim=1).cpu()
        flagged = score > self.threshold
        per_batch(state, self)["flagged"] = flagged
        record_meta(state, "steer_score", score)
        record_meta(state, "steer_flagged", flagged)


class OverestimationSteer(Mitigation):
    """Flag memorized prompts by their text-added sharpness at the first step (before sampling)
    and steer only their early, overestimating steps."""

    name = "overestimation-steer"
    # flag=probe: epsilon predictions at a DDPM-family t_1; flag=trace: any CFG family
    families = frozenset({"sd", "sdxl", "pixart", "sd3"})
    citation = (
        "memberbench's own method, from the early-overestimation account of memorization in Kim, "
        "Kim & Lee, 'How Diffusion Models Memorize', arXiv 2509.25705 (2025); the flag is a "
        "finite-difference form of Jeon, Kim & No's sharpness (ICML 2025)"
    )
    params = {
        "flag": Param(
            str,
            "probe",
            "probe: text-added sharpness at the first step (per prompt, DDPM family); trace: "
            "Wen's magnitude at step flag_step of a plain pre-pass (per trajectory, any family)",
            choices=("probe", "trace"),
        ),
        "threshold": Param(
            float, 0.45, "flag a prompt when its mean score exceeds this (model-specific)", 0, 1e9
        ),
        "flag_step": Param(
            int, 8, "flag=trace: the step whose ||pred_c - pred_u|| is the score", 1, 1000
        ),
        "probes": Param(int, 4, "probe noises per prompt (4 UNet evaluations each)", 1, 64),
        "rho": Param(float, 0.05, "probe step relative to the expected norm of x_T", 1e-6, 10.0),
        "transition_t": Param(
            float, 600.0, "steer while the timestep is above this (of 1000)", 0.0, 1000.0
        ),
        "before": Param(
            float, -2.0, "guidance scale of flagged prompts before the transition", -20.0, 50.0
        ),
    }

    def check_compatible(self, adapter) -> None:
        super().check_compatible(adapter)
        if not getattr(adapter, "has_unconditional", True):
            raise MemberbenchError(
                f"overestimation-steer needs an unconditional branch; model {adapter.name!r} is "
                "sampled without one (for FLUX pass true_cfg=on)"
            )
        if self.config["flag"] == "probe" and getattr(adapter, "prediction", "") == "flow":
            raise MemberbenchError(
                f"overestimation-steer's probe flag needs a DDPM-family first step; model "
                f"{adapter.name!r} is flow-matching: use overestimation-steer:flag=trace"
            )

    def hooks(self) -> list[StepHook]:
        return [(_TraceSteer if self.config["flag"] == "trace" else _Steer)(self.config)]
