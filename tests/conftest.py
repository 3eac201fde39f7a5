"""Shared fixtures: a tiny random Stable Diffusion pipeline (built once per session) and an
adapter over it.  The pipeline has the bundled model's architecture and schedule but random
weights, so every code path is the real one; building it takes ~20 s on a loaded 2-core machine.

Torch runs single-threaded in the test session (``MEMBERBENCH_TEST_THREADS`` overrides): on the
shared 2-core machine two intra-op threads fighting the training job were 2-4x slower than one.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def load_script():
    """``load_script(name)`` imports ``scripts/<name>.py`` (not a package) as a module."""
    return _load_script


def pytest_configure(config):
    threads = os.environ.get("MEMBERBENCH_TEST_THREADS", "1")
    if not threads or threads == "0":
        return
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))
    elif "MEMBERBENCH_TEST_THREADS" in os.environ:
        os.environ["OMP_NUM_THREADS"] = threads
    else:  # read by torch at import (and inherited by subprocesses); no torch import here
        os.environ.setdefault("OMP_NUM_THREADS", threads)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """Path of a StableDiffusionPipeline folder (64x64 images, 4x16x16 latents), seed 0."""
    from memberbench.testing import make_tiny_pipeline_dir

    return make_tiny_pipeline_dir(tmp_path_factory.mktemp("tiny-sd") / "pipe", seed=0)


@pytest.fixture
def tiny_adapter(tiny_pipeline_dir):
    """A fresh fp32 CPU adapter over the tiny pipeline (cheap: loading takes ~0.2 s)."""
    from memberbench.adapters import load_adapter

    return load_adapter(f"bundled:path={tiny_pipeline_dir}", device="cpu", dtype="fp32")
