"""M4: noise-prediction analysis and Wen et al.'s (ICLR 2024) text-conditional noise magnitude.

``||eps_c - eps_u||_2`` at the first sampling step (or averaged over the first k steps), per
prompt averaged over seeds.  It needs no training image.  Since
``eps_c - eps_u = -(sqrt(abar) / sqrt(1 - abar)) (x0_hat_c - x0_hat_u)`` it measures the image
component that CFG multiplies by g.  Also: signed cosines of eps_u, eps_c, eps_g with x and x_T.

Wen et al.'s own code (YuxinWenRick/diffusion_memorization, local_sd_pipeline.py and
detect_mem.py) takes the norm of the UNet's *raw* output difference.  memberbench's adapters
return epsilon, so :func:`raw_output_magnitude` converts back per step: for a v-prediction model
``eps = sqrt(abar) v + sqrt(1 - abar) x_t`` gives ``||v_c - v_u|| = ||eps_c - eps_u|| /
sqrt(abar_t)``; for an x0 ("sample") model ``||x0_c - x0_u|| = ||eps_c - eps_u|| sqrt(1 - abar_t)
/ sqrt(abar_t)``; for epsilon it is the same number.  See docs/metrics-conventions.md.

Flow-matching models (SD3, FLUX; docs/metrics.md#flow-matching-models): both scores are taken on
the velocity ``||v_c - v_u|| = ||x0_c - x0_u|| / sigma`` (the model's raw output), because the
epsilon difference ``((1 - sigma) / sigma) ||x0_c - x0_u||`` is 0 at the first step, sigma = 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memberbench.metrics.base import TraceMetric, series
from memberbench.metrics.declare import declare, detector
from memberbench.types import BRANCHES, MemberbenchError, Trace


def text_conditional_magnitude(trace: Trace, first_k: int = 1) -> float:
    """Mean of ``||eps_c - eps_u||`` over the first ``first_k`` steps of one trajectory; for a
    flow-matching trace, of the velocity difference ``||v_c - v_u||`` (:func:`flow_velocity_diff`:
    the epsilon difference vanishes at sigma = 1 whatever the prompt)."""
    if first_k < 1:
        raise MemberbenchError(f"first_k must be >= 1, got {first_k}")
    from memberbench.sampling.schedule import family_of

    d = series(trace, "eps_diff_norm")
    if len(d) < first_k:
        raise MemberbenchError(f"first_k={first_k} but the trace has only {len(d)} steps")
    if family_of(trace) == "flow":
        return float(flow_velocity_diff(trace)[:first_k].mean())
    return float(d[:first_k].mean())


def flow_velocity_diff(trace: Trace) -> np.ndarray:
    """Per step of a flow-matching trace, ``||v_c - v_u||`` (v = eps - x0, the model's output).

    At a fixed state ``x = (1 - sigma) x0 + sigma eps``, ``d eps = -((1 - sigma) / sigma) d x0``,
    so ``d v = d eps - d x0 = -d x0 / sigma`` and ``||v_c - v_u|| = ||x0_c - x0_u|| / sigma =
    ||eps_c - eps_u|| + ||x0_c - x0_u||``: defined at sigma = 1, where ``eps_hat = x`` in every
    branch and ``||eps_c - eps_u||`` is 0.  From the trace's ``x0_diff_norm`` (sampler version 3);
    a trace without it falls back on ``eps_diff_norm / (1 - sigma)``, NaN at sigma = 1."""
    from memberbench.sampling.schedule import Schedule

    sch = Schedule.from_levels(series(trace, "abar_t"), series(trace, "abar_t"), "flow")
    sigma, a = sch.b_t, sch.a_t
    with np.errstate(divide="ignore", invalid="ignore"):
        if trace.has("x0_diff_norm"):
            return series(trace, "x0_diff_norm") / sigma
        return np.where(a > 0, series(trace, "eps_diff_norm") / np.where(a > 0, a, 1.0), np.nan)


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def raw_output_factor(abar_t: Any, prediction_type: str) -> np.ndarray:
    """Per step, ``||raw_c - raw_u|| / ||eps_c - eps_u||`` for a model predicting
    ``prediction_type``: 1 (epsilon), ``1 / sqrt(abar_t)`` (v_prediction),
    ``sqrt(1 - abar_t) / sqrt(abar_t)`` (sample, i.e. x0)."""
    return _raw_factor(abar_t, prediction_type, "vp")


def _raw_factor(abar_t: Any, prediction_type: str, family: str) -> np.ndarray:
    """:meth:`memberbench.sampling.schedule.Schedule.raw_output_factor` at the levels
    ``abar_t`` (VP-equivalent, as traces record them) of a ``family`` schedule."""
    from memberbench.sampling.schedule import Schedule

    if family == "vp" and prediction_type not in PREDICTION_TYPES:
        raise MemberbenchError(
            f"unknown prediction_type {prediction_type!r}; Wen et al.'s raw-output magnitude is "
            f"defined for {', '.join(PREDICTION_TYPES)} (the model's scheduler config says which)"
        )
    return Schedule.of_levels(abar_t, family).raw_output_factor(prediction_type)


def raw_output_magnitude(trace: Trace, first_k: int = 1, prediction_type: str = "epsilon") -> float:
    """Wen et al.'s detection score on the UNet's raw output: the mean over the first
    ``first_k`` steps of ``||raw_c - raw_u||`` (raw = epsilon, v or x0 as the model predicts),
    from the trace's ``eps_diff_norm`` and ``abar_t`` (:func:`raw_output_factor`).

    Wen's code averages over generations, then over steps; with every generation of a prompt
    having the same steps, that mean of means equals the mean over steps of each generation
    averaged over generations (what a TraceMetric does), so the order does not matter.
    NaN where the guidance of any of these steps is <= 1: Wen's pipeline runs no unconditional
    branch there, so the score does not exist.
    """
    if first_k < 1:
        raise MemberbenchError(f"first_k must be >= 1, got {first_k}")
    d = series(trace, "eps_diff_norm")
    if len(d) < first_k:
        raise MemberbenchError(f"first_k={first_k} but the trace has only {len(d)} steps")
    from memberbench.sampling.schedule import family_of

    family = family_of(trace)
    f = _raw_factor(series(trace, "abar_t")[:first_k], prediction_type, family)
    if trace.has("guidance") and (series(trace, "guidance")[:first_k] <= 1.0).any():
        return float("nan")
    if family == "flow" and prediction_type == "flow":  # defined at sigma = 1 too
        return float(flow_velocity_diff(trace)[:first_k].mean())
    return float((d[:first_k] * f).mean())


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


class RawOutputMagnitude(TraceMetric):
    """Wen et al.'s score as their code computes it: ``||raw_c - raw_u||`` of the UNet's raw
    output (v for a v-prediction model), mean over the first ``first_k`` steps."""

    name = "wen_raw"
    higher_is_better = False

    def __init__(self, first_k: int = 1, prediction_type: str = "epsilon") -> None:
        if int(first_k) < 1:
            raise MemberbenchError(f"first_k must be >= 1, got {first_k}")
        raw_output_factor(0.5, prediction_type)  # raises for unknown types
        super().__init__(first_k=int(first_k), prediction_type=prediction_type)

    def required_fields(self) -> tuple[str, ...]:
        return ("eps_diff_norm", "abar_t")

    def per_sample(self, trace: Trace) -> float:
        return raw_output_magnitude(trace, self.params["first_k"], self.params["prediction_type"])

    def degenerate(self, trace: Trace) -> str:
        k = self.params["first_k"]
        if trace.has("guidance") and (series(trace, "guidance")[:k] <= 1.0).any():
            return (
                "guidance <= 1 in the first steps: Wen et al.'s pipeline runs no unconditional "
                "branch there, so the raw-output magnitude is undefined"
            )
        return ""


# --------------------------------------------------------------------------------------------
# declarations (tasks/test_detection.py, tasks/test_guidance_sweep.py record them)


def wen_magnitudes(
    mb: Any, side: str, k: int = 1, guidance: float | None = None, seeds: Any = None
) -> dict[str, float]:
    """{prompt_id: Wen's ||eps_c - eps_u|| over the first k steps, mean over seeds} of the
    session ``mb``'s generations (memoized there)."""
    k = min(k, mb.config.steps)
    return mb.per_prompt(
        f"wen{k}",
        side,
        lambda ts: np.mean([text_conditional_magnitude(t, k) for t in ts]),
        guidance,
        seeds,
    )


def wen_raw_magnitudes(
    mb: Any, side: str, k: int = 1, guidance: float | None = None
) -> dict[str, float]:
    """Wen et al.'s convention: ``||out_c - out_u||`` of the UNet's raw output (v for a
    v-prediction model), mean over the first k steps and over seeds."""
    k = min(k, mb.config.steps)
    pred = getattr(mb.adapter, "prediction_type", None) or "epsilon"
    return mb.per_prompt(
        f"wenraw{k}",
        side,
        lambda ts: np.mean([raw_output_magnitude(t, k, pred) for t in ts]),
        guidance,
    )


declare(
    "wen",
    keys=("wen.k{k}[.g={g}][.nonmem]",),
    family="detection",
    higher_is_better=False,
    description="M4: Wen's ||eps_c - eps_u|| over the first k steps, mean over seeds",
)
declare(
    "wen_raw",
    keys=("wen_raw.k{k}[.nonmem]",),
    family="detection",
    higher_is_better=False,
    description="M4, Wen et al.'s convention: ||out_c - out_u|| of the UNet's raw output (v for "
    "a v-prediction model) over the first k steps, mean over seeds",
)


@detector(
    "wen",
    description="Wen et al.'s text-conditional noise magnitude ||eps_c - eps_u||, mean over the "
    "first k steps (image-free)",
    source="Wen et al., ICLR 2024 (noise-space convention)",
)
def wen_scores(mb: Any, side: str, k: int) -> dict[str, float]:
    return wen_magnitudes(mb, side, k)


@detector(
    "wen_raw",
    description="Wen's magnitude on the UNet's raw output, as Wen et al.'s code takes it (v for "
    "a v-prediction model)",
    source="Wen et al., ICLR 2024, as their code takes it (raw UNet output)",
)
def wen_raw_scores(mb: Any, side: str, k: int) -> dict[str, float]:
    return wen_raw_magnitudes(mb, side, k)
