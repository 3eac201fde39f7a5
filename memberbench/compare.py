"""Regression checks of a run's metrics against a saved baseline run.

Modelled on pytest-benchmark's ``--benchmark-save / --benchmark-compare /
--benchmark-compare-fail``, but per metric direction, attributed to the task test that recorded
the metric, and noise-aware.

Tolerances (``--mb-compare-fail "SPEC,SPEC,..."``; each SPEC is ``PATTERN:TOL``)
--------------------------------------------------------------------------------

``PATTERN`` is a metric name or an ``fnmatch`` glob (``sscd_mean``, ``clip_score*``, ``*``); an
exact name wins over a glob, and among globs the last one given wins.  ``TOL`` bounds how much the
metric may get *worse*, in its own better direction (``higher_is_better`` recorded with it):

=============  ==============================================================================
``10%``        may worsen by at most 10 % of the baseline's magnitude
``0.5``        may worsen by at most 0.5 (absolute, in the metric's units)
``2se``        may worsen by at most 2 standard errors of the difference,
               ``sqrt(se_baseline^2 + se_current^2)``
``-50%``       a *required improvement*: must improve by at least 50 % of the baseline's
               magnitude ("cut memorization by at least half")
``-0.1``       must improve by at least 0.1 (absolute)
``-2se``       must improve by at least 2 standard errors of the difference
=============  ==============================================================================

One rule covers all six: with ``worsening = (current - baseline)`` for lower-is-better metrics
and ``(baseline - current)`` for higher-is-better ones, the check passes iff
``worsening <= tol``, where ``tol`` is the spec converted to the metric's units (negative for a
required improvement).  A metric without a direction (``higher_is_better`` null, e.g. a
correlation) uses ``worsening = |current - baseline|`` and accepts only non-negative tolerances.

A metric that becomes undefined (null) while the baseline had a value fails; a baseline value
that is null cannot be compared and is reported as such.  A metric with a tolerance that the
current run did not record (its test was skipped or deselected) is reported as "missing"; it does
not fail a test, since there is no test to attribute it to.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from memberbench.types import MemberbenchError

_TOL_RE = re.compile(r"^(?P<num>[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)\s*(?P<unit>%|se)?$")

# Run identity: what must match between a baseline and a run for the comparison to mean anything.
# (label, path in the results document)
IDENTITY_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model name", ("model", "name")),
    ("model fingerprint", ("model", "fingerprint")),
    ("model revision", ("model", "revision")),
    ("memorized prompt set", ("prompt_sets", "memorized", "name")),
    ("memorized prompt set content hash", ("prompt_sets", "memorized", "content_hash")),
    ("non-memorized prompt set", ("prompt_sets", "nonmemorized", "name")),
    ("non-memorized prompt set content hash", ("prompt_sets", "nonmemorized", "content_hash")),
    ("seeds", ("sampling", "seeds")),
    ("steps", ("sampling", "steps")),
    ("scheduler", ("sampling", "scheduler")),
    ("guidance", ("sampling", "guidance")),
    ("guidance sweep", ("sampling", "guidance_sweep")),
    ("SSCD model sha256", ("sscd", "model_sha256")),
    ("SSCD recipe", ("sscd", "recipe")),
)


@dataclass(frozen=True)
class Tolerance:
    pattern: str
    amount: float  # signed: negative = required improvement
    unit: str  # "abs", "pct" or "se"
    text: str

    @property
    def required_improvement(self) -> bool:
        return self.amount < 0

    def bound(self, baseline: float, se: float) -> float:
        """The largest allowed worsening, in the metric's units (negative: needed improvement)."""
        if self.unit == "pct":
            return self.amount / 100.0 * abs(baseline)
        if self.unit == "se":
            return self.amount * se
        return self.amount

    def describe(self) -> str:
        u = {"pct": "%", "se": "se", "abs": ""}[self.unit]
        if self.amount < 0:
            return f"improve >= {-self.amount:g}{u}"
        return f"worsen <= {self.amount:g}{u}"


