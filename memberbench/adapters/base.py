"""The adapter contract: what memberbench needs from a text-to-image diffusion model.

An adapter exposes a latent diffusion model as named components and a handful of *batched*
operations.  The traced sampler drives those operations; everything is analysed in epsilon space
(adapters of v-prediction models convert in ``predict_noise``).

Writing an adapter for a new model: subclass :class:`Adapter`, implement the abstract methods, and
register a factory ``build(card_params: dict) -> Adapter`` under the entry-point group
``memberbench.models`` of your package.  Then ``pytest tasks/ --model your-name`` works.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from memberbench.types import stable_hash


@dataclass(frozen=True)
class ModelCard:
    """What memberbench knows about a model before loading it."""

    name: str
    repo_id: str  # Hugging Face repo id, or "bundled" for the shipped model
    revision: str | None  # pinned commit of repo_id (None for the bundled model)
    resolution: int  # native image side in pixels
    prediction_type: str = "epsilon"  # "epsilon", "v_prediction" or "flow" (velocity)
    training_data: str = ""  # known facts about the training data
    notes: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)  # e.g. {"guidance": 7.5}
    # The prompt sets a run uses when none is given: {"memorized": SET, "nonmemorized": SET},
    # each a registered set name (memberbench.data.sets).  Empty: the user must name both.
    prompt_sets: dict[str, str] = field(default_factory=dict)
    # True for a guidance-distilled model (FLUX): the guidance scale is an input of the denoiser
    # and sampling runs no unconditional branch (the tasks that need one are skipped unless the
    # adapter is asked for true CFG); recorded with the card in every result
    guidance_distilled: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Adapter(ABC):
    """Base class of model adapters.  All methods take and return batches."""

    card: ModelCard
    device: torch.device
    dtype: torch.dtype
    # The architecture family ("sd", "sdxl", "pixart", ...): mitigations declare the families
    # they support and refuse the others.  An adapter of another architecture sets its own.
    family: ClassVar[str] = "sd"

    # --- identity -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.card.name

    @abstractmethod
    def fingerprint(self) -> str:
        """A short hash that changes whenever the weights or the scheduler config change."""

    def describe(self) -> dict[str, Any]:
        """Everything a results file needs to trace numbers back to this model."""
        return {
            "card": self.card.to_dict(),
            "family": self.family,
            "fingerprint": self.fingerprint(),
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "scheduler_config": dict(self.scheduler_config),
        }

    # --- components -----------------------------------------------------------------------
    @property
    @abstractmethod
    def scheduler_config(self) -> dict[str, Any]:
        """The training noise schedule, as a diffusers scheduler config dict."""

    @abstractmethod
    def make_scheduler(self, name: str = "ddim") -> Any:
        """A fresh diffusers scheduler (by short name, e.g. 'ddim', 'pndm', 'euler', or class
        name) configured with this model's training schedule."""

    def describe_scheduler(self, name: str) -> dict[str, Any]:
        """The scheduler sampling really uses (``make_scheduler(name)``): its short name, class
        and config, as opposed to ``scheduler_config``, the one the model shipped with."""
        sched = self.make_scheduler(name)
        cfg = {k: v for k, v in dict(sched.config).items() if not k.startswith("_")}
        return {"name": name, "class": type(sched).__name__, "config": cfg}

    @property
    @abstractmethod
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the latent at the model's resolution."""

    @property
    def resolution(self) -> int:
        return self.card.resolution

    @property
    def unet(self) -> torch.nn.Module | None:
        """The denoiser, where the model has one (mitigations that patch attention need it)."""
        return None

    # --- batched operations ---------------------------------------------------------------
    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings (B, L, D) for the prompts ("" gives the unconditional embedding)."""

    @abstractmethod
    def predict_noise(
        self, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor
    ) -> torch.Tensor:
        """The epsilon prediction for ``latents`` at timestep(s) ``t`` under ``embeds``."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents (B, C, h, w) -> uint8 images (B, H, W, 3)."""

    @abstractmethod
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """uint8 images (B, H, W, 3) of any size -> latents (B, C, h, w), as docs/metrics.md#notation
        defines x:
        resized straight to the model resolution, pixels in [-1, 1], VAE posterior mode times the
        scaling factor, fp32."""

    def close(self) -> None:  # noqa: B027 - optional hook, deliberately a no-op
        """Release memory (optional)."""


def tensor_fingerprint(tensors: dict[str, torch.Tensor], extra: Any = None) -> str:
    """Fingerprint of a state dict: hashes every tensor's name, dtype, shape and every byte of
    its values (:func:`memberbench.adapters.identity.tensors_sha256`), plus ``extra``."""
    import hashlib

    from memberbench.adapters.identity import tensors_sha256

    h = hashlib.sha256(tensors_sha256(tensors).encode())
    if extra is not None:
        h.update(stable_hash(extra).encode())
    return h.hexdigest()[:16]


def pack_pooled(prompt_embeds, pooled, pooled_dim: int):
    """Pack a pooled text embedding ``(B, P)`` into extra rows after ``prompt_embeds``
    ``(B, L, D)``, zero-padded to whole rows, so that one tensor carries both through the
    sampler and the mitigations (:func:`unpack_pooled` reverses it)."""
    import math

    import torch

    B, _, D = prompt_embeds.shape
    rows = math.ceil(pooled_dim / D)
    pad = torch.zeros(B, rows * D, dtype=prompt_embeds.dtype, device=prompt_embeds.device)
    pad[:, : pooled.shape[1]] = pooled.to(prompt_embeds.dtype)
    return torch.cat([prompt_embeds, pad.view(B, rows, D)], 1)


def unpack_pooled(embeds, pooled_dim: int):
    """``(prompt_embeds (B, L, D), pooled (B, P))`` of :func:`pack_pooled`'s packing."""
    import math

    B, _, D = embeds.shape
    rows = math.ceil(pooled_dim / D)
    pooled = embeds[:, -rows:].reshape(B, rows * D)[:, :pooled_dim]
    return embeds[:, :-rows], pooled
