"""The `memberbench` console script: validate, compare, leaderboard, dispatch."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from test_results_schema import make_doc

from memberbench import cli
from memberbench.results import metric_entry, write_results


def test_validate_ok_and_invalid(tmp_path, capsys):
    good = write_results(tmp_path / "good.json", make_doc())
    bad = tmp_path / "bad.json"
    d = make_doc()
    d["schema_version"] = 0
    bad.write_text(json.dumps(d))
    assert cli.main(["validate", str(good)]) == 0
    assert "good.json: ok (schema_version 2, model bundled" in capsys.readouterr().out
    assert cli.main(["validate", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "bad.json: INVALID" in out and "schema_version 0 is no longer supported" in out


def test_compare_command(tmp_path, capsys):
    base = write_results(tmp_path / "base.json", make_doc())
    d = make_doc(
        sscd_mean=metric_entry(0.2, higher_is_better=False, stderr=0.05, n=15, test="t::a"),
        **{
            "clip_score.nonmem": metric_entry(
                26.5, higher_is_better=True, stderr=0.4, n=100, test="t::b"
            )
        },
    )
    cur = write_results(tmp_path / "cur.json", d)
    spec = "sscd_mean:-50%,clip_score.nonmem:2se"
    assert cli.main(["compare", str(base), str(cur), "--fail", spec]) == 1
    out = capsys.readouterr().out
    assert "sscd_mean ↓" in out and "ok" in out
    assert "FAIL t::b: clip_score.nonmem regressed" in out
    # different seeds: refused unless --force
    d["sampling"]["seeds"] = [0]
    other = write_results(tmp_path / "other.json", d)
    assert cli.main(["compare", str(base), str(other)]) == 2
    assert "seeds: baseline [0, 1], this run [0]" in capsys.readouterr().err
    assert cli.main(["compare", str(base), str(other), "--force", "--fail", "sscd_mean:10%"]) == 0


def test_leaderboard_command(tmp_path, capsys):
    write_results(tmp_path / "lb" / "results" / "bundled" / "none.json", make_doc())
    assert cli.main(["leaderboard", "--root", str(tmp_path / "lb"), "--no-figures"]) == 0
    assert "(1 runs)" in capsys.readouterr().out
    assert (tmp_path / "lb" / "README.md").is_file()


def test_errors_are_one_line(capsys):
    with pytest.raises(SystemExit):  # argparse: "the following arguments are required"
        cli.main(["validate"])
    capsys.readouterr()
    assert cli.main(["compare", "/no/such.json", "/no/other.json"]) == 2
    assert "memberbench: error: /no/such.json: no such file" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_compare_of_json_nested_too_deep_is_one_line(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    good = write_results(tmp_path / "good.json", make_doc())
    for argv in (["compare", str(good), str(deep)], ["compare", str(deep), str(good)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"memberbench: error: {deep}: nested too deeply")


def test_compare_refuses_an_infinite_tolerance(tmp_path, capsys):
    good = write_results(tmp_path / "good.json", make_doc())
    assert cli.main(["compare", str(good), str(good), "--fail", "sscd_mean:1e999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad tolerance value '1e999'" in err[0] and "finite" in err[0]


def test_run_finds_tasks_or_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.find_tasks_dir().name == "tasks"  # the repository's, beside the package
    with pytest.raises(cli.MemberbenchError, match="--tasks /no/such: no such folder"):
        cli.find_tasks_dir("/no/such")


def test_console_script_is_installed():
    exe = shutil.which("memberbench")
    if exe is None:
        pytest.skip("memberbench is not installed (pip install -e .)")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for cmd in (
        "run",
        "generate",
        "validate",
        "leaderboard",
        "compare",
        "train-bundled",
        "evidence",
    ):
        assert cmd in r.stdout


@pytest.mark.parametrize(
    "value, says",
    [("48,64,96", "three positive multiples of 32"), ("64,a,96", "three integers")],
)
def test_train_bundled_refuses_bad_unet_channels(tmp_path, capsys, value, says):
    """A bad --unet-channels is a usage error before anything is built or written."""
    out = tmp_path / "w"
    with pytest.raises(SystemExit) as e:
        cli.main(["train-bundled", "--out", str(out), "--unet-channels", value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--unet-channels" in err and says in err and value in err
    assert list(tmp_path.iterdir()) == []


def test_train_bundled_defaults_are_the_recipes():
    """`memberbench train-bundled` with no options is `train_bundled()` with its own defaults:
    the CLI repeats them as literals (it must not import torch to build its parser), so the two
    lists must not drift apart."""
    import inspect

    from memberbench.bundled.train import train_bundled

    ns = cli.build_parser().parse_args(["train-bundled", "--out", "x"])
    defaults = {
        k: v.default
        for k, v in inspect.signature(train_bundled).parameters.items()
        if v.default is not inspect.Parameter.empty
    }
    # --unet-steps defaults per family (None in the parser)
    from memberbench.bundled.train_flow import train_bundled_flow

    flow = inspect.signature(train_bundled_flow).parameters
    assert ns.unet_steps is None and ns.family == "unet"
    assert defaults["unet_steps"] == cli.UNET_STEPS
    assert flow["steps"].default == cli.FLOW_STEPS
    assert flow["seed"].default == ns.seed and flow["batch"].default == ns.batch
    for name in (
        "seed",
        "vae_steps",
        "refine_steps",
        "clip_steps",
        "batch",
        "offset_noise",
        "prediction_type",
        "unet_channels",
    ):
        assert getattr(ns, name) == defaults[name], name
