"""M6: latent decomposition x_i ~ w0_i * x + wT_i * x_T and the deviation from the schedule."""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_rows(a: Any, batch: int | None = None):
    """Flatten a (B, ...) tensor/array to (B, d) fp64 torch tensor."""
    import torch

    t = torch.as_tensor(a).detach().to(device="cpu", dtype=torch.float64)
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
    equations.  Returns ``(w0, wT, resid_rms)``, each a float64 tensor of shape (B,) (numpy arrays
    if ``latents`` was a numpy array).  Where x is zero or x and x_T are collinear (the Gram
    determinant is below ``rcond * ||x||^2 ||x_T||^2``) the result is NaN, without raising.
    """
    import torch

    as_numpy = isinstance(latents, np.ndarray)
    L = _as_rows(latents)
    B = L.shape[0]
    X = _as_rows(x, B)
    N = _as_rows(x_T, B)
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
        return w0.numpy(), wT.numpy(), rms.numpy()
    return w0, wT, rms
