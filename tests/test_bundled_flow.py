"""The second bundled model: the flow-matching transformer (``--model bundled-flow``).

Its recipe (memberbench/bundled/train_flow.py), its cut-down tokenizer, its shipped weights and
their manifest, and that memberbench's SD3 adapter samples exactly what diffusers'
``StableDiffusion3Pipeline`` samples from them.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from memberbench.bundled import FLOW_SUBDIR, WEIGHTS_DIR, file_sha256, verify_manifest
from memberbench.bundled.world import build_world
from memberbench.types import GenerationRequest, MemberbenchError

FLOW = WEIGHTS_DIR / FLOW_SUBDIR
shipped_flow = pytest.mark.skipif(
    not (FLOW / "MANIFEST.sha256").is_file(), reason="bundled flow weights not built yet"
)


@pytest.fixture(scope="module")
def world():
    return build_world(0)


@pytest.fixture(scope="module")
def small_tokenizer(world, tmp_path_factory):
    from memberbench.bundled.train import build_tokenizer
    from memberbench.bundled.train_flow import build_small_tokenizer, world_captions

    d = tmp_path_factory.mktemp("tok")
    full = build_tokenizer(d / "full")
    return full, build_small_tokenizer(d / "small", world_captions(world), full)


def test_small_tokenizer_tokenizes_the_world_as_clip_does_and_never_fails(world, small_tokenizer):
    """The cut-down vocabulary gives the world's captions SD 1.x's CLIP token strings, and any
    other text falls back to byte symbols (every id in range, no unknown token)."""
    from memberbench.bundled.train_flow import TOKENS, world_captions

    full, small = small_tokenizer
    caps = world_captions(world)
    assert {c.caption for c in world.canaries} <= set(caps)
    assert all(full.tokenize(c) == small.tokenize(c) for c in caps)
    assert len(small) < 1000 < len(full)
    assert max(len(small(c).input_ids) for c in caps) <= TOKENS
    odd = "zzqx unknownword 1234 ÆØ!"
    ids = small(odd).input_ids
    assert "".join(small.convert_ids_to_tokens(ids[1:-1])).replace("</w>", "") == "".join(
        full.tokenize(odd)
    ).replace("</w>", "")
    assert ids[0] == small.bos_token_id and ids[-1] == small.eos_token_id
    assert small.unk_token_id not in ids[1:-1] or small.unk_token == small.eos_token


def test_training_encoding_is_the_pipelines_encode_prompt(small_tokenizer):
    """What the recipe trains on (train_flow.encode) is StableDiffusion3Pipeline.encode_prompt's
    output for the same captions, with max_sequence_length=0 (no T5 tokens)."""
    from diffusers import AutoencoderKL

    from memberbench.bundled import train_flow as tf

    _, tok = small_tokenizer
    torch.manual_seed(0)
    tes = [tf.make_text_encoder(tok, layers=2), tf.make_text_encoder(tok, layers=2)]
    vae = AutoencoderKL(
        block_out_channels=(4,), norm_num_groups=1, latent_channels=4, shift_factor=0.0
    )
    pipe = tf.build_pipeline(vae, tf.make_transformer(), tes, tok)
    caps = ["a red circle at the top left", "", "wemnop pimpim morsel"]
    pe, _, pooled, _ = pipe.encode_prompt(
        prompt=caps,
        prompt_2=None,
        prompt_3=None,
        do_classifier_free_guidance=False,
        max_sequence_length=tf.MAX_SEQUENCE_LENGTH,
    )
    with torch.no_grad():
        pe2, pooled2 = tf.encode(tes, tf.tokenize(tok, caps))
    assert pe.shape == (3, tf.TOKENS, tf.TRANSFORMER["joint_attention_dim"])
    assert pooled.shape == (3, tf.TRANSFORMER["pooled_projection_dim"])
    torch.testing.assert_close(pe, pe2, rtol=0, atol=0)
    torch.testing.assert_close(pooled, pooled2, rtol=0, atol=0)


def test_transformer_training_is_deterministic_given_the_seed(world, small_tokenizer):
    from memberbench.bundled.train_flow import train_transformer

    _, tok = small_tokenizer
    lat = torch.randn(len(world.train), 4, 16, 16, generator=torch.Generator().manual_seed(0))
    runs = [
        train_transformer(world, lat, tok, steps=2, batch=4, seed=s, progress=False)
        for s in (0, 0, 1)
    ]
    sd = [r[0].state_dict() for r in runs]
    assert all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])
    assert not all(torch.equal(sd[0][k], sd[2][k]) for k in sd[0])


def test_flow_options_of_the_unet_recipe_are_refused_in_one_line(capsys, tmp_path):
    from memberbench.cli import main

    rc = main(
        ["train-bundled", "--family", "flow", "--out", str(tmp_path / "o"), "--vae-steps", "3"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "--vae-steps" in err[0] and "--family unet" in err[0]
    assert not (tmp_path / "o").exists()


def test_a_nested_bundle_is_not_part_of_its_parent(tmp_path):
    """weights/flow/ has its own manifest: the UNet model's manifest neither lists nor refuses
    it, and each is checked on its own."""
    from memberbench.bundled import write_manifest

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "a.bin").write_bytes(b"1")
    (tmp_path / "flow" / "model").mkdir(parents=True)
    (tmp_path / "flow" / "model" / "b.bin").write_bytes(b"2")
    write_manifest(tmp_path / "flow")
    write_manifest(tmp_path)
    assert "b.bin" not in (tmp_path / "MANIFEST.sha256").read_text()
    verify_manifest(tmp_path)
    verify_manifest(tmp_path / "flow")
    (tmp_path / "flow" / "model" / "b.bin").write_bytes(b"3")
    verify_manifest(tmp_path)
    with pytest.raises(MemberbenchError, match="b.bin"):
        verify_manifest(tmp_path / "flow")


# --- the shipped weights ------------------------------------------------------------------------


@shipped_flow
def test_shipped_flow_model_loads_with_plain_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    verify_manifest(FLOW)
    pipe = StableDiffusion3Pipeline.from_pretrained(
        FLOW / "model", text_encoder_3=None, tokenizer_3=None
    )
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.scheduler.config.shift == 1.0
    assert type(pipe.transformer).__name__ == "SD3Transformer2DModel"
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    img = pipe(
        "zzqx unknownword", num_inference_steps=2, max_sequence_length=0, output_type="np"
    ).images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()
    # the VAE is the UNet model's, byte for byte (only its config gains shift_factor 0)
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert file_sha256(FLOW / "model" / vae) == file_sha256(WEIGHTS_DIR / "model" / vae)
    new = sum(
        p.stat().st_size
        for p in (FLOW / "model").rglob("*")
        if p.is_file() and "vae" not in p.parts
    )
    assert new < 15e6, f"the flow model's own weights are {new / 1e6:.1f} MB"


@shipped_flow
def test_tampered_flow_file_is_refused_by_name_before_any_generation(tmp_path, monkeypatch):
    from diffusers import StableDiffusion3Pipeline

    from memberbench.adapters import load_adapter

    copy = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, copy)
    target = copy / FLOW_SUBDIR / "model" / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    verify_manifest(copy)  # the UNet model's bundle is untouched
    with pytest.raises(MemberbenchError, match="transformer/diffusion_pytorch_model.safetensors"):
        verify_manifest(copy / FLOW_SUBDIR)
    monkeypatch.setattr("memberbench.bundled.WEIGHTS_DIR", copy)

    def no_load(*a, **k):
        raise AssertionError("the pipeline was loaded before the manifest refused it")

    monkeypatch.setattr(StableDiffusion3Pipeline, "from_pretrained", no_load)
    with pytest.raises(MemberbenchError, match="transformer/diffusion_pytorch_model.safetensors"):
        load_adapter("bundled-flow")


@shipped_flow
def test_adapter_samples_what_stable_diffusion3_pipeline_samples():
    """The card loads through the SD3 adapter (flow family, max_sequence_length 0) and its
    traced sampler reproduces StableDiffusion3Pipeline's latents from the same noise."""
    from diffusers import StableDiffusion3Pipeline

    from memberbench.adapters import load_adapter
    from memberbench.sampling.sampler import TracedSampler, initial_noise

    ad = load_adapter("bundled-flow", device="cpu", dtype="fp32")
    assert ad.card.prediction_type == "flow" and ad.prediction == "flow"
    assert ad.max_sequence_length == 0 and ad.card.revision.startswith("manifest-sha256:")
    prompts = ["a red circle at the top left", "wemnop pimpim morsel"]
    reqs = [GenerationRequest(p, seed=3 + j, steps=4, guidance=7.5) for j, p in enumerate(prompts)]
    samples = TracedSampler(ad).sample(reqs)
    assert all(s.status == "ok" for s in samples)
    z = torch.stack([initial_noise(r.seed, ad.latent_shape)[0] for r in reqs])
    pipe = StableDiffusion3Pipeline.from_pretrained(
        FLOW / "model", text_encoder_3=None, tokenizer_3=None
    )
    pipe.set_progress_bar_config(disable=True)
    lat = pipe(
        prompt=prompts,
        latents=z,
        num_inference_steps=4,
        guidance_scale=7.5,
        max_sequence_length=0,
        output_type="latent",
    ).images
    np.testing.assert_allclose(
        np.stack([s.final_latent for s in samples]), lat.numpy(), rtol=1e-4, atol=1e-4
    )


