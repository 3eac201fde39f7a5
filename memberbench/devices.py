"""Devices and dtypes named on the command line or in a model spec (``dtype=fp16,device=cuda:1``).

A low layer: the sampler, the adapters and the model cards all parse these names, so they live
below all of them.
"""

from __future__ import annotations

from typing import Any

import torch

from memberbench.types import MemberbenchError

__all__ = ["DTYPES", "DTYPE_NAMES", "parse_device", "parse_dtype"]

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def parse_dtype(value: Any) -> torch.dtype:
    """'fp32' / 'fp16' / 'bf16' (or float32, float16, half, bfloat16, a torch.dtype); None -> fp32."""
    if value is None or value == "":
        return torch.float32
    if isinstance(value, torch.dtype):
        if value in DTYPE_NAMES:
            return value
    elif isinstance(value, str) and value.strip().lower().replace("torch.", "") in DTYPES:
        return DTYPES[value.strip().lower().replace("torch.", "")]
    raise MemberbenchError(f"dtype must be one of fp32, fp16, bf16; got {value!r}")


def parse_device(value: Any) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', 'mps' (or a torch.device); None -> cuda if available, else cpu."""
    if value is None or value == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        raise MemberbenchError(
            f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps'; got {value!r}"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MemberbenchError(f"device {value!r} requested but CUDA is not available; use cpu")
    return dev
