"""``memberbench list [KIND]``: one aligned line per registered entry, plugins and broken
plugins included, without loading weights, data or (for tasks) torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from memberbench.cli import main
from memberbench.registry import DETECTORS, MITIGATIONS, MODELS, PROMPT_SETS

REPO = Path(__file__).resolve().parents[1]
KINDS = ["models", "mitigations", "prompt-sets", "detectors", "tasks"]


def run_list(capsys, *args: str) -> tuple[int, list[str], str]:
    rc = main(["list", *args])
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err


def rows(lines: list[str]) -> dict[str, str]:
    """{name: description} of ``name  description`` lines, checking that the descriptions
    start in one column."""
    cols = set()
    out = {}
    for line in lines:
        name, _, rest = line.partition(" ")
        desc = rest.lstrip(" ")
        cols.add(len(line) - len(desc))
        out[name] = desc
    assert len(cols) == 1, f"descriptions not aligned: {lines}"
    width = max(len(n) for n in out)
    assert cols == {width + 2}
    return out


def test_list_alone_names_the_kinds(capsys):
    rc, lines, err = run_list(capsys)
    assert rc == 0 and err == ""
    assert list(rows(lines)) == KINDS


def test_unknown_kind_is_one_line_with_the_kinds_and_exit_2(capsys):
    rc, lines, err = run_list(capsys, "modles")
    assert rc == 2 and lines == []
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("memberbench: error: unknown kind 'modles'")
    for k in KINDS:
        assert k in err


def test_models_are_listed_from_their_cards_without_loading_weights(capsys, monkeypatch):
    from memberbench.adapters.stable_diffusion import StableDiffusionAdapter

    def no_loading(*a, **kw):
        raise AssertionError("memberbench list loaded weights")

    from memberbench.adapters.sd3 import SD3Adapter

    monkeypatch.setattr(StableDiffusionAdapter, "from_pretrained", no_loading)
    monkeypatch.setattr(SD3Adapter, "from_pretrained", no_loading)
    rc, lines, err = run_list(capsys, "models")
    assert rc == 0 and err == ""
    got = rows(lines)
    assert list(got) == sorted(got)
    assert {
        "bundled",
        "realistic-vision",
        "sd-1.4",
        "sd-1.5",
        "sd-2.1-base",
        "sd-3-medium",
        "sd-3.5-medium",
        "sdxl",
        "diffusers",
    } <= set(got)
    assert got["sd-3.5-medium"].startswith(
        "stabilityai/stable-diffusion-3.5-medium, 1024 px, flow: "
    )
    assert got["sdxl"].startswith("stabilityai/stable-diffusion-xl-base-1.0, 1024 px, epsilon")
    assert "--model diffusers:path=DIR" in got["diffusers"]
    assert got["sd-1.4"] == (
        "CompVis/stable-diffusion-v1-4, 512 px, epsilon: The paper's main model "
        "(Pearson r about 0.92 between D and SSCD)."
    )
    assert got["bundled"].startswith("shipped with memberbench, 64 px, v_prediction: ")


def test_mitigations_show_the_class_summary_and_parameters(capsys):
    from memberbench.mitigations import BUILTIN

    rc, lines, err = run_list(capsys, "mitigations")
    assert rc == 0 and err == ""
    got = rows(lines)
    assert sorted(got) == sorted(BUILTIN)
    assert got["none"] == (
        "No mitigation: the sampler's own DDIM + CFG loop, unchanged (no parameters, no cost). "
        "(no parameters)"
    )
    assert got["guidance-scale"] == (
        "Sample with guidance scale scale at every step instead of the request's. (scale)"
    )


def test_prompt_sets_say_where_they_come_from_without_reading_them(capsys, monkeypatch):
    from memberbench.data import sets

    def no_reading(*a, **kw):
        raise AssertionError("memberbench list read a prompt file")

    monkeypatch.setattr(sets, "load_prompt_file", no_reading)
    rc, lines, err = run_list(capsys, "prompt-sets")
    assert rc == 0 and err == ""
    got = rows(lines)
    assert set(sets.REMOTE_SETS) | {"bundled-memorized", "bundled-nonmemorized"} == set(got)
    assert got["webster-sd1"] == "download (pinned md5): " + sets.REMOTE_SETS["webster-sd1"]
    assert got["bundled-nonmemorized"] == (
        "The bundled model's held-out shape prompts (never seen in training)."
    )


def test_detectors_show_their_declared_description(capsys):
    from memberbench.metrics import declare as D

    rc, lines, err = run_list(capsys, "detectors")
    assert rc == 0 and err == ""
    got = rows(lines)
    assert sorted(got) == sorted(d.name for d in D.detectors())
    assert got["wen_raw"] == (
        "Wen's magnitude on the UNet's raw output, as Wen et al.'s code takes it (v for a "
        "v-prediction model)"
    )


TASK_FILE = '''\
"""Toy task: a first sentence. A second one, not shown.

