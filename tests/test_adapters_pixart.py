"""The PixArt adapter against PixArtAlphaPipeline / PixArtSigmaPipeline.

Tiny pipelines are built from config like diffusers' own PixArt pipeline tests (random weights,
a 2-layer PixArtTransformer2DModel with learned sigma); the T5 tokenizer is a tiny unigram model
trained locally with the ``tokenizers`` library (memberbench.testing.make_t5_tokenizer), since
the Hub's tiny T5 tokenizer is not reachable here.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from memberbench.adapters import load_adapter, model_card
from memberbench.adapters.cards import CARDS
from memberbench.types import GenerationRequest, MemberbenchError

PROMPTS = ["A red circle", "a blue square on green "]
STEPS = 4


@pytest.fixture(scope="module", params=["alpha", "sigma"])
def pixart_pipe(request):
    from memberbench.testing import make_tiny_pixart_pipeline

    return make_tiny_pixart_pipeline(request.param, seed=0)


@pytest.fixture
def pixart(pixart_pipe):
    from memberbench.adapters.pixart import PixArtAdapter

    return PixArtAdapter(pixart_pipe, None, device="cpu")


def _pipe_kw(ad, reqs, **kw):
    from memberbench.sampling.sampler import initial_noise

    z = torch.stack([initial_noise(r.seed, ad.latent_shape)[0] for r in reqs])
    return dict(
        num_inference_steps=STEPS,
        latents=z,
        clean_caption=False,
        use_resolution_binning=False,
        max_sequence_length=ad.max_sequence_length,
        **kw,
    )


@pytest.mark.parametrize("name", ["pixart-alpha", "pixart-sigma"])
def test_cards(name):
    card = model_card(name)
    assert card.repo_id.startswith("PixArt-alpha/") and re.fullmatch(r"[0-9a-f]{40}", card.revision)
    assert card.resolution == 1024 and card.prediction_type == "epsilon"
    assert card.defaults["max_sequence_length"] == {"pixart-alpha": 120, "pixart-sigma": 300}[name]


def test_encode_prompts_matches_pipeline(pixart, pixart_pipe):
    from memberbench.adapters.pixart import unpack

    e, mask = unpack(pixart.encode_prompts([*PROMPTS, ""]))
    pe, pm, ne, nm = pixart_pipe.encode_prompt(
        PROMPTS, device="cpu", clean_caption=False, max_sequence_length=pixart.max_sequence_length
    )
    L = pixart.max_sequence_length
    assert e.shape == (3, L, 32) and torch.equal(e[:2], pe) and torch.equal(mask[:2], pm.float())
    # the unconditional input is the embedding of "" (one token: </s>)
    assert torch.equal(e[2], ne[0]) and torch.equal(mask[2], nm[0].float())
    assert int(mask[2].sum()) == 1


def test_learned_sigma_keeps_the_epsilon_half(pixart, pixart_pipe):
    """predict_noise returns the first C of the transformer's 2C output channels."""
    tr = pixart_pipe.transformer
    assert tr.config.out_channels == 2 * tr.config.in_channels and pixart.learned_sigma
    x = torch.randn(2, *pixart.latent_shape, generator=torch.Generator().manual_seed(0))
    emb = pixart.encode_prompts(PROMPTS)
    from memberbench.adapters.pixart import unpack

    e, m = unpack(emb)
    with torch.no_grad():
        full = tr(
            x,
            encoder_hidden_states=e,
            encoder_attention_mask=m,
            timestep=torch.tensor([500, 500]),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]
        ours = pixart.predict_noise(x, torch.tensor(500), emb)
    assert full.shape[1] == 8 and ours.shape[1] == 4
    assert torch.equal(ours, full[:, :4]) and not torch.equal(ours, full[:, 4:])


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_traced_sampler_matches_pipeline(pixart, pixart_pipe, scheduler):
    """Same seed, initial latents and scheduler: final latents equal the pipeline's to 1e-5
    (measured 0.0), uint8 images equal the pipeline's float images rounded."""
    from memberbench.sampling.sampler import TracedSampler

    reqs = [
        GenerationRequest(p, seed=s, steps=STEPS, guidance=4.5, scheduler=scheduler)
        for p, s in zip(PROMPTS, (0, 1))
    ]
    samples = TracedSampler(pixart, batch_size=2).sample(reqs)
    pixart_pipe.scheduler = pixart.make_scheduler(scheduler)
    kw = _pipe_kw(pixart, reqs, guidance_scale=4.5)
    lat = pixart_pipe(PROMPTS, output_type="latent", **kw).images
    ours = torch.from_numpy(np.stack([s.final_latent for s in samples]))
    assert (ours - lat).abs().max().item() <= 1e-5
    img = pixart_pipe(PROMPTS, output_type="np", **kw).images
    assert np.array_equal(
        np.stack([s.image for s in samples]), (img * 255).round().astype(np.uint8)
    )
    for s in samples:
        assert s.ok and s.image.shape == (16, 16, 3) and s.unet_evals == 2 * STEPS


