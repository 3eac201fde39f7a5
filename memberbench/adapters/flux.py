"""FLUX.1 (dev, schnell): rectified flow, a CLIP pooled embedding plus T5, a guidance-distilled
transformer (FluxTransformer2DModel) on 2x2-packed latents.

:class:`FluxAdapter` wraps a ``FluxPipeline`` and computes what its ``__call__`` does:

* ``encode_prompts``: the pipeline's ``encode_prompt`` (CLIP's pooled output, T5's last hidden
  state at ``max_sequence_length`` tokens), packed as for SD3: the T5 sequence ``(L, D)``
  followed by ``ceil(P / D)`` rows holding the pooled CLIP vector (length P, zero-padded).
* ``predict_velocity``: the latent ``(B, C, H, W)`` the sampler and the metrics see is packed
  into ``(B, H/2 * W/2, 4C)`` tokens of 2x2 patches (``FluxPipeline._pack_latents``), the
  transformer is called with ``timestep = t / 1000``, the text ids (zeros) and the latent image
  ids, and its output is unpacked back to ``(B, C, H, W)``.  Packing is a permutation of the
  elements, so norms, dot products and the Euler step are the same in either layout.
* ``make_scheduler``: the shipped FlowMatchEulerDiscreteScheduler, set to FluxPipeline's grid:
  ``sigmas = linspace(1, 1/N, N)`` and, with dynamic shifting (FLUX.1-dev), ``mu`` from the
  packed image sequence length ``(H/2)(W/2)`` by ``calculate_shift`` (base 256 -> 0.5, max
  4096 -> 1.15 by default).

Guidance.  FLUX.1-dev is guidance-distilled: the transformer takes the guidance scale as an
input embedding (``guidance``) and samples with one conditional call per step; there is no
unconditional branch.  So by default the adapter reports ``has_unconditional = False``: the
traced sampler passes the request's guidance to the transformer (FluxPipeline's
``guidance_scale``) and the tasks that need an unconditional branch are skipped with
:attr:`FluxAdapter.unconditional_reason`.  ``true_cfg=on`` in the model spec turns real
classifier-free guidance on, as ``FluxPipeline(true_cfg_scale=g, negative_prompt="")`` does: two
calls per step (the negative prompt, by default "", and the prompt), the request's guidance is the
CFG scale, and the transformer's guidance input is the fixed ``guidance_embed=`` (default the
card's, 3.5 for dev).  FLUX.1-schnell is timestep-distilled and has no guidance input at all.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from memberbench.adapters.base import (
    Adapter,
    ModelCard,
    pack_pooled,
    tensor_fingerprint,
)
from memberbench.adapters.sd3 import FlowTransformerAdapter
from memberbench.devices import DTYPE_NAMES, parse_device, parse_dtype
from memberbench.types import MemberbenchError, stable_hash

# the names a request may give for the model's own scheduler (requests default to "ddim")
OWN_SCHEDULER = ("ddim", "flow_euler", "FlowMatchEulerDiscreteScheduler", "default")
WEIGHT_MODULES = ("transformer", "vae", "text_encoder", "text_encoder_2")
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)
DEFAULT_GUIDANCE_EMBED = 3.5  # FluxPipeline's guidance_scale default
TRUE_VALUES = ("on", "true", "yes", "1")
FALSE_VALUES = ("off", "false", "no", "0", "")


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H/2 * W/2, 4C)``: 2x2 patches, as ``FluxPipeline._pack_latents``."""
    B, C, H, W = latents.shape
    x = latents.view(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // 2) * (W // 2), C * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_latents` for a latent of ``height`` x ``width``."""
    B, _, D = tokens.shape
    x = tokens.view(B, height // 2, width // 2, D // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, D // 4, height, width)


def latent_image_ids(height: int, width: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """The (H/2 * W/2, 3) position ids of the packed tokens (``_prepare_latent_image_ids``)."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(height // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def parse_true_cfg(model: str, raw: Any) -> bool:
    """``true_cfg=`` of a model spec: on / off (one line otherwise)."""
    if isinstance(raw, bool):
        return raw
    v = str(raw if raw is not None else "").strip().lower()
    if v in TRUE_VALUES:
        return True
    if v in FALSE_VALUES:
        return False
    raise MemberbenchError(
        f"model {model!r}: true_cfg={raw!r} is not valid; give true_cfg=on (real classifier-free "
        "guidance with an empty negative prompt; --guidance is then the CFG scale) or off"
    )


def parse_guidance_embed(model: str, raw: Any) -> float | None:
    """``guidance_embed=`` of a model spec: a non-negative number (one line otherwise)."""
    if raw in (None, ""):
        return None
    try:
        v = float(raw)
        ok = math.isfinite(v) and v >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise MemberbenchError(
            f"model {model!r}: guidance_embed={raw!r} is not valid; give the distilled guidance "
            "input used with true_cfg=on, a number >= 0 (e.g. guidance_embed=3.5)"
        )
    return v


def check_resolution(model: str, resolution: int, vae_scale: int = 8) -> None:
    """FLUX packs 2x2 latent patches: the side must be a multiple of 2 x the VAE's factor."""
    f = 2 * vae_scale
    if resolution % f:
        raise MemberbenchError(
            f"model {model!r}: resolution={resolution} is not a multiple of {f} (FLUX packs 2x2 "
            f"patches of its {vae_scale}x-downsampled latent); use e.g. resolution="
            f"{max(f, resolution // f * f)}"
        )


def check_weights(root: Path, index: dict[str, Any] | None = None) -> None:
    """Every FLUX module folder of ``root`` holds weights: one line naming the folder, the files
    looked for and how to provide them, else."""
    for comp in WEIGHT_MODULES:
        d = root / comp
        if not d.is_dir():
            continue  # a missing component is local.check_components' / diffusers' message
        found = [f for f in WEIGHT_FILES if (d / f).is_file()]
        found += [p.name for p in d.glob("*.safetensors.index.json")]
        found += [p.name for p in d.glob("*.bin.index.json")]
        if not found:
            cls = ""
            entry = (index or {}).get(comp)
            if isinstance(entry, list) and len(entry) == 2:
                cls = f" ({entry[1]})"
            raise MemberbenchError(
                f"FLUX folder {root}: {comp}/{cls} has no weights (looked for "
                f"{', '.join(WEIGHT_FILES)} or a *.safetensors.index.json shard index); copy "
                f"them there (e.g. `huggingface-cli download black-forest-labs/FLUX.1-dev "
                f"--include '{comp}/*' --local-dir {root}`) or save the whole pipeline with "
                "save_pretrained"
            )


class FluxAdapter(FlowTransformerAdapter):
    """A ``FluxPipeline`` as an Adapter (``prediction = "flow"``; see the module doc)."""

    prediction = "flow"
    prediction_type = "flow"
    family: ClassVar[str] = "flux"
    COMPONENTS: ClassVar[tuple[str, ...]] = (
        "transformer",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "scheduler",
    )

    def __init__(
        self,
        pipe: Any,
        card: ModelCard | None = None,
        *,
        device: Any = None,
        dtype: Any = None,
        source: str | None = None,
        true_cfg: bool = False,
        guidance_embed: float | None = None,
        max_sequence_length: int | None = None,
        weight_dir: str | os.PathLike | None = None,
    ) -> None:
        missing = [c for c in self.COMPONENTS if getattr(pipe, c, None) is None]
        if missing:
            raise MemberbenchError(
                f"pipeline {type(pipe).__name__} has no {', '.join(missing)}: not a FLUX pipeline "
                f"(it needs {', '.join(self.COMPONENTS)})"
            )
        if type(pipe.scheduler).__name__ != "FlowMatchEulerDiscreteScheduler":
            raise MemberbenchError(
                f"FLUX pipeline ships {type(pipe.scheduler).__name__}; memberbench's FLUX adapter "
                "samples with FlowMatchEulerDiscreteScheduler"
            )
        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype)
        pipe = pipe.to(self.device, self.dtype)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        for c in WEIGHT_MODULES:
            m = getattr(pipe, c)
            m.eval()
            m.requires_grad_(False)
        self.pipe = pipe
        self.source = source
        self.weight_dir = Path(weight_dir) if weight_dir else None
        self._files_sha256: str | None = None
        self._fingerprint_covers = ""
        tcfg = pipe.transformer.config
        if card is None:
            card = ModelCard(
                name="custom-flux",
                repo_id=str(source or "local"),
                revision=None,
                resolution=int(getattr(tcfg, "sample_size", 128) or 128) * self.vae_scale_factor,
                prediction_type="flow",
                guidance_distilled=bool(tcfg.guidance_embeds),
            )
        self.card = card
        self.true_cfg = bool(true_cfg)
        self.guidance_embeds = bool(tcfg.guidance_embeds)
        default = card.defaults.get("guidance_embed", DEFAULT_GUIDANCE_EMBED)
        self.guidance_embed = (
            float(guidance_embed if guidance_embed is not None else default)
            if self.guidance_embeds
            else None
        )
        self.max_sequence_length = int(
            max_sequence_length or card.defaults.get("max_sequence_length", 512)
        )
        self._scheduler_config = dict(pipe.scheduler.config)
        self._fingerprint: str | None = None
        self._vae_fp32: Any = None
        self._pooled_dim = int(tcfg.pooled_projection_dim)

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
        true_cfg: bool = False,
        guidance_embed: float | None = None,
    ) -> FluxAdapter:
        """Load a FluxPipeline folder or Hub repo (local cache first; a missing download is one
        line naming the repo, the revision and ``path=``; a local folder's module without
        weights is one line naming it)."""
        from memberbench.adapters.stable_diffusion import _local_dir, load_pipeline

        if vae:
            name = card.name if card else "diffusers"
            raise MemberbenchError(f"model {name!r} takes no vae= (FLUX's VAE is its own)")
        local = Path(str(path_or_repo)).expanduser()
        if local.exists():
            check_folder(local)
        dt = parse_dtype(dtype)
        pipe = load_pipeline(
            path_or_repo,
            revision=revision,
            dtype=dt,
            model_name=card.name if card else None,
            pipeline_kwargs={},
        )
        if type(pipe).__name__ != "FluxPipeline":
            raise MemberbenchError(
                f"{path_or_repo} holds a {type(pipe).__name__}, not a FluxPipeline; use the "
                "adapter of its family (or --model diffusers:path=DIR, which detects it)"
            )
        src = str(path_or_repo) + (f"@{revision}" if revision else "")
        return cls(
            pipe,
            card,
            device=device,
            dtype=dt,
            source=src,
            true_cfg=true_cfg,
            guidance_embed=guidance_embed,
            weight_dir=_local_dir(path_or_repo, revision),
        )

    # --- guidance ---------------------------------------------------------------------------------
    @property
    def has_unconditional(self) -> bool:
        """Whether sampling runs an unconditional branch (only with ``true_cfg=on``)."""
        return self.true_cfg

    @property
    def unconditional_reason(self) -> str:
        """Why a task that needs the unconditional branch is skipped on this model ("" if not)."""
        if self.true_cfg:
            return ""
        path = "path=DIR," if self.card.revision == "local" else ""
        return (
            f"model {self.name!r} is guidance-distilled (one conditional call per step, no "
            "unconditional branch at sampling); add true_cfg=on to the model spec (e.g. --model "
            f"{self.name}:{path}true_cfg=on) to sample with real classifier-free guidance"
        )

    # --- identity ---------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """16 hex of: the sha256 of every file of the folder the pipeline was loaded from or, in
        memory, every byte of every transformer / vae / text-encoder tensor; plus the scheduler
        config, dtype, device type, T5 length and the guidance mode."""
        if self._fingerprint is None:
            from memberbench.adapters.identity import dirs_sha256, sampled_tensor_hash

            tensors: dict[str, torch.Tensor] = {}
            for c in WEIGHT_MODULES:
                tensors.update(
                    {f"{c}.{k}": v for k, v in getattr(self.pipe, c).state_dict().items()}
                )
            extra: dict[str, Any] = {
                "scheduler": {k: v for k, v in self._scheduler_config.items() if k[0] != "_"},
                "dtype": DTYPE_NAMES.get(self.dtype, str(self.dtype)),
                "device": self.device.type,
                "prediction": self.prediction,
                "max_sequence_length": self.max_sequence_length,
                "true_cfg": self.true_cfg,
                "guidance_embed": self.guidance_embed,
            }
            files = None
            if self.weight_dir is not None:
                try:
                    files = dirs_sha256([self.weight_dir])
                except OSError:
                    files = None
            if files is not None:
                extra["files_sha256"] = self._files_sha256 = files[0]
                extra["loaded_sample"] = sampled_tensor_hash(tensors)
                self._fingerprint = stable_hash(extra)
                self._fingerprint_covers = f"every byte of {files[1]} files in {self.weight_dir}"
            else:
                self._fingerprint = tensor_fingerprint(tensors, stable_hash(extra))
                self._fingerprint_covers = "every byte of every " + ", ".join(WEIGHT_MODULES)
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        self.fingerprint()
        d.update(
            source=self.source,
            prediction_type="flow",
            pipeline_class=type(self.pipe).__name__,
            max_sequence_length=self.max_sequence_length,
            guidance_distilled=bool(self.card.guidance_distilled),
            true_cfg=self.true_cfg,
            has_unconditional=self.has_unconditional,
            guidance_embed=self.guidance_embed,
            guidance_meaning=(
                "true classifier-free guidance scale (negative prompt '' by default); the "
                f"transformer's guidance input is fixed at {self.guidance_embed}"
                if self.true_cfg
                else "the transformer's distilled guidance input (no unconditional branch)"
            ),
            scheduler_shipped=self._scheduler_config.get("_class_name"),
            fingerprint_covers=self._fingerprint_covers,
        )
        if self._files_sha256:
            d["weights_sha256"] = self._files_sha256
        return d

    # --- components -------------------------------------------------------------------------------
    @property
    def scheduler_config(self) -> dict[str, Any]:
        return dict(self._scheduler_config)

    def image_seq_len(self) -> int:
        """Packed tokens of the native latent, ``(H/2)(W/2)``: the ``mu`` of dynamic shifting."""
        _, h, w = self.latent_shape
        return (h // 2) * (w // 2)

    def make_scheduler(self, name: str = "ddim") -> Any:
        """The model's FlowMatchEulerDiscreteScheduler on FluxPipeline's grid (module doc);
        ``name`` may be the default ``"ddim"`` of a request, ``"flow_euler"`` or the class name."""
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        if name not in OWN_SCHEDULER:
            raise MemberbenchError(
                f"model {self.name!r} is a flow-matching model and samples only with its own "
                f"FlowMatchEulerDiscreteScheduler; got scheduler {name!r} (use flow_euler)"
            )
        sched = FlowMatchEulerDiscreteScheduler.from_config(self._scheduler_config)
        c = sched.config
        mu = calculate_shift(
            self.image_seq_len(),
            c.get("base_image_seq_len", 256),
            c.get("max_image_seq_len", 4096),
            c.get("base_shift", 0.5),
            c.get("max_shift", 1.15),
        )
        own = sched.set_timesteps

        @functools.wraps(own)
        def set_timesteps(num_inference_steps: int | None = None, device: Any = None, **kw: Any):
            if not kw and num_inference_steps is not None:
                n = int(num_inference_steps)
                sigmas = None if c.get("use_flow_sigmas") else np.linspace(1.0, 1 / n, n)
                if sigmas is None:
                    return own(n, device=device, mu=mu)
                return own(sigmas=sigmas, device=device, mu=mu)
            kw.setdefault("mu", mu)
            return own(num_inference_steps, device=device, **kw)

        sched.set_timesteps = set_timesteps
        sched.flux_mu = mu
        return sched

    def describe_scheduler(self, name: str) -> dict[str, Any]:
        d = super().describe_scheduler(name)
        d["mu"] = float(self.make_scheduler(name).flux_mu)
        d["sigmas"] = "linspace(1, 1/N, N), shifted"
        return d

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the unpacked latent: FluxPipeline's ``2 * (res // (vae_scale * 2))``
        (a resolution that is not a multiple of 2 x the VAE factor is refused in one line)."""
        check_resolution(self.name, self.resolution, self.vae_scale_factor)
        side = 2 * (self.resolution // (self.vae_scale_factor * 2))
        return (int(self.pipe.transformer.config.in_channels) // 4, side, side)

    # --- batched operations -----------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The pipeline's ``encode_prompt``, packed with the pooled CLIP vector as trailing rows."""
        if isinstance(prompts, str):
            prompts = [prompts]
        pe, pooled, _ = self.pipe.encode_prompt(
            prompt=list(prompts),
            prompt_2=None,
            device=self.device,
            num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
        )
        return pack_pooled(pe, pooled, self._pooled_dim)

    def predict_velocity(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        embeds: torch.Tensor,
        guidance: Any = None,
    ) -> torch.Tensor:
        """The transformer's velocity ``(B, C, H, W)`` for unpacked ``latents`` at timestep ``t``
        (sigma * 1000), as ``FluxPipeline.__call__`` calls it.  ``guidance``: the transformer's
        guidance input per sample (the sampler passes the request's without true CFG; None: the
        fixed ``guidance_embed``).  Not under no_grad (the sampler is)."""
        pe, pooled = self.split_embeds(embeds)
        B, _, H, W = latents.shape
        if H % 2 or W % 2:
            raise MemberbenchError(f"FLUX latents need an even height and width; got {H}x{W}")
        tokens = pack_latents(latents)
        tt = torch.as_tensor(t, device=latents.device)
        timestep = (tt.expand(B) if tt.ndim == 0 else tt).to(latents.dtype)
        g = None
        if self.guidance_embeds:
            if guidance is None:
                guidance = self.guidance_embed
            g = torch.as_tensor(guidance, device=latents.device, dtype=torch.float32)
            g = g.expand(B) if g.ndim == 0 else g.reshape(B)
        out = self.pipe.transformer(
            hidden_states=tokens,
            timestep=timestep / 1000,
            guidance=g,
            pooled_projections=pooled,
            encoder_hidden_states=pe,
            txt_ids=torch.zeros(pe.shape[1], 3, device=latents.device, dtype=pe.dtype),
            img_ids=latent_image_ids(H, W, latents.device, pe.dtype),
            return_dict=False,
        )[0]
        return unpack_latents(out, H, W)


def check_folder(root: Path) -> None:
    """A local FLUX folder: model_index.json, every component, every module's weights."""
    from memberbench.adapters.local import check_components, read_model_index

    index = read_model_index(root)
    check_components(root, index, FluxAdapter.COMPONENTS)
    check_weights(root, index)


# --------------------------------------------------------------------------------------------
# cards

_FLUX_DATA = (
    "Undisclosed (Black Forest Labs, 2024): no dataset, size or filtering published; no public "
    "memorized-prompt set: name both prompt sets."
)
_FLUX_COMMON = (
    " 12B rectified-flow transformer (FluxTransformer2DModel, 19 double + 38 single blocks) on "
    "2x2-packed 16-channel latents, CLIP-L pooled + T5-XXL text encoders; memberbench "
    "packs/unpacks inside the adapter, so traces and metrics see the (16, 128, 128) latent."
)
FLUX_DEV = ModelCard(
    name="flux-dev",
    repo_id="black-forest-labs/FLUX.1-dev",
    revision="3de623fc3c33e44ffbe2bad470d0f45bccf2eb21",
    resolution=1024,
    prediction_type="flow",
    guidance_distilled=True,
    training_data=_FLUX_DATA,
    notes=(
        "Guidance-distilled: the transformer takes the guidance scale as an input and samples "
        "with no unconditional branch, so --guidance is that input and the tasks that need "
        "cond - uncond are skipped; true_cfg=on runs real CFG (empty negative prompt, "
        "guidance_embed= fixed, 3.5 by default)."
        + _FLUX_COMMON
        + " FlowMatchEulerDiscreteScheduler, shift 3.0 with dynamic shifting (mu from the "
        "image sequence length, 1.15 at 1024 px). Gated repo (non-commercial licence). Revision "
        "3de623fc... is one observed commit of the repo (Hugging Face cache paths in public "
        "code), not re-checked against the Hub."
    ),
    defaults={
        "guidance": 3.5,
        "steps": 50,
        "scheduler": "FlowMatchEulerDiscreteScheduler",
        "max_sequence_length": 512,
        "guidance_embed": 3.5,
    },
)
FLUX_SCHNELL = ModelCard(
    name="flux-schnell",
    repo_id="black-forest-labs/FLUX.1-schnell",
    revision="741f7c3ce8b383c54771c7003378a50191e9efe9",
    resolution=1024,
    prediction_type="flow",
    guidance_distilled=True,
    training_data=_FLUX_DATA,
    notes=(
        "Timestep- and guidance-distilled (adversarial diffusion distillation, 1 to 4 steps): "
        "no guidance input and no unconditional branch, so --guidance has no effect and the "
        "tasks that need cond - uncond are skipped; true_cfg=on runs real CFG with an empty "
        "negative prompt (outside what it was distilled for)."
        + _FLUX_COMMON
        + " FlowMatchEulerDiscreteScheduler, shift 1.0, no dynamic shifting. Apache-2.0. "
        "Revision 741f7c3c... is one observed commit of the repo, not re-checked against the Hub."
    ),
    defaults={
        "guidance": 0.0,
        "steps": 4,
        "scheduler": "FlowMatchEulerDiscreteScheduler",
        "max_sequence_length": 256,
    },
)
CARDS: dict[str, ModelCard] = {c.name: c for c in (FLUX_DEV, FLUX_SCHNELL)}
SPEC_KEYS = ("path", "revision", "dtype", "device", "resolution", "true_cfg", "guidance_embed")


def _card_factory():
    from memberbench.adapters.cards import CardFactory, parse_resolution, with_changes

    class FluxCardFactory(CardFactory):
        """``factory(params) -> FluxAdapter`` (path=, revision=, dtype=, device=, resolution=,
        true_cfg=, guidance_embed=)."""

        def __call__(self, params: dict[str, Any] | None = None) -> Adapter:
            params = dict(params or {})
            unknown = sorted(set(params) - set(SPEC_KEYS))
            if unknown:
                raise MemberbenchError(
                    f"model {self.card.name!r} has no parameter {unknown[0]!r}; allowed: "
                    f"{', '.join(SPEC_KEYS)} (e.g. {self.card.name}:path=/local/dir,true_cfg=on)"
                )
            res = params.get("resolution")
            if res not in (None, ""):
                check_resolution(self.card.name, parse_resolution(self.card.name, res))
            self._flux = {
                "true_cfg": parse_true_cfg(self.card.name, params.pop("true_cfg", None)),
                "guidance_embed": parse_guidance_embed(
                    self.card.name, params.pop("guidance_embed", None)
                ),
            }
            return super().__call__(params)

        def load(self, card: ModelCard, params: dict[str, Any]) -> Adapter:
            extra = getattr(self, "_flux", {})
            path = params.get("path") or None
            kw = {"device": params.get("device"), "dtype": params.get("dtype"), **extra}
            if path:
                p = Path(str(path)).expanduser()
                card = with_changes(
                    card,
                    revision="local",
                    notes=(card.notes + f" Loaded from local path {p}.").strip(),
                )
                return FluxAdapter.from_pretrained(p, card, **kw)
            revision = params.get("revision") or card.revision
            if revision != card.revision:
                card = with_changes(card, revision=revision)
            return FluxAdapter.from_pretrained(card.repo_id, card, revision=revision, **kw)

    return FluxCardFactory


def factories() -> dict[str, Any]:
    """``{card name: factory}`` for registration in ``memberbench.registry.MODELS``."""
    cls = _card_factory()
    return {name: cls(card) for name, card in CARDS.items()}