def parse_tolerance(text: str) -> Tolerance:
    """``"name:10%"``, ``"name:0.5"``, ``"name:2se"``, ``"name:-50%"`` -> Tolerance."""
    pattern, sep, tol = text.strip().rpartition(":")
    if not sep or not pattern.strip() or not tol.strip():
        raise MemberbenchError(
            f"bad tolerance {text!r}: expected METRIC:TOL where TOL is a percentage ('10%'), an "
            "absolute value ('0.5') or standard errors ('2se'); a leading '-' requires an "
            "improvement ('-50%'). Example: --mb-compare-fail 'mem_rate_0.5:-50%,clip_score.nonmem:2se'"
        )
    m = _TOL_RE.match(tol.strip())
    if not m:
        raise MemberbenchError(
            f"bad tolerance value {tol!r} in {text!r}: use a percentage ('10%'), an absolute "
            "value ('0.5') or standard errors ('2se'), optionally negative for a required "
            "improvement ('-50%')"
        )
    amount = float(m.group("num"))
    if not math.isfinite(amount):
        raise MemberbenchError(
            f"bad tolerance value {tol!r} in {text!r}: it must be a finite number (a tolerance "
            "that large checks nothing: leave the metric out instead)"
        )
    unit = {"%": "pct", "se": "se", None: "abs"}[m.group("unit")]
    return Tolerance(pattern.strip(), amount, unit, text.strip())


def parse_tolerances(spec: str | None) -> list[Tolerance]:
    if not spec:
        return []
    return [parse_tolerance(part) for part in spec.split(",") if part.strip()]


def tolerance_for(name: str, tolerances: list[Tolerance]) -> Tolerance | None:
    exact = [t for t in tolerances if t.pattern == name]
    if exact:
        return exact[-1]
    globs = [t for t in tolerances if fnmatch.fnmatchcase(name, t.pattern)]
    return globs[-1] if globs else None