def test_alpha_micro_conditions_match_pipeline():
    """PixArt-alpha at sample_size 128 (its 1024 px model) conditions on resolution and aspect
    ratio; the adapter passes them like the pipeline (2 steps, final latents to 1e-5)."""
    from memberbench.adapters.pixart import PixArtAdapter
    from memberbench.sampling.sampler import TracedSampler
    from memberbench.testing import make_tiny_pixart_pipeline

    pipe = make_tiny_pixart_pipeline("alpha", seed=1, sample_size=128)
    ad = PixArtAdapter(pipe, None, device="cpu")
    assert ad.micro_conditions and pipe.transformer.use_additional_conditions
    reqs = [GenerationRequest(PROMPTS[0], seed=3, steps=2, guidance=4.5)]
    (s,) = TracedSampler(ad, batch_size=1).sample(reqs)
    pipe.scheduler = ad.make_scheduler("ddim")
    kw = _pipe_kw(ad, reqs, guidance_scale=4.5)
    kw["num_inference_steps"] = 2
    lat = pipe(PROMPTS[:1], output_type="latent", **kw).images
    assert (torch.from_numpy(s.final_latent) - lat[0]).abs().max().item() <= 1e-5


def test_local_folders_are_detected(pixart_pipe, tmp_path):
    from memberbench.adapters.identity import dirs_sha256
    from memberbench.adapters.pixart import PixArtAdapter

    d = tmp_path / "pipe"
    pixart_pipe.save_pretrained(d)
    ad = load_adapter(f"diffusers:path={d}", device="cpu")
    assert isinstance(ad, PixArtAdapter) and ad.family == "pixart"
    assert type(ad.pipe).__name__ == type(pixart_pipe).__name__
    assert ad.card.revision == "local" and ad.describe()["weights_sha256"] == dirs_sha256([d])[0]
    want = {"PixArtAlphaPipeline": 120, "PixArtSigmaPipeline": 300}[type(pixart_pipe).__name__]
    assert ad.max_sequence_length == want and ad.resolution == 16
    card = "pixart-alpha" if want == 120 else "pixart-sigma"
    via_card = load_adapter(f"{card}:path={d},resolution=32", device="cpu")
    assert via_card.card.revision == "local" and via_card.latent_shape == (4, 16, 16)


def test_sd_only_mitigations_are_refused(pixart):
    from memberbench.mitigations import build_mitigation

    for name in ("prompt-embedding", "attention-reweight"):
        with pytest.raises(MemberbenchError, match="family 'pixart'"):
            build_mitigation(name).check_compatible(pixart)
    build_mitigation("guidance-schedule").check_compatible(pixart)


def test_missing_pixart_weights_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(MemberbenchError) as e:
        load_adapter("pixart-sigma")
    msg = str(e.value)
    card = CARDS["pixart-sigma"]
    assert card.repo_id in msg and card.revision in msg
    assert "--model pixart-sigma:path=/local/dir" in msg and "\n" not in msg
