"""The package ships the task suite and the bundled model: a wheel built from this checkout,
installed into a fresh virtual environment, runs `memberbench list tasks` and a short
`memberbench run` from a folder that has no tasks/.  (The wheel is built offline, without build
isolation; the test skips, saying why, where that cannot be done.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from memberbench import cli

REPO = Path(__file__).resolve().parents[1]
TASK_FILES = sorted(p.name for p in (REPO / "tasks").glob("test_*.py"))


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_package_list_is_every_package_and_the_tasks():
    st = _pyproject()["tool"]["setuptools"]
    on_disk = sorted(
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "memberbench").rglob("__init__.py")
        if "__pycache__" not in p.parts
    )
    listed = st["packages"]
    assert sorted(set(listed) - {"memberbench.tasks"}) == on_disk, (
        "pyproject.toml [tool.setuptools] packages must list every package of memberbench/"
    )
    assert "memberbench.tasks" in listed
    assert st["package-dir"] == {"memberbench.tasks": "tasks"}
    assert not (REPO / "memberbench" / "tasks").exists()  # one copy: `pytest tasks/` collects it


def test_run_does_not_take_the_tasks_from_the_current_folder(tmp_path, monkeypatch):
    other = tmp_path / "tasks"
    other.mkdir()
    (other / "test_memorization.py").write_text("def test_x():\n    pass\n")
    monkeypatch.chdir(tmp_path)
    found = cli.find_tasks_dir()
    assert found.resolve() != other.resolve()
    assert sorted(p.name for p in found.glob("test_*.py")) == TASK_FILES


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_wheel_ships_tasks_and_bundled_model_and_runs_outside_a_clone(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the wheel is built from the checkout's files")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env["MEMBERBENCH_CACHE"] = str(tmp_path / "mb-cache")
    # the checkout's tracked and untracked (not ignored) files, without build leftovers
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    src = tmp_path / "src"
    for f in filter(None, files):
        rel = Path(os.fsdecode(f))
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    wheels = tmp_path / "wheels"
    r = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["-q", "-w", str(wheels), str(src)],
        tmp_path,
        env,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot build a wheel offline here: {r.stderr.strip()[-300:]}")
    (wheel,) = wheels.glob("memberbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for t in TASK_FILES:
        assert f"memberbench/tasks/{t}" in names
    for folder in ("memberbench/bundled/weights", "memberbench/data/bundled"):
        shipped = sorted(
            p.relative_to(src).as_posix() for p in (src / folder).rglob("*") if p.is_file()
        )
        assert shipped and set(shipped) <= names, sorted(set(shipped) - names)[:5]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]

    venv = tmp_path / "venv"
    r = _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
             tmp_path, env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    py, exe = venv / "bin" / "python", venv / "bin" / "memberbench"
    # the outer pip, run by the venv's python, installs into the venv
    r = _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
             tmp_path, env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    away = tmp_path / "elsewhere"
    away.mkdir()
    r = _run([str(py), "-c", "import memberbench; print(memberbench.__file__)"], away, env)
    assert Path(r.stdout.strip()).is_relative_to(venv), r.stdout + r.stderr

    r = _run([str(exe), "list", "tasks"], away, env)
    assert r.returncode == 0, r.stderr
    listed = [line.split()[0] for line in r.stdout.splitlines()]
    assert listed == TASK_FILES

    out = away / "res.json"
    run = [str(exe), "run", "--limit=1", "--seeds=n=1", "--steps=2", "--sweep=none"]
    run += ["--n-boot=10", "-k", "test_sscd_memorized", f"--results={out}"]
    r = _run(run, away, env)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-3000:]
    assert f"rootdir: {away}" in text  # not an ancestor of site-packages
    assert "test_memorization.py::test_sscd_memorized PASSED" in text or "1 passed" in text
    doc = json.loads(out.read_text())
    assert doc["model"]["name"] == "bundled"
    assert doc["metrics"]["sscd_mean"]["n"] == 1
    assert doc["metrics"]["sscd_mean"]["test"] == "test_memorization.py::test_sscd_memorized"
    installed_tasks = venv.glob("lib/python*/site-packages/memberbench/tasks")
    assert not [p for d in installed_tasks for p in d.glob(".pytest_cache")]

    # a clone beside the non-editable install: `pytest tasks/` collects each task once
    r = _run([str(py), "-m", "pytest", "tasks", "--co", "-q", "-p", "no:cacheprovider"], src, env)
    ids = [line for line in r.stdout.splitlines() if "::" in line]
    assert r.returncode == 0 and ids, r.stdout[-2000:] + r.stderr[-2000:]
    assert len(ids) == len(set(ids)) and all(i.startswith("tasks/") for i in ids)
