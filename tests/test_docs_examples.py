"""The worked examples of docs/adding-a-model.md and docs/adding-a-mitigation.md run as written:
their code blocks are extracted from the markdown, registered the way the docs say (an
installed-looking distribution for the entry points, ``register_mitigation``), listed by
``memberbench list`` with the line the docs show, and generate on the tiny pipeline."""

from __future__ import annotations

import re
import sys
import tomllib
import types
from pathlib import Path

import numpy as np
import pytest

from memberbench.cli import main
from memberbench.registry import MITIGATIONS, MODELS
from memberbench.types import GenerationRequest, MemberbenchError

DOCS = Path(__file__).resolve().parents[1] / "docs"


def doc_blocks(name: str) -> tuple[str, dict[str, str]]:
    text = (DOCS / name).read_text()
    found = re.findall(r"<!-- example: (\w+) -->\n```\w+\n(.*?)```", text, re.S)
    return text, dict(found)


def shown_line(text: str, name: str) -> str:
    """The line of a plain ``` block of the doc that starts with ``name`` and a space."""
    lang = None  # the language of the open fence; None: outside any block
    for line in text.splitlines():
        if line.startswith("```"):
            lang = line[3:].strip() if lang is None else None
        elif lang == "" and line.startswith(name + " "):
            return line
    raise AssertionError(f"the doc shows no line for {name}")


def listed(capsys, kind: str, name: str) -> str:
    assert main(["list", kind]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return next(line for line in out.splitlines() if line.startswith(name + " "))


def install(root: Path, module: str, code: str, pyproject: str, dist: str) -> None:
    """Write ``module``.py and a distribution whose entry points are the doc's pyproject
    table (what ``pip install .`` of the doc's package leaves in site-packages)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(code)
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    groups = tomllib.loads(pyproject)["project"]["entry-points"]
    lines = []
    for group, eps in groups.items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def fresh_registries(monkeypatch):
    import memberbench.adapters.cards  # noqa: F401  (the built-ins are registered first,
    import memberbench.data.sets  # noqa: F401  so the restored registries hold them)
    import memberbench.mitigations  # noqa: F401

    for reg in (MODELS, MITIGATIONS):  # restored after the test
        monkeypatch.setattr(reg, "_loaded_entry_points", False)
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
    yield
    for m in ("mb_my_model", "mb_guidance_ramp"):
        sys.modules.pop(m, None)


def test_adding_a_model_example_runs(
    tmp_path, monkeypatch, capsys, fresh_registries, tiny_pipeline_dir
):
    from memberbench.adapters import load_adapter
    from memberbench.runner import run_generation

    text, blocks = doc_blocks("adding-a-model.md")
    assert sorted(blocks) == ["module", "pyproject", "test"]
    install(tmp_path / "site", "mb_my_model", blocks["module"], blocks["pyproject"], "mb-my-model")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    # the line the doc shows, entry point and distribution included
    assert listed(capsys, "models", "my-sd") == shown_line(text, "my-sd")

    # the doc's test passes on the tiny pipeline
    ns: dict = {}
    exec(compile(blocks["test"], "adding-a-model.md (test)", "exec"), ns)
    ns["test_my_sd_generates"](tiny_pipeline_dir)

    # the card is the model's own; the numbers are those of the same weights as 'bundled'
    request = GenerationRequest("a red circle on a gray background", seed=0, steps=3)
    mine = load_adapter(f"my-sd:path={tiny_pipeline_dir}", device="cpu", dtype="fp32")
    ref = load_adapter(f"bundled:path={tiny_pipeline_dir}", device="cpu", dtype="fp32")
    assert mine.describe()["card"]["name"] == "my-sd"
    assert mine.describe()["card"]["training_data"].startswith("our own 10k")
    assert mine.fingerprint() == ref.fingerprint()
    [a] = run_generation(mine, [request], progress=False)
    [b] = run_generation(ref, [request], progress=False)
    np.testing.assert_array_equal(a.final_latent, b.final_latent)

    # what the doc says about bad specs: one clear error before anything is loaded
    with pytest.raises(MemberbenchError, match=r"needs its folder: --model my-sd:path="):
        load_adapter("my-sd")
    with pytest.raises(MemberbenchError, match=r"has no parameter 'pth'; allowed: path"):
        load_adapter("my-sd:pth=/x")


def test_adding_a_mitigation_example_runs(monkeypatch, capsys, fresh_registries, tiny_adapter):
    from memberbench.mitigations import build_mitigation
    from memberbench.runner import run_generation

    text, blocks = doc_blocks("adding-a-mitigation.md")
    assert sorted(blocks) == ["module", "pyproject", "register", "test"]
    mod = types.ModuleType("mb_guidance_ramp")
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    exec(compile(blocks["module"], "adding-a-mitigation.md (module)", "exec"), mod.__dict__)
    assert "guidance-ramp" not in MITIGATIONS
    exec(compile(blocks["register"], "adding-a-mitigation.md (register)", "exec"), {})
    assert MITIGATIONS.get("guidance-ramp") is mod.GuidanceRamp

    # built from a spec: converted, range-checked, with the error the doc quotes
    m = build_mitigation("guidance-ramp:start=2,steps=3")
    assert m.config == {"start": 2.0, "steps": 3} and m.spec() == "guidance-ramp:start=2.0,steps=3"
    with pytest.raises(MemberbenchError) as e:
        build_mitigation("guidance-ramp:steps=-1")
    assert f"`{e.value}`" in text
    assert listed(capsys, "mitigations", "guidance-ramp") == shown_line(text, "guidance-ramp")

    # the doc's test (ramp series, steps=0 is plain CFG, steps=1 is Jain et al.'s schedule)
    ns: dict = {}
    exec(compile(blocks["test"], "adding-a-mitigation.md (test)", "exec"), ns)
    ns["test_guidance_ramp"](tiny_adapter)

    # by hand, another ramp: g_i = 2 + (7.5 - 2) i / 3 for i < 3, then 7.5
    req = GenerationRequest("a blue square", seed=1, steps=5, guidance=7.5)
    [s] = run_generation(tiny_adapter, [req], mitigation=m, progress=False)
    np.testing.assert_allclose(
        s.trace["guidance"], [2.0, 2 + 5.5 / 3, 2 + 11 / 3, 7.5, 7.5], rtol=1e-6
    )


def test_adding_a_mitigation_through_the_entry_point(tmp_path, monkeypatch, fresh_registries):
    from memberbench.mitigations import build_mitigation

    _, blocks = doc_blocks("adding-a-mitigation.md")
    install(tmp_path / "site", "mb_guidance_ramp", blocks["module"], blocks["pyproject"], "mb-ramp")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    m = build_mitigation("guidance-ramp:steps=4")
    assert type(m).__module__ == "mb_guidance_ramp"
    assert m.config == {"start": 1.0, "steps": 4}
