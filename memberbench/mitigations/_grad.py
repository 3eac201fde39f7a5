"""Pre-sampling optimisation shared by ``prompt-embedding`` and ``initial-noise``.

Both methods run a few gradient steps before the first sampler update to shrink the
text-conditional noise magnitude ``||eps_c - eps_u||`` at the first sampling timestep, for each
sample of the batch independently: a sample stops as soon as it reaches the target, and the
others keep going.  :class:`RowAdamW` is AdamW (torch's update rule, decoupled weight decay)
with a separate step count per row, so stopped rows do not move and the result for a sample does
not depend on the batch it was sampled in.
"""

from __future__ import annotations

from typing import Any

import torch

from memberbench.sampling.hooks import SamplerState


class RowAdamW:
    """AdamW on a (B, ...) tensor whose rows are optimised independently."""

    def __init__(
        self,
        param: torch.Tensor,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        self.p = param
        self.lr = lr
        self.b1, self.b2 = betas
        self.eps = eps
        self.wd = weight_decay
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.t = torch.zeros(param.shape[0], dtype=torch.long)

    @torch.no_grad()
    def step(self, grad: torch.Tensor, rows: torch.Tensor) -> None:
        """Update the rows selected by the bool mask ``rows`` (B,) with ``grad`` (same shape)."""
        idx = torch.nonzero(rows.cpu()).flatten()
        if idx.numel() == 0:
            return
        dev = self.p.device
        ix = idx.to(dev)
        self.t[idx] += 1
        t = self.t[idx].to(dev, self.p.dtype).view(-1, *([1] * (self.p.ndim - 1)))
        g = grad[ix]
        p = self.p[ix] * (1 - self.lr * self.wd)
        m = self.m[ix].mul_(self.b1).add_(g, alpha=1 - self.b1)
        v = self.v[ix].mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        bc1 = 1 - self.b1**t
        bc2 = 1 - self.b2**t
        denom = v.sqrt() / bc2.sqrt() + self.eps
        p = p - (self.lr / bc1) * m / denom
        self.p[ix] = p
        self.m[ix] = m
        self.v[ix] = v


def model_input(state: SamplerState, latents: torch.Tensor, t: Any) -> torch.Tensor:
    """The UNet input for ``latents`` at ``t``, exactly as the sampler builds it."""
    inp = state.scheduler.scale_model_input(latents, t)
    unet = getattr(state.adapter, "unet", None)
    return inp.to(getattr(unet, "dtype", inp.dtype))


def eps_diff_norm(eps_c: torch.Tensor, eps_u: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||eps_c - eps_u||`` (differentiable), in fp32 or wider."""
    d = (eps_c - eps_u).flatten(1)
    if d.dtype in (torch.float16, torch.bfloat16):
        d = d.float()
    return d.norm(dim=1)
