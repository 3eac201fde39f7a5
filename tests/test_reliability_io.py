"""Files and submissions (issue 23 items 3, 4, 6, 7, the umask part of 9; issue 22's one atomic
writer): each test reproduces a failure of the code before the fix.

A kill at a dangerous moment is simulated by making ``os.replace`` raise a BaseException at the
n-th rename; where the point is what SIGKILL leaves behind (no cleanup runs), unlinking is
disabled too.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from test_plugin import HEAVY, TASK, _this_checkout, write_prompt_files  # noqa: F401 (autouse)
from test_results_schema import make_doc

from memberbench import io as mio
from memberbench import leaderboard as L
from memberbench import results as R
from memberbench.cli import main

pytest_plugins = ["pytester"]


class SimulatedKill(BaseException):
    pass


@pytest.fixture
def umask():
    """Set the process umask for one test, restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


def _kill_at_replace(monkeypatch, n: int, *, sigkill: bool = False) -> list[str]:
    """Make the n-th os.replace raise SimulatedKill; with ``sigkill`` no file is unlinked
    afterwards either (what a process killed with SIGKILL leaves)."""
    real = os.replace
    calls: list[str] = []

    def replace(a, b):  # noqa: ANN001
        calls.append(str(b))
        if len(calls) == n:
            if sigkill:
                monkeypatch.setattr(os, "unlink", lambda *a, **k: None)
                monkeypatch.setattr(Path, "unlink", lambda *a, **k: None)
            raise SimulatedKill
        return real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    return calls


def _rows(tag: str) -> list[dict]:
    return [{"set": "memorized", "prompt_id": f"{tag}{i}", "metrics": {"x": i}} for i in range(3)]


def _doc(value: float) -> dict:
    return make_doc(sscd_mean=R.metric_entry(value, higher_is_better=False, n=3, test="t::a"))


# --------------------------------------------------------------------------------------------
# the one atomic writer (memberbench.io)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_take_their_mode_from_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    p = mio.atomic_write_text(tmp_path / "a.txt", "x")
    assert p.stat().st_mode & 0o777 == mode
    out = R.write_results(tmp_path / "run.json", make_doc(), _rows("p"))
    assert out.stat().st_mode & 0o777 == mode
    assert R.per_prompt_path(out).stat().st_mode & 0o777 == mode


def test_regenerated_leaderboard_readme_keeps_0644(tmp_path, umask):
    """The reported case: a regenerated README went 0644 -> 0600 (mkstemp's mode)."""
    umask(0o022)
    root = tmp_path / "lb"
    R.write_results(root / "results" / "bundled" / "none.json", make_doc())
    readme, _, _ = L.build(root, figures=False)
    assert readme.stat().st_mode & 0o777 == 0o644
    readme, _, _ = L.build(root, figures=False)  # regenerated over itself
    assert readme.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("fail", ["write", "fsync", "replace"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, fail):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")

    def boom(*a, **k):  # noqa: ANN002, ANN003
        raise OSError(28, "No space left on device")

    if fail == "replace":
        monkeypatch.setattr(os, "replace", boom)
    elif fail == "fsync":
        monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError), mio.atomic_open(p) as f:
        f.write(b"new")
        if fail == "write":
            boom()
    assert p.read_bytes() == b"old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.bin"]


