"""Stable Diffusion 3 / 3.5: three text encoders, an MMDiT (SD3Transformer2DModel) predicting the
flow-matching velocity, sampled with FlowMatchEulerDiscreteScheduler.

:class:`SD3Adapter` wraps a ``StableDiffusion3Pipeline`` and computes what its ``__call__`` does:
prompts through the pipeline's own ``encode_prompt`` (CLIP-L and CLIP-G hidden states joined with
T5's, and the two CLIP pooled projections), one transformer call per batch on
``(latents, t, prompt_embeds, pooled)``, decoding with the VAE's scaling and shift factors.  The
model output is the velocity ``v = eps - x0`` (``prediction = "flow"``); the traced sampler turns
it into ``(eps_hat, x0_hat)`` through :class:`memberbench.sampling.schedule.Schedule`.

Embeddings travel through the sampler (and its hooks) as one tensor per prompt: the joint
sequence ``(L, D)`` followed by ``ceil(P / D)`` extra rows holding the pooled projection
(length P, zero-padded).  :meth:`SD3Adapter.split_embeds` undoes it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memberbench.adapters.base import (
    Adapter,
    ModelCard,
    pack_pooled,
    tensor_fingerprint,
    unpack_pooled,
)
from memberbench.devices import DTYPE_NAMES, parse_device, parse_dtype
from memberbench.types import MemberbenchError, stable_hash

COMPONENTS = (
    "transformer",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "tokenizer",
    "tokenizer_2",
    "tokenizer_3",
    "scheduler",
)
# the names a request may give for the model's own scheduler (requests default to "ddim")
OWN_SCHEDULER = ("ddim", "flow_euler", "FlowMatchEulerDiscreteScheduler", "default")


class FlowTransformerAdapter(Adapter):
    """What the SD 3 and FLUX adapters share: a diffusers pipeline with a ``transformer`` that
    predicts a flow-matching velocity, text embeddings packed with a pooled vector
    (``self._pooled_dim``), and the SD family's VAE (scaling and shift factors)."""

    pipe: Any
    _pooled_dim: int

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    def split_embeds(self, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prompt_embeds (B, L, D), pooled (B, P))`` of :meth:`encode_prompts`' packing."""
        return unpack_pooled(embeds, self._pooled_dim)

    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor):
        raise MemberbenchError(
            f"model {self.name!r} predicts a flow-matching velocity, not epsilon: its epsilon "
            "depends on sigma, which the traced sampler supplies (use predict_velocity)"
        )

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(Unpacked) latents -> uint8 (B, H, W, 3): ``vae.decode(z / scaling + shift)``, as the
        pipeline."""
        from memberbench.adapters.stable_diffusion import StableDiffusionAdapter

        return StableDiffusionAdapter.decode(self, latents)

    def encode_images(self, images: Any) -> torch.Tensor:
        """uint8 images -> fp32 (unpacked) latents ``(mode - shift) * scaling`` at the model
        resolution."""
        from memberbench.adapters.stable_diffusion import StableDiffusionAdapter

        return StableDiffusionAdapter.encode_images(self, images)

    def close(self) -> None:
        self._vae_fp32 = None
        self.pipe = self.pipe.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class SD3Adapter(FlowTransformerAdapter):
    """A ``StableDiffusion3Pipeline`` as an Adapter (``prediction = "flow"``)."""

    prediction = "flow"
    prediction_type = "flow"
    family = "sd3"  # mitigations declare whether they support it (memberbench.mitigations)
    # what a local folder must hold (adapters/local.py checks it; the T5 slot is optional)
    COMPONENTS = tuple(c for c in COMPONENTS if c not in ("text_encoder_3", "tokenizer_3"))

    def __init__(
        self,
        pipe: Any,
        card: ModelCard | None = None,
        *,
        device: Any = None,
        dtype: Any = None,
        source: str | None = None,
        max_sequence_length: int | None = None,
    ) -> None:
        # T5 is optional (diffusers' docs drop it; the bundled flow model has none)
        missing = [
            c
            for c in COMPONENTS
            if getattr(pipe, c, None) is None and c not in ("text_encoder_3", "tokenizer_3")
        ]
        if missing:
            raise MemberbenchError(
                f"pipeline {type(pipe).__name__} has no {', '.join(missing)}: not a Stable "
                "Diffusion 3 pipeline (it needs transformer, vae, text_encoder(_2, _3), "
                "tokenizer(_2, _3), scheduler)"
            )
        if type(pipe.scheduler).__name__ != "FlowMatchEulerDiscreteScheduler":
            raise MemberbenchError(
                f"SD3 pipeline ships {type(pipe.scheduler).__name__}; memberbench's SD3 adapter "
                "samples with FlowMatchEulerDiscreteScheduler"
            )
        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype)
        pipe = pipe.to(self.device, self.dtype)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        for c in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            m = getattr(pipe, c, None)
            if m is not None:
                m.eval()
                m.requires_grad_(False)
        self.pipe = pipe
        self.source = source
        cfg = dict(pipe.scheduler.config)
        if card is None:
            card = ModelCard(
                name="custom-sd3",
                repo_id=str(source or "local"),
                revision=None,
                resolution=int(pipe.transformer.config.sample_size) * self.vae_scale_factor,
                prediction_type="flow",
            )
        self.card = card
        if max_sequence_length is None:  # the card's (the bundled flow model has no T5: 0)
            max_sequence_length = card.defaults.get("max_sequence_length", 256)
        self.max_sequence_length = int(max_sequence_length)
        self._scheduler_config = cfg
        self._fingerprint: str | None = None
        self._vae_fp32: Any = None
        self._pooled_dim = int(pipe.transformer.config.pooled_projection_dim)

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: str | os.PathLike,
        card: ModelCard | None = None,
        *,
        revision: str | None = None,
        device: Any = None,
        dtype: Any = None,
        vae: str | None = None,
    ) -> SD3Adapter:
        """Load a StableDiffusion3Pipeline folder or Hub repo (local cache first; a missing
        download is one line naming the repo, the revision and ``path=``)."""
        from memberbench.adapters.stable_diffusion import load_pipeline

        if vae:
            name = card.name if card else "diffusers"
            raise MemberbenchError(f"model {name!r} takes no vae= (its VAE is its own)")
        dt = parse_dtype(dtype)
        pipe = load_pipeline(
            path_or_repo, revision=revision, dtype=dt, model_name=card.name if card else None
        )
        if type(pipe).__name__ != "StableDiffusion3Pipeline":
            raise MemberbenchError(
                f"{path_or_repo} holds a {type(pipe).__name__}, not a StableDiffusion3Pipeline; "
                "use the adapter of its family"
            )
        src = str(path_or_repo) + (f"@{revision}" if revision else "")
        adapter = cls(pipe, card, device=device, dtype=dt, source=src)
        from memberbench.adapters.stable_diffusion import _local_dir

        adapter.weight_dir = _local_dir(path_or_repo, revision)  # describe(): weights_sha256
        return adapter

    # --- identity -------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """16 hex of every byte of every transformer / vae / text-encoder tensor, the scheduler
        config, dtype, device type and the T5 sequence length."""
        if self._fingerprint is None:
            tensors: dict[str, torch.Tensor] = {}
            for c in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
                m = getattr(self.pipe, c, None)
                if m is not None:
                    tensors.update({f"{c}.{k}": v for k, v in m.state_dict().items()})
            extra = {
                "scheduler": {k: v for k, v in self._scheduler_config.items() if k[0] != "_"},
                "dtype": DTYPE_NAMES.get(self.dtype, str(self.dtype)),
                "device": self.device.type,
                "prediction": self.prediction,
                "max_sequence_length": self.max_sequence_length,
            }
            self._fingerprint = tensor_fingerprint(tensors, stable_hash(extra))
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            source=self.source,
            prediction_type="flow",
            pipeline_class=type(self.pipe).__name__,
            max_sequence_length=self.max_sequence_length,
        )
        weight_dir = getattr(self, "weight_dir", None)
        if weight_dir is not None:  # loaded from files: the full-byte sha256 of all of them
            import contextlib

            from memberbench.adapters.identity import dirs_sha256

            with contextlib.suppress(OSError):  # the folder went away after loading
                d["weights_sha256"] = dirs_sha256([weight_dir])[0]
        return d

    # --- components -----------------------------------------------------------------------------
    @property
    def scheduler_config(self) -> dict[str, Any]:
        return dict(self._scheduler_config)

    def make_scheduler(self, name: str = "ddim") -> Any:
        """The model's own FlowMatchEulerDiscreteScheduler (the only one its velocity fits);
        ``name`` may be the default ``"ddim"`` of a request, ``"flow_euler"`` or the class name."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if name not in OWN_SCHEDULER:
            raise MemberbenchError(
                f"model {self.name!r} is a flow-matching model and samples only with its own "
                f"FlowMatchEulerDiscreteScheduler; got scheduler {name!r} (use flow_euler)"
            )
        sched = FlowMatchEulerDiscreteScheduler.from_config(self._scheduler_config)
        if sched.config.get("use_dynamic_shifting"):
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
                calculate_shift,
            )

            _, h, w = self.latent_shape
            p = int(self.pipe.transformer.config.patch_size)
            c = sched.config
            mu = calculate_shift(
                (h // p) * (w // p),
                c.get("base_image_seq_len", 256),
                c.get("max_image_seq_len", 4096),
                c.get("base_shift", 0.5),
                c.get("max_shift", 1.16),
            )
            sched.set_timesteps = functools.partial(sched.set_timesteps, mu=mu)
        return sched

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.vae_scale_factor
        return (int(self.pipe.transformer.config.in_channels), side, side)

    def latent_shape_for(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        f = self.vae_scale_factor * int(self.pipe.transformer.config.patch_size)
        h, w = height or self.resolution, width or self.resolution
        if h % f or w % f:
            raise MemberbenchError(f"height and width must be multiples of {f}; got {h}x{w}")
        v = self.vae_scale_factor
        return (int(self.pipe.transformer.config.in_channels), h // v, w // v)

    # --- batched operations ---------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The pipeline's ``encode_prompt`` (no CFG inside, clip_skip None), packed with the
        pooled projection as trailing rows (module docstring)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        pe, _, pooled, _ = self.pipe.encode_prompt(
            prompt=list(prompts),
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return pack_pooled(pe, pooled, self._pooled_dim)

    def predict_velocity(
        self, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor
    ) -> torch.Tensor:
        """The transformer's velocity for ``latents`` at timestep ``t`` (sigma * 1000), as
        ``StableDiffusion3Pipeline.__call__`` calls it; not under no_grad (the sampler is)."""
        pe, pooled = self.split_embeds(embeds)
        tt = torch.as_tensor(t, device=latents.device)
        timestep = tt.expand(latents.shape[0]) if tt.ndim == 0 else tt
        return self.pipe.transformer(
            hidden_states=latents,
            timestep=timestep,
            encoder_hidden_states=pe,
            pooled_projections=pooled,
            return_dict=False,
        )[0]


# --------------------------------------------------------------------------------------------
# cards

_SD3_DATA = (
    "Undisclosed: Stability AI reports 1B images (filtered for NSFW, aesthetics and "
    "deduplicated, with synthetic captions for half); no public memorized-prompt set."
)
SD_3_MEDIUM = ModelCard(
    name="sd-3-medium",
    repo_id="stabilityai/stable-diffusion-3-medium-diffusers",
    revision="ea42f8cef0f178587cf766dc8129abd379c90671",
    resolution=1024,
    prediction_type="flow",
    training_data=_SD3_DATA,
    notes=(
        "MMDiT (SD3Transformer2DModel, 2B), three text encoders (CLIP-L, OpenCLIP-G, T5-XXL), "
        "rectified flow (FlowMatchEulerDiscreteScheduler, shift 3.0); gated repo (accept the "
        "licence on the Hub). The decomposition uses a = 1 - sigma, b = sigma."
    ),
    defaults={"guidance": 7.0, "steps": 28, "scheduler": "FlowMatchEulerDiscreteScheduler"},
)
SD_35_MEDIUM = ModelCard(
    name="sd-3.5-medium",
    repo_id="stabilityai/stable-diffusion-3.5-medium",
    revision="b940f670f0eda2d07fbb75229e779da1ad11eb80",
    resolution=1024,
    prediction_type="flow",
    training_data=_SD3_DATA,
    notes=(
        "MMDiT-X (SD3Transformer2DModel, 2.5B), CLIP-L, OpenCLIP-G and T5-XXL, rectified flow "
        "(FlowMatchEulerDiscreteScheduler, shift 3.0); gated repo. Decomposition: a = 1 - sigma, "
        "b = sigma."
    ),
    defaults={"guidance": 4.5, "steps": 40, "scheduler": "FlowMatchEulerDiscreteScheduler"},
)
CARDS: dict[str, ModelCard] = {c.name: c for c in (SD_3_MEDIUM, SD_35_MEDIUM)}


def _card_factory():
    from memberbench.adapters.cards import CardFactory

    class SD3CardFactory(CardFactory):
        """``factory(params) -> SD3Adapter`` (path=, revision=, dtype=, device=)."""

        def load(self, card: ModelCard, params: dict[str, Any]) -> Adapter:
            if params.get("vae"):
                raise MemberbenchError(f"model {card.name!r} takes no vae= (its VAE is its own)")
            path = params.get("path") or None
            if path:
                p = Path(str(path)).expanduser()
                if not (p / "model_index.json").is_file():
                    raise MemberbenchError(
                        f"{p} is not a diffusers StableDiffusion3Pipeline folder (no "
                        "model_index.json); point path= at the folder holding model_index.json, "
                        "transformer/, vae/, text_encoder{,_2,_3}/, tokenizer{,_2,_3}/, scheduler/"
                    )
                card = _with(card, notes=(card.notes + f" Loaded from local path {p}.").strip())
                return SD3Adapter.from_pretrained(
                    p, card, device=params.get("device"), dtype=params.get("dtype")
                )
            revision = params.get("revision") or card.revision
            if revision != card.revision:
                card = _with(card, revision=revision)
            return SD3Adapter.from_pretrained(
                card.repo_id,
                card,
                revision=revision,
                device=params.get("device"),
                dtype=params.get("dtype"),
            )

    return SD3CardFactory


def _with(card: ModelCard, **changes: Any) -> ModelCard:
    from dataclasses import replace

    return replace(card, **changes)


def factories() -> dict[str, Any]:
    """``{card name: factory}`` for registration in ``memberbench.registry.MODELS``."""
    cls = _card_factory()
    return {name: cls(card) for name, card in CARDS.items()}
