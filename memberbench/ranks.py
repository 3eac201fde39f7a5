"""The processes of one run: rank and world size from the launcher, and a file barrier.

The benchmark on several processes (``torchrun --nproc_per_node N -m pytest tasks/ ...``,
``accelerate launch --multi_gpu --num_processes N -m pytest ...``, ``memberbench run
--processes N ...``, or ``mpirun``) needs no process group: the ranks share the generation cache,
and they wait for each other with :class:`RankGroup`, a barrier of small files in a folder of the
cache.  Each rank keeps a heartbeat file fresh from a thread; a rank waiting for a peer that is
gone (its process no longer runs on this host, or its heartbeat is older than
``dead_after_s``) or that reported a failure stops with one line naming it.

Standard library only (layer 0).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from memberbench.errors import MemberbenchError

# (world-size variable, rank variable) of each launcher: torchrun / accelerate / memberbench run
# (torch.distributed's), Open MPI, Intel MPI / MPICH, MVAPICH
LAUNCHER_VARS = (
    ("WORLD_SIZE", "RANK"),
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
    ("PMI_SIZE", "PMI_RANK"),
    ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"),
)
RANKS_DIR = ".ranks"  # in the cache folder
STALE_RUN_S = 86400.0  # barrier folders of runs older than this are removed


def _int_var(env: Any, name: str) -> int:
    raw = env.get(name, "")
    try:
        return int(raw)
    except ValueError:
        raise MemberbenchError(
            f"the launcher variable {name}={raw!r} is not an integer; unset it or launch with "
            "torchrun / memberbench run --processes N"
        ) from None


def world(env: Any = None) -> tuple[int, int]:
    """(rank, world size) of this process from the launcher's variables; (0, 1) alone."""
    env = os.environ if env is None else env
    for size_var, rank_var in LAUNCHER_VARS:
        if env.get(size_var, "").strip():
            size = _int_var(env, size_var)
            if size <= 1:
                continue
            rank = _int_var(env, rank_var) if env.get(rank_var, "").strip() else None
            if rank is None or not 0 <= rank < size:
                raise MemberbenchError(
                    f"{size_var}={size} but {rank_var}={env.get(rank_var)!r}: a rank in 0..{size - 1} "
                    "is needed; launch with torchrun or memberbench run --processes N"
                )
            return rank, size
    return 0, 1


def launcher_mismatch(env: Any = None) -> str | None:
    """One line naming a launcher that started one process where several were asked for, or
    None.  accelerate's single-process launcher (``accelerate launch --num_processes N`` without
    ``--multi_gpu``, e.g. ``--cpu`` without an MPI hostfile) sets MASTER_ADDR / MASTER_PORT
    (only when N > 1) and ACCELERATE_USE_CPU, but no WORLD_SIZE: it runs one process."""
    env = os.environ if env is None else env
    if world(env)[1] > 1:
        return None
    asked = env.get("MEMBERBENCH_PROCESSES", "").strip()
    if asked and asked != "1":
        return (
            f"memberbench run --processes {asked} started this process alone (WORLD_SIZE is "
            "not set): it does all the work; launch through memberbench run, not by hand"
        )
    if "ACCELERATE_USE_CPU" in env and env.get("MASTER_PORT") and "WORLD_SIZE" not in env:
        return (
            "accelerate launch was asked for several processes but started one (its "
            "single-process launcher: --num_processes N without --multi_gpu, or --cpu without "
            "--mpirun_hostfile); this one process does all the work. For N processes use "
            "`accelerate launch --multi_gpu --num_processes N`, `torchrun --nproc_per_node N -m "
            "pytest tasks/ ...` or `memberbench run --processes N ...`"
        )
    return None


def run_id(env: Any = None) -> str:
    """A name all ranks of one launch agree on: MEMBERBENCH_RUN_ID (memberbench run sets it),
    torchrun's TORCHELASTIC_RUN_ID (a fresh uuid with --standalone; give --rdzv-id on several
    nodes) and restart count, else this host and the launcher's (parent's) pid."""
    env = os.environ if env is None else env
    rid = env.get("MEMBERBENCH_RUN_ID", "").strip()
    if not rid:
        tid = env.get("TORCHELASTIC_RUN_ID", "").strip()
        if tid and tid.lower() != "none":
            rid = f"{tid}-r{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        else:
            rid = f"{socket.gethostname()}-ppid{os.getppid()}-{env.get('MASTER_PORT', '')}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in rid)[:120]


