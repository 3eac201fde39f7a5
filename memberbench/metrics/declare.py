"""Declarations: every metric and every detection score is declared once, here or in its module.

A declaration says what a metric *is*: its name, family, better direction, description, whether
it needs the prompts' training images, the recorded names (keys) it covers, where it shows in
the leaderboard (sections, headline columns) and, where the formula is the metric's own, the
function that computes it from the session's memoized products (the ``mb`` fixture, a
:class:`memberbench.benchrun.BenchRun`).  Everything else reads the declarations:

* ``record_metric`` (the pytest plugin) takes the better direction from the declaration of the
  name it records; an undeclared name is an error;
* ``memberbench leaderboard`` builds its headline table and its sections from them;
* the terminal summary shows the declared headline metrics;
* a declaration with ``record=`` is recorded by the generic task ``tasks/test_declared.py``
  (the mean over prompts of its ``compute``, per prompt set): no task of its own.

A declaration's ``family`` names the kind of quantity (memorization, detection, ...); the
``family`` field of a recorded result stays the recording task file's (``guidance_sweep`` for
``sscd_mean.g=3``), as before.

Recorded names carry qualifiers (``sscd_mean.dup=256``, ``d1.g=3.nonmem``,
``detect_auc.wen.k1``): a declaration lists key *templates*, literal text with ``[...]`` for an
optional part and ``{placeholder}`` for a variable one (see :data:`PLACEHOLDERS`; ``{score}`` is
any declared detector).  Every recorded name must match the templates of exactly one
declaration.

::

    from memberbench.metrics.declare import Headline, Placement, metric

    @metric(
        name="seed_sscd",
        keys=("seed_sscd[.nonmem]",),
        family="diversity",
        higher_is_better=False,
        description="mean pairwise SSCD between the final images of different seeds",
        headline=(Headline("seed_sscd", "seed SSCD", rank=85),),
    )
    def seed_sscd(mb, side):  # {prompt_id: value}
        ...

``docs/adding-a-metric.md`` walks through adding one end to end.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from memberbench.types import MemberbenchError

# what a {placeholder} in a key template stands for (regular expressions)
PLACEHOLDERS: dict[str, str] = {
    "g": r"\d+(?:\.\d+)?",  # a guidance scale: .g=7.5
    "scale": r"\d+(?:\.\d+)?",  # a text-embedding perturbation scale: .s=0.1
    "k": r"\d+",  # a window of the first k steps: .k5
    "group": r"[A-Za-z0-9=._+-]+",  # a group of the memorized set: dup=256, MV
    "method": r"pearson|spearman",  # a correlation
    "quantity": r"[A-Za-z0-9_]+",  # a per-prompt quantity: d1, d2, wen, d1_paper
    # "score": the declared detectors' names, filled in at match time
}
SIDE_SUFFIX = ".nonmem"


@dataclass(frozen=True)
class Headline:
    """A headline column: the recorded ``key``, its column ``title``, its position (``rank``,
    ascending, over all declarations) and where it shows: the leaderboard's headline table
    and / or the terminal summary of a run."""

    key: str
    title: str
    rank: float
    leaderboard: bool = True
    summary: bool = True


@dataclass(frozen=True)
class Placement:
    """Columns of a leaderboard section: the recorded keys matching ``keys`` (templates).  In a
    section ordered "declared", columns go by ``rank`` (over all declarations), then by the
    order of ``keys``."""

    section: str
    keys: tuple[str, ...]
    rank: float = 0.0


@dataclass(frozen=True)
class Section:
    """A leaderboard section (a table after the headline).  ``order``: "declared" (placement
    ranks), "sorted" (by name) or "natural" (numbers compared as numbers); ``rows``: "all" runs
    or only those "having" one of its columns; ``always``: shown even with no column."""

    id: str
    title: str
    rank: float
    intro: str = ""
    order: str = "natural"
    rows: str = "all"
    always: bool = False


@dataclass(frozen=True)
class Record:
    """A name the generic task (``tasks/test_declared.py``) records from its declaration's
    ``compute``: on each prompt set of ``sides``, ``compute(mb, side, **params)`` gives
    {prompt_id: value}, and the mean over prompts (with its standard error) is recorded as
    ``key`` on the memorized set, ``key.nonmem`` on the non-memorized one."""

    key: str
    params: tuple[tuple[str, Any], ...] = ()
    sides: tuple[str, ...] = ("memorized", "nonmemorized")

    def name(self, side: str) -> str:
        """The recorded name on prompt set ``side``."""
        return self.key + (SIDE_SUFFIX if side == "nonmemorized" else "")


@dataclass(frozen=True)
class Declaration:
    name: str
    keys: tuple[str, ...]
    family: str
    higher_is_better: bool | None
    description: str
    needs_training_image: bool = False
    placements: tuple[Placement, ...] = ()
    headline: tuple[Headline, ...] = ()
    compute: Callable[..., Any] | None = field(default=None, compare=False)
    unit: str = ""
    module: str = ""
    records: tuple[Record, ...] = ()
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)

    def skip_reason(self, mb: Any) -> str | None:
        """Why the generic task cannot record it on this run (None: it can); the training
        images a declaration ``needs_training_image`` are checked per prompt set by the task."""
        return self.check(mb) if self.check is not None else None

    def matches(self, key: str) -> bool:
        return any(_regex(t).fullmatch(key) for t in self.keys)

    def placed(self, section: str, key: str) -> tuple[float, int] | None:
        """(rank, template index) of ``key`` in ``section``, or None when not placed there."""
        for p in self.placements:
            if p.section != section:
                continue
            for i, t in enumerate(p.keys):
                if _regex(t).fullmatch(key):
                    return (p.rank, i)
        return None


@dataclass(frozen=True)
class Detector:
    """A per-prompt detection score: ``compute(mb, side, k)`` gives {prompt_id: score} over the
    first k sampling steps (NaN: that prompt failed for this detector).  The detection task
    scores every declared detector; ``{score}`` in a key template stands for any of their names.

    * ``higher_is_memorized``: the better direction (True: a higher score flags memorization;
      False: the task negates the scores before the ROC);
    * ``windows``: the k it is scored at (None: the run's windows 1, 5, 50 clipped to --steps;
      ``(0,)``: at pure noise, before any denoising step);
    * ``unet_evals`` / ``grad_passes``: its cost per seed (a number, or a function of the
      window k and the run's steps);
      ``own_calls``: False when it reads the run's generations (its evaluations are a share of
      theirs), True when it makes model calls of its own on top;
    * ``check(mb)``: None when it can run on this run's adapter, else the reason it is skipped
      (``needs_gradients`` adds the common check on the adapter of a detector that
      differentiates; ``needs_unconditional``, True unless declared otherwise, skips it on a
      model with no unconditional branch at sampling, a guidance-distilled FLUX without
      ``true_cfg=on``, with the adapter's ``unconditional_reason``).
    """

    name: str
    description: str
    needs_training_image: bool
    compute: Callable[..., dict[str, float]] = field(compare=False)
    module: str = ""
    higher_is_memorized: bool = True
    windows: tuple[int, ...] | None = None
    unet_evals: Any = field(default=None, compare=False)
    grad_passes: Any = field(default=0, compare=False)
    own_calls: bool = False
    needs_gradients: bool = False
    needs_unconditional: bool = True
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)
    source: str = ""

    def windows_for(self, steps: int, default: Iterable[int]) -> list[int]:
        """The windows k it is scored at in a run of ``steps`` steps."""
        ks = default if self.windows is None else self.windows
        return sorted({min(int(k), steps) for k in ks})

    def cost(self, k: int, n_seeds: int, steps: int) -> tuple[float, float]:
        """(UNet evaluations, gradient passes) per prompt at window k over ``n_seeds`` seeds of
        a run of ``steps`` steps."""
        ev = self.unet_evals if self.unet_evals is not None else (lambda k, steps: 2 * k)
        gp = self.grad_passes
        per = [float(c(k, steps) if callable(c) else c) for c in (ev, gp)]
        return per[0] * n_seeds, per[1] * n_seeds

    def skip_reason(self, mb: Any) -> str | None:
        """Why it cannot run on this run (None: it can)."""
        import torch

        adapter = mb.adapter
        if self.needs_unconditional and not getattr(adapter, "has_unconditional", True):
            why = getattr(adapter, "unconditional_reason", "") or "this model does not have one"
            return f"detector {self.name!r} needs the model's unconditional branch: {why}"
        if not (self.needs_gradients or self.own_calls):  # it reads the run's traces
            return self.check(mb) if self.check is not None else None
        if self.needs_gradients and getattr(adapter, "dtype", None) in (
            torch.float16,
            torch.bfloat16,
        ):
            return (
                f"detector {self.name!r} differentiates through the UNet and the model runs in "
                f"{str(adapter.dtype).replace('torch.', '')}; run with --dtype fp32 to score it"
            )
        return self.check(mb) if self.check is not None else None


_METRICS: dict[str, Declaration] = {}
_DETECTORS: dict[str, Detector] = {}
_SECTIONS: dict[str, Section] = {}
_REGEX_CACHE: dict[str, re.Pattern[str]] = {}
_LOOKUP_CACHE: dict[str, tuple[Declaration, ...]] = {}


def _invalidate() -> None:
    _REGEX_CACHE.clear()
    _LOOKUP_CACHE.clear()


def _placeholder(name: str, template: str) -> str:
    if name == "score":
        names = sorted(_DETECTORS, key=len, reverse=True)
        return "|".join(re.escape(n) for n in names) or r"(?!)"
    if name not in PLACEHOLDERS:
        raise MemberbenchError(
            f"key template {template!r}: unknown placeholder {{{name}}}; use one of "
            + ", ".join("{" + p + "}" for p in [*PLACEHOLDERS, "score"])
        )
    return PLACEHOLDERS[name]


def _regex(template: str) -> re.Pattern[str]:
    """A key template as a regular expression: ``[...]`` optional, ``{name}`` a placeholder."""
    rx = _REGEX_CACHE.get(template)
    if rx is not None:
        return rx
    out, depth, i = [], 0, 0
    while i < len(template):
        c = template[i]
        if c == "{":
            j = template.find("}", i)
            if j < 0:
                raise MemberbenchError(f"key template {template!r}: '{{' without '}}'")
            out.append(f"(?:{_placeholder(template[i + 1 : j], template)})")
            i = j + 1
            continue
        if c == "[":
            depth += 1
            out.append("(?:")
        elif c == "]":
            depth -= 1
            if depth < 0:
                raise MemberbenchError(f"key template {template!r}: ']' without '['")
            out.append(")?")
        else:
            out.append(re.escape(c))
        i += 1
    if depth:
        raise MemberbenchError(f"key template {template!r}: '[' without ']'")
    rx = re.compile("".join(out))
    _REGEX_CACHE[template] = rx
    return rx


def _check_new(registry: dict[str, Any], kind: str, name: str, module: str) -> None:
    old = registry.get(name)
    if old is not None and old.module != module:
        raise MemberbenchError(
            f"{kind} {name!r} declared twice (in {old.module} and in {module}); declare it once"
        )


def declare(
    name: str,
    *,
    family: str,
    higher_is_better: bool | None,
    description: str,
    keys: Sequence[str] | None = None,
    needs_training_image: bool = False,
    sections: Iterable[Placement] = (),
    headline: Iterable[Headline] = (),
    compute: Callable[..., Any] | None = None,
    unit: str = "",
    module: str | None = None,
    record: Any = (),
    check: Callable[[Any], str | None] | None = None,
) -> Declaration:
    """Declare a metric (see the module docstring); ``keys`` defaults to ``name`` and
    ``name.nonmem``.  Declaring a name again from the same module (a re-import) replaces it.

    ``record`` opts the metric into the generic task (``tasks/test_declared.py``), which then
    records it with no task of its own: a recorded name (``"nsupp.k1"``), a :class:`Record`, a
    list of these, or ``{name: {compute's keyword arguments}}``; it needs ``compute``.
    ``check(mb)``: None when the generic task can record it on this run, else the reason it
    skips (as a detector's)."""
    if higher_is_better not in (True, False, None):
        raise MemberbenchError(f"metric {name!r}: higher_is_better must be True, False or None")
    if not name or any(c in name for c in ",: \t\n"):
        raise MemberbenchError(f"bad metric name {name!r}: no ',', ':' or spaces")
    if module is None:
        module = getattr(compute, "__module__", None) or _caller_module()
    _check_new(_METRICS, "metric", name, module)
    records = _records(name, record)
    if records and compute is None:
        raise MemberbenchError(
            f"metric {name!r}: record= needs a compute function (@metric(...) on it, or compute=)"
        )
    decl = Declaration(
        name=name,
        keys=tuple(keys) if keys else (f"{name}[{SIDE_SUFFIX}]",),
        family=family,
        higher_is_better=higher_is_better,
        description=description,
        needs_training_image=needs_training_image,
        placements=tuple(sections),
        headline=tuple(headline),
        compute=compute,
        unit=unit,
        module=module,
        records=records,
        check=check,
    )
    for r in decl.records:
        for side in r.sides:
            if not decl.matches(r.name(side)):
                raise MemberbenchError(
                    f"metric {name!r}: recorded name {r.name(side)!r} is not one of its keys "
                    f"{decl.keys}"
                )
    for t in decl.keys + tuple(k for p in decl.placements for k in p.keys):
        _regex(t)  # a malformed template fails here, at declaration time
    for p in decl.placements:
        if p.section not in _SECTIONS:
            raise MemberbenchError(
                f"metric {name!r}: unknown leaderboard section {p.section!r}; known: "
                + ", ".join(_SECTIONS)
            )
        for t in p.keys:
            if not decl.matches(_example(t)):
                raise MemberbenchError(
                    f"metric {name!r}: section key {t!r} is not one of its keys {decl.keys}"
                )
    for h in decl.headline:
        if not decl.matches(h.key):
            raise MemberbenchError(
                f"metric {name!r}: headline key {h.key!r} is not one of its keys {decl.keys}"
            )
    _METRICS[name] = decl
    _invalidate()
    return decl


def _records(name: str, record: Any) -> tuple[Record, ...]:
    """``declare``'s ``record=`` as Records (see there)."""
    if isinstance(record, (str, Record)):
        record = [record]
    if isinstance(record, dict):
        record = [Record(k, tuple(sorted(dict(v).items()))) for k, v in record.items()]
    out = []
    for r in record:
        r = Record(r) if isinstance(r, str) else r
        if not isinstance(r, Record) or not r.key or any(c in r.key for c in ",: \t\n"):
            raise MemberbenchError(
                f"metric {name!r}: record= takes recorded names, Records or {{name: params}}, "
                f"got {r!r}"
            )
        bad = [s for s in r.sides if s not in Record.__dataclass_fields__["sides"].default]
        if bad or not r.sides:
            raise MemberbenchError(
                f"metric {name!r}: Record {r.key!r} sides must be 'memorized' and/or "
                f"'nonmemorized', got {r.sides!r}"
            )
        out.append(r)
    return tuple(out)


def metric(name: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator form of :func:`declare`: the decorated function is the metric's ``compute``
    (called by its task with the session's ``mb`` and the task's parameters)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.declaration = declare(name, compute=fn, module=fn.__module__, **kw)  # type: ignore[attr-defined]
        return fn

    return wrap


def detector(
    name: str,
    *,
    description: str,
    needs_training_image: bool = False,
    higher_is_memorized: bool = True,
    windows: Iterable[int] | None = None,
    unet_evals: Any = None,
    grad_passes: Any = 0,
    own_calls: bool = False,
    needs_gradients: bool = False,
    needs_unconditional: bool = True,
    check: Callable[[Any], str | None] | None = None,
    source: str = "",
) -> Callable[[Callable[..., dict[str, float]]], Callable[..., dict[str, float]]]:
    """Declare a detection score: the decorated ``fn(mb, side, k) -> {prompt_id: score}`` (see
    :class:`Detector` for the arguments; ``unet_evals`` defaults to 2 k per seed, the CFG
    evaluations of the run's first k steps)."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise MemberbenchError(f"bad detector name {name!r}: letters, digits and '_' only")
    if higher_is_memorized not in (True, False):
        raise MemberbenchError(f"detector {name!r}: higher_is_memorized must be True or False")
    wins = None if windows is None else tuple(windows)
    if wins is not None and (not wins or any(not isinstance(k, int) or k < 0 for k in wins)):
        raise MemberbenchError(
            f"detector {name!r}: windows must be non-negative integers (0: at pure noise), "
            f"got {windows!r}"
        )
    for what, c in (("unet_evals", unet_evals), ("grad_passes", grad_passes)):
        if c is not None and not callable(c) and not (isinstance(c, (int, float)) and c >= 0):
            raise MemberbenchError(
                f"detector {name!r}: {what} must be a number >= 0 per seed or a function "
                f"(k, steps) -> number, got {c!r}"
            )

    def wrap(fn: Callable[..., dict[str, float]]) -> Callable[..., dict[str, float]]:
        _check_new(_DETECTORS, "detector", name, fn.__module__)
        _DETECTORS[name] = Detector(
            name,
            description,
            needs_training_image,
            fn,
            fn.__module__,
            higher_is_memorized=higher_is_memorized,
            windows=wins,
            unet_evals=unet_evals,
            grad_passes=grad_passes,
            own_calls=own_calls,
            needs_gradients=needs_gradients,
            needs_unconditional=needs_unconditional,
            check=check,
            source=source,
        )
        _invalidate()
        fn.detector = _DETECTORS[name]  # type: ignore[attr-defined]
        return fn

    return wrap


def section(
    id: str,  # noqa: A002 - the section's id
    title: str,
    rank: float,
    **kw: Any,
) -> Section:
    _SECTIONS[id] = Section(id, title, rank, **kw)
    return _SECTIONS[id]


def forget(name: str, kind: str | None = None) -> None:
    """Remove the metric (``kind="metric"``), the detector (``"detector"``) or both (None)
    declared as ``name`` (tests that declare toy ones clean up).  A metric and a detector may
    share a name, so a test that declared only one says which."""
    if kind not in (None, "metric", "detector"):
        raise ValueError(f"kind must be 'metric', 'detector' or None, not {kind!r}")
    if kind in (None, "metric"):
        _METRICS.pop(name, None)
    if kind in (None, "detector"):
        _DETECTORS.pop(name, None)
    _invalidate()


def _caller_module() -> str:
    import sys

    f = sys._getframe(2)
    return str(f.f_globals.get("__name__", "?"))


def _example(template: str) -> str:
    """A key the template matches (placeholders filled), for declaration-time checks."""
    fill = {"g": "1", "scale": "0.1", "k": "1", "group": "x", "method": "pearson", "quantity": "x"}
    out = re.sub(r"\[|\]", "", template)
    for p, v in fill.items():
        out = out.replace("{" + p + "}", v)
    return out.replace("{score}", next(iter(_DETECTORS), "x"))


# --------------------------------------------------------------------------------------------
# reading the declarations


_ENTRY_POINTS_LOADED: list[bool] = []


def _load() -> None:
    import memberbench.metrics  # noqa: F401  (importing the package declares the metrics)

    if not _ENTRY_POINTS_LOADED:
        _ENTRY_POINTS_LOADED.append(True)
        load_entry_points()


def load_entry_points() -> list[str]:
    """Import the out-of-tree declarations: the entry-point groups ``memberbench.detectors``
    (each names a module that declares detectors, or a declared detector function) and
    ``memberbench.metrics`` (each names a module that declares metrics); returns the entry
    points' names.  One that fails to import, or declares nothing, is an error."""
    from memberbench.registry import DETECTORS, METRIC_MODULES

    names = []
    for registry, kind, table in (
        (DETECTORS, "detector", _DETECTORS),
        (METRIC_MODULES, "metric", _METRICS),
    ):
        group = registry.group
        for ep_name in registry.names():
            try:
                obj = registry.get(ep_name)
            except Exception as e:  # noqa: BLE001 - any import error of a third-party package
                raise MemberbenchError(
                    f"{kind} entry point {ep_name!r} (group {group}) failed to load: "
                    f"{type(e).__name__}: {e}; fix or uninstall the package that provides it"
                ) from None
            declared = getattr(obj, "detector" if kind == "detector" else "declaration", None)
            module = getattr(obj, "__name__", None)
            ok = isinstance(declared, Detector if kind == "detector" else Declaration) or any(
                d.module == module for d in table.values()
            )
            if not ok:
                raise MemberbenchError(
                    f"{kind} entry point {ep_name!r} (group {group}) declares no {kind}: point "
                    f"it at a function decorated with memberbench.metrics.declare.{kind}(...) "
                    "or at the module that declares them"
                )
            names.append(ep_name)
    return names


def declarations() -> list[Declaration]:
    _load()
    return list(_METRICS.values())


def detectors(*, entry_points: bool = True) -> list[Detector]:
    """The declared detectors; ``entry_points=False``: without loading the out-of-tree ones
    (what is declared so far: the built-ins, and whichever entry points loaded before one
    failed)."""
    if entry_points:
        _load()
    else:
        import memberbench.metrics  # noqa: F401
    return list(_DETECTORS.values())


def get_detector(name: str) -> Detector:
    _load()
    if name not in _DETECTORS:
        raise MemberbenchError(
            f"unknown detector {name!r}; declared: {', '.join(sorted(_DETECTORS))}"
        )
    return _DETECTORS[name]


def sections() -> list[Section]:
    _load()
    return sorted(_SECTIONS.values(), key=lambda s: s.rank)


def matching(key: str) -> tuple[Declaration, ...]:
    _load()
    hit = _LOOKUP_CACHE.get(key)
    if hit is None:
        hit = tuple(d for d in _METRICS.values() if d.matches(key))
        _LOOKUP_CACHE[key] = hit
    return hit


def find(key: str) -> Declaration | None:
    """The declaration of a recorded name, or None (undeclared, or ambiguous)."""
    hit = matching(key)
    return hit[0] if len(hit) == 1 else None


def lookup(key: str) -> Declaration:
    """The declaration of a recorded name; a clear error when none or several match."""
    hit = matching(key)
    if len(hit) == 1:
        return hit[0]
    if not hit:
        raise MemberbenchError(
            f"metric {key!r} is not declared: declare it once with "
            "memberbench.metrics.declare.metric(...) in its metric module, with a key template "
            "that matches this name (docs/adding-a-metric.md)"
        )
    raise MemberbenchError(
        f"metric {key!r} matches several declarations ({', '.join(d.name for d in hit)}); "
        "make their key templates disjoint"
    )


def recorded() -> list[tuple[Declaration, Record]]:
    """Every (declaration, record) the generic task records, in declaration order; a recorded
    name that two declarations both ask for is an error."""
    out: list[tuple[Declaration, Record]] = []
    seen: dict[str, str] = {}
    for d in declarations():
        for r in d.records:
            if r.key in seen and seen[r.key] != d.name:
                raise MemberbenchError(
                    f"recorded name {r.key!r} asked for by two declarations ({seen[r.key]} and "
                    f"{d.name}); record it once"
                )
            seen[r.key] = d.name
            out.append((d, r))
    return out


def get_record(key: str) -> tuple[Declaration, Record]:
    """The (declaration, record) of the generic task's recorded name ``key``."""
    for d, r in recorded():
        if r.key == key:
            return d, r
    raise MemberbenchError(f"no declaration records {key!r} (record= of @metric / declare)")


def natural_key(s: str) -> list[Any]:
    """Sort key comparing the numbers in a name as numbers ("dup=16" before "dup=256")."""
    return [
        float(t) if re.fullmatch(r"\d+(\.\d+)?", t) else t for t in re.split(r"(\d+(?:\.\d+)?)", s)
    ]


def headlines(where: str) -> list[Headline]:
    """The headline columns of the ``"leaderboard"`` or the ``"summary"``, in rank order."""
    out = [h for d in declarations() for h in d.headline if getattr(h, where)]
    return sorted(out, key=lambda h: h.rank)


def section_columns(section_id: str, keys: Iterable[str]) -> list[str]:
    """The recorded ``keys`` placed in a section, in the section's order."""
    sec = {s.id: s for s in sections()}[section_id]
    placed: dict[str, tuple[float, int]] = {}
    for k in set(keys):
        d = find(k)
        where = d.placed(section_id, k) if d is not None else None
        if where is not None:
            placed[k] = where
    if sec.order == "sorted":
        return sorted(placed)
    if sec.order == "declared":
        return sorted(placed, key=lambda k: (*placed[k], natural_key(k)))
    return sorted(placed, key=natural_key)


# --------------------------------------------------------------------------------------------
# the leaderboard's sections (the metrics place their keys in them)

section(
    "detection",
    "Detection (prompts measured memorized vs not, both sets pooled)",
    10,
    intro="Labels are measured on each run's own generations (the rule under `labels` in its "
    "results file); runs of schema version 1 have only the set-label variant "
    "(`detect_auc_set.*`, in their results files).",
    order="sorted",
)
section(
    "detection_by_group",
    "Detection by group (each memorized group vs all non-memorized prompts)",
    20,
    rows="having",
)
section(
    "overestimation",
    "Overestimation and the schedule decomposition",
    30,
    order="declared",
    always=True,
)
section("duplication", "Memorization by duplication level", 40)
section("guidance_sweep", "Guidance sweep (M8)", 50)
section(
    "robustness",
    "Robustness: SSCD after a random text-embedding perturbation",
    60,
    intro="sscd_regain.s=S: mean SSCD of the memorized prompts after each token of the text "
    "embedding moved by S of its norm, minus without (the run's mitigation applied both times; "
    "docs/metrics.md#robustness-sscd-regain).",
    rows="having",
)
