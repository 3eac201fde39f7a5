"""``anisotropy-prompt``: adapt a flagged prompt's embedding until its anisotropy score is low
(Asthana & Belagiannis, ICLR 2026).

Asthana & Belagiannis, "Detecting and Mitigating Memorization in Diffusion Models through
Anisotropy of the Log-Probability", ICLR 2026 (arXiv 2601.20642, https://arxiv.org/abs/2601.20642;
code: github.com/rohanasthana/memorization-anisotropy).  The paper's detector (memberbench's
``anisotropy`` detector, :func:`memberbench.metrics.detectors.anisotropy_parts`) scores a prompt
at pure noise x_T, with no denoising step::

    A(c) = gamma_n * ||eps(x_T, t_1, c) - eps(x_T, t_1, "")||                 (isotropic norm)
         + gamma_c * mean_pos cos(eps(x_T, t_lo, ""), eps(x_T, t_lo, c) - eps(x_T, t_lo, ""))
                                                                              (anisotropic alignment)

with t_1 the first sampling timestep, t_lo a low-noise one (the third-last of the sampling grid,
as the paper's code takes it), the cosine over the channels at each latent position averaged
over positions, and (gamma_n, gamma_c) = (1, 2) (the paper code's SD 1.x weights).  Its
abstract's mitigation "adapts memorized prompts based on [this] metric": the strategy of Wen et
al. (ICLR 2024, memberbench's ``prompt-embedding``) with the anisotropy score in place of the
norm alone.  What this file implements, per sample:

* score the prompt at its own x_T; a sample whose score is at most ``target`` is left untouched
  (plain CFG, bit for bit);
* otherwise minimise ``A`` over the prompt embedding (the text encoder's output) with AdamW
  (learning rate ``lr``, at most ``max_iters`` steps, the BOS position frozen as in Wen's code),
  checking the target before each step, and sample with the result.

What is not the paper's: the published repository's mitigation code is SAIL's initial-noise
search (Jeon et al., memberbench's ``sail``), not a prompt adaptation, and the paper's own
mitigation hyper-parameters could not be read here (only its abstract and code were reachable);
so the optimiser settings are Wen's (AdamW, lr 0.05, 10 steps) and the target is in the units of
the score (set per model: on the bundled model the detector's own values, docs/detectors.md).

Cost per sample: the score is 4 UNet evaluations (eps_u and eps_c at t_1 and t_lo; the two
unconditional ones once), each AdamW step 2 more forward passes at the next check and 2 backward
passes (counted 2 each): ``4 + 6 * iters``.  ``Sample.meta`` gets ``aniso_initial`` /
``aniso_last`` (the score at the first / last check), ``aniso_norm`` / ``aniso_cos`` (its two
parts at the last check) and ``aniso_iters``.
"""

from __future__ import annotations

import torch

from memberbench.metrics.detectors import ANISOTROPY_GAMMAS, _low_noise_t, anisotropy_parts
from memberbench.mitigations._grad import RowAdamW, model_input
from memberbench.mitigations.base import Mitigation, Param, count_unet_evals, record_meta
from memberbench.sampling.hooks import SamplerState, StepHook


