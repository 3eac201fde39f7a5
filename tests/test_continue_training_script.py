"""scripts/continue_training.py on a bundle made of the tiny random pipeline and a small world:
a zero learning rate is the identity, training changes only the denoiser and text encoder,
reruns are bit-identical, and bad input is refused without leaving anything behind."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from memberbench.bundled import MANIFEST, file_sha256, verify_manifest, write_manifest
from memberbench.bundled.world import Item, World
from memberbench.types import MemberbenchError

UNET = "model/unet/diffusion_pytorch_model.safetensors"
TEXT = "model/text_encoder/model.safetensors"
UNCHANGED = (  # files a continuation copies, or writes again byte for byte
    "model/vae/diffusion_pytorch_model.safetensors",
    "model/scheduler/scheduler_config.json",
    "model/unet/config.json",  # without the scratch folder diffusers records on load
    "model/text_encoder/config.json",
)


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("continue_training")


@pytest.fixture
def bundle(tiny_pipeline_dir, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(tiny_pipeline_dir, root / "model")
    (root / "recipe.json").write_text(json.dumps({"seed": 0, "unet_steps": 1}))
    write_manifest(root)
    return root


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    items = [
        Item(f"a {c} thing", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "shape")
        for c in ("red", "blue", "green")
    ]
    return World(train=items, held_out=[], canaries=[], seed=0)


def _run(script, world, src, out, *extra):
    args = script.parse_args(
        [f"--from={src}", f"--out={out}", "--batch=4", "--no-progress", *extra]
    )
    return script.continue_training(args, world=world)


def _same(a, b, rel) -> bool:
    return (a / rel).read_bytes() == (b / rel).read_bytes()


def _tensors_equal(a, b, rel) -> bool:
    ta, tb = load_file(a / rel), load_file(b / rel)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_zero_learning_rate_is_the_identity(script, world, bundle, tmp_path):
    # AdamW at lr 0 moves no weight (and its decay is scaled by lr), and an EMA of weights that
    # do not move is those weights: the continued bundle holds the source's tensors exactly
    out = tmp_path / "same"
    entry = _run(script, world, bundle, out, "--steps=3", "--lr=0")
    assert _tensors_equal(bundle, out, UNET) and _tensors_equal(bundle, out, TEXT)
    assert all(_same(bundle, out, rel) for rel in UNCHANGED)
    verify_manifest(out)
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["unet_steps"] == 1  # the source recipe is kept ...
    assert recipe["continued"] == [entry]  # ... and the continuation appended
    assert entry["steps"] == 3 and entry["lr"] == 0 and entry["ema_decay"] == 0.999
    assert entry["from_manifest_sha256"] == file_sha256(bundle / MANIFEST)


def test_training_changes_the_denoiser_only_and_reruns_are_identical(
    script, world, bundle, tmp_path
):
    from diffusers import StableDiffusionPipeline

    a, b = tmp_path / "a", tmp_path / "b"
    _run(script, world, bundle, a, "--steps=2", "--lr=1e-3", "--ema=0")
    assert not _tensors_equal(bundle, a, UNET) and not _tensors_equal(bundle, a, TEXT)
    assert all(_same(bundle, a, rel) for rel in UNCHANGED)
    verify_manifest(a)
    pipe = StableDiffusionPipeline.from_pretrained(a / "model")
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert not (tmp_path / "a.partial").exists()
    # a continuation of a continuation records both
    _run(script, world, a, b, "--steps=1", "--lr=1e-3", "--ema=0")
    assert [e["steps"] for e in json.loads((b / "recipe.json").read_text())["continued"]] == [2, 1]
    # same source, settings and seed: the same weights, bit for bit
    c = tmp_path / "c"
    _run(script, world, bundle, c, "--steps=2", "--lr=1e-3", "--ema=0")
    assert _tensors_equal(a, c, UNET) and _tensors_equal(a, c, TEXT)


def test_refusals_leave_nothing_behind(script, world, bundle, tmp_path, capsys):
    out = tmp_path / "out"
    for extra, message in (
        (["--steps=0"], "--steps must be at least 1"),
        (["--steps=1", "--ema=1"], r"--ema must be in \[0, 1\)"),
        (["--steps=1", "--lr=-1"], "--lr must be 0 or more"),
    ):
        with pytest.raises(MemberbenchError, match=message):
            _run(script, world, bundle, out, *extra)
    with pytest.raises(MemberbenchError, match="is not a bundle folder"):
        _run(script, world, tmp_path, out, "--steps=1")
    # a tampered source is named, and no partial output is left
    unet = bundle / UNET
    unet.write_bytes(unet.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(MemberbenchError, match="diffusion_pytorch_model.safetensors"):
        _run(script, world, bundle, out, "--steps=1")
    assert not out.exists() and not (tmp_path / "out.partial").exists()
    # an existing --out is never overwritten
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = script.main([f"--from={bundle}", f"--out={out}", "--steps=1"])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
