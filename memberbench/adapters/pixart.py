"""The adapter of PixArt-alpha and PixArt-sigma: a T5 text encoder and a diffusion transformer.

:class:`PixArtAdapter` computes exactly what ``PixArtAlphaPipeline.__call__`` /
``PixArtSigmaPipeline.__call__`` compute with ``clean_caption=False`` and
``use_resolution_binning=False`` (square images at the model's resolution need no binning):

* ``encode_prompts``: the caption lower-cased and stripped, tokenized by the T5 tokenizer to
  ``max_sequence_length`` tokens (120 for alpha, 300 for sigma), the T5 encoder's last hidden
  state under the tokens' attention mask; the empty prompt is encoded like any other (PixArt's
  unconditional input is the embedding of "").  ``clean_caption=True`` (alpha's pipeline
  default) additionally runs a caption cleaner that depends on the optional bs4 / ftfy
  packages; memberbench leaves it off so that a caption means the same on every machine.
* ``predict_noise``: one transformer call with the attention mask, the timestep broadcast to
  the batch and, for PixArt-alpha at 1024 px (``sample_size == 128``), the micro-conditions
  ``resolution`` / ``aspect_ratio``.  PixArt learns its variance: the transformer outputs 2C
  channels and, as the pipelines do, the first C (the epsilon prediction) are kept.

The attention mask stays behind the adapter: the traced sampler sees a (B, L, D + 1) tensor,
the *packed conditioning* (features 0..D-1 the T5 embeddings, feature D the mask).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from memberbench.adapters.stable_diffusion import StableDiffusionAdapter

MAX_SEQUENCE_LENGTH = {"PixArtAlphaPipeline": 120, "PixArtSigmaPipeline": 300}


def pack(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, D) embeddings and their (B, L) attention mask -> (B, L, D + 1)."""
    return torch.cat([embeds, mask.to(embeds.dtype)[..., None]], dim=-1)


def unpack(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack`: (embeddings (B, L, D), mask (B, L))."""
    return packed[..., :-1], packed[..., -1]


class PixArtAdapter(StableDiffusionAdapter):
    """A ``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline`` as an Adapter (see the module doc)."""

    family: ClassVar[str] = "pixart"
    COMPONENTS: ClassVar[tuple[str, ...]] = (
        "transformer",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
    )
    MODULES: ClassVar[tuple[str, ...]] = ("transformer", "vae", "text_encoder")
    DENOISER: ClassVar[str] = "transformer"
    PIPELINE_KWARGS: ClassVar[dict[str, Any]] = {}

    def __init__(self, pipe: Any, card: Any = None, **kw: Any) -> None:
        super().__init__(pipe, card, **kw)
        kind = type(self.pipe).__name__
        default = MAX_SEQUENCE_LENGTH.get(kind, 120)
        self.max_sequence_length = int(self.card.defaults.get("max_sequence_length", default))
        cfg = self.pipe.transformer.config
        self.micro_conditions = kind == "PixArtAlphaPipeline" and cfg.sample_size == 128
        self.learned_sigma = int(cfg.out_channels) // 2 == int(cfg.in_channels)

    @property
    def unet(self) -> None:  # a transformer, not a UNet: attention-patching methods refuse it
        return None

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipe.transformer

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            base = super().fingerprint()
            from memberbench.types import stable_hash

            self._fingerprint = stable_hash([base, self.max_sequence_length])
        return self._fingerprint

    # --- operations --------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Packed conditioning (B, L, D + 1), like the pipelines' ``encode_prompt``."""
        if isinstance(prompts, str):
            prompts = [prompts]
        texts = [p.lower().strip() for p in prompts]  # _text_preprocessing(clean_caption=False)
        inputs = self.pipe.tokenizer(
            texts,
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        mask = inputs.attention_mask.to(self.device)
        enc = self.pipe.text_encoder
        e = enc(inputs.input_ids.to(self.device), attention_mask=mask)[0]
        return pack(e.to(dtype=self.pipe.transformer.dtype, device=self.device), mask)

    def predict_noise(
        self, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor
    ) -> torch.Tensor:
        """Epsilon prediction (the first C of the 2C learned-sigma channels)."""
        e, mask = unpack(embeds)
        B = latents.shape[0]
        tt = torch.as_tensor(t, device=latents.device)
        if tt.ndim == 0:
            tt = tt[None]
        tt = tt.expand(B)
        cond: dict[str, Any] = {"resolution": None, "aspect_ratio": None}
        if self.micro_conditions:
            h = int(latents.shape[-2]) * self.vae_scale_factor
            w = int(latents.shape[-1]) * self.vae_scale_factor
            cond = {
                "resolution": torch.tensor([[h, w]], dtype=e.dtype, device=e.device).expand(B, 2),
                "aspect_ratio": torch.tensor([[h / w]], dtype=e.dtype, device=e.device).expand(
                    B, 1
                ),
            }
        out = self.pipe.transformer(
            latents,
            encoder_hidden_states=e,
            encoder_attention_mask=mask,
            timestep=tt,
            added_cond_kwargs=cond,
            return_dict=False,
        )[0]
        if self.learned_sigma:
            out = out.chunk(2, dim=1)[0]
        if self.prediction_type == "v_prediction":
            a = self._abar_at(t, latents)
            out = (a.sqrt() * out.double() + (1 - a).sqrt() * latents.double()).to(out.dtype)
        return out
