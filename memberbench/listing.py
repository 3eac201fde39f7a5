"""``memberbench list KIND``: what is registered, one line each (name, then a description).

Kinds: models, mitigations, prompt-sets, detectors, tasks.  Out-of-tree entries of the
entry-point groups (``memberbench.models``, ``memberbench.mitigations``,
``memberbench.prompt_sets``, ``memberbench.detectors``) are listed with the package that provides
them; one that fails to import is listed with its error instead of a description.  Nothing here
loads weights or data: model cards are read from their registry entries, tasks are parsed with
:mod:`ast` (not imported).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memberbench.types import MemberbenchError

WIDTH = 110  # descriptions are cut to this many characters


def first_sentence(text: str | None, limit: int = WIDTH) -> str:
    """The first sentence of the first paragraph of ``text``, on one line, at most ``limit``
    characters (cut with "...")."""
    para = (text or "").strip().split("\n\n")[0]
    line = re.sub(r"\s+", " ", para).strip().replace("``", "")
    m = re.search(r"(?<!\be\.g)(?<!\bi\.e)\.(\s|$)", line)
    if m:
        line = line[: m.start() + 1]
    if len(line) > limit:
        line = line[: limit - 3].rstrip() + "..."
    return line


def _failed(e: BaseException) -> str:
    msg = first_sentence(str(e), WIDTH - 20) if str(e) else ""
    return f"(failed to load: {type(e).__name__}{': ' + msg if msg else ''})"


def _plugins(group: str) -> dict[str, str]:
    """{entry-point name: the distribution that provides it} of one entry-point group."""
    from importlib.metadata import entry_points

    out = {}
    for ep in entry_points(group=group):
        dist = getattr(ep, "dist", None)
        out.setdefault(ep.name, getattr(dist, "name", None) or ep.value)
    return out


def _registry_rows(registry: Any, describe: Callable[[str, Any], str]) -> list[tuple[str, str]]:
    plugins = _plugins(registry.group) if registry.group else {}
    rows = []
    for name in registry.names():
        try:
            text = describe(name, registry.get(name))
        except Exception as e:  # noqa: BLE001 - a broken plugin is listed, not raised
            text = _failed(e)
        if name in plugins:
            text = f"{text} [from {plugins[name]}]"
        rows.append((name, text))
    return rows


def _doc(obj: Any) -> str:
    doc = getattr(obj, "__doc__", None)
    if not doc and not isinstance(obj, type):
        doc = getattr(type(obj), "__doc__", None)
    return first_sentence(doc) or f"({type(obj).__name__}, no description)"


def _describe_model(name: str, obj: Any) -> str:
    card = getattr(obj, "card", None)
    if card is None:
        return _doc(obj)
    where = "shipped with memberbench" if card.repo_id == "bundled" else card.repo_id
    about = first_sentence(card.notes or card.training_data, 70)
    head = f"{where}, {card.resolution} px, {card.prediction_type}"
    if getattr(card, "guidance_distilled", False):
        head += ", guidance-distilled"
    return f"{head}: {about}" if about else head


def model_rows() -> list[tuple[str, str]]:
    from memberbench.adapters import _ensure_builtin
    from memberbench.registry import MODELS

    _ensure_builtin()
    return _registry_rows(MODELS, _describe_model)


def _describe_mitigation(name: str, obj: Any) -> str:
    from memberbench.mitigations import Mitigation

    if not (isinstance(obj, type) and issubclass(obj, Mitigation)):
        raise MemberbenchError(f"registered as {obj!r}, which is not a Mitigation subclass")
    params = ", ".join(obj.params) or "no parameters"
    return f"{_doc(obj)} ({params})"


def mitigation_rows() -> list[tuple[str, str]]:
    import memberbench.mitigations  # noqa: F401  (registers the built-in methods)
    from memberbench.registry import MITIGATIONS

    return _registry_rows(MITIGATIONS, _describe_mitigation)


def prompt_set_rows() -> list[tuple[str, str]]:
    from memberbench.data import sets
    from memberbench.registry import PROMPT_SETS

    def describe(name: str, obj: Any) -> str:
        if name in sets.REMOTE_SETS:
            algorithm = sets.PINNED_HASHES.get(name, ("unpinned",))[0]
            return f"download (pinned {algorithm}): {sets.REMOTE_SETS[name]}"
        return _doc(obj)

    return _registry_rows(PROMPT_SETS, describe)


def detector_rows() -> list[tuple[str, str]]:
    import memberbench.metrics  # noqa: F401  (declares the built-in detectors)
    from memberbench.metrics import declare as D
    from memberbench.registry import DETECTORS

    plugins = _plugins(DETECTORS.group)
    broken: list[tuple[str, str]] = []
    by_module: dict[str, str] = {}
    for ep_name in DETECTORS.names():  # each entry point names a module (or a function)
        try:
            obj = DETECTORS.get(ep_name)
        except Exception as e:  # noqa: BLE001 - a broken plugin is listed, not raised
            broken.append((ep_name, f"{_failed(e)} [from {plugins.get(ep_name, '?')}]"))
            continue
        declared = getattr(obj, "detector", None)
        module = declared.module if isinstance(declared, D.Detector) else obj.__name__
        by_module[module] = plugins.get(ep_name, ep_name)
    rows = []
    found = set()
    try:
        declared_all = D.detectors()
    except MemberbenchError:  # a broken entry point (listed below); the rest are declared
        declared_all = D.detectors(entry_points=False)
    for d in sorted(declared_all, key=lambda d: d.name):
        text = first_sentence(d.description)
        if d.module in by_module:
            found.add(d.module)
            text += f" [from {by_module[d.module]}]"
        rows.append((d.name, text))
    for module, dist in by_module.items():
        if module not in found:
            broken.append((module, f"(declares no detector) [from {dist}]"))
    return rows + broken


def task_rows(tasks_dir: Path) -> list[tuple[str, str]]:
    """One line per task file of ``tasks_dir``: the first sentence of its docstring and its
    tests (parsed, not imported)."""
    rows = []
    for f in sorted(tasks_dir.glob("test_*.py")):
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"), filename=str(f))
        except (SyntaxError, UnicodeDecodeError, OSError) as e:
            rows.append((f.name, f"(cannot parse: {type(e).__name__}: {e})"))
            continue
        tests = [
            n.name
            for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test")
        ]
        about = first_sentence(ast.get_docstring(tree), 80) or "(no docstring)"
        count = f"{len(tests)} test{'' if len(tests) == 1 else 's'}"
        rows.append((f.name, f"{about} [{count}: {', '.join(tests)}]"))
    return rows


KINDS: dict[str, str] = {
    "models": "model specs for --model (built-in cards and memberbench.models plugins)",
    "mitigations": "methods for --mitigation, with their parameters",
    "prompt-sets": "named sets for --prompts-memorized / --prompts-nonmemorized",
    "detectors": "detection scores the detection task scores (AUC, TPR@1%FPR)",
    "tasks": "the benchmark's task files (what `memberbench run` collects)",
}


def format_rows(rows: list[tuple[str, str]]) -> str:
    """``name  description`` lines, the descriptions aligned."""
    if not rows:
        return ""
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {text}".rstrip() for name, text in rows)


def list_kind(kind: str | None, tasks_dir: Path | None = None) -> str:
    """The text ``memberbench list [KIND]`` prints."""
    if kind is None:
        return format_rows(list(KINDS.items()))
    if kind not in KINDS:
        raise MemberbenchError(
            f"unknown kind {kind!r}: use one of {', '.join(KINDS)} (memberbench list KIND)"
        )
    if kind == "models":
        rows = model_rows()
    elif kind == "mitigations":
        rows = mitigation_rows()
    elif kind == "prompt-sets":
        rows = prompt_set_rows()
    elif kind == "detectors":
        rows = detector_rows()
    else:
        if tasks_dir is None:
            raise MemberbenchError("list tasks needs the task folder")
        rows = task_rows(tasks_dir)
    return format_rows(rows)
