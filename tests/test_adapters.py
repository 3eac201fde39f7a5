"""Adapters: loading by spec, cards, the SD adapter's operations, errors."""

from __future__ import annotations

import re
import shutil
import time

import numpy as np
import pytest
import torch

from memberbench.adapters import Adapter, load_adapter, model_card
from memberbench.adapters.cards import CARDS
from memberbench.bundled.card import BUNDLED
from memberbench.registry import MODELS
from memberbench.types import MemberbenchError


def test_bundled_path_override(tiny_adapter, tiny_pipeline_dir):
    from memberbench.adapters.stable_diffusion import StableDiffusionAdapter

    ad = tiny_adapter
    assert isinstance(ad, StableDiffusionAdapter)
    assert ad.card.name == "bundled" and "manifest not checked" in ad.card.notes
    assert ad.latent_shape == (4, 16, 16) and ad.resolution == 64
    assert ad.unet is ad.pipe.unet and ad.dtype == torch.float32 and ad.device.type == "cpu"
    d = ad.describe()
    assert d["fingerprint"] == ad.fingerprint() and d["dtype"] == "float32"
    assert d["scheduler_config"]["beta_schedule"] == "scaled_linear"
    # the fingerprint is a function of the weights (and dtype), stable across loads
    again = load_adapter(f"bundled:path={tiny_pipeline_dir}", device="cpu")
    assert again.fingerprint() == ad.fingerprint()
    with torch.no_grad():
        next(iter(again.pipe.unet.parameters())).view(-1)[0] += 1e-3
    again._fingerprint = None
    assert again.fingerprint() != ad.fingerprint()


def test_cards_are_registered_with_pinned_revisions():
    for name in ("bundled", "sd-1.4", "sd-1.5", "sd-2.1-base", "realistic-vision"):
        assert name in MODELS.names()
        card = model_card(name)
        assert card.name == name and card.resolution in (64, 512)
        # SD 1.x and 2.1-base predict epsilon; the bundled model predicts v (see train_bundled)
        want = "v_prediction" if name == "bundled" else "epsilon"
        assert card.prediction_type == want and card.training_data
        if name != "bundled":
            assert re.fullmatch(r"[0-9a-f]{40}", card.revision), name
    assert model_card("sd-1.4").repo_id == "CompVis/stable-diffusion-v1-4"
    assert model_card("sd-2.1-base").repo_id == "stabilityai/stable-diffusion-2-1-base"
    assert set(CARDS) <= set(MODELS.names())


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("sd-14", r"unknown model 'sd-14'\. Did you mean 'sd-1\.4'\?.*Known models: .*bundled"),
        ("bundled:colour=red", r"no parameter 'colour'; allowed: path, revision, dtype"),
        ("bundled:dtype=fp8", r"dtype must be one of fp32, fp16, bf16"),
        ("bundled:path=/nonexistent/dir/x", r"not in .*|could not|not found"),
    ],
)
def test_bad_specs(spec, pattern):
    with pytest.raises(MemberbenchError, match=pattern):
        load_adapter(spec)


def test_not_a_pipeline_folder(tmp_path):
    with pytest.raises(MemberbenchError, match="model_index.json"):
        load_adapter(f"sd-1.4:path={tmp_path}")


def test_missing_hub_weights_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    from diffusers import DiffusionPipeline, StableDiffusionPipeline  # noqa: F401  (imports untimed)

    t0 = time.perf_counter()
    with pytest.raises(MemberbenchError) as e:
        load_adapter("sd-1.4")
    assert time.perf_counter() - t0 < 120  # no network retries (seconds when not CPU-starved)
    msg = str(e.value)
    card = CARDS["sd-1.4"]
    assert card.repo_id in msg and card.revision in msg
    assert "--model sd-1.4:path=/local/dir" in msg and "\n" not in msg


def test_missing_hub_weights_network_off(monkeypatch):
    """Not offline, not cached, Hub unreachable: one fast error (no download retries)."""
    import memberbench.adapters.stable_diffusion as sd

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sd, "_hub_unreachable", lambda timeout=5.0: "cannot reach hub (test)")
    with pytest.raises(MemberbenchError) as e:
        load_adapter("sd-2.1-base:revision=main")
    msg = str(e.value)
    assert "stabilityai/stable-diffusion-2-1-base" in msg and "revision main" in msg
    assert "cannot reach hub" in msg and "--model sd-2.1-base:path=/local/dir" in msg


def test_missing_bundled_weights(monkeypatch, tmp_path):
    import memberbench.bundled as bundled

    monkeypatch.setattr(bundled, "WEIGHTS_DIR", tmp_path / "weights")
    with pytest.raises(MemberbenchError, match="train-bundled"):
        load_adapter("bundled")


def test_bundled_manifest_is_verified(monkeypatch, tmp_path, tiny_pipeline_dir):
    import memberbench.bundled as bundled

    root = tmp_path / "weights"
    shutil.copytree(tiny_pipeline_dir, root / "model")
    bundled.write_manifest(root)
    monkeypatch.setattr(bundled, "WEIGHTS_DIR", root)
    ad = load_adapter("bundled", device="cpu")
    assert ad.card.revision.startswith("manifest-sha256:")
    cfg = root / "model" / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text().replace("0.012", "0.0120"))
    with pytest.raises(MemberbenchError, match="corrupted or was modified"):
        load_adapter("bundled", device="cpu")


def test_encode_prompts_matches_pipeline(tiny_adapter):
    prompts = ["a red circle", ""]
    ours = tiny_adapter.encode_prompts(prompts)
    theirs, _ = tiny_adapter.pipe.encode_prompt(prompts, "cpu", 1, False)
    assert torch.equal(ours, theirs)
    assert ours.shape[0] == 2 and ours.dtype == torch.float32


