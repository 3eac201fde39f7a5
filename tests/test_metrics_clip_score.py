"""CLIP score on a tiny randomly initialised open_clip model, against a direct computation."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from memberbench.metrics.clip_score import ClipScorer, clip_score_from_embeddings
from memberbench.types import MemberbenchError

open_clip = pytest.importorskip("open_clip")

TINY = "memberbench-tiny-clip"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PROMPTS = ["a red square", "a photo of a cat", "the Mona Lisa", "an empty room"]


@pytest.fixture(scope="module")
def tiny_name(tmp_path_factory):
    d = tmp_path_factory.mktemp("openclip_cfg")
    (d / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(d)
    return TINY


def images(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 48, 40, 3), dtype=np.uint8)


def direct_scores(model, preprocess, tokenizer, ims, texts) -> np.ndarray:
    from PIL import Image

    x = torch.stack([preprocess(Image.fromarray(im)) for im in ims])
    with torch.no_grad():
        fi = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        ft = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1)
    return (100 * (fi * ft).sum(-1)).clamp(min=0).numpy()  # torchmetrics' definition


def test_clip_score_matches_direct_computation(tiny_name):
    torch.manual_seed(0)
    sc = ClipScorer(tiny_name, pretrained=None, batch_size=3)
    ims = images()
    got = sc.score(ims, PROMPTS)
    model, preprocess, tok = sc.load()
    ref = direct_scores(model, preprocess, tok, ims, PROMPTS)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    # a random model gives some negative cosines: those are clamped to 0, not negative
    assert (got >= 0).all() and (got == 0).any()
    st = sc(ims, PROMPTS)
    assert st.value == pytest.approx(ref.mean(), rel=1e-4, abs=1e-4) and st.n == 4
    d = sc.describe()
    assert d["model_name"] == tiny_name and d["pretrained"] is None
    assert d["higher_is_better"] is True


def test_clip_score_local_checkpoint_and_objects(tiny_name, tmp_path):
    torch.manual_seed(1)
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_name)
    model.eval()
    tok = open_clip.get_tokenizer(tiny_name)
    ckpt = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    ims = images(3)
    ref = direct_scores(model, preprocess, tok, ims, ["one prompt"] * 3)
    from_file = ClipScorer(tiny_name, pretrained=str(ckpt))
    np.testing.assert_allclose(from_file.score(ims, "one prompt"), ref, rtol=1e-4, atol=1e-4)
    assert len(from_file.describe()["checkpoint_sha256"]) == 64
    given = ClipScorer("my-clip", None, model=model, preprocess=preprocess, tokenizer=tok)
    np.testing.assert_allclose(given.score(ims, "one prompt"), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(MemberbenchError, match="3 images but 2 texts"):
        given.score(ims, ["a", "b"])


def test_clip_score_from_embeddings_by_hand():
    s = clip_score_from_embeddings([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0]], [[1, 1], [-1, 0], [3, 0]])
    np.testing.assert_allclose(s, [100 / np.sqrt(2), 0.0, 100.0])


def test_uncached_weights_offline_give_clear_error(tmp_path):
    sc = ClipScorer("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path), offline=True)
    t0 = time.time()
    with pytest.raises(MemberbenchError, match=r"not in the local cache.*pretrained="):
        sc.score(images(1), "x")
    assert time.time() - t0 < 30  # offline: no network retries


def test_unknown_model_name():
    with pytest.raises(MemberbenchError, match="unknown open_clip model"):
        ClipScorer("ViT-Q-99").load()
