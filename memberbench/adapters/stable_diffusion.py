"""The adapter for every diffusers text-to-image pipeline of the Stable Diffusion family.

:class:`StableDiffusionAdapter` wraps the named components of a ``StableDiffusionPipeline`` (unet,
vae, text_encoder, tokenizer, scheduler) and implements :class:`memberbench.adapters.base.Adapter`
exactly as the pipeline computes things: prompt encoding like ``encode_prompt``, one UNet call per
batch, decoding like ``VaeImageProcessor.postprocess``.  Predictions are returned in epsilon space;
v-prediction models are converted with ``eps = sqrt(abar) v + sqrt(1 - abar) x_t``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from memberbench.adapters.base import Adapter, ModelCard, tensor_fingerprint
from memberbench.adapters.identity import sampled_tensor_hash
from memberbench.devices import DTYPE_NAMES, parse_device, parse_dtype
from memberbench.sampling import schedulers as _sched
from memberbench.types import MemberbenchError, stable_hash


class StableDiffusionAdapter(Adapter):
    """An SD-family pipeline (SD 1.x, 2.x, fine-tunes, the bundled model) as an Adapter.

    Build it from a loaded pipeline (``StableDiffusionAdapter(pipe, card)``) or from a folder or
    Hugging Face repo (:meth:`from_pretrained`).  ``.pipe`` is the pipeline (its scheduler is the
    one the model shipped with), ``.unet`` the denoiser.

    Subclasses for other architectures (:mod:`memberbench.adapters.sdxl`,
    :mod:`memberbench.adapters.pixart`) set ``family``, the components they need and the modules
    the fingerprint hashes, and override the prompt encoding and the denoiser call.
    """

    family: ClassVar[str] = "sd"
    # the pipeline attributes the adapter needs, and the modules whose weights it computes with
    COMPONENTS: ClassVar[tuple[str, ...]] = (
        "unet",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
    )
    MODULES: ClassVar[tuple[str, ...]] = ("unet", "vae", "text_encoder")
    DENOISER: ClassVar[str] = "unet"
    # extra keyword arguments of DiffusionPipeline.from_pretrained for this pipeline class
    PIPELINE_KWARGS: ClassVar[dict[str, Any]] = {
        "safety_checker": None,
        "requires_safety_checker": False,
    }

    def __init__(
        self,
        pipe: Any,
        card: ModelCard | None = None,
        *,
        device: Any = None,
        dtype: Any = None,
        source: str | None = None,
        weight_dirs: list[str | os.PathLike] | None = None,
    ) -> None:
        for comp in self.COMPONENTS:
            if getattr(pipe, comp, None) is None:
                raise MemberbenchError(
                    f"pipeline {type(pipe).__name__} has no {comp}: not a {self.family!r}-family "
                    "text-to-image pipeline"
                )
        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype)
        den = getattr(pipe, self.DENOISER)
        if den.dtype != self.dtype:
            pipe = pipe.to(dtype=self.dtype)
        if den.device != self.device:
            pipe = pipe.to(self.device)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        for comp in self.MODULES:
            m = getattr(pipe, comp)
            m.eval()
            m.requires_grad_(False)
        self.pipe = pipe
        self.source = source
        # the folders the pipeline was loaded from: the fingerprint hashes every file in them
        # (None: an in-memory pipeline, whose fingerprint hashes every byte of every tensor)
        self.weight_dirs = [Path(d) for d in weight_dirs] if weight_dirs else None
        self._fingerprint_covers = ""
        self._files_sha256: str | None = None  # sha256 over every file in weight_dirs
        cfg = dict(pipe.scheduler.config)
        pred = cfg.get("prediction_type", "epsilon")
        if card is None:
            card = ModelCard(
                name="custom",
                repo_id=str(source or "local"),
                revision=None,
                resolution=int(getattr(pipe, self.DENOISER).config.sample_size)
                * self.vae_scale_factor,
                prediction_type=pred,
            )
        self.card = card
        # the model's own parameterisation: the shipped scheduler's, unless the card says so
        self.prediction_type = pred if "prediction_type" in cfg else card.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise MemberbenchError(
                f"model {card.name!r} predicts {self.prediction_type!r}; memberbench supports "
                "epsilon and v_prediction models"
            )
        self._scheduler_config = {k: v for k, v in cfg.items()}
        self._abar = pipe.scheduler.alphas_cumprod.detach().to(torch.float64)
        self._fingerprint: str | None = None
        self._vae_fp32: Any = None

    # --- construction ------------------------------------------------------------------------
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
        local_files_only: bool | None = None,
    ) -> StableDiffusionAdapter:
        """Load a pipeline folder or Hugging Face repo id (see :func:`load_pipeline`)."""
        dt = parse_dtype(dtype)
        pipe = load_pipeline(
            path_or_repo,
            revision=revision,
            dtype=dt,
            vae=vae,
            local_files_only=local_files_only,
            model_name=card.name if card else None,
            pipeline_kwargs=cls.PIPELINE_KWARGS,
        )
        src = str(path_or_repo) + (f"@{revision}" if revision else "")
        dirs = [_local_dir(path_or_repo, revision)]
        if vae:
            dirs.append(_local_dir(vae, None))
        weight_dirs = None if any(d is None for d in dirs) else dirs
        return cls(pipe, card, device=device, dtype=dt, source=src, weight_dirs=weight_dirs)

    # --- identity ----------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """16 hex of: the sha256 of every file the pipeline was loaded from (memoised by size
        and mtime, see :mod:`memberbench.adapters.identity`) or, for an in-memory pipeline,
        of every byte of every unet / vae / text-encoder tensor; plus the scheduler config,
        dtype, device type, prediction type and tokenizer length."""
        if self._fingerprint is None:
            from memberbench.adapters.identity import dirs_sha256

            sched = {k: v for k, v in self._scheduler_config.items() if not k.startswith("_")}
            extra = {
                "scheduler": sched,
                "dtype": DTYPE_NAMES.get(self.dtype, str(self.dtype)),
                "device": self.device.type,
                "prediction_type": self.prediction_type,
                "tokenizer_max_length": int(self.pipe.tokenizer.model_max_length),
            }
            files = None
            if self.weight_dirs:
                try:
                    files = dirs_sha256(self.weight_dirs)
                except OSError:  # a folder went away after loading: hash the tensors instead
                    files = None
            tensors: dict[str, torch.Tensor] = {}
            for comp in self.MODULES:
                for k, v in getattr(self.pipe, comp).state_dict().items():
                    tensors[f"{comp}.{k}"] = v
            if files is not None:
                extra["files_sha256"] = self._files_sha256 = files[0]
                # plus a cheap strided sample of the live tensors, for edits made after loading
                extra["loaded_sample"] = sampled_tensor_hash(tensors)
                self._fingerprint = stable_hash(extra)
                where = ", ".join(str(d) for d in self.weight_dirs or [])
                self._fingerprint_covers = f"every byte of {files[1]} files in {where}"
            else:
                self._fingerprint = tensor_fingerprint(tensors, extra)
                self._fingerprint_covers = f"every byte of every {', '.join(self.MODULES)} tensor"
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["source"] = self.source
        if self._files_sha256:  # loaded from files: the full-byte sha256 of all of them
            d["weights_sha256"] = self._files_sha256
        d["scheduler_shipped"] = self._scheduler_config.get("_class_name")
        d["fingerprint_covers"] = self._fingerprint_covers
        d["prediction_type"] = self.prediction_type
        d["pipeline_class"] = type(self.pipe).__name__
        d["image_resize"] = "PIL lanczos, straight to model resolution (no crop)"
        return d

    # --- components --------------------------------------------------------------------------
    @property
    def scheduler_config(self) -> dict[str, Any]:
        return dict(self._scheduler_config)

    def make_scheduler(self, name: str = _sched.DEFAULT_SCHEDULER) -> Any:
        return _sched.make_scheduler(self._scheduler_config, name)

    @property
    def unet(self) -> torch.nn.Module:
        return self.pipe.unet

    @property
    def vae(self) -> torch.nn.Module:
        return self.pipe.vae

    @property
    def text_encoder(self) -> torch.nn.Module:
        return self.pipe.text_encoder

    @property
    def tokenizer(self) -> Any:
        return self.pipe.tokenizer

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.vae_scale_factor
        return (int(getattr(self.pipe, self.DENOISER).config.in_channels), side, side)

    def latent_shape_for(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        f = self.vae_scale_factor
        h = height or self.resolution
        w = width or self.resolution
        if h % f or w % f:
            raise MemberbenchError(f"height and width must be multiples of {f}; got {h}x{w}")
        return (int(getattr(self.pipe, self.DENOISER).config.in_channels), h // f, w // f)

    # --- batched operations ------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Like ``StableDiffusionPipeline.encode_prompt`` (no clip_skip, no LoRA scale)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        tok = self.pipe.tokenizer
        enc = self.pipe.text_encoder
        inputs = tok(
            list(prompts),
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        mask = None
        if getattr(enc.config, "use_attention_mask", False):
            mask = inputs.attention_mask.to(self.device)
        out = enc(inputs.input_ids.to(self.device), attention_mask=mask)[0]
        return out.to(dtype=enc.dtype, device=self.device)

    def _abar_at(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        ab = self._abar.to(like.device)
        tt = torch.as_tensor(t, device=like.device)
        if tt.ndim == 0:
            tt = tt.expand(like.shape[0])
        if tt.is_floating_point() and not torch.equal(tt, tt.round()):
            # fractional timesteps (sigma schedulers): interpolate abar linearly in t
            lo = tt.floor().long().clamp(0, len(ab) - 1)
            hi = (lo + 1).clamp(max=len(ab) - 1)
            w = (tt - lo).to(torch.float64)
            a = ab[lo] * (1 - w) + ab[hi] * w
        else:
            a = ab[tt.round().long()]
        return a.view(-1, *([1] * (like.ndim - 1)))

    def predict_noise(
        self, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor
    ) -> torch.Tensor:
        """Epsilon prediction for the (scaled, i.e. VP) model input ``latents`` at ``t``.

        Not wrapped in ``no_grad`` (the sampler is), so hooks can differentiate through it.
        """
        out = self.pipe.unet(latents, t, encoder_hidden_states=embeds, return_dict=False)[0]
        if self.prediction_type == "v_prediction":
            a = self._abar_at(t, latents)
            out = (a.sqrt() * out.double() + (1 - a).sqrt() * latents.double()).to(out.dtype)
        return out

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> uint8 (B, H, W, 3), like the pipeline: vae.decode(z / scaling_factor),
        then ``round(clamp(img / 2 + 0.5, 0, 1) * 255)``."""
        vae = self.pipe.vae
        z = latents.to(self.device, vae.dtype) / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift:
            z = z + shift
        img = vae.decode(z, return_dict=False)[0]
        img = (img / 2 + 0.5).clamp(0, 1)
        arr = img.cpu().permute(0, 2, 3, 1).float().numpy()
        return (arr * 255).round().astype(np.uint8)

    @torch.no_grad()
    def encode_images(self, images: Any) -> torch.Tensor:
        """uint8 images (B, H, W, 3) or a list of (H, W, 3) of any size -> fp32 latents, as
        docs/metrics.md#notation defines x: resized straight (no crop, PIL lanczos) to the model resolution, [-1, 1],
        ``latent_dist.mode() * scaling_factor``, computed in fp32."""
        from PIL import Image

        res = self.resolution
        if isinstance(images, np.ndarray) and images.ndim != 4:
            raise MemberbenchError(
                f"expected a batch of uint8 images (B, H, W, 3) or a list of (H, W, 3); got an "
                f"array of shape {images.shape}"
            )
        batch = []
        for im in list(images):
            a = np.asarray(im)
            if a.ndim == 2:
                a = np.repeat(a[:, :, None], 3, axis=2)
            if a.ndim != 3 or a.shape[2] not in (3, 4):
                raise MemberbenchError(f"expected uint8 images (H, W, 3); got shape {a.shape}")
            a = a[:, :, :3]
            if a.dtype != np.uint8:
                if np.issubdtype(a.dtype, np.floating) and a.max() <= 1.0:
                    a = a * 255.0
                a = np.clip(np.round(a), 0, 255).astype(np.uint8)
            if a.shape[:2] != (res, res):
                a = np.asarray(Image.fromarray(a).resize((res, res), Image.Resampling.LANCZOS))
            batch.append(a)
        if not batch:
            return torch.zeros((0, *self.latent_shape))
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        vae = self.pipe.vae
        if vae.dtype != torch.float32:
            if self._vae_fp32 is None:
                self._vae_fp32 = copy.deepcopy(vae).float()
            vae = self._vae_fp32
        z = vae.encode(x.to(self.device)).latent_dist.mode()
        shift = getattr(vae.config, "shift_factor", None)
        if shift:
            z = z - shift
        return (z * vae.config.scaling_factor).float()

    def close(self) -> None:
        self._vae_fp32 = None
        self.pipe = self.pipe.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# loading