def test_interrupt_mid_write_removes_the_temp(tmp_path):
    p = tmp_path / "f.txt"
    with pytest.raises(KeyboardInterrupt), mio.atomic_open(p, "w") as f:
        f.write("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_cleaner_removes_only_old_temps(tmp_path):
    old = mio.temp_path(tmp_path / "a.json")
    fresh = mio.temp_path(tmp_path / "b.json")
    for x in (old, fresh):
        x.write_bytes(b"part")
    os.utime(old, (1_000_000, 1_000_000))
    keep = [tmp_path / "a.json", tmp_path / ".hidden", tmp_path / ".x.part"]
    for x in keep:
        x.write_bytes(b"keep")
    assert mio.remove_stale_temps(tmp_path, min_age_s=3600) == 1
    assert not old.exists() and fresh.exists()
    assert mio.remove_stale_temps(tmp_path, min_age_s=0) == 1
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(x.name for x in keep)


def test_stale_temp_cleaner_dead_writers_and_folders(tmp_path):
    """A temporary entry whose writer pid is gone is stale after ``dead_writer_age_s`` (a live
    writer's, this process's, is kept until ``min_age_s``); ``dirs=True`` removes folders only."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    dead = tmp_path / f".a.json{mio.TEMP_MARK}{gone}-0123abcd{mio.TEMP_SUFFIX}"
    mine = mio.temp_path(tmp_path / "b.json")
    folder = mio.temp_path(tmp_path / "site")
    for x in (dead, mine):
        x.write_bytes(b"part")
    folder.mkdir()
    (folder / "index.html").write_text("x")
    for x in (dead, mine, folder):
        os.utime(x, (time.time() - 120,) * 2)
    assert mio.temp_writer_pid(dead.name) == int(gone)
    assert mio.remove_stale_temps(tmp_path, min_age_s=3600, dead_writer_age_s=300) == 0
    assert mio.remove_stale_temps(tmp_path, min_age_s=3600, dead_writer_age_s=60) == 1
    assert not dead.exists() and mine.exists() and folder.is_dir()
    assert mio.remove_stale_temps(tmp_path, min_age_s=60, dirs=True) == 1
    assert not folder.exists() and mine.exists()


def test_one_file_sha256_for_everyone(tmp_path):
    from memberbench.bundled import file_sha256 as bundled_sha
    from memberbench.data import fetch
    from memberbench.metrics.sscd import file_sha256 as sscd_sha

    p = tmp_path / "abc"
    p.write_bytes(b"abc")
    known = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2
    assert mio.file_sha256(p) == known
    assert fetch._sha256_file(p) == bundled_sha(p) == sscd_sha(p) == known
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 9000)  # several read chunks
    assert mio.file_sha256(big, chunk=4096) == hashlib.sha256(big.read_bytes()).hexdigest()


def test_cache_and_trace_writes_use_the_umask(tmp_path, umask):
    import numpy as np

    from memberbench.io import atomic_write_text
    from memberbench.sampling.sampler import _atomic_savez

    umask(0o022)
    _atomic_savez(tmp_path / "t.npz", latents=np.zeros(3))
    atomic_write_text(tmp_path / "t.json", "{}")  # the writer of generate's JSON records
    for name in ("t.npz", "t.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
    assert np.load(tmp_path / "t.npz")["latents"].shape == (3,)


# --------------------------------------------------------------------------------------------
# item 3: the results pair appears together or not at all


@pytest.mark.parametrize("sigkill", [False, True])
@pytest.mark.parametrize("at", [1, 2, 3])
def test_killed_pair_commit_leaves_a_consistent_pair(tmp_path, monkeypatch, at, sigkill):
    """Old code: JSONL renamed first, JSON second; a kill at the second rename left the new
    JSONL beside the old JSON (validate failed, the old per-prompt rows were gone)."""
    path = tmp_path / "run.json"
    R.write_results(path, _doc(0.1), _rows("old"))
    _kill_at_replace(monkeypatch, at, sigkill=sigkill)
    with pytest.raises(SimulatedKill):
        R.write_results(path, _doc(0.9), _rows("new"))
    monkeypatch.undo()
    errors, doc = R.validate_file(path)
    assert errors == []
    rows = R.load_per_prompt(path, doc)
    value = doc["metrics"]["sscd_mean"]["value"]
    # before the JSON's rename: the old pair; after it: the new pair, whole
    expected = (0.1, _rows("old")) if at <= 2 else (0.9, _rows("new"))
    assert (value, rows) == expected
    # the next write finishes cleanly and tidies what the interrupted one left
    for x in tmp_path.iterdir():
        os.utime(x, (1_000_000, 1_000_000))  # temps old enough for the cleaner
    R.write_results(path, _doc(0.5), _rows("next"))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["run.json", "run.prompts.jsonl"]
    errors, doc = R.validate_file(path)
    assert errors == [] and R.load_per_prompt(path, doc) == _rows("next")


def test_leaderboard_add_reads_an_interrupted_pair_as_its_new_run(tmp_path, monkeypatch):
    src = tmp_path / "sub" / "run.json"
    R.write_results(src, _doc(0.1), _rows("old"))
    _kill_at_replace(monkeypatch, 3, sigkill=True)  # killed after the JSON's rename
    with pytest.raises(SimulatedKill):
        R.write_results(src, _doc(0.9), _rows("new"))
    monkeypatch.undo()
    dst = L.add_run(src, tmp_path / "lb")
    errors, doc = R.validate_file(dst)
    assert errors == [] and doc["metrics"]["sscd_mean"]["value"] == 0.9
    assert R.load_per_prompt(dst, doc) == _rows("new")


# --------------------------------------------------------------------------------------------
# item 4: a results file that cannot be written is refused before the run, fails after it


@pytest.fixture(scope="module", autouse=True)
def _preimport():
    import importlib

    for name in HEAVY:
        importlib.import_module(name)


@pytest.fixture
def bench(pytester, tiny_pipeline_dir, monkeypatch):
    mem, non = write_prompt_files(pytester.path)
    pytester.makepyfile(test_task=TASK)
    values = pytester.path / "values.json"
    values.write_text(json.dumps({"m_a": 0.5, "m_b": 10.0}))
    monkeypatch.setenv("MB_TEST_VALUES", str(values))

    def run(*extra: str):
        return pytester.runpytest_inprocess(
            "-p",
            "no:cacheprovider",
            f"--model=bundled:path={tiny_pipeline_dir}",
            f"--prompts-memorized={mem}",
            f"--prompts-nonmemorized={non}",
            "--cache-dir=none",
            f"--mb-storage={pytester.path / 'baselines'}",
            *extra,
        )

    return run


def test_results_path_that_is_a_folder_is_refused_before_the_run(bench, pytester):
    target = pytester.path / "out"
    target.mkdir()
    r = bench(f"--results={target}")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines([f"*--results: cannot write {target} ({target} is a folder*"])
    assert list(target.iterdir()) == []
    assert not (pytester.path / "out.prompts.jsonl").exists()


def test_results_path_under_a_file_is_refused_before_the_run(bench, pytester):
    (pytester.path / "afile").write_text("x")
    r = bench(f"--results={pytester.path / 'afile' / 'run.json'}")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*afile is not a folder*"])


def test_results_write_failing_at_the_end_exits_non_zero(bench, pytester):
    """The path is writable when the run starts and a folder at the end: the run must not exit
    0, and no per-prompt JSONL is left without its JSON (the old code wrote the JSONL first)."""
    out = pytester.path / "res" / "run.json"
    pytester.makepyfile(
        test_zz_break=f"""
        from pathlib import Path

        def test_break_the_path(record_metric):
            record_metric("m_z", 1.0, higher_is_better=False)
            Path({str(out)!r}).mkdir(parents=True)
        """
    )
    r = bench(f"--results={out}")
    r.assert_outcomes(passed=3, skipped=1)
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines(["*could not write results*"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.json"]
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------------------------
# item 6: validate checks every documented field; the leaderboard survives a bad submission


def _write_doc(path: Path, doc: dict, jsonl: bytes | None = None) -> Path:
    """A results file written by hand (no validation), with a per-prompt JSONL of these bytes."""
    doc = copy.deepcopy(doc)
    if jsonl is not None:
        jl = R.per_prompt_path(path)
        jl.write_bytes(jsonl)
        doc["per_prompt"] = {
            "path": jl.name,
            "sha256": hashlib.sha256(jsonl).hexdigest(),
            "rows": jsonl.count(b"\n"),
        }
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["series"].update(roc={"fpr": ["a", "b"]}), "series['roc'].fpr must be"),
        (lambda d: d["series"].update(roc={"auc": "high"}), "series['roc'].auc must be"),
        (lambda d: d["series"].update(roc={"x": [{"y": 1}]}), "series['roc'].x must be"),
        (lambda d: d["run"].update(outcomes={"passed": "12"}), "run.outcomes must be"),
        (lambda d: d["run"].update(outcomes={"passed": -1}), "run.outcomes must be"),
        (lambda d: d["run"].update(duration_s="long"), "run.duration_s must be"),
        (lambda d: d["run"].update(duration_s=-3.0), "run.duration_s must be"),
        (lambda d: d["run"].update(generation_s=None), "run.generation_s must be"),
        (lambda d: d["run"].update(exitstatus=0.5), "run.exitstatus must be"),
        (lambda d: d["run"].update(command="pytest tasks"), "run.command must be"),
        (lambda d: d["run"].update(skipped=[{"test": 1}]), "run.skipped must be"),
        (lambda d: d["sampling"].update(batch_size=0), "sampling.batch_size must be"),
        (lambda d: d["sampling"].update(guidance_sweep=[1, "x"]), "sampling.guidance_sweep"),
        (lambda d: d["prompt_sets"]["memorized"].update(n_with_image=1.5), "n_with_image"),
        (lambda d: d["sscd"].update(thresholds=["0.5"]), "sscd.thresholds must be"),
        (lambda d: d["mitigation"].update(config=[1]), "mitigation.config must be"),
        (lambda d: d["model"].update(dtype=32), "model.dtype must be"),
    ],
)
def test_validate_checks_documented_field_types(tmp_path, mutate, message):
    doc = make_doc()
    assert R.validate(doc) == []
    mutate(doc)
    errors, _ = R.validate_file(_write_doc(tmp_path / "r.json", doc))
    assert any(message in e for e in errors), errors


def test_validate_jsonl_must_be_strict_utf8(tmp_path):
    bad = b'{"prompt_id": "p\xff1", "metrics": {}}\n'
    errors, _ = R.validate_file(_write_doc(tmp_path / "r.json", make_doc(), bad))
    assert errors == ["r.prompts.jsonl: not UTF-8 text (byte 16)"]
    with pytest.raises(R.ResultsError, match="not UTF-8"):
        R.load_per_prompt(tmp_path / "r.json", json.loads((tmp_path / "r.json").read_text()))


def test_validate_refuses_deep_nesting_without_a_traceback(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    errors, doc = R.validate_file(deep)
    assert doc is None and len(errors) == 1 and "nested too deeply" in errors[0]
    row = {"prompt_id": "p", "metrics": {}}
    cur = row["metrics"]
    for _ in range(40):
        cur["a"] = {}
        cur = cur["a"]
    line = (json.dumps(row) + "\n").encode()
    errors, _ = R.validate_file(_write_doc(tmp_path / "r.json", make_doc(), line))
    assert errors == ["r.prompts.jsonl:1: nested deeper than 32 levels"]
    assert main(["validate", str(deep)]) == 1


def _failed_doc() -> dict:
    doc = make_doc()
    doc["run"].update(outcomes={"passed": 10, "failed": 2}, exitstatus=1)
    return doc


def test_validate_flags_failed_runs(tmp_path, capsys):
    path = R.write_results(tmp_path / "failed.json", _failed_doc())
    assert R.run_failures(R.load_results(path)) == [
        "tasks did not pass: 2 failed",
        "pytest exit status 1",
    ]
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAILED RUN" in out and "2 failed" in out and "--allow-failed" in out
    assert main(["validate", "--allow-failed", str(path)]) == 0
    partial = make_doc()
    partial["run"]["status"] = "partial"
    assert R.run_failures(partial) == ["run.status is 'partial', not 'complete'"]
    assert R.run_failures(make_doc()) == []


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def board(tmp_path):
    root = tmp_path / "lb"
    R.write_results(root / "results" / "bundled" / "none.json", make_doc(), _rows("n"))
    assert main(["leaderboard", "--root", str(root), "--no-figures"]) == 0
    return root


def _sub(tmp_path: Path, spec: str, value: float = 0.4) -> Path:
    doc = _doc(value)
    doc["mitigation"] = {"spec": spec, "name": spec.split(":")[0], "fingerprint": spec}
    return R.write_results(tmp_path / "subs" / f"{spec}.json", doc, _rows(spec))


def test_add_refuses_a_non_numeric_series_and_changes_nothing(tmp_path, board, capsys):
    """The old validate passed this file, --add copied it, and every later build crashed."""
    doc = make_doc()
    doc["mitigation"] = {"spec": "evil", "name": "evil", "fingerprint": "e"}
    doc["series"] = {"roc.wen.k1": {"fpr": ["0", "1"], "tpr": [0, 1], "auc": "0.9"}}
    bad = _write_doc(tmp_path / "evil.json", doc)
    before = _snapshot(board)
    assert main(["leaderboard", "--root", str(board), "--no-figures", "--add", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not added" in err and "series['roc.wen.k1']" in err
    assert _snapshot(board) == before


def test_add_of_two_files_writes_neither_when_the_second_is_bad(tmp_path, board, capsys):
    good = _sub(tmp_path, "guidance-scale:scale=3")
    bad = _write_doc(tmp_path / "bad.json", {**make_doc(), "metrics": {"x": {"value": "1"}}})
    before = _snapshot(board)
    args = ["leaderboard", "--root", str(board), "--no-figures", "--add", str(good)]
    assert main([*args, "--add", str(bad)]) == 2
    assert "bad.json does not validate" in capsys.readouterr().err
    assert _snapshot(board) == before
    assert main(args) == 0
    assert (board / "results" / "bundled" / "guidance-scale-scale=3.json").is_file()


def test_add_builds_in_a_temporary_place_first(tmp_path, board, monkeypatch, capsys):
    """A submission that makes the build crash is refused with the leaderboard unchanged."""
    real_build = L.build

    def crashing_build(root, **kw):  # noqa: ANN001, ANN003
        if any("crashes" in p.name for p in Path(root).rglob("*.json")):
            raise TypeError("unsupported format string passed to str.__format__")
        return real_build(root, **kw)

    monkeypatch.setattr(L, "build", crashing_build)
    sub = _sub(tmp_path, "crashes")
    before = _snapshot(board)
    assert main(["leaderboard", "--root", str(board), "--no-figures", "--add", str(sub)]) == 2
    err = capsys.readouterr().err
    assert "the leaderboard does not build with" in err and "TypeError" in err
    assert _snapshot(board) == before


def test_add_refuses_to_replace_a_row_unless_told(tmp_path, board, capsys):
    first = _sub(tmp_path, "guidance-scale:scale=3", 0.4)
    args = ["leaderboard", "--root", str(board), "--no-figures", "--add"]
    assert main([*args, str(first)]) == 0
    row = board / "results" / "bundled" / "guidance-scale-scale=3.json"
    kept = row.read_bytes()
    capsys.readouterr()
    second = R.write_results(
        tmp_path / "again.json", R.load_results(first) | {"metrics": _doc(0.2)["metrics"]}
    )
    assert main([*args, str(second)]) == 2
    assert "pass --replace" in capsys.readouterr().err
    assert row.read_bytes() == kept
    assert main([*args, str(second), "--replace"]) == 0
    assert R.load_results(row)["metrics"]["sscd_mean"]["value"] == 0.2


def test_add_refuses_two_files_for_one_row_and_failed_runs(tmp_path, board, capsys):
    a = _sub(tmp_path, "guidance-scale:scale=3")
    b = R.write_results(tmp_path / "b.json", R.load_results(a))
    args = ["leaderboard", "--root", str(board), "--no-figures", "--add"]
    assert main([*args, str(a), "--add", str(b)]) == 2
    assert "are both the row" in capsys.readouterr().err
    failed = R.write_results(
        tmp_path / "failed.json", _failed_doc() | {"mitigation": R.load_results(a)["mitigation"]}
    )
    assert main([*args, str(failed)]) == 2
    assert "failed run" in capsys.readouterr().err
    assert main([*args, str(failed), "--allow-failed"]) == 0


# --------------------------------------------------------------------------------------------
# item 7: weights are loaded weights-only


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - runs on unpickling
        return (Path.touch, (self.marker,))


def _payload_file(tmp_path: Path) -> tuple[Path, Path]:
    import torch

    marker = tmp_path / "payload-ran"
    path = tmp_path / "vae.pt"
    torch.save({"weight": torch.zeros(1), "x": _Payload(marker)}, path)
    return path, marker


def test_vae_from_refuses_a_pickle_payload_even_when_the_environment_allows(
    tmp_path, monkeypatch, capsys
):
    """torch.load's default could be switched to full unpickling by the environment; the old
    --vae-from ran the payload then."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path, marker = _payload_file(tmp_path)
    out = tmp_path / "model"
    rc = main(["train-bundled", "--out", str(out), "--vae-from", str(path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a plain weights file" in err
    assert not marker.exists()
    assert not out.exists() and not out.with_name("model.partial").exists()


def test_load_weights_reads_a_plain_state_dict_and_refuses_others(tmp_path):
    import torch

    from memberbench.bundled.train import load_weights
    from memberbench.types import MemberbenchError

    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(3.0)}, good)
    assert torch.equal(load_weights(good)["w"], torch.arange(3.0))
    with pytest.raises(MemberbenchError, match="no such file"):
        load_weights(tmp_path / "missing.pt", "--vae-from")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MemberbenchError, match="not a plain weights file"):
        load_weights(tmp_path / "junk.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(MemberbenchError, match="not a state dict"):
        load_weights(tmp_path / "list.pt")


def test_repo_has_no_unsafe_torch_load():
    """Every torch.load in the package passes weights_only=True."""
    pkg = Path(R.__file__).parent
    for src in pkg.rglob("*.py"):
        for i, line in enumerate(src.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                pytest.fail(f"{src.relative_to(pkg)}:{i}: {line.strip()}")


def test_add_to_an_unwritable_root_is_one_line_and_writes_nothing(tmp_path, capsys):
    sub = _sub(tmp_path, "guidance-scale:scale=3")
    (tmp_path / "afile").write_text("x")
    root = tmp_path / "afile" / "lb"
    assert main(["leaderboard", "--root", str(root), "--no-figures", "--add", str(sub)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not added, nothing was written: cannot write" in err
    assert (tmp_path / "afile").read_text() == "x"