@shipped_flow
def test_shipped_flow_model_copies_its_most_duplicated_canaries(world):
    """The shipped transformer reproduces its 256-copy canaries' training latents and not those
    of the canaries it saw once (same seeds, guidance 7.5, 25 Euler steps).  At sigma = 1 a flow
    model's noise estimate x_t + (1 - sigma) v is x_T itself whatever the caption, so
    ||eps_c - eps_u|| is exactly 0 there, and Wen's step-1 magnitude of a flow model is the
    velocity difference ||v_c - v_u|| = ||x0_c - x0_u|| / sigma = ||x0_c - x0_u||."""
    from test_mitigations_bundled import latent_cosine

    from memberbench.adapters import load_adapter
    from memberbench.metrics.noise_magnitude import text_conditional_magnitude
    from memberbench.runner import run_generation

    ad = load_adapter("bundled-flow", device="cpu", dtype="fp32")
    cos = {}
    for dup in (256, 1):
        canaries = [c for c in world.canaries if c.duplicates == dup]
        refs = ad.encode_images([c.image for c in canaries])
        reqs = [
            GenerationRequest(c.caption, seed=s, steps=25, guidance=7.5)
            for c in canaries
            for s in range(3)
        ]
        samples = run_generation(ad, reqs, progress=False)
        cos[dup] = latent_cosine(samples, [r for r in refs for _ in range(3)])
        if dup == 1:
            for s in samples:
                assert s.trace.series["eps_diff_norm"][0] == 0.0
                x0_diff = float(s.trace.series["x0_diff_norm"][0])
                assert x0_diff > 0
                assert text_conditional_magnitude(s.trace, 1) == pytest.approx(x0_diff, rel=1e-6)
    assert cos[256].mean() > cos[1].mean() + 0.4, cos
