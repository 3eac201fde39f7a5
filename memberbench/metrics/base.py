"""What every metric has: a name, a direction, a description for results files.

Two kinds of metric live in this package:

* plain metrics (SSCD, CLIP score, the M2 training-pair loss) take images, prompts or a noise
  predictor and have their own ``__call__`` / ``score`` methods;
* trace metrics (:class:`TraceMetric`: M3, M4, M6) reduce the per-step series that the sampler
  records in :class:`memberbench.types.Trace` objects.  Calling one on the traces of one prompt
  (one trace per seed) gives a :class:`memberbench.metrics.stats.Stat`: the mean over seeds, its
  standard error, and NaN with a reason where the input is degenerate.

"Better" means *less memorization* for memorization metrics, so ``higher_is_better`` is False for
SSCD, D1, D2, k and Wen's magnitude, and True for CLIP score and diversity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from memberbench.metrics.stats import Stat, mean_stat
from memberbench.types import MemberbenchError, Trace


class Metric:
    """Base class: subclasses set ``name`` and ``higher_is_better`` and record their parameters
    in ``params`` (written to every result through :meth:`describe`)."""

    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = dict(params)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "higher_is_better": self.higher_is_better, **self.params}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def series(trace: Trace, name: str) -> np.ndarray:
    """One per-step series of a trace as float64 (raises MemberbenchError if absent)."""
    trace.require([name])
    return np.asarray(trace.series[name], dtype=np.float64)


def scalar(trace: Trace, name: str) -> float:
    trace.require([name])
    return float(trace.scalars[name])


def as_traces(traces: Trace | Sequence[Trace]) -> list[Trace]:
    if isinstance(traces, Trace):
        return [traces]
    out = list(traces)
    if not out:
        raise MemberbenchError("no traces given: pass the traces of one prompt (one per seed)")
    for t in out:
        if not isinstance(t, Trace):
            raise MemberbenchError(f"expected Trace objects, got {type(t).__name__}")
    return out


class TraceMetric(Metric):
    """A per-sample scalar computed from a Trace, averaged over the seeds of a prompt.

    Subclasses list the trace fields they read in :meth:`required_fields` and implement
    :meth:`per_sample`.
    """

    def required_fields(self) -> tuple[str, ...]:
        return ()

    def per_sample(self, trace: Trace) -> float:
        raise NotImplementedError

    def degenerate(self, trace: Trace) -> str:
        """Why this trace's value is undefined (e.g. a zero training latent), or ""."""
        return ""

    def values(self, traces: Trace | Sequence[Trace]) -> np.ndarray:
        """The per-sample values (one per trace), after checking the traces' fields."""
        ts = as_traces(traces)
        for t in ts:
            t.require(list(self.required_fields()), why=f"metric {self.name!r}")
        return np.array([self.per_sample(t) for t in ts], dtype=np.float64)

    def __call__(self, traces: Trace | Sequence[Trace]) -> Stat:
        """Mean over the seeds of one prompt, with the standard error across seeds; NaN with a
        reason if any trace is degenerate."""
        ts = as_traces(traces)
        vals = self.values(ts)
        reasons = [r for r in (self.degenerate(t) for t in ts) if r]
        if reasons:
            return Stat.nan(
                f"{self.name}: {reasons[0]} ({len(reasons)} of {len(ts)} traces)", n=len(ts)
            )
        return mean_stat(vals, what=self.name)
