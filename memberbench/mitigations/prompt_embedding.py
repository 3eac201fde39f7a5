"""``prompt-embedding``: optimise the prompt embedding before sampling (Wen et al., ICLR 2024).

Wen, Liu, Chen & Lyu, "Detecting, Explaining, and Mitigating Memorization in Diffusion Models",
ICLR 2024 (code: github.com/YuxinWenRick/diffusion_memorization).  Memorized prompts have a large
text-conditional noise magnitude ``||eps(x_T, c) - eps(x_T, "")||`` at the first step; the
inference-time mitigation minimises that magnitude over the prompt embedding ``c`` (the text
encoder's output) with AdamW, starting from the prompt's own embedding, and stops as soon as it
falls to a target ``l_target`` or after a step budget.  Prompts already below the target are left
untouched, which is what keeps the utility on non-memorized prompts.

As in the reference code (``aug_prompt``): the objective is evaluated at the first sampling
timestep on the initial noise, AdamW with learning rate 0.05 (the reference default), at most
``max_iters`` steps (reference default 10), the BOS position is frozen (its gradient zeroed), the
target check happens before each step.  Two deliberate differences: the optimisation is per
sample (each request's own x_T; the reference shares one embedding across the seeds of a prompt),
and a sample stops independently of the others in its batch.

Theory link (Kim, Kim & Lee, arXiv 2509.25705, M4): ``eps_c - eps_u = -(sqrt(abar)/sqrt(1-abar))
(x0_hat_c - x0_hat_u)``, so the magnitude is the image component CFG multiplies by g; shrinking it
shrinks the early overestimation.

Default target: 1.5, set for the first (epsilon) bundled model, whose non-memorized prompts had
a step-1 magnitude of about 0.8-1.8.  On the shipped bundled model (v-prediction, canary captions
shared with 64 decoy images each, held-out captions that leave the background open) held-out
prompts average 1.06 and canaries 0.26 / 0.26 / 0.20 / 0.65 / 1.20 with 1 / 4 / 16 / 64 / 256
copies (docs/evidence.md, 50 DDIM steps): only the 256-copy canaries stand above the held-out
prompts, as Wen et al. find for memorized prompts on SD, because a canary caption's conditional
prediction at x_T is pulled towards the unconditional one by its decoys.  So on it a target
reaches the 64-copy canaries only below 0.65, where it also optimises every held-out prompt; the
sweep uses 0.6 / 0.3 / 0.15.  The magnitude grows with the latent size (about 4x on SD 1.x's
4x64x64 latents), so pass a target for other models (sweep it).

Cost: one unconditional evaluation, then per iteration one conditional forward pass and (while
above target) one backward pass (counted as 2), per sample.  ``Sample.meta`` gets
``pe_initial`` / ``pe_last`` (magnitude at the start / at the last check) and ``pe_iters``.
"""

from __future__ import annotations

import torch

from memberbench.mitigations._grad import RowAdamW, eps_diff_norm, model_input
from memberbench.mitigations.base import Mitigation, Param, count_unet_evals, record_meta
from memberbench.sampling.hooks import SamplerState, StepHook


class _OptimizeEmbedding(StepHook):
    def __init__(self, target: float, max_iters: int, lr: float, freeze_bos: bool) -> None:
        self.target = target
        self.max_iters = max_iters
        self.lr = lr
        self.freeze_bos = freeze_bos

    def on_start(self, state: SamplerState) -> None:
        B = len(state.requests)
        if self.max_iters <= 0 or B == 0:
            return
        adapter = state.adapter
        t0 = state.timesteps[0]
        inp = model_input(state, state.latents, t0)
        emb_dtype = state.cond_embeds.dtype
        with torch.no_grad():
            eps_u = adapter.predict_noise(inp, t0, state.uncond_embeds)
        count_unet_evals(state, 1)
        e = state.cond_embeds.detach().to(torch.float32).clone()
        opt = RowAdamW(e, self.lr)
        active = torch.ones(B, dtype=torch.bool)
        initial = torch.full((B,), float("nan"), dtype=torch.float64)
        last = torch.full((B,), float("nan"), dtype=torch.float64)
        iters = torch.zeros(B, dtype=torch.long)
        for _ in range(self.max_iters):
            idx = torch.nonzero(active).flatten()
            if idx.numel() == 0:
                break
            ix = idx.to(e.device)
            with torch.enable_grad():
                ei = e[ix].clone().requires_grad_(True)
                eps_c = adapter.predict_noise(inp[ix], t0, ei.to(emb_dtype))
                loss = eps_diff_norm(eps_c, eps_u[ix])
            count_unet_evals(state, 1, rows=active)
            lv = loss.detach().to("cpu", torch.float64)
            initial[idx] = torch.where(initial[idx].isnan(), lv, initial[idx])
            last[idx] = lv
            go = lv > self.target
            active[idx[~go]] = False
            if not bool(go.any()):
                break
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(loss[go.to(loss.device)].sum(), ei)
            if self.freeze_bos:
                grad[:, 0] = 0
            full = torch.zeros_like(e)
            full[ix] = grad.to(e.dtype)
            step_rows = torch.zeros(B, dtype=torch.bool)
            step_rows[idx[go]] = True
            opt.step(full, step_rows)
            count_unet_evals(state, 2, rows=step_rows)
            iters += step_rows.long()
        state.cond_embeds = e.to(emb_dtype)
        record_meta(state, "pe_initial", initial)
        record_meta(state, "pe_last", last)
        record_meta(state, "pe_iters", iters)


class PromptEmbeddingOptimization(Mitigation):
    """Minimise ``||eps_c - eps_u||`` at the first step over the prompt embedding, per sample,
    until it reaches ``target`` or ``max_iters`` AdamW steps were spent."""

    name = "prompt-embedding"
    families = frozenset({"sd"})  # optimises SD's (B, L, D) CLIP token embeddings
    citation = (
        "Wen, Liu, Chen & Lyu, 'Detecting, Explaining, and Mitigating Memorization in Diffusion "
        "Models', ICLR 2024"
    )
    params = {
        "target": Param(
            float,
            1.5,
            "stop when ||eps_c - eps_u|| at the first step is at most this (the trace's eps_diff_norm units)",
            0.0,
            1e6,
        ),
        "max_iters": Param(
            int, 10, "step budget: at most this many AdamW steps per sample", 0, 1000
        ),
        "lr": Param(float, 0.05, "AdamW learning rate on the embedding", 1e-5, 10.0),
        "freeze_bos": Param(
            bool, True, "keep the BOS token's embedding fixed, as the reference code does"
        ),
    }

    def hooks(self) -> list[StepHook]:
        c = self.config
        return [_OptimizeEmbedding(c["target"], c["max_iters"], c["lr"], c["freeze_bos"])]
