"""The task suite on several processes (memberbench.ranks, BenchRun.generate_on_ranks).

Real launchers on 2 CPU processes and the tiny pipeline: ``torchrun -m pytest tasks/`` gives
the results of one process (every metric but the timings), ``memberbench generate --tasks``
(two independent jobs) fills the cache so that the suite only reads it, a rank killed with
SIGKILL stops the other naming it, leaves no damaged cache entry, and a rerun resumes.  The
barrier's peer checks and the launcher check run on hand-made folders and environments (the
accelerate one also through ``accelerate launch`` itself).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_plugin import write_prompt_files

from memberbench import ranks
from memberbench.cache import GenerationCache
from memberbench.errors import MemberbenchError

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tasks"
TIMING_UNITS = ("s", "images/s")  # wall_s_per_image, images_per_s: differ run to run


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MEMBERBENCH_RUN_ID", "MASTER_PORT"):
        env.pop(k, None)
    env.update(extra)
    return env


def _options(root: Path, pipe: Path, seeds: str = "0-1", steps: int = 4) -> list[str]:
    mem, non = write_prompt_files(root, n=2)
    return [
        f"--model=bundled:path={pipe}",
        f"--prompts-memorized={mem}",
        f"--prompts-nonmemorized={non}",
        f"--seeds={seeds}",
        f"--steps={steps}",
        "--sweep=1",
        "--n-boot=10",
        "--m2-limit=1",
        "--m2-noises=1",
        "--mb-batch-size=2",
    ]


PYTEST = ["-m", "pytest", str(TASKS), "-p", "no:cacheprovider", "-q", "-rN"]


def _run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=900
    )


def _metrics(path: Path) -> dict:
    doc = json.loads(path.read_text())
    return {k: v for k, v in doc["metrics"].items() if v.get("unit") not in TIMING_UNITS}


@pytest.mark.slow
def test_generate_fills_the_tasks_keys_and_two_ranks_equal_one(tmp_path, tiny_pipeline_dir):
    opts = _options(tmp_path, tiny_pipeline_dir)
    # 1. two independent generate jobs (RANK / WORLD_SIZE by hand) fill the cache ...
    pre = tmp_path / "pre"
    for rank in (0, 1):
        g = _run(
            [sys.executable, "-m", "memberbench.generate", "--tasks", *opts, f"--cache-dir={pre}"],
            tmp_path,
            RANK=str(rank),
            WORLD_SIZE="2",
        )
        assert g.returncode == 0, g.stderr[-3000:]
        assert f"(rank {rank} of 2)" in g.stderr
    n_entries = len(GenerationCache(pre))
    assert n_entries > 0
    # ... and the suite on one process is then a pure read
    one = tmp_path / "one" / "run.json"
    r = _run([sys.executable, *PYTEST, *opts, f"--cache-dir={pre}", f"--results={one}"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    gen = json.loads(one.read_text())["run"]["generation"]
    assert gen["cache"]["misses"] == 0 and gen["images_generated"] == 0
    assert gen["cache"]["hits"] == gen["images_requested"] == n_entries
    assert f"generation cache: {n_entries} hits, 0 misses" in r.stdout
    assert len(GenerationCache(pre)) == n_entries  # nothing new was written
    # the cost model counts what the run generated (main + sweep; the cost task's 8 are fresh)
    from memberbench.cost import suite_cost

    rows = suite_cost(
        "quick", "bundled", prompts=(2, 2), seeds="0-1", steps="4", sweep="1", m2_limit="1"
    )
    assert sum(r.generations for r in rows if r.distributed) == gen["images_requested"]
    per_image = json.loads(one.read_text())["metrics"]["unet_evals_per_image"]["value"]
    assert per_image == rows[0].unet_evals / rows[0].generations == 2 * 4

    # 2. torchrun with 2 processes on a fresh cache: the same results as one process
    two = tmp_path / "two" / "run.json"
    fresh = tmp_path / "fresh"
    t = _run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         *PYTEST, *opts, f"--cache-dir={fresh}", f"--results={two}"],
        tmp_path,
    )  # fmt: skip
    assert t.returncode == 0, t.stdout[-3000:] + t.stderr[-2000:]
    assert _metrics(two) == _metrics(one)
    assert (two.with_suffix(".prompts.jsonl")).read_text() == one.with_suffix(
        ".prompts.jsonl"
    ).read_text()
    # rank 0 alone wrote results and printed the summary; both ranks generated a share
    assert t.stdout.count("results: ") == 1 and t.stdout.count("= memberbench =") == 1
    doc = json.loads(two.read_text())
    ranks_ = doc["run"]["generation"]["ranks"]
    assert [x["rank"] for x in ranks_] == [0, 1]
    assert all(x["generated"] > 0 for x in ranks_)
    assert sum(x["generated"] for x in ranks_) == n_entries
    assert doc["run"]["generation"]["cache"]["misses"] == 0  # the tasks only read
    assert sorted(GenerationCache(fresh).keys()) == sorted(GenerationCache(pre).keys())

    # 3. accelerate launch --multi_gpu --num_processes 2 (two CPU processes here): the same
    if shutil.which("accelerate") is None:
        return
    acc = tmp_path / "acc" / "run.json"
    a = _run(
        ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
         "0", *PYTEST, *opts, f"--cache-dir={tmp_path / 'acc-cache'}", f"--results={acc}"],
        tmp_path,
    )  # fmt: skip
    assert a.returncode == 0, a.stdout[-3000:] + a.stderr[-2000:]
    assert _metrics(acc) == _metrics(one)
    assert [
        x["generated"] > 0 for x in json.loads(acc.read_text())["run"]["generation"]["ranks"]
    ] == [True, True]


def _wait_for(pred, timeout: float = 300.0) -> None:
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.mark.slow
def test_a_killed_rank_is_named_nothing_is_half_written_and_a_rerun_resumes(
    tmp_path, tiny_pipeline_dir
):
    opts = _options(tmp_path, tiny_pipeline_dir, seeds="0-5", steps=6)
    cache = tmp_path / "cache"
    res = tmp_path / "res" / "run.json"
    cmd = [sys.executable, *PYTEST, *opts, f"--cache-dir={cache}", f"--results={res}"]
    env = {"WORLD_SIZE": "2", "MEMBERBENCH_RUN_ID": "killtest"}
    # rank 1 alone: killed once it has written its first cache entry, mid-way through its share
    r1 = subprocess.Popen(cmd, cwd=tmp_path, env=_env(RANK="1", **env), stdout=subprocess.DEVNULL)
    barrier = cache / ranks.RANKS_DIR / "killtest"
    _wait_for(lambda: r1.poll() is not None or any(cache.glob("??/*.npz")))
    assert r1.poll() is None
    r1.send_signal(signal.SIGKILL)
    r1.wait()
    assert not (barrier / "generated.rank1.json").exists()  # it died before finishing
    written = len(GenerationCache(cache))
    # rank 0 does its share, then stops at the barrier naming rank 1
    r0 = _run(cmd, tmp_path, RANK="0", **env)
    assert r0.returncode == 4, r0.stdout[-2000:] + r0.stderr[-2000:]
    msg = f"rank 0 of 2: rank 1 of 2 (pid {r1.pid} on {socket.gethostname()}) stopped before "
    assert msg + "reaching 'generated' (its process is gone)" in r0.stderr
    assert not res.exists()
    # no entry is damaged: every one reads back with its checksum
    c = GenerationCache(cache)
    assert all(c.get(k) is not None for k in list(c.keys())) and c.corrupt == 0
    n_before = len(c)
    assert n_before > written
    # a rerun (memberbench run --processes 2) resumes: what the two ranks wrote is reused
    rerun = _run(
        [sys.executable, "-m", "memberbench.cli", "run", "--processes", "2", f"--tasks={TASKS}",
         "-p", "no:cacheprovider", "-q", *opts, f"--cache-dir={cache}", f"--results={res}"],
        tmp_path,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-2000:]
    gen = json.loads(res.read_text())["run"]["generation"]
    before = sum(x["from_cache"] for x in gen["ranks"])
    assert before == n_before  # every entry of the killed run was used, none regenerated
    assert gen["ranks"][0]["generated"] == 0  # rank 0 had finished its share before it stopped
    assert sum(x["generated"] for x in gen["ranks"]) + before == gen["images_requested"]
    assert gen["cache"]["misses"] == 0


def _group(tmp_path: Path, rank: int, **kw) -> ranks.RankGroup:
    return ranks.RankGroup(tmp_path, rank, 2, rid="t", poll_s=0.01, **kw)


def test_barrier_returns_every_ranks_payload(tmp_path):
    a, b = _group(tmp_path, 0), _group(tmp_path, 1)
    (a.dir / "s.rank1.json").write_text(json.dumps({"n": 1}))  # rank 1 got there first
    assert a.wait("s", {"n": 0}) == {0: {"n": 0}, 1: {"n": 1}}
    assert b.wait("s", {"n": 1}) == {0: {"n": 0}, 1: {"n": 1}}
    a.close(), b.close()


def test_barrier_names_a_failed_a_silent_and_a_missing_peer(tmp_path):
    g = _group(tmp_path, 0, dead_after_s=0.5, join_timeout_s=0.3)
    with pytest.raises(MemberbenchError, match=r"^rank 1 of 2 never started \(no rank1.json"):
        g.wait("s")
    # a peer on another host (its pid cannot be checked) whose heartbeat stopped
    (g.dir / "rank1.json").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    (g.dir / "rank1.alive").touch()
    old = time.time() - 30
    os.utime(g.dir / "rank1.alive", (old, old))
    with pytest.raises(MemberbenchError, match=r"pid 1 on elsewhere\) stopped before reaching "):
        g.wait("s")
    # a peer that reported its failure
    peer = _group(tmp_path, 1)
    peer.fail("MemberbenchError: no such prompt file")
    with pytest.raises(MemberbenchError, match="^rank 1 of 2 failed: MemberbenchError: no such"):
        g.wait("s2")
    g.close(), peer.close()


def test_heartbeat_keeps_a_slow_peer_alive(tmp_path):
    a = _group(tmp_path, 0, dead_after_s=0.5)
    b = _group(tmp_path, 1, heartbeat_s=0.05)
    time.sleep(1.0)  # longer than dead_after_s: only the heartbeat keeps b alive
    assert a._why_gone(1, "s") is None
    b.close()
    time.sleep(0.8)
    info = json.loads((a.dir / "rank1.json").read_text())
    (a.dir / "rank1.json").write_text(json.dumps(dict(info, host="elsewhere")))
    assert "no heartbeat" in a._why_gone(1, "s")
    a.close()


def test_world_from_the_launchers_variables():
    assert ranks.world({}) == (0, 1)
    assert ranks.world({"WORLD_SIZE": "4", "RANK": "3"}) == (3, 4)
    assert ranks.world({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"}) == (1, 2)
    assert ranks.world({"WORLD_SIZE": "1", "RANK": "0"}) == (0, 1)
    with pytest.raises(MemberbenchError, match=r"WORLD_SIZE=2 but RANK=None"):
        ranks.world({"WORLD_SIZE": "2"})
    with pytest.raises(MemberbenchError, match=r"RANK='x' is not an integer"):
        ranks.world({"WORLD_SIZE": "2", "RANK": "x"})


def test_launcher_mismatch_with_the_environment_accelerate_builds():
    """The environment accelerate's own single-process launcher builds (its code, not a copy)
    for --num_processes 2 is named; its --num_processes 1 and torchrun's are not."""
    pytest.importorskip("accelerate")
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    def env_of(*argv: str) -> dict:
        args = launch_command_parser().parse_args([*argv, "script.py"])
        args, *_ = _validate_launch_command(args)
        base = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "WORLD_SIZE")}
        saved = dict(os.environ)
        try:
            os.environ.clear()
            os.environ.update(base)
            return prepare_simple_launcher_cmd_env(args)[1]
        finally:
            os.environ.clear()
            os.environ.update(saved)

    line = ranks.launcher_mismatch(env_of("--cpu", "--num_processes", "2"))
    assert line and line.startswith("accelerate launch was asked for several processes")
    assert "--multi_gpu" in line and "memberbench run --processes N" in line
    assert ranks.launcher_mismatch(env_of("--cpu", "--num_processes", "1")) is None
    assert ranks.launcher_mismatch({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "1"}) is None
    assert "started this process alone" in ranks.launcher_mismatch({"MEMBERBENCH_PROCESSES": "2"})