More text.
"""


def helper():
    """Not a test."""


def test_one():
    pass


async def test_two():
    pass
'''


def test_tasks_are_parsed_not_imported(tmp_path, capsys):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "test_toy.py").write_text(TASK_FILE)
    (tasks / "test_bare.py").write_text("import torch\n\ndef test_x():\n    pass\n")
    (tasks / "test_bad.py").write_text("def test_(:\n")
    (tasks / "helper.py").write_text('"""Not a task file."""\n')
    rc, lines, err = run_list(capsys, "tasks", "--tasks", str(tasks))
    assert rc == 0 and err == ""
    assert lines[1:] == [
        "test_bare.py  (no docstring) [1 test: test_x]",
        "test_toy.py   Toy task: a first sentence. [2 tests: test_one, test_two]",
    ]
    assert lines[0].startswith("test_bad.py   (cannot parse: SyntaxError: ")
    rc, lines, err = run_list(capsys, "tasks", "--tasks", str(tmp_path / "nowhere"))
    assert rc == 2 and lines == [] and "--tasks" in err and "no such folder" in err
    rc, lines, err = run_list(capsys, "models", "--tasks", str(tasks))
    assert rc == 2 and lines == [] and err.count("\n") == 1
    assert "--tasks DIR goes with `memberbench list tasks` only" in err


def test_list_tasks_and_the_kinds_do_not_import_torch():
    code = (
        "import sys\nfrom memberbench.cli import main\n"
        f"assert main(['list', 'tasks', '--tasks', {str(REPO / 'tasks')!r}]) == 0\n"
        "assert main(['list']) == 0\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert out.splitlines()[-1] == "torch imported: False"
    assert "test_memorization.py" in out and "test_sscd_memorized" in out


# --------------------------------------------------------------------------------------------
# out-of-tree entries: a fake installed distribution, the way pip leaves one

PLUGIN = textwrap.dedent(
    '''\
    """A toy out-of-tree memberbench plugin."""

    from memberbench.metrics.declare import detector
    from memberbench.mitigations.base import Mitigation, Param


    def build_toy_model(params):
        """A toy model factory. It builds nothing here."""
        raise RuntimeError("not in this test")


    class ToyMitigation(Mitigation):
        """Halve the guidance, as a toy."""

        name = "toy-mitigation"
        params = {"factor": Param(float, 0.5, "multiplier", 0.0, 1.0)}


    def load_toy_set(*, limit=None, memorized=None):
        """Three toy prompts."""
        raise RuntimeError("not in this test")


    @detector("toy_score", description="a toy score. Second sentence.")
    def toy_score(mb, side, k):
        return {}
    '''
)

ENTRY_POINTS = """\
[memberbench.models]
toy-model = mb_toy_plugin:build_toy_model
broken-model = mb_toy_broken:build

[memberbench.mitigations]
toy-mitigation = mb_toy_plugin:ToyMitigation
broken-mitigation = mb_toy_broken:Method

[memberbench.prompt_sets]
toy-set = mb_toy_plugin:load_toy_set

[memberbench.detectors]
toys = mb_toy_plugin
broken-detectors = mb_toy_broken
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    from memberbench.metrics import declare as D

    root = tmp_path / "site"
    root.mkdir()
    (root / "mb_toy_plugin.py").write_text(PLUGIN)
    (root / "mb_toy_broken.py").write_text("raise ImportError('no module named toyhead')\n")
    info = root / "mb_toy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mb-toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(root))
    import memberbench.adapters.cards  # noqa: F401  (the built-ins are registered first,
    import memberbench.data.sets  # noqa: F401  so the restored registries hold them)
    import memberbench.mitigations  # noqa: F401

    for reg in (MODELS, MITIGATIONS, PROMPT_SETS, DETECTORS):  # restored after
        monkeypatch.setattr(reg, "_loaded_entry_points", False)
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
    monkeypatch.setattr(D, "_ENTRY_POINTS_LOADED", [])
    yield
    D.forget("toy_score", "detector")
    for m in ("mb_toy_plugin", "mb_toy_broken"):
        sys.modules.pop(m, None)


def test_plugins_are_listed_with_their_package_and_broken_ones_with_their_error(plugin, capsys):
    failed = "(failed to load: ImportError: no module named toyhead) [from mb-toy-plugin]"
    rc, lines, err = run_list(capsys, "models")
    assert rc == 0 and err == ""
    got = rows(lines)
    assert got["toy-model"] == "A toy model factory. [from mb-toy-plugin]"
    assert got["broken-model"] == failed
    assert "sd-1.4" in got

    rc, lines, err = run_list(capsys, "mitigations")
    got = rows(lines)
    assert rc == 0 and err == ""
    assert got["toy-mitigation"] == "Halve the guidance, as a toy. (factor) [from mb-toy-plugin]"
    assert got["broken-mitigation"] == failed
    assert "guidance-scale" in got

    rc, lines, err = run_list(capsys, "prompt-sets")
    assert rc == 0 and rows(lines)["toy-set"] == "Three toy prompts. [from mb-toy-plugin]"

    rc, lines, err = run_list(capsys, "detectors")
    assert rc == 0 and err == "" and "Traceback" not in "\n".join(lines)
    got = rows(lines)
    assert got["toy_score"] == "a toy score. [from mb-toy-plugin]"
    assert got["broken-detectors"] == failed
    assert "wen" in got
