"""SD 3 / 3.5 (memberbench/adapters/sd3.py) end to end on CPU with tiny random components.

The components are built from config as diffusers' own StableDiffusion3Pipeline tests build them
(two tiny CLIPTextModelWithProjection, a tiny T5EncoderModel, a one-layer SD3Transformer2DModel,
a one-block AutoencoderKL).  diffusers' tests load their tokenizers from hub test repos, which
are out of reach offline; here all three tokenizer slots hold the bundled model's CLIP tokenizer
(SD 1.x's vocabulary; the pipeline only calls the tokenizers' ``__call__``), and the tiny T5's
vocabulary is sized to it.  The traced sampler is compared with StableDiffusion3Pipeline itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memberbench.adapters.base import ModelCard
from memberbench.types import GenerationRequest, MemberbenchError

SEQ = 16  # T5 tokens (the pipeline's max_sequence_length); the real models use 256


def tiny_sd3_pipeline(seed: int = 0):
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
    )

    from memberbench.bundled.train import build_tokenizer
    from memberbench.testing import _tokenizer_dir

    tok = CLIPTokenizer.from_pretrained(_tokenizer_dir(build_tokenizer))
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    )
    clip = CLIPTextConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=len(tok),
        hidden_act="gelu",
        projection_dim=32,
    )
    te, te2 = CLIPTextModelWithProjection(clip), CLIPTextModelWithProjection(clip)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tok),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            pad_token_id=tok.pad_token_id,
            decoder_start_token_id=0,
        )
    )
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        text_encoder_2=te2,
        tokenizer_2=tok,
        text_encoder_3=t5,
        tokenizer_3=tok,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


CARD = ModelCard(
    name="tiny-sd3", repo_id="local", revision=None, resolution=32, prediction_type="flow"
)


@pytest.fixture(scope="module")
def sd3_pipe():
    return tiny_sd3_pipeline()


@pytest.fixture(scope="module")
def sd3_adapter(sd3_pipe):
    from memberbench.adapters.sd3 import SD3Adapter

    return SD3Adapter(sd3_pipe, CARD, max_sequence_length=SEQ)


def test_traced_sampler_matches_stable_diffusion3_pipeline(sd3_pipe, sd3_adapter):
    """Same seeds, same latents: the traced sampler's final latents and images are
    StableDiffusion3Pipeline's (CFG on the velocity, FlowMatchEuler with shift 3)."""
    from memberbench.sampling.sampler import TracedSampler, initial_noise

    prompts = ["a red square on a blue background", "a green circle"]
    reqs = [GenerationRequest(p, seed=10 + j, steps=4, guidance=5.0) for j, p in enumerate(prompts)]
    samples = TracedSampler(sd3_adapter).sample(reqs)
    assert all(s.status == "ok" for s in samples)
    assert samples[0].meta["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    z = torch.stack([initial_noise(r.seed, sd3_adapter.latent_shape)[0] for r in reqs])
    kw = dict(
        prompt=prompts,
        num_inference_steps=4,
        guidance_scale=5.0,
        height=32,
        width=32,
        max_sequence_length=SEQ,
    )
    lat = sd3_pipe(latents=z.clone(), output_type="latent", **kw).images
    ours = np.stack([s.final_latent for s in samples])
    assert np.abs(lat.numpy()).max() > 0.1  # a real trajectory, not zeros
    np.testing.assert_allclose(ours, lat.numpy(), rtol=1e-5, atol=1e-5)
    img = sd3_pipe(latents=z.clone(), output_type="np", **kw).images
    theirs = np.round(img * 255).astype(np.int64)
    mine = np.stack([s.image for s in samples]).astype(np.int64)
    assert mine.shape == theirs.shape == (2, 32, 32, 3)
    assert np.abs(mine - theirs).max() <= 1 and (mine == theirs).mean() > 0.99


def test_sd3_traces_use_the_flow_schedule(sd3_adapter):
    """The trace carries the flow schedule (a = 1 - sigma, b = sigma; sigma_1 = 1), x0_hat of the
    velocity, and D1/D2 against it."""
    from memberbench.metrics.decomposition import deviation_from_traces
    from memberbench.sampling.sampler import TracedSampler
    from memberbench.sampling.schedule import Schedule

    x = sd3_adapter.encode_images(np.full((1, 32, 32, 3), 200, dtype=np.uint8))[0]
    req = GenerationRequest("a red square", seed=1, steps=5, guidance=3.0)
    (s,) = TracedSampler(sd3_adapter).sample([req], references=[x])
    sch = Schedule.from_trace(s.trace)
    ref = sd3_adapter.make_scheduler()
    ref.set_timesteps(5)
    sig = ref.sigmas.double().numpy()
    assert sch.family == "flow" and sch.b_t[0] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(sch.b_next, sig[1:], atol=1e-12)
    # x0_hat = x - sigma v at sigma = 1 is x_T - v; its norm is recorded and finite
    assert np.isfinite(s.trace.series["x0_g_norm"]).all()
    out = deviation_from_traces([s.trace])
    assert np.isfinite(out["D1"]) and np.isfinite(out["D2"])
    # W0 at the last state (sigma = 0) is the fit of the final latent on (x, x_T)
    assert out["W0"].shape == (5,)


def test_sd3_local_folder_round_trip(sd3_pipe, sd3_adapter, tmp_path):
    """``sd-3-medium:path=DIR`` loads a saved pipeline folder; it samples what the in-memory
    adapter samples."""
    from memberbench.adapters import load_adapter
    from memberbench.sampling.sampler import TracedSampler

    sd3_pipe.save_pretrained(tmp_path / "sd3")
    ad = load_adapter(f"sd-3-medium:path={tmp_path / 'sd3'}")
    assert ad.card.name == "sd-3-medium" and ad.card.prediction_type == "flow"
    ad.max_sequence_length = SEQ
    req = GenerationRequest("a red square", seed=2, steps=3, height=32, width=32)
    (a,) = TracedSampler(ad).sample([req])
    (b,) = TracedSampler(sd3_adapter).sample([req])
    np.testing.assert_allclose(a.final_latent, b.final_latent, rtol=1e-6, atol=1e-6)


def test_sd3_bad_input_is_one_line(sd3_adapter, tmp_path, monkeypatch):
    from memberbench.adapters import load_adapter, model_card

    card = model_card("sd-3.5-medium")
    assert (card.resolution, card.prediction_type) == (1024, "flow")
    assert len(card.revision) == 40
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MemberbenchError) as e:
        load_adapter("sd-3-medium")
    msg = str(e.value)
    assert "\n" not in msg
    assert "stabilityai/stable-diffusion-3-medium-diffusers" in msg and "path=" in msg
    assert "ea42f8cef0f178587cf766dc8129abd379c90671" in msg
    with pytest.raises(MemberbenchError, match="not a diffusers StableDiffusion3Pipeline folder"):
        load_adapter(f"sd-3.5-medium:path={tmp_path}")
    with pytest.raises(MemberbenchError, match="takes no vae="):
        load_adapter("sd-3.5-medium:vae=stabilityai/sd-vae-ft-mse")
    with pytest.raises(MemberbenchError, match="samples only with its own"):
        sd3_adapter.make_scheduler("euler")
    # the card's scheduler is a name every scheduler option accepts
    from memberbench.sampling.schedulers import check_scheduler_name

    check_scheduler_name(card.defaults["scheduler"])
    assert type(sd3_adapter.make_scheduler(card.defaults["scheduler"])).__name__ == (
        "FlowMatchEulerDiscreteScheduler"
    )


