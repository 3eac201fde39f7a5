"""``attention-reweight``: cross-attention re-weighting of trigger tokens (Ren et al., ECCV 2024).

Ren, Li, Zeng, Xu, Lyu, Xing & Tang, "Unveiling and Mitigating Memorization in Text-to-image
Diffusion Models through Cross Attention", ECCV 2024 (arXiv 2403.11052; code:
github.com/renjie3/MemAttn).  Memorized prompts concentrate their cross-attention on a few
*trigger* tokens (and away from the beginning token) across the denoising steps.  The
inference-time mitigation of the reference code (``text2img.py --miti_mem --cross_attn_mask
--c1 1.25``), in the conditional branch of every cross-attention layer:

* rescale the beginning token's attention logit by ``c1`` (logit * 1.25), which moves attention
  back to BOS and away from the prompt's tokens;
* mask out the *summary* tokens (the padding end-of-text tokens after the prompt's own EOS), whose
  embeddings summarise the whole prompt and carry the trigger too.

Optionally (``trigger_top_k > 0``, off by default) the ``trigger_top_k`` prompt tokens that receive
the most attention in a layer (averaged over heads and queries) have their attention weight
multiplied by ``trigger_scale`` before renormalising: a direct down-weighting of the
highest-magnitude tokens.

Implementation: a custom diffusers attention processor installed on every cross-attention module
(``Attention.is_cross_attention``) for the duration of each UNet call and restored right after it
(also on errors), so the UNet is never left patched.  Only the rows of the UNet batch whose text
embedding is a *conditional* embedding of the batch being sampled are changed (the reference code
changes the conditional half of its ``[uncond, cond]`` batch); every other row goes through the
original processor unchanged.  Differences from the reference: the summary mask is applied to the
conditional branch only (the reference applies the conditional prompt's mask to both halves), and
the manual attention uses the module's own ``scale``.

Refused on adapters without attention processors (``adapter.unet`` missing or lacking
``set_attn_processor``), without cross-attention layers, or without a tokenizer.  No extra UNet
evaluations (the changed rows cost one extra attention computation per cross-attention layer).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from memberbench.mitigations.base import Mitigation, Param
from memberbench.sampling.hooks import SamplerState, StepHook
from memberbench.types import MemberbenchError


def _tokenizer(adapter: Any) -> Any:
    tok = getattr(adapter, "tokenizer", None)
    if tok is None:
        tok = getattr(getattr(adapter, "pipe", None), "tokenizer", None)
    return tok


def cross_attention_modules(unet: Any) -> list[tuple[str, Any]]:
    """(name, module) of every diffusers ``Attention`` with ``is_cross_attention`` in ``unet``."""
    return [
        (n, m)
        for n, m in unet.named_modules()
        if getattr(m, "is_cross_attention", False) and hasattr(m, "set_processor")
    ]


class _Control:
    """What the processors need for the current UNet call, shared by wrapper, hook, processors."""

    def __init__(self, c1: float, mask_summary: bool, top_k: int, top_scale: float) -> None:
        self.c1 = c1
        self.mask_summary = mask_summary
        self.top_k = top_k
        self.top_scale = top_scale
        self.cond: torch.Tensor | None = None  # (Bc, L, D) registered conditional embeddings
        self.cond_sig: torch.Tensor | None = None
        self.cond_len: torch.Tensor | None = None  # (Bc,) tokens incl. BOS and the first EOS
        self.rows: torch.Tensor | None = None  # rows of the current UNet batch to change
        self.lengths: torch.Tensor | None = None  # their token counts
        self.batch = 0
        self._w: torch.Tensor | None = None

    def signature(self, emb: torch.Tensor) -> torch.Tensor:
        """A few fixed entries of each row (exact values, no arithmetic: bitwise comparable)."""
        flat = emb.detach().flatten(1)
        if self._w is None or self._w.device != flat.device or int(self._w.max()) >= flat.shape[1]:
            g = torch.Generator("cpu").manual_seed(1234)
            self._w = torch.randint(0, flat.shape[1], (16,), generator=g).to(flat.device)
        return flat[:, self._w]

    def register(self, cond: torch.Tensor, lengths: list[int]) -> None:
        self.cond = cond.detach()
        self.cond_sig = self.signature(cond)
        self.cond_len = torch.tensor(lengths, dtype=torch.long)

    def select(self, embeds: torch.Tensor) -> None:
        """Find the rows of ``embeds`` that are registered conditional embeddings."""
        self.batch = embeds.shape[0]
        self.rows, self.lengths = None, None
        if self.cond is None or embeds.shape[1:] != self.cond.shape[1:]:
            return
        sig = self.signature(embeds)
        rows, lens = [], []
        for r in range(embeds.shape[0]):
            same = (self.cond_sig == sig[r]).all(dim=1)
            for j in torch.nonzero(same).flatten().tolist():
                if torch.equal(embeds[r], self.cond[j]):
                    rows.append(r)
                    lens.append(int(self.cond_len[j]))
                    break
        if rows:
            self.rows = torch.tensor(rows, dtype=torch.long, device=embeds.device)
            self.lengths = torch.tensor(lens, dtype=torch.long, device=embeds.device)


class ReweightProcessor:
    """A diffusers attention processor: the original one for every row, except the selected
    conditional rows, whose cross-attention is recomputed with Ren et al.'s re-weighting."""

    def __init__(self, original: Any, control: _Control) -> None:
        self.original = original
        self.control = control

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        out = self.original(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
        )
        ctl = self.control
        if (
            encoder_hidden_states is None
            or ctl.rows is None
            or hidden_states.shape[0] != ctl.batch
            or encoder_hidden_states.shape[0] != ctl.batch
        ):
            return out
        sel = ctl.rows

        def pick(x: torch.Tensor | None) -> torch.Tensor | None:
            return x[sel] if x is not None and x.shape[0] == ctl.batch else x

        mod = self.reweighted(
            attn,
            hidden_states[sel],
            encoder_hidden_states[sel],
            pick(attention_mask),
            pick(temb),
            ctl.lengths,
        )
        out = out.clone()
        out[sel] = mod.to(out.dtype)
        return out

    def reweighted(self, attn, hidden_states, ehs, attention_mask, temb, lengths) -> torch.Tensor:
        ctl = self.control
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, ch, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, ch, h * w).transpose(1, 2)
        b, L, _ = ehs.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            ehs = attn.norm_encoder_hidden_states(ehs)
        key = attn.to_k(ehs)
        value = attn.to_v(ehs)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        scale = getattr(attn, "scale", None) or 1.0 / math.sqrt(head_dim)
        logits = (query.float() @ key.float().transpose(-2, -1)) * scale  # (b, heads, q, L)
        if attention_mask is not None:
            m = attn.prepare_attention_mask(attention_mask, L, b).view(b, attn.heads, -1, L)
            logits = logits + m.float()
        pos = torch.arange(L, device=logits.device)
        if ctl.mask_summary:
            summary = pos[None, :] >= lengths.to(logits.device)[:, None]  # (b, L)
            logits = logits.masked_fill(summary[:, None, None, :], float("-inf"))
        if ctl.c1 != 1.0:
            logits[..., 0] = logits[..., 0] * ctl.c1
        if ctl.top_k > 0:
            probs = logits.softmax(-1).mean(dim=(1, 2))  # (b, L) attention mass per token
            prompt_tok = (pos[None, :] >= 1) & (
                pos[None, :] <= (lengths.to(pos.device)[:, None] - 2)
            )
            probs = probs.masked_fill(~prompt_tok, -1.0)
            k = min(ctl.top_k, L)
            top = probs.topk(k, dim=-1)
            chosen = torch.zeros_like(prompt_tok)
            chosen.scatter_(1, top.indices, top.values >= 0)
            bias = math.log(ctl.top_scale) if ctl.top_scale > 0 else float("-inf")
            shift = torch.zeros(chosen.shape, dtype=logits.dtype, device=logits.device)
            logits = logits + shift.masked_fill(chosen, bias)[:, None, None, :]
        weights = logits.softmax(-1).to(value.dtype)
        hidden_states = weights @ value
        hidden_states = hidden_states.transpose(1, 2).reshape(b, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, ch, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class _Register(StepHook):
    """Registers the batch's conditional embeddings (and their token counts) at the start."""

    def __init__(self, control: _Control) -> None:
        self.control = control

    def on_start(self, state: SamplerState) -> None:
        if getattr(state.adapter, "_attention_reweight", None) is not self.control:
            raise MemberbenchError(
                "attention-reweight: the sampler's adapter was not wrapped by this mitigation; "
                "pass mitigation.wrap_adapter(adapter) to the sampler"
            )
        tok = _tokenizer(state.adapter)
        lengths = []
        for r in state.requests:
            ids = tok(r.prompt, truncation=True, max_length=tok.model_max_length).input_ids
            lengths.append(len(ids))
        self.control.register(state.cond_embeds, lengths)


class AttentionReweight(Mitigation):
    """Re-weight the conditional branch's cross-attention: BOS logit times ``c1``, summary
    (padding) tokens masked, optionally the top-attended prompt tokens down-weighted."""

    name = "attention-reweight"
    families = frozenset({"sd"})  # patches SD 1/2 UNet cross-attention over CLIP tokens (BOS logit)
    citation = (
        "Ren, Li, Zeng, Xu, Lyu, Xing & Tang, 'Unveiling and Mitigating Memorization in "
        "Text-to-image Diffusion Models through Cross Attention', ECCV 2024 (arXiv 2403.11052)"
    )
    params = {
        "c1": Param(
            float, 1.25, "factor on the beginning token's attention logit (1: unchanged)", 0.0, 10.0
        ),
        "mask_summary": Param(
            bool, True, "mask the padding end-of-text (summary) tokens after the prompt"
        ),
        "trigger_top_k": Param(
            int, 0, "down-weight the k most-attended prompt tokens per layer (0: off)", 0, 75
        ),
        "trigger_scale": Param(
            float, 0.5, "factor on the attention weight of those tokens (0: remove them)", 0.0, 1.0
        ),
    }

    def check_compatible(self, adapter: Any) -> None:
        name = getattr(adapter, "name", type(adapter).__name__)
        unet = getattr(adapter, "unet", None)
        if unet is None or not hasattr(unet, "set_attn_processor"):
            raise MemberbenchError(
                f"mitigation 'attention-reweight' cannot work with model {name!r}: it needs a "
                "UNet with diffusers attention processors (adapter.unet with set_attn_processor), "
                "and this adapter has none"
            )
        if not cross_attention_modules(unet):
            raise MemberbenchError(
                f"mitigation 'attention-reweight' cannot work with model {name!r}: its UNet has "
                "no cross-attention layers"
            )
        if _tokenizer(adapter) is None:
            raise MemberbenchError(
                f"mitigation 'attention-reweight' cannot work with model {name!r}: it needs the "
                "model's tokenizer (adapter.tokenizer or adapter.pipe.tokenizer) to find the "
                "prompt's tokens"
            )

    def _control(self) -> _Control:
        if not hasattr(self, "_ctl"):
            c = self.config
            self._ctl = _Control(c["c1"], c["mask_summary"], c["trigger_top_k"], c["trigger_scale"])
        return self._ctl

    def wrap_adapter(self, adapter: Any) -> Any:
        """A shallow copy of ``adapter`` whose ``predict_noise`` runs the UNet with the
        re-weighting processors installed (and the original ones restored afterwards)."""
        self.check_compatible(adapter)
        ctl = self._control()
        inner = adapter.predict_noise
        unet = adapter.unet
        modules = [m for _, m in cross_attention_modules(unet)]

        def predict_noise(latents: torch.Tensor, t: Any, embeds: torch.Tensor) -> torch.Tensor:
            ctl.select(embeds)
            if ctl.rows is None:
                return inner(latents, t, embeds)
            saved = [m.processor for m in modules]
            try:
                for m, p in zip(modules, saved):
                    m.set_processor(ReweightProcessor(p, ctl))
                return inner(latents, t, embeds)
            finally:
                for m, p in zip(modules, saved):
                    m.set_processor(p)

        wrapped = copy.copy(adapter)
        wrapped.predict_noise = predict_noise
        wrapped._attention_reweight = ctl
        return wrapped

    def hooks(self) -> list[StepHook]:
        return [_Register(self._control())]
