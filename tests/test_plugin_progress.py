"""Generation progress in a plain `pytest tasks/` run: shown on a terminal (past output
capture, without -s), quiet in a pipe and on CI unless --mb-progress asks for it.

The runs are real: the memorization task on the tiny random pipeline, in a pseudo-terminal
(python's pty module) or with the output piped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_plugin import write_prompt_files

from memberbench import pytest_plugin

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "tasks" / "test_memorization.py"
LINE = re.compile(r"memberbench: generating memorized, g=7\.5: (\d+)/4 images")


class FakeReporter:
    """What _Progress calls on pytest's terminal reporter, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def write_line(self, line: str) -> None:
        self.calls.append(("line", line))

    def rewrite(self, line: str, **kw: object) -> None:
        self.calls.append(("rewrite", line))

    def write(self, text: str, **kw: object) -> None:
        self.calls.append(("write", text))

    def ensure_newline(self) -> None:
        self.calls.append(("newline", ""))


def _drive(monkeypatch, tty: bool, steps: list[tuple[float, int]], total: int):
    clock = iter([t for t, _ in steps])
    monkeypatch.setattr(pytest_plugin.time, "monotonic", lambda: next(clock))
    tr = FakeReporter()
    p = pytest_plugin._Progress(tr, None, tty=tty)
    for _, done in steps:
        p("memorized, g=7.5", done, total)
    return tr.calls


def test_progress_lines_off_a_terminal_every_tenth_with_the_eta(monkeypatch):
    # 20 images, 4 from the cache, then 2 per second
    steps = [(0.0, 4)] + [(float(k), 4 + 2 * k) for k in range(1, 9)]
    calls = _drive(monkeypatch, False, steps, total=20)
    assert all(kind == "line" for kind, _ in calls)
    lines = [text for _, text in calls]
    assert lines[0] == "memberbench: generating memorized, g=7.5: 4/20 images, ETA --:--"
    # done 6 (tenth 3): 2 made in 1 s -> 14 left at 2 img/s = 7 s
    assert lines[1] == "memberbench: generating memorized, g=7.5: 6/20 images, 2 img/s, ETA 0:07"
    # one line per tenth reached: 4, 6, 8, 10, ..., 18 are tenths 2, 3, 4, 5, 6, 7, 8, 9
    assert len(lines) == 9
    assert lines[-1] == "memberbench: generating memorized, g=7.5: 20/20 images in 8.0 s"


def test_progress_on_a_terminal_redraws_at_most_every_0_2_s_and_erases_itself(monkeypatch):
    steps = [(0.0, 0), (0.05, 1), (0.1, 2), (0.3, 3), (0.35, 4)]
    calls = _drive(monkeypatch, True, steps, total=4)
    assert calls[0] == ("newline", "")
    drawn = [text for kind, text in calls if kind == "rewrite" and text]
    assert drawn == [
        "memberbench: generating memorized, g=7.5: 0/4 images, ETA --:--",
        "memberbench: generating memorized, g=7.5: 3/4 images, 10 img/s, ETA 0:01",
    ]
    assert calls[-2:] == [("rewrite", ""), ("write", "\r")]  # erased, back at column 0


def _pytest_cmd(root: Path, tiny: Path, *extra: str) -> list[str]:
    mem, non = write_prompt_files(root, n=2)
    return [
        sys.executable,
        "-m",
        "pytest",
        str(TASK),
        "-k",
        "test_sscd_memorized",
        "-p",
        "no:cacheprovider",
        f"--model=bundled:path={tiny}",
        f"--prompts-memorized={mem}",
        f"--prompts-nonmemorized={non}",
        "--seeds=0-1",
        "--steps=2",
        "--sweep=none",
        "--mb-batch-size=1",
        f"--cache-dir={root / 'cache'}",
        f"--results={root / 'res.json'}",
        *extra,
    ]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "BUILD_NUMBER")}
    env.update(PYTHONPATH=str(REPO), COLUMNS="100", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.update(extra)
    return env


def _in_pty(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    import pty

    master, slave = pty.openpty()
    p = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return p.wait(timeout=300), out.decode("utf-8", "replace")


@pytest.mark.slow
def test_progress_shows_on_a_terminal_without_dash_s(tmp_path, tiny_pipeline_dir):
    rc, out = _in_pty(_pytest_cmd(tmp_path, tiny_pipeline_dir), _env(), tmp_path)
    assert rc == 0 and "1 passed" in out, out[-3000:]
    shown = [int(m) for m in LINE.findall(out)]
    assert shown and shown[0] == 0, out[-3000:]  # drawn while the test ran, output captured
    assert "ETA" in out
    assert "memberbench: 4 images (memorized, g=7.5, 2 seeds, 2 steps)" in out  # the log line


@pytest.mark.slow
def test_progress_is_quiet_on_ci_and_in_a_pipe_unless_asked(tmp_path, tiny_pipeline_dir):
    ci = tmp_path / "ci"
    ci.mkdir()
    rc, out = _in_pty(_pytest_cmd(ci, tiny_pipeline_dir), _env(CI="true"), ci)
    assert rc == 0 and "1 passed" in out, out[-3000:]
    assert not LINE.search(out)

    piped = tmp_path / "pipe"
    piped.mkdir()
    r = subprocess.run(
        _pytest_cmd(piped, tiny_pipeline_dir), env=_env(), cwd=piped, capture_output=True
    )
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode == 0 and "1 passed" in out, out[-3000:]
    assert not LINE.search(out) and "\r" not in out

    asked = tmp_path / "asked"
    asked.mkdir()
    cmd = _pytest_cmd(asked, tiny_pipeline_dir, "--mb-progress")
    r = subprocess.run(cmd, env=_env(CI="1"), cwd=asked, capture_output=True)
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode == 0 and "1 passed" in out, out[-3000:]
    # whole lines (no redraw): 0 of 4 at the start, then each quarter, then the end
    assert [int(m) for m in LINE.findall(out)] == [0, 1, 2, 3, 4] and "\r" not in out
    assert re.search(r"generating memorized, g=7\.5: 4/4 images in \d+\.\d s\n", out)