def test_sd3_local_folder_is_detected_from_model_index(sd3_pipe, sd3_adapter, tmp_path):
    """``diffusers:path=DIR`` maps StableDiffusion3Pipeline (model_index.json) to the SD3
    adapter: revision "local", the weights' sha256, the same samples as the in-memory adapter;
    a folder without a text encoder it needs is one line."""
    import json
    import shutil

    from memberbench.adapters import load_adapter
    from memberbench.adapters.sd3 import SD3Adapter
    from memberbench.sampling.sampler import TracedSampler

    d = tmp_path / "sd3"
    sd3_pipe.save_pretrained(d)
    assert json.loads((d / "model_index.json").read_text())["_class_name"] == (
        "StableDiffusion3Pipeline"
    )
    ad = load_adapter(f"diffusers:path={d}")
    assert isinstance(ad, SD3Adapter) and ad.family == "sd3"
    assert (ad.card.revision, ad.card.prediction_type, ad.card.resolution) == ("local", "flow", 32)
    assert len(ad.describe()["weights_sha256"]) == 64
    ad.max_sequence_length = SEQ
    req = GenerationRequest("a red square", seed=2, steps=3)
    (a,) = TracedSampler(ad).sample([req])
    (b,) = TracedSampler(sd3_adapter).sample([req])
    np.testing.assert_allclose(a.final_latent, b.final_latent, rtol=1e-6, atol=1e-6)
    shutil.rmtree(d / "text_encoder_2")
    with pytest.raises(MemberbenchError, match="no component 'text_encoder_2'") as e:
        load_adapter(f"diffusers:path={d}")
    assert "\n" not in str(e.value)