def test_decode_and_encode_images(tiny_adapter):
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    img = tiny_adapter.decode(z)
    assert img.shape == (2, 64, 64, 3) and img.dtype == np.uint8
    # like the pipeline's image processor (np output, then PIL rounding)
    pipe = tiny_adapter.pipe
    with torch.no_grad():
        raw = pipe.vae.decode(z / pipe.vae.config.scaling_factor, return_dict=False)[0]
    ref = pipe.image_processor.postprocess(raw, output_type="np")
    assert np.array_equal(img, (ref * 255).round().astype(np.uint8))
    # encode: docs/metrics.md's x (posterior mode * scaling factor, fp32); any input size is resized
    x = tiny_adapter.encode_images(img)
    assert x.shape == (2, 4, 16, 16) and x.dtype == torch.float32
    t = torch.from_numpy(img).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        want = pipe.vae.encode(t).latent_dist.mode() * pipe.vae.config.scaling_factor
    assert torch.allclose(x, want, atol=1e-6)
    big = np.repeat(np.repeat(img[:1], 3, axis=1), 2, axis=2)  # 192x128: a straight resize
    assert tiny_adapter.encode_images([big[0]]).shape == (1, 4, 16, 16)


def test_make_scheduler(tiny_adapter):
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, PNDMScheduler

    from memberbench.bundled.train import SD_DDIM_CONFIG

    ddim = tiny_adapter.make_scheduler()
    assert isinstance(ddim, DDIMScheduler)
    for k, v in SD_DDIM_CONFIG.items():
        assert ddim.config[k] == v, k
    ddim.set_timesteps(50)
    assert ddim.timesteps[0] == 981 and ddim.timesteps[-1] == 1
    assert isinstance(tiny_adapter.make_scheduler("euler_a"), EulerAncestralDiscreteScheduler)
    pndm = tiny_adapter.make_scheduler("PNDMScheduler")
    assert isinstance(pndm, PNDMScheduler) and pndm.config.skip_prk_steps
    for name in ("ddpm", "euler", "dpm++", "lms", "heun"):
        s = tiny_adapter.make_scheduler(name)
        assert s.config.prediction_type == "epsilon"
        assert torch.allclose(s.alphas_cumprod, ddim.alphas_cumprod)
    with pytest.raises(MemberbenchError, match=r"unknown scheduler 'foo'; allowed: ddim, ddpm"):
        tiny_adapter.make_scheduler("foo")


def test_v_prediction_is_converted_to_epsilon(tiny_pipeline_dir):
    """A v-prediction model: predict_noise returns sqrt(abar) v + sqrt(1-abar) x_t, and sampling
    matches the pipeline run with its v-prediction DDIM scheduler (same maths, other
    floating-point order: tolerance 1e-4 on latents)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from memberbench.adapters.stable_diffusion import StableDiffusionAdapter
    from memberbench.sampling.sampler import TracedSampler, initial_noise
    from memberbench.types import GenerationRequest

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config, prediction_type="v_prediction"
    )
    ad = StableDiffusionAdapter(pipe, BUNDLED, device="cpu")
    assert ad.prediction_type == "v_prediction"
    assert ad.make_scheduler().config.prediction_type == "epsilon"
    x = torch.randn(1, 4, 16, 16)
    emb = ad.encode_prompts(["a"])
    t = torch.tensor(501)
    with torch.no_grad():
        v = pipe.unet(x, t, encoder_hidden_states=emb).sample
        eps = ad.predict_noise(x, t, emb)
    a = pipe.scheduler.alphas_cumprod[501].double()
    assert torch.allclose(
        eps.double(), a.sqrt() * v.double() + (1 - a).sqrt() * x.double(), atol=1e-6
    )
    r = GenerationRequest("a red circle", seed=0, steps=4)
    (s,) = TracedSampler(ad).sample([r])
    z = initial_noise(0, ad.latent_shape)[0][None]
    lat = pipe(
        [r.prompt], num_inference_steps=4, guidance_scale=7.5, latents=z, output_type="latent"
    )
    np.testing.assert_allclose(s.final_latent, lat.images[0].numpy(), atol=1e-4)


class _Toy(Adapter):
    """A minimal out-of-tree adapter (what an entry point would provide)."""

    def __init__(self, **params):
        from memberbench.adapters import ModelCard

        self.params = params
        self.card = ModelCard("toy", "toy/repo", None, 8)
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def fingerprint(self):
        return "toy"

    scheduler_config = {}

    def make_scheduler(self, name="ddim"):
        raise NotImplementedError

    latent_shape = (1, 2, 2)

    def encode_prompts(self, prompts):
        return torch.zeros(len(prompts), 1, 1)

    def predict_noise(self, latents, t, embeds):
        return latents

    def decode(self, latents):
        return np.zeros((len(latents), 8, 8, 3), np.uint8)

    def encode_images(self, images):
        return torch.zeros(len(images), 1, 2, 2)


def test_out_of_tree_factories():
    MODELS.register("toy-factory", lambda params: _Toy(**params))
    MODELS.register("toy-class", _Toy)
    MODELS.register("not-an-adapter", lambda params: object())
    try:
        ad = load_adapter("toy-factory:size=3", dtype="fp16")
        assert isinstance(ad, _Toy) and ad.params == {"size": "3", "dtype": "fp16"}
        assert load_adapter("toy-class:a=b").params == {"a": "b"}
        with pytest.raises(MemberbenchError, match="not an Adapter"):
            load_adapter("not-an-adapter")
    finally:
        for k in ("toy-factory", "toy-class", "not-an-adapter"):
            MODELS._entries.pop(k, None)
