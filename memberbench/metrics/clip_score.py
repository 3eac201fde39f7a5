"""CLIP score (utility of a mitigation): ``100 * max(cos(image_emb, text_emb), 0)`` per image-prompt
pair, averaged, as in torchmetrics' CLIPScore, computed with open_clip.

The backbone (``model_name``, e.g. "ViT-L-14") and weights (``pretrained``: an open_clip tag such
as "openai", or a local checkpoint path) are parameters and are written into results by
:meth:`ClipScorer.describe` (with the checkpoint's sha256 for a local file).  The default,
ViT-L-14 / openai, is the model torchmetrics uses by default (openai/clip-vit-large-patch14).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from memberbench.metrics.base import Metric
from memberbench.metrics.declare import Headline, declare
from memberbench.metrics.stats import Stat, mean_stat
from memberbench.types import MemberbenchError


def clip_score_from_embeddings(image_emb: Any, text_emb: Any) -> np.ndarray:
    """Per-pair ``100 * max(cos(image_emb_i, text_emb_i), 0)`` (embeddings normalised here)."""
    a = _np64(image_emb)
    b = _np64(text_emb)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return 100.0 * np.maximum((a * b).sum(-1), 0.0)


def _np64(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


@contextlib.contextmanager
def _hf_offline(offline: bool | None) -> Iterator[None]:
    """Force huggingface_hub's offline mode for the duration (None: leave as configured)."""
    if offline is None:
        yield
        return
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - open_clip then downloads by URL only
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = bool(offline)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


class ClipScorer(Metric):
    """CLIP score with an open_clip model.

    ``model_name``/``pretrained``: as for ``open_clip.create_model_and_transforms``;
    ``pretrained`` may be a local checkpoint path.  ``offline``: True to never touch the network
    (only cached weights), None to follow HF_HUB_OFFLINE.  ``model``/``preprocess``/``tokenizer``:
    pass ready objects instead (tests, custom models); then ``model_name`` is only a label.
    Loading is lazy (first use).
    """

    name = "clip_score"
    higher_is_better = True

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | None = "openai",
        *,
        device: str = "cpu",
        batch_size: int = 32,
        cache_dir: str | None = None,
        offline: bool | None = None,
        model: Any = None,
        preprocess: Any = None,
        tokenizer: Any = None,
    ) -> None:
        self.model_name = model_name
        self.pretrained = pretrained
        self.device = device
        self.batch_size = int(batch_size)
        self.cache_dir = cache_dir
        self.offline = offline
        self._model, self._preprocess, self._tokenizer = model, preprocess, tokenizer
        params: dict[str, Any] = {"model_name": model_name, "pretrained": pretrained}
        if pretrained and Path(pretrained).expanduser().is_file():
            from memberbench.metrics.sscd import file_sha256

            params["checkpoint_sha256"] = file_sha256(Path(pretrained).expanduser())
        if model is not None:
            params["custom_model"] = True
        try:
            from importlib.metadata import version

            params["open_clip_version"] = version("open_clip_torch")
        except Exception:  # pragma: no cover - metadata missing
            pass
        super().__init__(**params)

    def load(self) -> tuple[Any, Any, Any]:
        if self._model is not None and self._preprocess is not None and self._tokenizer is not None:
            return self._model, self._preprocess, self._tokenizer
        import open_clip

        if self.model_name not in open_clip.list_models() and not self.model_name.startswith(
            ("hf-hub:", "local-dir:")
        ):
            raise MemberbenchError(
                f"unknown open_clip model {self.model_name!r}; see open_clip.list_models() "
                "(e.g. 'ViT-L-14', 'ViT-B-32')"
            )
        pre = self.pretrained
        if pre and Path(pre).expanduser().is_file():
            pre = str(Path(pre).expanduser())
        try:
            with _hf_offline(self.offline):
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.model_name, pretrained=pre, device=self.device, cache_dir=self.cache_dir
                )
        except MemberbenchError:
            raise
        except Exception as e:
            raise MemberbenchError(
                f"could not load CLIP weights {self.model_name}/{self.pretrained}: the weights "
                "are not in the local cache and could not be downloaded "
                f"({type(e).__name__}: {str(e)[:300]}). Fix: run once with network access to fill "
                "the cache (HF_HOME / ~/.cache/huggingface, or cache_dir=), or pass "
                "pretrained=/path/to/open_clip_checkpoint.bin; set HF_HUB_OFFLINE=1 (or "
                "offline=True) to fail fast instead of retrying the network."
            ) from None
        model.eval()
        tok = self._tokenizer or open_clip.get_tokenizer(self.model_name)
        self._model, self._preprocess, self._tokenizer = model, preprocess, tok
        return model, preprocess, tok

    def embed_images(self, images: Any) -> np.ndarray:
        """uint8 images (N, H, W, 3) or a list of HWC arrays / PIL images -> (N, D) normalised."""
        import torch
        from PIL import Image

        model, preprocess, _ = self.load()
        ims = [im if hasattr(im, "convert") else Image.fromarray(np.asarray(im)) for im in images]
        outs = []
        for i in range(0, len(ims), self.batch_size):
            x = torch.stack([preprocess(im.convert("RGB")) for im in ims[i : i + self.batch_size]])
            with torch.inference_mode():
                outs.append(model.encode_image(x.to(self.device)).float().cpu())
        e = torch.cat(outs).double().numpy()
        return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        model, _, tok = self.load()
        outs = []
        for i in range(0, len(texts), self.batch_size):
            t = tok(list(texts[i : i + self.batch_size]))
            with torch.inference_mode():
                outs.append(model.encode_text(t.to(self.device)).float().cpu())
        e = torch.cat(outs).double().numpy()
        return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)

    def score(self, images: Any, texts: Sequence[str] | str) -> np.ndarray:
        """Per-pair CLIP score; one text broadcasts over all images."""
        if isinstance(texts, str):
            texts = [texts]
        n = len(images)
        if len(texts) not in (1, n):
            raise MemberbenchError(f"{n} images but {len(texts)} texts (need 1 or {n})")
        return clip_score_from_embeddings(self.embed_images(images), self.embed_texts(texts))

    def __call__(self, images: Any, texts: Sequence[str] | str) -> Stat:
        """Mean CLIP score over the pairs, with its standard error."""
        return mean_stat(self.score(images, texts), what=self.name)


# --------------------------------------------------------------------------------------------
# declarations (tasks/test_utility.py records them)


declare(
    "clip_score",
    family="utility",
    higher_is_better=True,
    description="CLIP score (100 * cos, clipped at 0), mean over seeds, mean over prompts",
    headline=(
        Headline("clip_score", "CLIP mem", 80),
        Headline("clip_score.nonmem", "CLIP non-mem", 90),
    ),
)