def anisotropy_objective(
    eps_u_hi: torch.Tensor,
    eps_c_hi: torch.Tensor,
    eps_u_lo: torch.Tensor,
    eps_c_lo: torch.Tensor,
    gammas: tuple[float, float] = ANISOTROPY_GAMMAS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample ``(score, norm, cosine)``, differentiable in the conditional predictions: the
    detector's parts (:func:`anisotropy_parts`) weighted by ``gammas``."""
    norm, cos = anisotropy_parts(eps_u_hi, eps_c_hi, eps_u_lo, eps_c_lo)
    return gammas[0] * norm + gammas[1] * cos, norm, cos


class _AnisotropyPrompt(StepHook):
    def __init__(self, target: float, max_iters: int, lr: float, freeze_bos: bool) -> None:
        self.target = target
        self.max_iters = max_iters
        self.lr = lr
        self.freeze_bos = freeze_bos

    def on_start(self, state: SamplerState) -> None:
        B = len(state.requests)
        if B == 0:
            return
        ad = state.adapter
        t_hi, t_lo = state.timesteps[0], _low_noise_t(state.timesteps)
        # the detector scores the same pure-noise input at both timesteps (the sampler's first
        # model input; asking the scheduler to scale it for t_lo would move a stateful
        # scheduler's step index)
        inp_hi = model_input(state, state.latents, t_hi)
        inp_lo = inp_hi
        emb_dtype = state.cond_embeds.dtype
        with torch.no_grad():
            eu_hi = ad.predict_noise(inp_hi, t_hi, state.uncond_embeds)
            eu_lo = ad.predict_noise(inp_lo, t_lo, state.uncond_embeds)
        count_unet_evals(state, 2)
        e = state.cond_embeds.detach().to(torch.float32).clone()
        opt = RowAdamW(e, self.lr)
        active = torch.ones(B, dtype=torch.bool)
        nan = torch.full((B,), float("nan"), dtype=torch.float64)
        initial, last, norm_last, cos_last = nan.clone(), nan.clone(), nan.clone(), nan.clone()
        iters = torch.zeros(B, dtype=torch.long)
        for it in range(self.max_iters + 1):
            idx = torch.nonzero(active).flatten()
            if idx.numel() == 0:
                break
            ix = idx.to(e.device)
            final_check = it == self.max_iters
            with torch.enable_grad():
                ei = e[ix].clone().requires_grad_(not final_check)
                ec_hi = ad.predict_noise(inp_hi[ix], t_hi, ei.to(emb_dtype))
                ec_lo = ad.predict_noise(inp_lo[ix], t_lo, ei.to(emb_dtype))
                loss, norm, cos = anisotropy_objective(eu_hi[ix], ec_hi, eu_lo[ix], ec_lo)
            count_unet_evals(state, 2, rows=active)
            lv = loss.detach().to("cpu", torch.float64)
            initial[idx] = torch.where(initial[idx].isnan(), lv, initial[idx])
            last[idx] = lv
            norm_last[idx] = norm.detach().to("cpu", torch.float64)
            cos_last[idx] = cos.detach().to("cpu", torch.float64)
            go = lv > self.target
            active[idx[~go]] = False
            if final_check or not bool(go.any()):
                break
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(loss[go.to(loss.device)].sum(), ei)
            if self.freeze_bos and grad.ndim >= 2:
                grad[:, 0] = 0
            full = torch.zeros_like(e)
            full[ix] = grad.to(e.dtype)
            step_rows = torch.zeros(B, dtype=torch.bool)
            step_rows[idx[go]] = True
            opt.step(full, step_rows)
            count_unet_evals(state, 4, rows=step_rows)  # two backward passes
            iters += step_rows.long()
        changed = iters > 0
        if bool(changed.any()):  # untouched rows keep their embedding bit for bit
            keep = (~changed).to(e.device).view(-1, *([1] * (e.ndim - 1)))
            state.cond_embeds = torch.where(keep, state.cond_embeds, e.to(emb_dtype))
        record_meta(state, "aniso_initial", initial)
        record_meta(state, "aniso_last", last)
        record_meta(state, "aniso_norm", norm_last)
        record_meta(state, "aniso_cos", cos_last)
        record_meta(state, "aniso_iters", iters)


class AnisotropyPrompt(Mitigation):
    """Adapt the prompt embedding of a sample whose anisotropy score (noise-difference norm plus
    low-noise alignment, at x_T) exceeds a target, until it falls to it."""

    name = "anisotropy-prompt"
    families = frozenset({"sd"})  # optimises SD's (B, L, D) CLIP token embeddings, as Wen's
    citation = (
        "Asthana & Belagiannis, 'Detecting and Mitigating Memorization in Diffusion Models "
        "through Anisotropy of the Log-Probability', ICLR 2026 (arXiv 2601.20642)"
    )
    params = {
        "target": Param(
            float,
            1.5,
            "adapt a sample whose anisotropy score at x_T is above this, until it is at most this "
            "(the anisotropy detector's units)",
            -10.0,
            1e6,
        ),
        "max_iters": Param(int, 10, "at most this many AdamW steps per sample (Wen: 10)", 0, 1000),
        "lr": Param(float, 0.05, "AdamW learning rate on the embedding (Wen: 0.05)", 1e-5, 10.0),
        "freeze_bos": Param(bool, True, "keep the BOS token's embedding fixed, as Wen's code"),
    }

    def hooks(self) -> list[StepHook]:
        c = self.config
        return [_AnisotropyPrompt(c["target"], c["max_iters"], c["lr"], c["freeze_bos"])]
