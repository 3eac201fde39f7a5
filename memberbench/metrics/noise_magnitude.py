"""M4: noise-prediction analysis and Wen et al.'s (ICLR 2024) text-conditional noise magnitude.

``||eps_c - eps_u||_2`` at the first sampling step (or averaged over the first k steps), per
prompt averaged over seeds.  It needs no training image.  Since
``eps_c - eps_u = -(sqrt(abar) / sqrt(1 - abar)) (x0_hat_c - x0_hat_u)`` it measures the image
component that CFG multiplies by g.  Also: signed cosines of eps_u, eps_c, eps_g with x and x_T.
"""

from __future__ import annotations

import numpy as np

from memberbench.metrics.base import TraceMetric, series
from memberbench.registry import register_metric
from memberbench.types import BRANCHES, MemberbenchError, Trace


def text_conditional_magnitude(trace: Trace, first_k: int = 1) -> float:
    """Mean of ``||eps_c - eps_u||`` over the first ``first_k`` steps of one trajectory."""
    if first_k < 1:
        raise MemberbenchError(f"first_k must be >= 1, got {first_k}")
    d = series(trace, "eps_diff_norm")
    if len(d) < first_k:
        raise MemberbenchError(f"first_k={first_k} but the trace has only {len(d)} steps")
    return float(d[:first_k].mean())


def noise_cosines(trace: Trace) -> dict[str, np.ndarray]:
    """Per-step signed cosines ``cos(eps_b, x_T)`` and, with a reference, ``cos(eps_b, x)``.

    Keys ``eps_{b}_cos_xT`` and ``eps_{b}_cos_x`` for b in u, c, g (NaN where a norm is zero).
    """
    out: dict[str, np.ndarray] = {}
    trace.require(["xT_norm2"] + [f"eps_{b}_norm" for b in BRANCHES], why="noise cosines")
    for ref, key in (("xT", "xT_norm2"), ("x", "x_norm2")):
        if not trace.has(key) or not all(trace.has(f"eps_{b}_dot_{ref}") for b in BRANCHES):
            continue
        rn = np.sqrt(float(trace.scalars[key]))
        for b in BRANCHES:
            den = series(trace, f"eps_{b}_norm") * rn
            with np.errstate(divide="ignore", invalid="ignore"):
                out[f"eps_{b}_cos_{ref}"] = np.where(
                    den > 0, series(trace, f"eps_{b}_dot_{ref}") / den, np.nan
                )
    return out


@register_metric("wen_magnitude")
class NoiseMagnitude(TraceMetric):
    """Wen et al.'s detection score: ``||eps_c - eps_u||`` over the first ``first_k`` steps."""

    name = "wen_magnitude"
    higher_is_better = False

    def __init__(self, first_k: int = 1) -> None:
        if int(first_k) < 1:
            raise MemberbenchError(f"first_k must be >= 1, got {first_k}")
        super().__init__(first_k=int(first_k))

    def required_fields(self) -> tuple[str, ...]:
        return ("eps_diff_norm",)

    def per_sample(self, trace: Trace) -> float:
        return text_conditional_magnitude(trace, self.params["first_k"])