@pytest.mark.slow
def test_accelerate_launch_without_multi_gpu_is_named(tmp_path):
    """``accelerate launch --cpu --num_processes 2`` really starts one process: it says so."""
    if shutil.which("accelerate") is None:
        pytest.skip("accelerate is not installed")
    script = tmp_path / "probe.py"
    script.write_text(
        "from memberbench import ranks\nprint('PROBE', ranks.world(), ranks.launcher_mismatch())\n"
    )
    p = _run(["accelerate", "launch", "--cpu", "--num_processes", "2", str(script)], tmp_path)
    lines = [x for x in p.stdout.splitlines() if x.startswith("PROBE")]
    assert p.returncode == 0 and len(lines) == 1, p.stdout + p.stderr  # one process
    assert lines[0].startswith("PROBE (0, 1) accelerate launch was asked for several processes")


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["generate", "--tasks", "--seeds=x"], {}, "--seeds 'x' not understood"),
        (["generate", "--tasks", "--cache-dir=none"], {}, "pass --cache-dir DIR, not none"),
        (["generate", "--tasks"], {"WORLD_SIZE": "2"}, "WORLD_SIZE=2 but RANK=None"),
        (["run", "--processes", "x"], {}, "--processes must be a positive integer"),
        (["run", "--processes=0"], {}, "--processes must be a positive integer"),
    ],
)
def test_bad_input_is_one_line(argv, env, message, monkeypatch, capsys):
    from memberbench.cli import main

    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
