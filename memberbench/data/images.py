"""Decoding a prompt row's training image (a path, bytes, a PIL image or an array) to uint8 RGB."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from memberbench.data.options import (
    _Options,
)
from memberbench.types import MemberbenchError


def _to_uint8_rgb(img: Any) -> np.ndarray:
    from PIL import Image

    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise MemberbenchError(f"unsupported image array {arr.dtype} {tuple(arr.shape)}")
    return np.ascontiguousarray(arr[..., :3])


def _load_image(value: Any, opts: _Options) -> tuple[np.ndarray | None, str | None, str | None]:
    """(image, file it came from, problem).  URLs are never fetched."""
    from PIL import Image, UnidentifiedImageError

    if value is None:
        return None, None, None
    if isinstance(value, dict):  # datasets' Image feature, undecoded: {"bytes", "path"}
        if value.get("bytes"):
            try:
                with Image.open(io.BytesIO(value["bytes"])) as im:
                    return _to_uint8_rgb(im), value.get("path"), None
            except (UnidentifiedImageError, OSError) as e:
                return None, value.get("path"), f"unreadable image bytes ({e})"
        value = value.get("path")
        if value is None:
            return None, None, None
    if isinstance(value, str):
        if not value.strip():
            return None, None, None
        if re.match(r"^[a-z][a-z0-9+.-]*://", value, re.I):
            return None, value, None  # a URL: not fetched
        p = Path(value)
        if not p.is_absolute() and opts.base_dir is not None:
            p = opts.base_dir / p
        if not p.is_file():
            return None, str(p), f"image file not found: {p}"
        try:
            with Image.open(p) as im:
                return _to_uint8_rgb(im), str(p), None
        except (UnidentifiedImageError, OSError) as e:
            return None, str(p), f"unreadable image file {p} ({e})"
    return _to_uint8_rgb(value), None, None
