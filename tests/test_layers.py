"""The package's layers point one way: a module imports only from its own layer or below.

The test reads every import statement of every module of ``memberbench`` with ``ast`` --
top-level and lazy ones inside functions alike, absolute and relative -- and fails on an edge
that points up the table below, on a module that has no layer, and on a cycle between two units
of one layer.  ``"module:attr"`` strings in registries are not imports: they are how a higher
layer (the bundled model, out-of-tree packages) plugs into a lower one.  docs/architecture.md
explains the table.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "memberbench"

# layer -> units (a unit is a module or a subpackage, named from the package root)
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("memberbench", "memberbench.types", "memberbench.registry", "memberbench.io",
        "memberbench.devices", "memberbench.config", "memberbench.errors", "memberbench.ranks"),
    1: ("memberbench.sampling", "memberbench.data"),
    2: ("memberbench.adapters",),
    3: ("memberbench.metrics",),
    4: ("memberbench.mitigations",),
    5: ("memberbench.cache", "memberbench.runner"),
    6: ("memberbench.benchrun", "memberbench.generate", "memberbench.cost"),
    7: ("memberbench.results", "memberbench.compare"),
    8: ("memberbench.pytest_plugin",),
    9: ("memberbench.leaderboard", "memberbench.site"),
    10: ("memberbench.bundled", "memberbench.testing"),
    11: ("memberbench.cli", "memberbench.listing"),
}  # fmt: skip


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> set[tuple[str, int]]:
    """Every ``root``-package module that ``path`` imports, with the line of the import."""
    mod = module_name(path, root)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    top = root.name
    out: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == top or a.name.startswith(top + "."):
                    out.add((a.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == top or target.startswith(top + "."):
                # `from pkg import sub` imports the submodule pkg.sub when there is one
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    is_module = (root.parent / Path(*sub.split("."))).with_suffix(".py").is_file()
                    is_pkg = (root.parent / Path(*sub.split(".")) / "__init__.py").is_file()
                    out.add((sub if is_module or is_pkg else target, node.lineno))
    return out


def unit_of(module: str, layers: dict[int, tuple[str, ...]]) -> tuple[str, int] | None:
    """The most specific unit of ``layers`` that holds ``module``, with its layer."""
    best: tuple[str, int] | None = None
    for layer, units in layers.items():
        for u in units:
            # the package root ("memberbench") holds only its own __init__, not everything
            inside = module == u or ("." in u and module.startswith(u + "."))
            if inside and (best is None or len(u) > len(best[0])):
                best = (u, layer)
    return best


def check(root: Path, layers: dict[int, tuple[str, ...]]) -> list[str]:
    """Every violation of the table in the package at ``root``, one line each."""
    problems: list[str] = []
    edges: dict[tuple[str, str], str] = {}
    for path in sorted(root.rglob("*.py")):
        mod = module_name(path, root)
        src = unit_of(mod, layers)
        if src is None:
            problems.append(f"{mod}: no layer; add it to LAYERS in tests/test_layers.py")
            continue
        for target, line in sorted(imports_of(path, root)):
            dst = unit_of(target, layers)
            where = f"{path.relative_to(root.parent)}:{line}"
            if dst is None:
                problems.append(f"{where}: imports {target}, which has no layer")
            elif dst[1] > src[1]:
                problems.append(
                    f"{where}: {mod} (layer {src[1]}) imports {target} (layer {dst[1]}): an "
                    "upward edge"
                )
            elif dst[0] != src[0] and dst[0] != root.name:
                edges.setdefault((src[0], dst[0]), where)
    for (a, b), where in sorted(edges.items()):
        if (b, a) in edges and a < b:
            problems.append(f"{where} and {edges[(b, a)]}: {a} and {b} import each other")
    return problems


def test_layers_point_down():
    problems = check(PACKAGE, LAYERS)
    assert not problems, "\n".join(problems)


def test_the_bundled_world_is_an_application_on_top():
    """Nothing below the bundled model imports it (its card and CLIP scorer are lazy entries)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = module_name(path, PACKAGE)
        unit = unit_of(mod, LAYERS)
        if unit and unit[1] < 10:
            offenders += [
                f"{mod} -> {t}"
                for t, _ in imports_of(path, PACKAGE)
                if t.startswith("memberbench.bundled")
            ]
    assert offenders == []


# ------------------------------------------------------------------------------------------
# the checker itself, on a toy package


def _toy(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "toy"
    for name, text in {"__init__.py": "", **files}.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


TOY_LAYERS = {0: ("toy", "toy.low"), 1: ("toy.mid",), 2: ("toy.high",)}


def test_checker_sees_lazy_and_relative_upward_imports(tmp_path):
    root = _toy(
        tmp_path,
        {
            "low.py": "def f():\n    from toy.high import g\n",
            "mid/__init__.py": "",
            "mid/a.py": "from ..high import g\nfrom . import b\n",
            "mid/b.py": "import toy.low\n",
            "high.py": "from toy.mid import a\ndef g():\n    pass\n",
        },
    )
    problems = check(root, TOY_LAYERS)
    assert len(problems) == 2, problems
    assert any(p.startswith("toy/low.py:2: toy.low (layer 0) imports toy.high") for p in problems)
    assert any(
        p.startswith("toy/mid/a.py:1: toy.mid.a (layer 1) imports toy.high") for p in problems
    )


def test_checker_flags_unplaced_modules_and_same_layer_cycles(tmp_path):
    layers = {0: ("toy", "toy.a", "toy.b")}
    root = _toy(tmp_path, {"a.py": "from toy import b\n", "b.py": "import toy.a\n", "c.py": ""})
    problems = check(root, layers)
    assert any("toy.c: no layer" in p for p in problems)
    assert any("toy.a and toy.b import each other" in p for p in problems)
    clean = _toy(tmp_path / "clean", {"a.py": "from toy import b\n", "b.py": ""})
    assert check(clean, layers) == []


@pytest.mark.parametrize("module", ["memberbench.sampling.sampler", "memberbench.adapters.cards"])
def test_modules_that_used_to_point_up_are_placed_low(module):
    # the sampler once imported metrics.decomposition and the adapters; the generic model
    # cards once imported the bundled world
    assert unit_of(module, LAYERS)[1] <= 2
