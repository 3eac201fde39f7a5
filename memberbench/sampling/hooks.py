"""The step-hook protocol: how mitigations change sampling without copying the loop.

The traced sampler (``memberbench.sampling.sampler``) calls every hook at fixed points of its
one loop.  A hook may change, in place or by returning new values:

* ``on_start``      the initial latents ``state.latents`` (= x_T, e.g. initial-noise adjustment)
                    and the text embeddings ``state.cond_embeds`` / ``state.uncond_embeds``
                    (e.g. prompt-embedding optimisation);
* ``observe``       reads the two branches' predictions of step i before its guidance is chosen
                    (noise for DDPM-family models, velocity for flow-matching ones; any family);
* ``guidance``      the per-sample guidance scale of step i (guidance schedules, online control);
* ``combine``       the guided noise prediction from (eps_u, eps_c) (e.g. opposite guidance);
* ``after_step``    the latents after update i.

Every method has a do-nothing default, so a hook overrides only what it needs.  Hooks see
batched tensors: dimension 0 is the batch of requests, in ``state.requests`` order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from memberbench.types import GenerationRequest


@dataclass
class SamplerState:
    """What a hook can read (and, where documented, change) during sampling."""

    requests: list[GenerationRequest]
    adapter: Any  # memberbench.adapters.base.Adapter
    scheduler: Any  # the diffusers scheduler instance driving this batch
    timesteps: torch.Tensor  # the sampling grid, scheduler.timesteps
    latents: torch.Tensor  # current x_i, (B, C, h, w); x_T after on_start
    cond_embeds: torch.Tensor  # (B, L, D) text embeddings of the prompts
    uncond_embeds: torch.Tensor  # (B, L, D) embeddings of the negative prompt ("")
    guidance: torch.Tensor  # (B,) default guidance scale per sample
    step: int = -1  # index i of the update in progress (0-based), -1 before the loop
    extra: dict[str, Any] = field(default_factory=dict)  # scratch space for hooks
    unet_evals: torch.Tensor | None = None  # (B,) UNet evaluations spent so far per sample

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


class StepHook:
    """Base class of step hooks. Override what you need; defaults change nothing."""

    def on_start(self, state: SamplerState) -> None:
        """Called once after x_T and the embeddings exist, before the first UNet call."""

    def observe(
        self,
        state: SamplerState,
        i: int,
        t: torch.Tensor,
        pred_u: torch.Tensor,
        pred_c: torch.Tensor,
    ) -> None:
        """Called with step i's unconditional and conditional predictions, before ``guidance``:
        the model's own output, noise (DDPM family) or velocity ``v = eps - x0`` (flow
        matching), so a hook that only reads them (e.g. Wen's magnitude ``||pred_c - pred_u||``)
        works on every family with a CFG branch.  Not called for single-branch (guidance-
        distilled) sampling."""

    def guidance(
        self, state: SamplerState, i: int, t: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        """Return the (B,) guidance scales for step i; ``g`` is the value so far."""
        return g

    def combine(
        self,
        state: SamplerState,
        i: int,
        t: torch.Tensor,
        eps_u: torch.Tensor,
        eps_c: torch.Tensor,
        g: torch.Tensor,
    ) -> torch.Tensor | None:
        """Return the guided prediction, or None to keep ``eps_u + g (eps_c - eps_u)``."""
        return None

    def after_step(self, state: SamplerState, i: int, t: torch.Tensor) -> None:
        """Called after update i; may change ``state.latents`` in place."""


def count_unet_evals(state: SamplerState, n: Any, rows: torch.Tensor | None = None) -> None:
    """Add ``n`` UNet evaluations to ``state.unet_evals`` (all samples, or the ``rows`` mask /
    index tensor).  ``n`` may be a number or a (B,) tensor."""
    if state.unet_evals is None:
        state.unet_evals = torch.zeros(len(state.requests), dtype=torch.long)
    add = torch.as_tensor(n, dtype=state.unet_evals.dtype, device=state.unet_evals.device)
    if add.ndim == 0:
        add = add.expand(state.unet_evals.shape)
    if rows is not None:
        add = torch.where(rows.to(state.unet_evals.device).bool(), add, torch.zeros_like(add))
    state.unet_evals += add
