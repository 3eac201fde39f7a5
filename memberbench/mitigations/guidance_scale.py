"""``guidance-scale``: a lower global classifier-free guidance scale.

The simplest mitigation the theory speaks to (docs/metrics.md#guidance-sweep-m8): CFG multiplies the image
component the conditional prediction injects (``x0_hat_g = x0_hat_u + g (x0_hat_c - x0_hat_u)``),
so a smaller g directly shrinks the early overestimation.  Guidance sweeps in the memorization
literature (Somepalli et al., NeurIPS 2023; Wen et al., ICLR 2024; Kim, Kim & Lee, arXiv
2509.25705, M8) all find memorization growing with g.

The scale is applied through the ``guidance`` step hook, not by rewriting the requests, so the
requests (and their seeds) stay identical to the ``none`` run they are compared with, and the
trace's ``guidance`` series shows the scale actually used.  No extra UNet evaluations.
"""

from __future__ import annotations

import torch

from memberbench.mitigations.base import Mitigation, Param
from memberbench.sampling.hooks import SamplerState, StepHook


class _ConstantGuidance(StepHook):
    def __init__(self, scale: float) -> None:
        self.scale = scale

    def guidance(
        self, state: SamplerState, i: int, t: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        return torch.full_like(g, self.scale)


class GuidanceScale(Mitigation):
    """Sample with guidance scale ``scale`` at every step instead of the request's."""

    name = "guidance-scale"
    families = frozenset({"sd", "sdxl", "pixart", "sd3"})  # changes only the guidance scale
    citation = (
        "Classifier-free guidance scale as a memorization knob: Somepalli et al., 'Understanding "
        "and Mitigating Copying in Diffusion Models', NeurIPS 2023; Kim, Kim & Lee, 'How "
        "Diffusion Models Memorize', arXiv 2509.25705 (2025)"
    )
    params = {
        "scale": Param(
            float, 2.0, "guidance scale used at every step (1 = conditional only)", 0.0, 50.0
        ),
    }

    def hooks(self) -> list[StepHook]:
        return [_ConstantGuidance(self.config["scale"])]