def _pid_running(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class RankGroup:
    """The ranks of one run meeting at named steps in ``root/.ranks/<run id>/``.

    ``wait(step, payload)`` returns {rank: payload} once every rank has reached ``step``;
    raises MemberbenchError naming a rank that failed (:meth:`fail`), whose process is gone, or
    that never started within ``join_timeout_s``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        rank: int,
        world_size: int,
        *,
        rid: str | None = None,
        heartbeat_s: float = 1.0,
        dead_after_s: float = 60.0,
        join_timeout_s: float = 1800.0,
        poll_s: float = 0.2,
    ) -> None:
        base = Path(root) / RANKS_DIR
        self.rank, self.world = rank, world_size
        self.dir = base / (rid or run_id())
        self.dir.mkdir(parents=True, exist_ok=True)
        self.heartbeat_s, self.dead_after_s = heartbeat_s, dead_after_s
        self.join_timeout_s, self.poll_s = join_timeout_s, poll_s
        self.started = time.time()
        self.host = socket.gethostname()
        if rank == 0:
            self._remove_stale(base)
        _write_json(
            self.dir / f"rank{rank}.json",
            {"rank": rank, "pid": os.getpid(), "host": self.host, "started": self.started},
        )
        self._alive = self.dir / f"rank{rank}.alive"
        self._alive.touch()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="memberbench-heartbeat")
        self._thread.daemon = True
        self._thread.start()

    def __repr__(self) -> str:
        return f"RankGroup(rank {self.rank} of {self.world}, {str(self.dir)!r})"

    def _remove_stale(self, base: Path) -> None:
        now = time.time()
        for d in base.iterdir():
            with contextlib.suppress(OSError):
                if d != self.dir and d.is_dir() and now - d.stat().st_mtime > STALE_RUN_S:
                    shutil.rmtree(d, ignore_errors=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with contextlib.suppress(OSError):
                os.utime(self._alive)

    def close(self) -> None:
        self._stop.set()

    def fail(self, message: str) -> None:
        """Tell the other ranks that this one stopped, and why (they stop too, naming it)."""
        with contextlib.suppress(OSError):
            _write_json(self.dir / f"failed.rank{self.rank}.json", {"message": message})

    def _why_gone(self, k: int, step: str) -> str | None:
        failed = _read_json(self.dir / f"failed.rank{k}.json")
        if failed is not None:
            return f"rank {k} of {self.world} failed: {failed.get('message', '')}"
        info = _read_json(self.dir / f"rank{k}.json")
        if info is None:
            if time.time() - self.started > self.join_timeout_s:
                return (
                    f"rank {k} of {self.world} never started (no rank{k}.json in {self.dir} "
                    f"after {self.join_timeout_s:g} s)"
                )
            return None
        where = f"rank {k} of {self.world} (pid {info.get('pid')} on {info.get('host')})"
        if info.get("host") == self.host and not _pid_running(int(info.get("pid", -1))):
            return f"{where} stopped before reaching '{step}' (its process is gone)"
        try:
            age = time.time() - (self.dir / f"rank{k}.alive").stat().st_mtime
        except OSError:
            age = float("inf")
        if age > self.dead_after_s:
            return f"{where} stopped before reaching '{step}' (no heartbeat for {age:.0f} s)"
        return None

    def wait(self, step: str, payload: dict[str, Any] | None = None) -> dict[int, dict[str, Any]]:
        _write_json(self.dir / f"{step}.rank{self.rank}.json", dict(payload or {}))
        while True:
            got = {}
            for k in range(self.world):
                d = _read_json(self.dir / f"{step}.rank{k}.json")
                if d is not None:
                    got[k] = d
            if len(got) == self.world:
                return got
            for k in range(self.world):
                why = None if k in got else self._why_gone(k, step)
                if why:
                    self.close()
                    raise MemberbenchError(why)
            time.sleep(self.poll_s)


def launch(cmd: list[str], processes: int, env: Any = None, poll_s: float = 0.2) -> int:
    """Run ``cmd`` as ranks 0..processes-1 (``memberbench run --processes N``): each with RANK,
    WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, a shared MEMBERBENCH_RUN_ID and (unless set)
    OMP_NUM_THREADS=1, as torchrun sets them.  Waits for all; a rank that exits non-zero is
    named in one line (the others stop on their own at the next barrier, naming it).  Returns
    0, or the first non-zero status (a signal N as 128 + N)."""
    import signal
    import subprocess
    import sys
    import uuid

    if processes < 1:
        raise MemberbenchError(f"--processes must be a positive integer, got {processes}")
    base = dict(os.environ if env is None else env)
    base.setdefault("OMP_NUM_THREADS", "1")
    base["MEMBERBENCH_RUN_ID"] = f"run-{uuid.uuid4().hex[:12]}"
    base["MEMBERBENCH_PROCESSES"] = str(processes)
    procs = []
    for r in range(processes):
        e = dict(base, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(processes))
        e.update(LOCAL_WORLD_SIZE=str(processes), GROUP_RANK="0")
        procs.append(subprocess.Popen(cmd, env=e))
    codes: dict[int, int] = {}
    try:
        while len(codes) < processes:
            for r, p in enumerate(procs):
                if r in codes:
                    continue
                rc = p.poll()  # reaps it, so peers see its pid gone
                if rc is None:
                    continue
                codes[r] = rc if rc >= 0 else 128 - rc
                if rc != 0:
                    how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
                    print(
                        f"memberbench run: rank {r} of {processes} (pid {p.pid}) {how}",
                        file=sys.stderr,
                    )
            time.sleep(poll_s)
    except KeyboardInterrupt:
        for p in procs:
            with contextlib.suppress(OSError):
                p.send_signal(signal.SIGINT)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)
        raise
    bad = [codes[r] for r in range(processes) if codes[r] != 0]
    return bad[0] if bad else 0