def _local_dir(path_or_repo: str | os.PathLike, revision: str | None) -> Path | None:
    """The local folder a pipeline (or VAE) was loaded from: the path itself, or the repo's
    snapshot in the Hugging Face cache; None when it cannot be found without the network."""
    p = Path(str(path_or_repo)).expanduser()
    if p.exists():
        return p if p.is_dir() else None
    try:
        from huggingface_hub import snapshot_download

        snap = snapshot_download(str(path_or_repo), revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached: the fingerprint hashes the tensors instead
        return None
    return Path(snap) if Path(snap).is_dir() else None


def _offline() -> bool:
    v = os.environ.get("HF_HUB_OFFLINE", "")
    return v.strip().lower() in ("1", "true", "yes", "on")


def load_pipeline(
    path_or_repo: str | os.PathLike,
    *,
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
    vae: str | None = None,
    local_files_only: bool | None = None,
    model_name: str | None = None,
    pipeline_kwargs: dict[str, Any] | None = None,
) -> Any:
    """A diffusers text-to-image pipeline from a local folder or a Hugging Face repo id.

    Tries the local Hugging Face cache first (no network); downloads only when that fails and
    ``HF_HUB_OFFLINE`` is not set.  Failures become a MemberbenchError naming the repo id, the
    revision and how to point at a local copy.
    """
    from diffusers import DiffusionPipeline

    kwargs: dict[str, Any] = {_dtype_kwarg(): dtype}
    src = str(path_or_repo)
    is_local = Path(src).expanduser().exists()
    if is_local:
        src = str(Path(src).expanduser())
        if not (Path(src) / "model_index.json").is_file():
            raise MemberbenchError(
                f"{src} is not a diffusers pipeline folder (no model_index.json); point path= at "
                "the folder holding model_index.json, unet/, vae/, text_encoder/, tokenizer/"
            )
    if pipeline_kwargs is None:
        pipeline_kwargs = StableDiffusionAdapter.PIPELINE_KWARGS
    pipe_kwargs = dict(kwargs, **pipeline_kwargs)

    def _load(local_only: bool):
        p = DiffusionPipeline.from_pretrained(
            src,
            revision=None if is_local else revision,
            local_files_only=local_only,
            **pipe_kwargs,
        )
        if vae:
            from diffusers import AutoencoderKL

            vae_local = Path(vae).expanduser().exists()
            p.vae = AutoencoderKL.from_pretrained(
                vae, local_files_only=local_only or vae_local, **kwargs
            )
        return p

    _load = _quiet(_load)
    if is_local:
        try:
            return _load(True)
        except Exception as e:  # noqa: BLE001 - turned into a user-facing message
            raise MemberbenchError(f"could not load the pipeline in {src}: {_short(e)}") from None
    offline = _offline() if local_files_only is None else local_files_only
    try:
        return _load(True)
    except Exception as first:  # noqa: BLE001
        if offline:
            raise _missing_weights(src, revision, model_name, first, offline=True) from None
    # not cached: download, unless the Hub is unreachable (fail in seconds, not after retries)
    why = _hub_unreachable()
    if why:
        raise _missing_weights(src, revision, model_name, OSError(why), offline=False) from None
    try:
        return _load(False)
    except Exception as e:  # noqa: BLE001
        raise _missing_weights(src, revision, model_name, e, offline=False) from None


def _hub_unreachable(timeout: float = 5.0) -> str:
    """'' if a TCP connection to the Hub endpoint opens within ``timeout`` s, else the reason.

    Skipped (returns '') when a proxy is configured: then only the download itself can tell.
    """
    import socket
    import threading
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return ""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = (
        url.hostname or "huggingface.co",
        url.port or (443 if url.scheme == "https" else 80),
    )
    result: list[str] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append("")
        except OSError as e:
            result.append(f"cannot reach {host}:{port} ({e})")

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    th.join(timeout + 1.0)  # name resolution has no timeout of its own
    return result[0] if result else f"cannot reach {host}:{port} (timed out after {timeout:g} s)"


def _dtype_kwarg() -> str:
    """Recent diffusers call it ``dtype`` (``torch_dtype`` is deprecated); older: torch_dtype."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def _quiet(fn):
    """Run ``fn`` with diffusers' and transformers' loading progress bars switched off."""

    def wrapped(*a, **k):
        import diffusers.utils.logging as dlog

        try:
            import transformers.utils.logging as tlog
        except ImportError:  # pragma: no cover
            tlog = None
        d_on = dlog.is_progress_bar_enabled()
        t_on = tlog.is_progress_bar_enabled() if tlog else False
        dlog.disable_progress_bar()
        if tlog:
            tlog.disable_progress_bar()
        try:
            return fn(*a, **k)
        finally:
            if d_on:
                dlog.enable_progress_bar()
            if t_on:
                tlog.enable_progress_bar()

    return wrapped


def _short(e: BaseException, n: int = 200) -> str:
    msg = " ".join(str(e).split())
    msg = f"{type(e).__name__}: {msg}"
    return msg if len(msg) <= n else msg[: n - 3] + "..."


def _missing_weights(
    repo: str, revision: str | None, name: str | None, err: BaseException, offline: bool
) -> MemberbenchError:
    rev = revision or "main (unpinned)"
    name = name or "custom"
    why = (
        "HF_HUB_OFFLINE is set and they are not in the local Hugging Face cache"
        if offline
        else "they are not in the local Hugging Face cache and could not be downloaded"
    )
    return MemberbenchError(
        f"weights of model {name!r} (Hugging Face repo {repo}, revision {rev}) not found: {why} "
        f"({_short(err, 160)}). Download them where there is network "
        f"(`huggingface-cli download {repo}"
        + (f" --revision {revision}" if revision else "")
        + "`) "
        f"or point at a local copy: --model {name}:path=/local/dir"
    )
