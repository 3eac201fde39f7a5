"""The adapter of Stable Diffusion XL: two CLIP text encoders, pooled embeddings, added time ids.

:class:`SDXLAdapter` computes exactly what ``StableDiffusionXLPipeline.__call__`` computes with
its defaults (no clip_skip, no LoRA, ``guidance_rescale=0``, ``original_size = target_size =
(height, width)``, ``crops_coords_top_left = (0, 0)``):

* ``encode_prompts``: both tokenizers / text encoders, the penultimate hidden states of each
  concatenated on the feature axis, the pooled (projected) output of ``text_encoder_2``; the
  empty prompt gives zeros when the pipeline's ``force_zeros_for_empty_prompt`` is set (as the
  pipeline does for its default, absent negative prompt: SDXL's unconditional input is zeros).
* ``predict_noise``: one UNet call with ``added_cond_kwargs = {"text_embeds": pooled,
  "time_ids": (h, w, 0, 0, h, w)}``, h and w being the pixel size of the latents.

The extra conditioning stays behind the adapter: the traced sampler sees one (B, L + 1, W)
tensor per prompt, the *packed conditioning* (rows 0..L-1 the token embeddings, zero-padded to
W = max(D, P) features; row L the pooled embedding, zero-padded), which it indexes by batch
row and concatenates like SD's (B, L, D) embeddings.  :func:`pack` / :func:`unpack` convert.
Mitigations that edit the token embeddings themselves do not support this family (see
``families`` of each method in :mod:`memberbench.mitigations`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from memberbench.adapters.stable_diffusion import StableDiffusionAdapter


def pack(embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """(B, L, D) token embeddings and (B, P) pooled embeddings -> (B, L + 1, max(D, P))."""
    B, L, D = embeds.shape
    P = pooled.shape[-1]
    W = max(D, P)
    out = embeds.new_zeros((B, L + 1, W))
    out[:, :L, :D] = embeds
    out[:, L, :P] = pooled.to(embeds.dtype)
    return out


def unpack(packed: torch.Tensor, dim: int, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack`: (token embeddings (B, L, dim), pooled (B, pooled_dim))."""
    return packed[:, :-1, :dim], packed[:, -1, :pooled_dim]


class SDXLAdapter(StableDiffusionAdapter):
    """A ``StableDiffusionXLPipeline`` (base model) as an Adapter; see the module docstring."""

    family: ClassVar[str] = "sdxl"
    COMPONENTS: ClassVar[tuple[str, ...]] = (
        "unet",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "scheduler",
    )
    MODULES: ClassVar[tuple[str, ...]] = ("unet", "vae", "text_encoder", "text_encoder_2")
    PIPELINE_KWARGS: ClassVar[dict[str, Any]] = {"add_watermarker": False}

    def __init__(self, pipe: Any, card: Any = None, **kw: Any) -> None:
        super().__init__(pipe, card, **kw)
        te1, te2 = self.pipe.text_encoder, self.pipe.text_encoder_2
        self.embed_dim = int(te1.config.hidden_size) + int(te2.config.hidden_size)
        self.pooled_dim = int(te2.config.projection_dim)
        cfg = getattr(self.pipe, "config", {})
        self.zero_uncond = bool(dict(cfg).get("force_zeros_for_empty_prompt", True))

    # --- operations --------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Packed conditioning (B, L + 1, W) like ``StableDiffusionXLPipeline.encode_prompt``."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        embeds, pooled = [], None
        pipe = self.pipe
        for tok, enc in (
            (pipe.tokenizer, pipe.text_encoder),
            (pipe.tokenizer_2, pipe.text_encoder_2),
        ):
            ids = tok(
                prompts,
                padding="max_length",
                max_length=tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            out = enc(ids.to(self.device), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # the projected pooled output of encoder 2
                pooled = out[0]
            embeds.append(out.hidden_states[-2])
        e = torch.cat(embeds, dim=-1).to(dtype=pipe.text_encoder_2.dtype, device=self.device)
        pooled = pooled.to(dtype=e.dtype, device=self.device)
        if self.zero_uncond:
            empty = torch.tensor([p == "" for p in prompts], device=self.device)
            e = torch.where(empty.view(-1, 1, 1), torch.zeros_like(e), e)
            pooled = torch.where(empty.view(-1, 1), torch.zeros_like(pooled), pooled)
        return pack(e, pooled)

    def time_ids(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 6) ``original_size + crops_coords_top_left + target_size`` of the pipeline's
        defaults for latents of this size."""
        h = int(latents.shape[-2]) * self.vae_scale_factor
        w = int(latents.shape[-1]) * self.vae_scale_factor
        ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=latents.dtype, device=latents.device)
        return ids.expand(latents.shape[0], 6)

    def predict_noise(
        self, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor
    ) -> torch.Tensor:
        """Epsilon prediction; ``embeds`` is packed conditioning (see :func:`pack`)."""
        e, pooled = unpack(embeds, self.embed_dim, self.pooled_dim)
        cond = {"text_embeds": pooled, "time_ids": self.time_ids(latents).to(e.dtype)}
        out = self.pipe.unet(
            latents, t, encoder_hidden_states=e, added_cond_kwargs=cond, return_dict=False
        )[0]
        if self.prediction_type == "v_prediction":
            a = self._abar_at(t, latents)
            out = (a.sqrt() * out.double() + (1 - a).sqrt() * latents.double()).to(out.dtype)
        return out

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Like the pipeline: fp16 VAEs with ``force_upcast`` decode in fp32; ``latents_mean`` /
        ``latents_std`` de-normalise when the VAE config has them."""
        vae = self.pipe.vae
        if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            if self._vae_fp32 is None:
                import copy

                self._vae_fp32 = copy.deepcopy(vae).float()
            vae = self._vae_fp32
        z = latents.to(self.device, vae.dtype)
        mean = getattr(vae.config, "latents_mean", None)
        std = getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            c = z.shape[1]
            m = torch.tensor(mean, dtype=z.dtype, device=z.device).view(1, c, 1, 1)
            s = torch.tensor(std, dtype=z.dtype, device=z.device).view(1, c, 1, 1)
            z = z * s / vae.config.scaling_factor + m
        else:
            z = z / vae.config.scaling_factor
        img = vae.decode(z, return_dict=False)[0]
        img = (img / 2 + 0.5).clamp(0, 1)
        arr = img.cpu().permute(0, 2, 3, 1).float().numpy()
        return (arr * 255).round().astype(np.uint8)
