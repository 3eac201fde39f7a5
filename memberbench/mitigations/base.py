"""The mitigation contract: transform the requests, hook the steps, or wrap the adapter.

A mitigation is built from ``--mitigation name:key=value,...``.  It declares its parameters with
types and allowed ranges (checked before any generation), has a fingerprint that enters the cache
key and the leaderboard row, and plugs into the one traced sampler through
:class:`memberbench.sampling.hooks.StepHook` objects.  Out-of-tree methods register under the
entry-point group ``memberbench.mitigations``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memberbench.sampling.hooks import StepHook
from memberbench.types import GenerationRequest, MemberbenchError, stable_hash


@dataclass(frozen=True)
class Param:
    """A declared mitigation parameter: type, default and allowed range or choices."""

    type: type
    default: Any
    help: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None

    def convert(self, owner: str, name: str, raw: Any) -> Any:
        try:
            if self.type is bool and isinstance(raw, str):
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(raw)
                value = raw.lower() in ("1", "true", "yes")
            else:
                value = self.type(raw)
        except (TypeError, ValueError):
            raise MemberbenchError(
                f"{owner}: parameter {name}={raw!r} is not a {self.type.__name__}"
            ) from None
        if self.choices is not None and value not in self.choices:
            raise MemberbenchError(
                f"{owner}: parameter {name}={value!r} not allowed; choose one of {list(self.choices)}"
            )
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            raise MemberbenchError(
                f"{owner}: parameter {name}={value!r} out of range [{self.low}, {self.high}]"
            )
        return value


class Mitigation:
    """Base class.  Subclasses set ``name``, ``citation``, ``params`` and override hooks."""

    name: ClassVar[str] = "none"
    citation: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - set(self.params))
        if unknown:
            allowed = ", ".join(f"{k} (default {p.default!r})" for k, p in self.params.items())
            raise MemberbenchError(
                f"mitigation {self.name!r} has no parameter {unknown[0]!r}; "
                f"its parameters: {allowed or 'none'}"
            )
        self.config: dict[str, Any] = {}
        for key, p in self.params.items():
            raw = kwargs.get(key, p.default)
            self.config[key] = p.convert(f"mitigation {self.name!r}", key, raw)
        self.validate()

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

    # --- plug points ------------------------------------------------------------------------
    def check_compatible(self, adapter: Any) -> None:
        """Raise MemberbenchError with the reason if this method cannot work with ``adapter``."""

    def transform_requests(self, requests: list[GenerationRequest]) -> list[GenerationRequest]:
        return requests

    def wrap_adapter(self, adapter: Any) -> Any:
        return adapter

    def hooks(self) -> list[StepHook]:
        return []