def check_patterns(tolerances: list[Tolerance], known: list[str]) -> None:
    """Refuse a tolerance pattern that matches none of the ``known`` metric names."""
    import difflib

    for t in tolerances:
        if not any(t.pattern == k or fnmatch.fnmatchcase(k, t.pattern) for k in known):
            close = difflib.get_close_matches(t.pattern, known, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise MemberbenchError(
                f"--mb-compare-fail: {t.pattern!r} matches no metric of the baseline.{hint} "
                f"Metrics in the baseline: {', '.join(sorted(known))}"
            )


# --------------------------------------------------------------------------------------------
# run identity


def _get(doc: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    cur: Any = doc
    for k in path:
        if not isinstance(cur, Mapping) or k not in cur:
            return None
        cur = cur[k]
    return cur


def identity_differences(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Each identity field that differs, spelled out: ``"seeds: baseline [0, 1], this run [0]"``."""
    out = []
    for label, path in IDENTITY_KEYS:
        a, b = _get(baseline, path), _get(current, path)
        if a is None or b is None:  # unknown on one side (e.g. not loaded yet): not a difference
            continue
        if isinstance(a, list) and isinstance(b, list):
            same = [float(x) for x in a] == [float(x) for x in b] if _numeric(a, b) else a == b
        elif isinstance(a, int | float) and isinstance(b, int | float):
            same = float(a) == float(b)
        else:
            same = a == b
        if not same:
            out.append(f"{label}: baseline {_short(a)}, this run {_short(b)}")
    return out


def _numeric(a: list[Any], b: list[Any]) -> bool:
    return all(isinstance(x, int | float) and not isinstance(x, bool) for x in a + b)


def _short(x: Any) -> str:
    s = repr(x)
    return s if len(s) <= 80 else s[:77] + "..."


# --------------------------------------------------------------------------------------------
# comparison


@dataclass
class Comparison:
    """One metric, baseline vs current."""

    name: str
    baseline: float | None
    baseline_se: float | None
    current: float | None
    current_se: float | None
    higher_is_better: bool | None
    tolerance: Tolerance | None
    status: str  # "ok", "FAIL", "missing", "new", "n/a", "-" (no tolerance)
    message: str = ""
    test: str = ""

    @property
    def delta(self) -> float | None:
        if self.baseline is None or self.current is None:
            return None
        return self.current - self.baseline

    @property
    def delta_pct(self) -> float | None:
        d = self.delta
        if d is None or not self.baseline:
            return None
        return 100.0 * d / abs(self.baseline)

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def compare_metric(
    name: str,
    base: Mapping[str, Any] | None,
    cur: Mapping[str, Any] | None,
    tolerance: Tolerance | None,
) -> Comparison:
    b = _num(base.get("value")) if base else None
    c = _num(cur.get("value")) if cur else None
    bse = _num(base.get("stderr")) if base else None
    cse = _num(cur.get("stderr")) if cur else None
    hib = (cur or base or {}).get("higher_is_better")
    test = str((cur or {}).get("test", "") or (base or {}).get("test", ""))
    comp = Comparison(name, b, bse, c, cse, hib, tolerance, "-", "", test)
    if base is None:
        comp.status = "new"
        return comp
    if cur is None:
        comp.status = "missing" if tolerance else "-"
        if tolerance:
            comp.message = "not recorded by this run (test skipped or deselected?)"
        return comp
    if tolerance is None:
        return comp
    if b is None:
        comp.status = "n/a"
        comp.message = f"baseline value is undefined ({base.get('reason') or 'null'})"
        return comp
    if c is None:
        comp.status = "FAIL"
        comp.message = (
            f"{name} became undefined ({cur.get('reason') or 'null'}); baseline was {b:.4g}"
        )
        return comp
    se = math.sqrt((bse or 0.0) ** 2 + (cse or 0.0) ** 2)
    note = ""
    if tolerance.unit == "se" and se == 0.0:
        note = " (no standard errors recorded: se taken as 0)"
    if hib is None:
        if tolerance.amount < 0:
            comp.status = "FAIL"
            comp.message = (
                f"{name} has no better direction, so a required improvement "
                f"({tolerance.text}) cannot apply"
            )
            return comp
        worsening = abs(c - b)
    else:
        worsening = (b - c) if hib else (c - b)
    bound = tolerance.bound(b, se)
    if worsening <= bound + 1e-12 * max(1.0, abs(b)):
        comp.status = "ok"
        return comp
    comp.status = "FAIL"
    direction = {True: "higher is better", False: "lower is better", None: "no direction"}[hib]
    if tolerance.amount < 0:
        comp.message = (
            f"{name} did not improve enough: baseline {b:.4g}, now {c:.4g} ({direction}); "
            f"required an improvement of at least {-bound:.4g} ({tolerance.text}){note}"
        )
    else:
        comp.message = (
            f"{name} regressed: baseline {b:.4g}, now {c:.4g} ({direction}); worsened by "
            f"{worsening:.4g}, allowed {bound:.4g} ({tolerance.text}){note}"
        )
    return comp


def compare_runs(
    baseline: Mapping[str, Any],
    current_metrics: Mapping[str, Mapping[str, Any]],
    tolerances: list[Tolerance],
) -> list[Comparison]:
    """Compare every metric of the baseline and of the current run (sorted by name)."""
    bm = baseline.get("metrics") or {}
    names = sorted(set(bm) | set(current_metrics))
    return [
        compare_metric(n, bm.get(n), current_metrics.get(n), tolerance_for(n, tolerances))
        for n in names
    ]


def format_table(comparisons: list[Comparison], *, only_checked: bool = False) -> str:
    """A plain-text table (tabulate) of the comparisons."""
    from tabulate import tabulate

    rows = []
    for c in comparisons:
        if only_checked and c.tolerance is None:
            continue
        arrow = {True: "↑", False: "↓", None: ""}[c.higher_is_better]
        rows.append(
            [
                f"{c.name} {arrow}".strip(),
                _fmt(c.baseline, c.baseline_se),
                _fmt(c.current, c.current_se),
                "" if c.delta is None else f"{c.delta:+.4g}",
                "" if c.delta_pct is None else f"{c.delta_pct:+.1f}%",
                c.tolerance.text.rpartition(":")[2] if c.tolerance else "",
                c.status,
            ]
        )
    return tabulate(
        rows,
        headers=["metric", "baseline", "current", "change", "change %", "tolerance", "status"],
        disable_numparse=True,
    )


def _fmt(v: float | None, se: float | None) -> str:
    if v is None:
        return "null"
    return f"{v:.4g} ± {se:.2g}" if se is not None else f"{v:.4g}"
