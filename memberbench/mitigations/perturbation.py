"""Small random perturbations of the text embedding, put in front of a mitigation: the robustness
check of ``tasks/test_robustness.py`` (docs/metrics.md#robustness-sscd-regain).

Kowalczuk, Hintersdorf, Struppek, Kersting, Dziedzic & Boenisch, "Finding Dori: Memorization in
Text-to-Image Diffusion Models Is Less Local Than Assumed" (arXiv 2507.16880, 2025) show that
after a mitigation (pruning the neurons NeMo / Wanda point at) small changes of a memorized
prompt's text embedding bring the training image back.  Their triggers are found by
optimisation; this check uses the random, model-free version the benchmark can afford on every
run: each token's embedding ``e_l`` (the text encoder's output, position l) becomes::

    e_l + scale * ||e_l|| * z_l / ||z_l||,      z_l ~ N(0, I_D)

so every token moves by exactly ``scale`` of its own norm, in a uniformly random direction.  ``z``
is drawn from the request's seed and ``draw`` alone (:func:`perturbation_noise`), so a sample is
the same in any batch and the same direction is used for every scale of one seed (only the length
changes; ``scale=0`` is the unperturbed embedding, to the bit).  The unconditional ("") embedding
is never perturbed.

The perturbation acts on ``on_start``, before the wrapped mitigation's hooks: it changes the input
(the prompt), and the method then does whatever it does with it (Wen's optimisation starts from
the perturbed embedding, a guidance schedule guides with it).  :class:`Perturbed` carries the
wrapped mitigation's requests transform, adapter wrapper and compatibility check; its fingerprint
is the wrapped one's plus the perturbation's, so the generation cache keeps the perturbed samples
apart from the plain ones and from each other.  No UNet evaluation of its own.
"""

from __future__ import annotations

from typing import Any

import torch

from memberbench.mitigations.base import Mitigation, Param, record_meta
from memberbench.sampling.hooks import SamplerState, StepHook
from memberbench.types import GenerationRequest, MemberbenchError, stable_hash

_SEED_OFFSET = 0x5EED_0D0E  # keeps the perturbation's stream apart from the initial noise's


def perturbation_noise(seed: int, draw: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The unit directions ``z_l / ||z_l||`` (shape (L, D), float32, CPU) of a request's seed."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(draw) + _SEED_OFFSET) % 2**63)
    z = torch.randn(shape, generator=g, dtype=torch.float32)
    return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def perturb_embedding(e: torch.Tensor, scale: float, seed: int, draw: int = 0) -> torch.Tensor:
    """One prompt's (L, D) embedding, every token moved by ``scale`` times its own norm."""
    u = perturbation_noise(seed, draw, tuple(e.shape)).to(e.device, torch.float32)
    e32 = e.to(torch.float32)
    return (e32 + scale * e32.norm(dim=-1, keepdim=True) * u).to(e.dtype)


class _PerturbEmbedding(StepHook):
    def __init__(self, scale: float, draw: int) -> None:
        self.scale = scale
        self.draw = draw

    def on_start(self, state: SamplerState) -> None:
        cond = state.cond_embeds
        if cond.ndim != 3:
            raise MemberbenchError(
                f"the embedding perturbation needs (batch, tokens, dim) text embeddings; this "
                f"model gives shape {tuple(cond.shape)}"
            )
        rows = [
            perturb_embedding(cond[b], self.scale, r.seed, self.draw)
            for b, r in enumerate(state.requests)
        ]
        state.cond_embeds = torch.stack(rows) if rows else cond
        record_meta(state, "perturb_scale", [self.scale] * len(state.requests))


class EmbeddingPerturbation(Mitigation):
    """Perturb each token of the prompt embedding by a random direction of a given relative size
    (the robustness check's input change, not a mitigation)."""

    name = "embedding-perturbation"
    families = frozenset({"*"})
    citation = (
        "Kowalczuk et al., 'Finding Dori: Memorization in Text-to-Image Diffusion Models Is Less "
        "Local Than Assumed', arXiv 2507.16880 (2025)"
    )
    params = {
        "scale": Param(float, 0.0, "each token moves by this fraction of its own norm", 0.0, 10.0),
        "draw": Param(int, 0, "which random direction (per seed)", 0, 2**31 - 1),
    }

    def hooks(self) -> list[StepHook]:
        return [_PerturbEmbedding(self.config["scale"], self.config["draw"])]


class Perturbed(Mitigation):
    """``inner`` applied to prompts whose embedding was perturbed first (see the module)."""

    name = "perturbed"
    families = frozenset({"*"})  # the wrapped method's families decide (check_compatible)

    def __init__(self, inner: Mitigation, scale: float, draw: int = 0) -> None:
        self.inner = inner
        self.perturbation = EmbeddingPerturbation(scale=scale, draw=draw)
        self.config = {"inner": inner.spec(), **self.perturbation.config}

    @property
    def scale(self) -> float:
        return float(self.perturbation.config["scale"])

    def spec(self) -> str:
        p = self.perturbation.config
        return f"{self.inner.spec()} +perturb(scale={p['scale']:g},draw={p['draw']})"

    def fingerprint(self) -> str:
        return stable_hash(
            {
                "inner": self.inner.fingerprint(),
                "perturbation": self.perturbation.fingerprint(),
            }
        )

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "perturbation": self.perturbation.describe()}

    def check_compatible(self, adapter: Any) -> None:
        self.inner.check_compatible(adapter)

    def transform_requests(self, requests: list[GenerationRequest]) -> list[GenerationRequest]:
        return self.inner.transform_requests(requests)

    def wrap_adapter(self, adapter: Any) -> Any:
        return self.inner.wrap_adapter(adapter)

    def hooks(self) -> list[StepHook]:
        return [*self.perturbation.hooks(), *self.inner.hooks()]
