"""The SDXL adapter against StableDiffusionXLPipeline, and ``--model diffusers:path=DIR``.

The tiny pipeline is built from config like diffusers' own SDXL pipeline tests (random weights,
two CLIP text encoders); both tokenizers are the bundled model's CLIP tokenizer (the Hub's tiny
tokenizers are not reachable here).
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

from memberbench.adapters import load_adapter, model_card
from memberbench.adapters.cards import CARDS, with_changes
from memberbench.types import GenerationRequest, MemberbenchError

PROMPTS = ["a red circle", "a blue square on green"]
STEPS = 4


@pytest.fixture(scope="module")
def sdxl_pipe():
    from memberbench.testing import make_tiny_sdxl_pipeline

    return make_tiny_sdxl_pipeline(seed=0)


@pytest.fixture
def sdxl(sdxl_pipe):
    from memberbench.adapters.sdxl import SDXLAdapter

    return SDXLAdapter(sdxl_pipe, with_changes(CARDS["sdxl"], resolution=128), device="cpu")


@pytest.fixture(scope="module")
def sdxl_dir(sdxl_pipe, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-sdxl") / "pipe"
    sdxl_pipe.save_pretrained(d)
    return d


def test_card():
    card = model_card("sdxl")
    assert card.repo_id == "stabilityai/stable-diffusion-xl-base-1.0"
    assert re.fullmatch(r"[0-9a-f]{40}", card.revision)
    assert card.resolution == 1024 and card.prediction_type == "epsilon"


def test_encode_prompts_matches_pipeline(sdxl, sdxl_pipe):
    from memberbench.adapters.sdxl import unpack

    packed = sdxl.encode_prompts([*PROMPTS, ""])
    e, pooled = unpack(packed, sdxl.embed_dim, sdxl.pooled_dim)
    pe, ne, pp, npool = sdxl_pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1)
    assert e.shape == (3, 77, 64) and pooled.shape == (3, 32)
    assert torch.equal(e[:2], pe) and torch.equal(pooled[:2], pp)
    # the empty prompt is the pipeline's default unconditional input: zeros
    assert torch.equal(e[2], ne[0]) and torch.equal(pooled[2], npool[0])
    assert float(ne.abs().sum()) == 0.0 and float(pe.abs().sum()) > 0.0
    # the packing is lossless: the padding of the pooled row is zero
    assert float(packed[:, -1, sdxl.pooled_dim :].abs().sum()) == 0.0


def test_time_ids_match_pipeline(sdxl, sdxl_pipe):
    z = torch.zeros(2, 4, 16, 16)
    ours = sdxl.time_ids(z)
    theirs = sdxl_pipe._get_add_time_ids(
        (128, 128), (0, 0), (128, 128), dtype=torch.float32, text_encoder_projection_dim=32
    )
    assert torch.equal(ours, theirs.expand(2, 6))


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_traced_sampler_matches_pipeline(sdxl, sdxl_pipe, scheduler):
    """Same seed, same initial latents, same scheduler: the traced sampler's final latents equal
    StableDiffusionXLPipeline's to 1e-5 (measured 0.0) and its uint8 images the pipeline's
    float images rounded."""
    from memberbench.sampling.sampler import TracedSampler, initial_noise

    reqs = [
        GenerationRequest(p, seed=s, steps=STEPS, guidance=5.0, scheduler=scheduler)
        for p, s in zip(PROMPTS, (0, 1))
    ]
    samples = TracedSampler(sdxl, batch_size=2).sample(reqs)
    sdxl_pipe.scheduler = sdxl.make_scheduler(scheduler)
    z = torch.stack([initial_noise(r.seed, sdxl.latent_shape)[0] for r in reqs])
    kw = dict(num_inference_steps=STEPS, guidance_scale=5.0, latents=z)
    lat = sdxl_pipe(PROMPTS, output_type="latent", **kw).images
    ours = torch.from_numpy(np.stack([s.final_latent for s in samples]))
    assert (ours - lat).abs().max().item() <= 1e-5
    img = sdxl_pipe(PROMPTS, output_type="np", **kw).images
    assert np.array_equal(
        np.stack([s.image for s in samples]), (img * 255).round().astype(np.uint8)
    )
    for s in samples:
        assert s.ok and s.image.shape == (128, 128, 3) and s.unet_evals == 2 * STEPS
        assert s.meta["scheduler"] == type(sdxl_pipe.scheduler).__name__


def test_local_folder_is_detected(sdxl_dir, tmp_path):
    from memberbench.adapters.identity import dirs_sha256
    from memberbench.adapters.sdxl import SDXLAdapter

    ad = load_adapter(f"diffusers:path={sdxl_dir}", device="cpu")
    assert isinstance(ad, SDXLAdapter) and ad.family == "sdxl"
    assert ad.card.revision == "local" and ad.card.repo_id == str(sdxl_dir)
    assert ad.resolution == 128 and ad.latent_shape == (4, 16, 16)
    d = ad.describe()
    assert d["weights_sha256"] == dirs_sha256([sdxl_dir])[0]
    assert d["scheduler_shipped"] == "EulerDiscreteScheduler"
    used = ad.describe_scheduler("ddim")
    assert used["class"] == "DDIMScheduler" and used["config"]["beta_schedule"] == "scaled_linear"
    # resolution= overrides the native one
    big = load_adapter(f"diffusers:path={sdxl_dir},resolution=256", device="cpu")
    assert big.resolution == 256 and big.latent_shape == (4, 32, 32)
    # one changed byte of one weight file changes the recorded sha256
    copy = tmp_path / "copy"
    shutil.copytree(sdxl_dir, copy)
    f = copy / "unet" / "diffusion_pytorch_model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 1
    f.write_bytes(bytes(raw))
    other = load_adapter(f"diffusers:path={copy}", device="cpu").describe()["weights_sha256"]
    assert other != d["weights_sha256"]


def test_card_loaded_from_path_records_local(sdxl_dir):
    ad = load_adapter(f"sdxl:path={sdxl_dir},resolution=128", device="cpu")
    assert type(ad).__name__ == "SDXLAdapter"
    assert ad.card.revision == "local" and ad.resolution == 128
    assert len(ad.describe()["weights_sha256"]) == 64


def test_card_path_sd_records_local(tiny_pipeline_dir):
    ad = load_adapter(f"sd-1.4:path={tiny_pipeline_dir}", device="cpu")
    assert type(ad).__name__ == "StableDiffusionAdapter" and ad.card.revision == "local"
    assert len(ad.describe()["weights_sha256"]) == 64
    assert load_adapter(f"diffusers:path={tiny_pipeline_dir}", device="cpu").family == "sd"


def test_folder_missing_a_component(sdxl_dir, tmp_path):
    copy = tmp_path / "pipe"
    shutil.copytree(sdxl_dir, copy)
    shutil.rmtree(copy / "text_encoder_2")
    with pytest.raises(MemberbenchError) as e:
        load_adapter(f"diffusers:path={copy}", device="cpu")
    msg = str(e.value)
    assert "'text_encoder_2'" in msg and str(copy) in msg and "\n" not in msg


def test_unknown_pipeline_class(sdxl_dir, tmp_path):
    copy = tmp_path / "pipe"
    shutil.copytree(sdxl_dir, copy)
    idx = json.loads((copy / "model_index.json").read_text())
    idx["_class_name"] = "KandinskyV22Pipeline"
    (copy / "model_index.json").write_text(json.dumps(idx))
    with pytest.raises(MemberbenchError) as e:
        load_adapter(f"diffusers:path={copy}")
    msg = str(e.value)
    assert "'KandinskyV22Pipeline'" in msg and "StableDiffusionXLPipeline" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("diffusers", r"needs path="),
        ("diffusers:path=/nonexistent/x", r"no such folder"),
        ("diffusers:path=/tmp,colour=red", r"no parameter 'colour'"),
        ("sdxl:resolution=abc", r"resolution='abc' is not valid"),
    ],
)
def test_bad_specs(spec, pattern):
    with pytest.raises(MemberbenchError, match=pattern):
        load_adapter(spec)


def test_not_a_pipeline_folder(tmp_path):
    with pytest.raises(MemberbenchError, match="no model_index.json"):
        load_adapter(f"diffusers:path={tmp_path}")


def test_missing_sdxl_weights_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(MemberbenchError) as e:
        load_adapter("sdxl")
    msg = str(e.value)
    card = CARDS["sdxl"]
    assert card.repo_id in msg and card.revision in msg
    assert "--model sdxl:path=/local/dir" in msg and "\n" not in msg


def test_mitigations_declared_for_sdxl_run_on_it(sdxl):
    """Every built-in method that declares the sdxl family runs end to end on the tiny SDXL
    model; the SD-only ones are refused before generation."""
    from memberbench.mitigations import BUILTIN, build_mitigation, mitigation_class
    from memberbench.runner import run_generation

    req = GenerationRequest("a red circle", seed=0, steps=3, guidance=5.0)
    for name in sorted(BUILTIN):
        m = build_mitigation(name)
        fams = mitigation_class(name).families
        if "sdxl" in fams or "*" in fams:
            (s,) = run_generation(sdxl, [req], mitigation=m, progress=False)
            assert s.ok and s.image.shape == (128, 128, 3), name
        else:
            with pytest.raises(MemberbenchError, match="does not support model 'sdxl'"):
                run_generation(sdxl, [req], mitigation=m, progress=False)
