"""One generic registry with lazy entries, entry points and "did you mean" errors.

Entries are either objects or ``"module:attr"`` strings imported on first use, so that
``--model bundled`` never imports a heavy backend it does not need.  Out-of-tree packages add
entries through the entry-point group named by each registry (``memberbench.models``,
``memberbench.mitigations``, ``memberbench.metrics``, ``memberbench.detectors``).
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any

from memberbench.types import MemberbenchError


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Parse ``name:key=value,key=value`` into ``(name, {key: value})``.

    Values stay strings; the consumer converts them (and says which are allowed).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise MemberbenchError("empty name: expected 'name' or 'name:key=value,...'")
    name, _, rest = spec.strip().partition(":")
    params: dict[str, str] = {}
    if rest:
        for part in rest.split(","):
            if not part.strip():
                continue
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise MemberbenchError(
                    f"bad parameter {part!r} in {spec!r}: expected key=value, "
                    "e.g. 'sd-1.4:path=/models/sd14,dtype=fp16'"
                )
            params[key.strip()] = value.strip()
    return name.strip(), params


def slug(text: str) -> str:
    """A file-name-safe form of a model or mitigation spec ("delayed_cfg:start=10" ->
    "delayed_cfg-start=10")."""
    s = re.sub(r"[:,/\\ ]+", "-", str(text).strip())
    s = re.sub(r"[^A-Za-z0-9._=+-]", "", s).strip("-.")
    return s or "unnamed"


class Registry:
    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, Any] = {}
        self._loaded_entry_points = False

    def register(self, name: str, obj: Any = None, *, overwrite: bool = False) -> Any:
        """Register ``obj`` (or a ``"module:attr"`` string) under ``name``; usable as decorator."""

        def _do(o: Any) -> Any:
            if name in self._entries and not overwrite and self._entries[name] is not o:
                raise MemberbenchError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = o
            return o

        if obj is None:
            return _do
        return _do(obj)

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points or not self.group:
            return
        self._loaded_entry_points = True
        for ep in entry_points(group=self.group):
            self._entries.setdefault(ep.name, ep)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def unknown(self, name: str) -> MemberbenchError:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.4)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return MemberbenchError(
            f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(names)}"
        )

    def get(self, name: str) -> Any:
        self._load_entry_points()
        if name not in self._entries:
            raise self.unknown(name)
        obj = self._entries[name]
        if isinstance(obj, str):
            module, _, attr = obj.partition(":")
            obj = getattr(importlib.import_module(module), attr)
            self._entries[name] = obj
        elif hasattr(obj, "load") and hasattr(obj, "group"):  # an EntryPoint
            obj = obj.load()
            self._entries[name] = obj
        return obj


MODELS = Registry("model", "memberbench.models")
MITIGATIONS = Registry("mitigation", "memberbench.mitigations")
# out-of-tree metrics: each entry point names a module that declares metrics
# (memberbench.metrics.declare.metric); the declarations load them
METRIC_MODULES = Registry("metric module", "memberbench.metrics")
PROMPT_SETS = Registry("prompt set", "memberbench.prompt_sets")
# Loaders of CLIP utility scorers, ``load() -> (model, preprocess, tokenizer[, describe])``; the
# bundled model's own scorer is an entry like any other (named, imported on first use).
CLIP_SCORERS = Registry("CLIP scorer", "memberbench.clip_scorers")
CLIP_SCORERS.register("bundled", "memberbench.bundled.clip_scorer:load_bundled_clip")
# out-of-tree detection scores: each entry point names a module that declares detectors (or a
# declared detector function); memberbench.metrics.declare loads them with the declarations
DETECTORS = Registry("detector", "memberbench.detectors")


def register_model(name: str) -> Callable[[Any], Any]:
    return MODELS.register(name)


def register_mitigation(name: str) -> Callable[[Any], Any]:
    return MITIGATIONS.register(name)
