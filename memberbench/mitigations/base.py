"""The mitigation contract: transform the requests, hook the steps, or wrap the adapter.

A mitigation is built from ``--mitigation name:key=value,...`` (see
:func:`memberbench.mitigations.build_mitigation`).  It declares its parameters with types and
allowed ranges (checked when it is built, i.e. before any generation), has a fingerprint that
enters the cache key and the leaderboard row, and plugs into the one traced sampler through
:class:`memberbench.sampling.hooks.StepHook` objects.  Out-of-tree methods register under the
entry-point group ``memberbench.mitigations``.

The runner uses a mitigation in this order::

    mitigation.check_compatible(adapter)          # refuse with the reason, before any work
    requests = mitigation.transform_requests(requests)
    adapter = mitigation.wrap_adapter(adapter)
    hooks = mitigation.hooks()                    # handed to the sampler

Cost accounting.  Every UNet evaluation a method spends beyond the sampler's own two per step
(unconditional + conditional) is added to ``state.unet_evals`` (one count per sample and forward
pass; a backward pass through the UNet counts as 2, its usual cost relative to a forward pass),
through :func:`count_unet_evals`.  Per-sample facts worth keeping (a transition step, an objective
before and after optimisation) go to :func:`record_meta`, which the sampler copies into
``Sample.meta``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from memberbench.sampling.hooks import SamplerState, StepHook, count_unet_evals  # noqa: F401  (re-exported)
from memberbench.types import GenerationRequest, MemberbenchError, stable_hash

META_KEY = "meta"  # state.extra[META_KEY]: {key: list with one value per sample of the batch}


def _fmt(x: Any) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return x if isinstance(x, str) else repr(x)


@dataclass(frozen=True)
class Param:
    """A declared mitigation parameter: type, default and allowed range or choices."""

    type: type
    default: Any
    help: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None

    def allowed(self) -> str:
        """The allowed values in words, e.g. ``a float in [0, 20]``."""
        if self.choices is not None:
            return "one of " + ", ".join(_fmt(c) for c in self.choices)
        what = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
            self.type, self.type.__name__
        )
        if self.low is not None and self.high is not None:
            return f"{what} in [{_fmt(self.low)}, {_fmt(self.high)}]"
        if self.low is not None:
            return f"{what} >= {_fmt(self.low)}"
        if self.high is not None:
            return f"{what} <= {_fmt(self.high)}"
        return what

    def describe(self) -> str:
        return f"{self.allowed()}, default {_fmt(self.default)}" + (
            f": {self.help}" if self.help else ""
        )

    def convert(self, owner: str, name: str, raw: Any) -> Any:
        bad = MemberbenchError(
            f"{owner}: parameter {name}={raw!r} is not valid; allowed: {self.allowed()}"
        )
        try:
            if self.type is bool:
                if isinstance(raw, bool):
                    value = raw
                elif isinstance(raw, str) and raw.lower() in (
                    "1",
                    "0",
                    "true",
                    "false",
                    "yes",
                    "no",
                ):
                    value = raw.lower() in ("1", "true", "yes")
                else:
                    raise ValueError(raw)
            elif self.type is int:
                if isinstance(raw, bool):
                    raise ValueError(raw)
                f = float(raw)
                if not f.is_integer():
                    raise ValueError(raw)
                value = int(f)
            elif self.type is float:
                if isinstance(raw, bool):
                    raise ValueError(raw)
                value = float(raw)
                if not math.isfinite(value):
                    raise ValueError(raw)
            else:
                value = self.type(raw)
        except (TypeError, ValueError, OverflowError):
            raise bad from None
        if self.choices is not None and value not in self.choices:
            raise bad
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            raise MemberbenchError(
                f"{owner}: parameter {name}={_fmt(value)} is out of range; allowed: "
                f"{self.allowed()}"
            )
        return value


class Mitigation:
    """Base class.  Subclasses set ``name``, ``citation``, ``params`` and override plug points.

    ``config`` holds every parameter (defaults filled in, converted and range-checked).
    """

    name: ClassVar[str] = "none"
    citation: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    # The model families (``adapter.family``: "sd", "sdxl", "pixart", "sd3", ...) the method is
    # known to work with ("*": any); any other is refused by check_compatible, before
    # generation.  Default: the SD family only, which every method was first written for.
    families: ClassVar[frozenset[str]] = frozenset({"sd"})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # a subclass's own check_compatible still refuses unsupported families first
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("check_compatible")
        if own is not None and not getattr(own, "_checks_family", False):

            @functools.wraps(own)
            def checked(self: Mitigation, adapter: Any, _own: Any = own) -> None:
                self.check_family(adapter)
                _own(self, adapter)

            checked._checks_family = True  # type: ignore[attr-defined]
            cls.check_compatible = checked  # type: ignore[method-assign]

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - set(self.params))
        if unknown:
            raise MemberbenchError(
                f"mitigation {self.name!r} has no parameter {unknown[0]!r}; "
                f"its parameters: {self.params_help()}"
            )
        self.config: dict[str, Any] = {}
        for key, p in self.params.items():
            raw = kwargs.get(key, p.default)
            self.config[key] = p.convert(f"mitigation {self.name!r}", key, raw)
        self.validate()

    @classmethod
    def params_help(cls) -> str:
        """One line per parameter: ``name (allowed, default): help``; 'none' if it has none."""
        if not cls.params:
            return "none"
        return "; ".join(f"{k} ({p.describe()})" for k, p in cls.params.items())

    def validate(self) -> None:
        """Cross-parameter checks (raise MemberbenchError)."""

    # --- identity ---------------------------------------------------------------------------
    def spec(self) -> str:
        """Canonical ``name:key=value`` string (all parameters, sorted)."""
        if not self.config:
            return self.name
        return self.name + ":" + ",".join(f"{k}={self.config[k]}" for k in sorted(self.config))

    def fingerprint(self) -> str:
        return stable_hash({"name": self.name, "config": self.config, "version": self.version()})

    def version(self) -> str:
        """Bump when the method's behaviour changes, so cached generations are invalidated."""
        return "1"

    def describe(self) -> dict[str, Any]:
        """What a results file / leaderboard row records about the method."""
        return {
            "spec": self.spec(),
            "name": self.name,
            "fingerprint": self.fingerprint(),
            "version": self.version(),
            "config": dict(self.config),
            "citation": self.citation,
        }

    def __repr__(self) -> str:
        return f"<mitigation {self.spec()}>"

    # --- plug points ------------------------------------------------------------------------
    def check_family(self, adapter: Any) -> None:
        """Refuse, in one line, a model whose family this method does not declare."""
        family = str(getattr(adapter, "family", "sd"))
        if family in self.families or "*" in self.families:  # "*": any family
            return
        model = getattr(adapter, "name", type(adapter).__name__)
        others = supporting(family)
        raise MemberbenchError(
            f"mitigation {self.name!r} does not support model {model!r} (family {family!r}); "
            f"it supports the families {', '.join(sorted(self.families))}. Methods that support "
            f"{family!r}: {', '.join(others) if others else 'none'}"
        )

    def check_compatible(self, adapter: Any) -> None:
        """Raise MemberbenchError with the reason if this method cannot work with ``adapter``
        (the base refuses a family not in ``families``)."""
        self.check_family(adapter)

    def transform_requests(self, requests: list[GenerationRequest]) -> list[GenerationRequest]:
        return requests

    def wrap_adapter(self, adapter: Any) -> Any:
        return adapter

    def hooks(self) -> list[StepHook]:
        return []


def supporting(family: str) -> list[str]:
    """Names of the registered methods that declare ``family`` (those that fail to import are
    left out)."""
    from memberbench.registry import MITIGATIONS

    out = []
    for name in MITIGATIONS.names():
        try:
            cls = MITIGATIONS.get(name)
        except Exception:  # noqa: BLE001 - an out-of-tree entry that fails to import
            continue
        fams = getattr(cls, "families", ())
        if family in fams or "*" in fams:
            out.append(name)
    return out


# --- helpers for hooks -------------------------------------------------------------------------


def record_meta(state: SamplerState, key: str, values: Any) -> None:
    """Record one value per sample under ``key`` (copied into ``Sample.meta[key]``)."""
    if torch.is_tensor(values):
        values = values.detach().cpu().tolist()
    values = list(values)
    if len(values) != len(state.requests):
        raise ValueError(
            f"record_meta({key!r}): {len(values)} values for {len(state.requests)} samples"
        )
    state.extra.setdefault(META_KEY, {})[key] = values


def per_batch(state: SamplerState, hook: object) -> dict[str, Any]:
    """Scratch space of one hook for the batch being sampled (hooks outlive batches)."""
    return state.extra.setdefault(f"hook:{id(hook)}", {})
