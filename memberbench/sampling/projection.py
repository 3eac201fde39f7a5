"""The per-step projection the sampler records: each latent state on (x, x_T), batched, in fp64.

It lives in the sampling layer because the sampler computes it while it samples (the full latents
are not kept); the M6 metrics (``memberbench.metrics.decomposition``) build on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _fp64_device(a: Any):
    """Where to compute in fp64: the tensor's own device if it supports fp64 (CPU, CUDA)."""
    import torch

    if torch.is_tensor(a) and a.device.type in ("cpu", "cuda"):
        return a.device
    return torch.device("cpu")


def _as_rows(a: Any, device: Any, batch: int | None = None):
    """Flatten a (B, ...) tensor/array to a (B, d) fp64 torch tensor on ``device``."""
    import torch

    t = torch.as_tensor(a).detach().to(device=device, dtype=torch.float64)
    if t.ndim == 0:
        raise ValueError("expected a batched latent (B, ...), got a scalar")
    t = t.reshape(t.shape[0], -1)
    if batch is not None and t.shape[0] == 1 and batch > 1:
        t = t.expand(batch, -1)
    return t


def decompose_batch(latents: Any, x: Any, x_T: Any, *, rcond: float = 1e-10):
    """Least-squares fit ``latents[b] ~ w0[b] * x[b] + wT[b] * x_T[b]`` per sample, in fp64.

    latents, x, x_T: torch tensors (or arrays) of shape (B, ...) with the same number of elements
    per sample (x / x_T may have batch size 1 and are then broadcast).  Solves the 2x2 normal
    equations.  Returns ``(w0, wT, resid_rms)``, each a float64 tensor of shape (B,) on the
    device of ``latents`` (CPU for devices without fp64, e.g. MPS), or numpy arrays if
    ``latents`` was a numpy array.  ``resid_rms = sqrt(mean_d (x_i - w0 x - wT x_T)^2)``.
    Where x is zero or x and x_T are collinear (the Gram determinant is below
    ``rcond * ||x||^2 ||x_T||^2``) the result is NaN, without raising.
    """
    import torch

    as_numpy = isinstance(latents, np.ndarray)
    dev = _fp64_device(latents)
    L = _as_rows(latents, dev)
    B = L.shape[0]
    X = _as_rows(x, dev, B)
    N = _as_rows(x_T, dev, B)
    if not (X.shape == L.shape == N.shape):
        raise ValueError(
            f"decompose_batch: shapes differ after flattening: latents {tuple(L.shape)}, "
            f"x {tuple(X.shape)}, x_T {tuple(N.shape)}"
        )
    a = (X * X).sum(1)
    b = (X * N).sum(1)
    c = (N * N).sum(1)
    p = (X * L).sum(1)
    q = (N * L).sum(1)
    det = a * c - b * b
    ok = (a > 0) & (c > 0) & (det > rcond * a * c)
    safe = torch.where(ok, det, torch.ones_like(det))
    w0 = (c * p - b * q) / safe
    wT = (a * q - b * p) / safe
    resid = L - w0[:, None] * X - wT[:, None] * N
    rms = resid.pow(2).mean(1).sqrt()
    nan = torch.full_like(w0, float("nan"))
    w0 = torch.where(ok, w0, nan)
    wT = torch.where(ok, wT, nan)
    rms = torch.where(ok, rms, nan)
    if as_numpy:
        return w0.cpu().numpy(), wT.cpu().numpy(), rms.cpu().numpy()
    return w0, wT, rms
