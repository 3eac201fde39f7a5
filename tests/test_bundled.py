"""The bundled model: its world, tokenizer, shipped weights, manifest and the recipe."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from memberbench.bundled import WEIGHTS_DIR, verify_manifest, write_manifest
from memberbench.bundled.world import (
    BACKGROUNDS,
    CANARY_KINDS,
    COLOURS,
    DUPLICATION_LEVELS,
    NUM_HELD_OUT,
    POSITIONS,
    RENDERS_PER_CAPTION,
    SHAPES,
    build_world,
    nearest_training_images,
    render_shape,
    shape_caption,
)
from memberbench.types import MemberbenchError

shipped = pytest.mark.skipif(
    not (WEIGHTS_DIR / "MANIFEST.sha256").is_file(), reason="bundled weights not built yet"
)


@pytest.fixture(scope="module")
def world():
    return build_world(0)


def test_world_is_deterministic_and_graded(world):
    again = build_world(0)
    assert [it.caption for it in again.train] == [it.caption for it in world.train]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(again.train[:50], world.train[:50]))
    # every scene is either trained on (on every background, captioned with and without its
    # background) or held out altogether: no caption of a held-out scene occurs in training
    scenes = {(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS}
    shapes = [it for it in world.train if it.kind == "shape"]
    trained_scenes = {it.attributes[:3] for it in shapes}
    held_scenes = {tuple(a) for _, a in world.held_out}
    assert len(held_scenes) == NUM_HELD_OUT and not held_scenes & trained_scenes
    assert trained_scenes | held_scenes == scenes
    trained = {it.caption for it in shapes}
    held = {c for c, _ in world.held_out}
    assert not held & trained
    assert held == {shape_caption(*a) for a in held_scenes}
    for scene in list(trained_scenes)[:5]:
        mine = [it for it in shapes if it.attributes[:3] == scene]
        assert {it.attributes[3] for it in mine} == set(BACKGROUNDS)
        assert len(mine) == len(BACKGROUNDS) * RENDERS_PER_CAPTION
        open_caps = sum(it.caption == shape_caption(*scene) for it in mine)
        named = sum(it.caption == shape_caption(*it.attributes) for it in mine)
        assert open_caps + named == len(mine) and open_caps > 0 and named > 0
    dups = sorted(c.duplicates for c in world.canaries)
    assert set(dups) == set(DUPLICATION_LEVELS)
    # one canary of every kind at every level, so that no level's severity is one kind's
    for level in DUPLICATION_LEVELS:
        kinds = sorted(c.canary_kind for c in world.canaries if c.duplicates == level)
        assert kinds == sorted(CANARY_KINDS), (level, kinds)
    idx = world.training_indices()
    for c in world.canaries:
        i = world.train.index(c)
        assert idx.count(i) == c.duplicates
    # canary captions are unique and share no word with the shape vocabulary
    caps = [c.caption for c in world.canaries]
    assert len(set(caps)) == len(caps)
    vocab = set(" ".join(trained).split())
    assert not any(set(c.split()) & vocab for c in caps)


def test_canary_captions_also_caption_decoy_shapes(world, monkeypatch):
    from collections import Counter

    from memberbench.bundled import world as world_mod

    n = world_mod.DECOYS_PER_CANARY
    assert set(world.decoys) == {c.caption for c in world.canaries}
    taken = [i for idx in world.decoys.values() for i in idx]
    assert len(taken) == len(set(taken)) == n * len(world.canaries)  # no image decoys twice
    assert all(world.train[i].kind == "shape" for i in taken)
    pairs = world.training_pairs()
    assert len(pairs) == len(world.training_indices()) + n * len(world.canaries)
    per_caption = Counter(c for _, c in pairs)
    for c in world.canaries:
        # the caption's conditional distribution: its canary `duplicates` times, n decoys
        assert per_caption[c.caption] == c.duplicates + n
        mine = [i for i, cap in pairs if cap == c.caption]
        assert Counter(mine)[world.train.index(c)] == c.duplicates
    # a decoy keeps its own caption too
    i = taken[0]
    assert per_caption[world.train[i].caption] >= 1 and (i, world.train[i].caption) in pairs
    # decoys come from a stream of their own: the images do not depend on how many there are
    monkeypatch.setattr(world_mod, "DECOYS_PER_CANARY", 3)
    small = world_mod.build_world(0)
    assert all(len(v) == 3 for v in small.decoys.values())
    assert [it.caption for it in small.train] == [it.caption for it in world.train]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(small.train, world.train))


def test_nearest_training_images_match_brute_force(world):
    rng = np.random.default_rng(1)
    queries = np.stack(
        [render_shape(*world.held_out[k][1], "gray", rng=rng) for k in range(3)]
        + [world.canaries[0].image, world.train[7].image]
    )
    idx, rms = nearest_training_images(world, queries, chunk=2)
    stack = np.stack([it.image for it in world.train]).astype(np.float64)
    for q, j, r in zip(queries, idx, rms):
        d = np.sqrt(((stack - q.astype(np.float64)) ** 2).mean(axis=(1, 2, 3)))
        assert j == int(np.argmin(d)) and r == pytest.approx(d.min(), abs=1e-6)
    assert idx[3] == world.train.index(world.canaries[0]) and rms[3] == pytest.approx(0, abs=1e-5)
    assert idx[4] == 7


def test_distinct_renders(world):
    imgs = {it.image.tobytes() for it in world.train if it.kind == "shape"}
    assert len(imgs) == sum(it.kind == "shape" for it in world.train)


@shipped
def test_tokenizer_matches_open_clip_and_never_fails():
    """The shipped CLIPTokenizer is OpenAI CLIP's (SD 1.x's): same ids as open_clip's own."""
    import open_clip
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(WEIGHTS_DIR / "model" / "tokenizer")
    for text in ["a red circle at the top left", "zorblatt quimmelfax!! 3.14 ÆØÅ", "lixlix rudziv"]:
        ours = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
        ref = open_clip.tokenize([text])[0].tolist()
        assert ours[: ours.index(49407) + 1] == ref[: ref.index(49407) + 1]


@shipped
def test_shipped_model_loads_with_plain_diffusers():
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    verify_manifest()
    pipe = StableDiffusionPipeline.from_pretrained(WEIGHTS_DIR / "model")
    assert isinstance(pipe.scheduler, DDIMScheduler)
    cfg = pipe.scheduler.config
    assert (cfg.beta_schedule, cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps) == (
        "scaled_linear",
        0.00085,
        0.012,
        1000,
    )
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    img = pipe("zzqx unknownword", num_inference_steps=2, output_type="np").images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert total < 60e6, f"bundled weights are {total / 1e6:.1f} MB"


@shipped
def test_tampered_file_is_refused_by_name(tmp_path, monkeypatch):
    from memberbench.adapters import load_adapter

    copy = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, copy)
    target = copy / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(MemberbenchError, match="diffusion_pytorch_model.safetensors"):
        verify_manifest(copy)
    monkeypatch.setattr("memberbench.bundled.WEIGHTS_DIR", copy)
    with pytest.raises(MemberbenchError, match="diffusion_pytorch_model.safetensors"):
        load_adapter("bundled")


def test_manifest_detects_missing_and_extra_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"123")
    write_manifest(tmp_path)
    verify_manifest(tmp_path)
    (tmp_path / "a" / "y.bin").write_bytes(b"456")
    with pytest.raises(MemberbenchError, match="y.bin"):
        verify_manifest(tmp_path)
    (tmp_path / "a" / "y.bin").unlink()
    (tmp_path / "a" / "x.bin").unlink()
    with pytest.raises(MemberbenchError, match="x.bin"):
        verify_manifest(tmp_path)


@shipped
def test_bundled_clip_scorer_prefers_matching_captions(world):
    """The shipped utility scorer ranks a canary's own caption first among all canary captions."""
    import torch
    from PIL import Image

    from memberbench.bundled.clip_scorer import load_bundled_clip

    model, preprocess, tokenizer, describe = load_bundled_clip()
    assert describe["weights_sha256"]
    caps = [c.caption for c in world.canaries]
    with torch.no_grad():
        img = torch.stack([preprocess(Image.fromarray(c.image)) for c in world.canaries])
        fi = torch.nn.functional.normalize(model.encode_image(img), dim=-1)
        ft = torch.nn.functional.normalize(model.encode_text(tokenizer(caps)), dim=-1)
    top1 = (fi @ ft.T).argmax(1)
    assert (top1 == torch.arange(len(caps))).float().mean() >= 0.8


@pytest.mark.slow
def test_shortened_recipe_reproduces_a_loadable_model(tmp_path):
    """`train_bundled` end to end with a handful of steps: a valid, verifiable bundle."""
    from diffusers import StableDiffusionPipeline

    from memberbench.bundled.clip_scorer import load_bundled_clip
    from memberbench.bundled.train import train_bundled

    out = tmp_path / "weights"
    tiny = dict(seed=1, vae_steps=2, clip_steps=2, batch=8, progress=False)
    recipe = train_bundled(
        out, unet_steps=3, refine_steps=2, offset_noise=0.1, unet_channels=(64, 64, 96), **tiny
    )
    assert (
        recipe["unet_steps"] == 3
        and recipe["unet_channels"] == [64, 64, 96]
        and "--unet-channels 64,64,96" in recipe["command"]
        and recipe["refine_steps"] == 2
        and set(recipe["timings"]) >= {"vae_s", "unet_s", "clip_s"}
        and recipe["offset_noise"] == 0.1
        and "--offset-noise 0.1" in recipe["command"]
        and recipe["prediction_type"] == "v_prediction"
    )
    verify_manifest(out)
    pipe = StableDiffusionPipeline.from_pretrained(out / "model")
    assert pipe.vae.config.scaling_factor > 0
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert list(pipe.unet.config.block_out_channels) == [64, 64, 96]
    load_bundled_clip(out)
    assert not (tmp_path / "weights.partial").exists()

    # stage reuse: the same recipe with --vae-from/--clip-from gives the same VAE and scorer
    _save_stage1(out, tmp_path / "vae.pt")
    again = train_bundled(
        tmp_path / "again",
        unet_steps=1,
        refine_steps=0,
        prediction_type="epsilon",
        vae_from=tmp_path / "vae.pt",
        clip_from=out / "clip",
        **tiny,
    )
    assert again["vae_from"] and again["clip_from"]
    pipe2 = StableDiffusionPipeline.from_pretrained(tmp_path / "again" / "model")
    assert pipe2.scheduler.config.prediction_type == "epsilon"
    assert list(pipe2.unet.config.block_out_channels) == [32, 64, 96]  # the default
    for k, v in pipe.vae.state_dict().items():
        assert torch.allclose(v, pipe2.vae.state_dict()[k], atol=1e-6), k
    assert (out / "clip" / "open_clip_model.pt").read_bytes() == (
        tmp_path / "again" / "clip" / "open_clip_model.pt"
    ).read_bytes()


def _save_stage1(out, path) -> None:
    """The shipped VAE is stage 1 after standardization; standardizing it again is a no-op, so
    it stands in for the stage-1 checkpoint that the finished run deleted."""
    from diffusers import AutoencoderKL

    torch.save(AutoencoderKL.from_pretrained(out / "model" / "vae").state_dict(), path)


@shipped
def test_shipped_model_takes_colour_from_the_caption_not_the_starting_noise(world):
    """The fix for the colour drift of the first 64 px build (see train_bundled): at t = 999 the
    x0 estimate's per-channel mean must not follow the mean of x_T.  For an epsilon model that
    ignores its input's mean, x0 = (x_T - sqrt(1 - abar) eps) / sqrt(abar) moves by
    sqrt(1 - abar) / sqrt(abar) = 14.6 per unit of x_T's mean (the shipped epsilon UNet measured
    14.6); a model that predicts x0 from the caption alone moves by about sqrt(abar) = 0.07.

    Where a caption leaves the background open, x_T's channel means do carry information about
    it (0.068 of a background's mean against noise of 1/16 over 16x16 positions), so leaning on
    them is what a good denoiser does; where the caption names the background it should lean
    less.  The shipped model measured slopes of 0.8-4.9 (mean about 2.5) for held-out scenes
    with their background named and 4.3-4.7 for the same scenes' open captions."""
    from memberbench.adapters import load_adapter
    from memberbench.metrics.overestimation import x0_from_eps

    ad = load_adapter("bundled")
    t = torch.tensor([999])
    x = torch.randn(4, *ad.latent_shape, generator=torch.Generator().manual_seed(0))
    shift = torch.zeros(1, x.shape[1], 1, 1)
    shift[0, 0] = 0.2  # move the mean of channel 0 only
    abar = ad._abar_at(t, x)

    def slope(caption: str) -> float:
        emb = ad.encode_prompts([caption]).expand(4, -1, -1)
        with torch.no_grad():
            x0 = [x0_from_eps(xt, ad.predict_noise(xt, t, emb), abar) for xt in (x, x + shift)]
        return (x0[1] - x0[0])[:, 0].mean().item() / 0.2

    # held-out scenes (never trained on under any caption), with and without their background
    scenes = [scene for _, scene in world.held_out[:4]]
    named = np.array([slope(shape_caption(*sc, bg)) for sc in scenes for bg in BACKGROUNDS])
    open_ = np.array([slope(shape_caption(*sc)) for sc in scenes])
    assert named.mean() < 4.0, named  # far from the epsilon model's 14.6
    assert named.mean() < open_.mean(), (named, open_)


@shipped
@pytest.mark.slow
def test_shipped_model_memorizes_through_guidance(world):
    """The paper's phenomenon in the shipped model: its 64-copy canaries come out as copies of
    their training latent far more often at guidance 7.5 than at 1.0 (the 64 decoys make such a
    caption's conditional distribution a half-and-half mixture that guidance collapses onto the
    canary; the 256-copy canaries, at weight 0.8, are copied at g = 1 already in this build).
    Same prompts and seeds at both scales; 25 DDIM steps."""
    from test_mitigations_bundled import latent_cosine

    from memberbench.adapters import load_adapter
    from memberbench.runner import run_generation
    from memberbench.types import GenerationRequest

    ad = load_adapter("bundled", device="cpu", dtype="fp32")
    canaries = [c for c in world.canaries if c.duplicates == 64]
    refs = ad.encode_images([c.image for c in canaries])
    seeds = range(4)
    cos = {}
    for g in (1.0, 7.5):
        reqs = [
            GenerationRequest(c.caption, seed=s, steps=25, guidance=g)
            for c in canaries
            for s in seeds
        ]
        samples = run_generation(ad, reqs, progress=False)
        cos[g] = latent_cosine(samples, [r for r in refs for _ in seeds])
    assert cos[7.5].mean() > cos[1.0].mean() + 0.2, cos
    assert (cos[7.5] > 0.8).mean() > (cos[1.0] > 0.8).mean(), cos


def test_standardized_latents_leave_the_autoencoder_unchanged():
    """Folding per-channel mean/std into the 1x1 quant convs: same reconstructions, latents with
    zero mean and unit variance per channel, scaling factor 1, and a second pass changes nothing."""
    import torch

    from memberbench.bundled.train import make_vae, standardize_latents

    torch.manual_seed(0)
    vae = make_vae().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(12, 3, 64, 64, generator=gen) * 2 - 1
    with torch.no_grad():
        # a lopsided latent space, like the trained VAE's (means far from 0, one quiet channel)
        vae.quant_conv.bias[:4] += torch.tensor([1.0, -2.0, 0.5, 0.0])
        vae.quant_conv.weight[3] *= 0.1
        before = vae.decode(vae.encode(x).latent_dist.mode()).sample
        z_raw = vae.encode(x).latent_dist.mode()
    z = standardize_latents(vae, x)
    with torch.no_grad():
        after = vae.decode(vae.encode(x).latent_dist.mode()).sample
        post = vae.encode(x).latent_dist
    assert (before - after).abs().max() < 1e-4  # float32 rounding of the folded weights
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(z.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-5)
    # z' = (z - mu) / sd, channel by channel, and the posterior's std scales with it
    mu, sd = z_raw.mean(dim=(0, 2, 3)), z_raw.std(dim=(0, 2, 3))
    assert torch.allclose(z, (z_raw - mu.view(1, -1, 1, 1)) / sd.view(1, -1, 1, 1), atol=1e-4)
    assert vae.config.scaling_factor == 1.0 and torch.isfinite(post.std).all()
    assert torch.allclose(standardize_latents(vae, x), z, atol=1e-5)


@shipped
@pytest.mark.slow
def test_shipped_unet_step1_magnitude_follows_the_data_optimal_one(world):
    """Wen et al.'s step-1 magnitude ||eps_c - eps_u|| of the shipped UNet against the value a
    Bayes-optimal denoiser of the same training pairs would give (memberbench.bundled.oracle:
    sqrt(abar / (1 - abar)) ||E[z|c] - E[z]||, from the world and the VAE alone).  Held-out
    captions measured 0.85 of it in the previous build (n=16); over held-out captions and
    canaries together the two rank alike, so the canaries' small step-1 magnitude is the data's
    (their decoys), not a training failure."""
    from scipy.stats import spearmanr

    from memberbench.adapters import load_adapter
    from memberbench.bundled.oracle import first_step_factor, step1_magnitudes

    ad = load_adapter("bundled", device="cpu", dtype="fp32")
    n = 12
    res = step1_magnitudes(
        world,
        lambda im: ad.encode_images(im).numpy(),
        first_step_factor(ad.make_scheduler()),
        held_out=n,
    )
    sched = ad.make_scheduler()
    sched.set_timesteps(50)
    t = sched.timesteps[0]
    x = torch.randn(4, *ad.latent_shape, generator=torch.Generator().manual_seed(0))
    caps = [c for c, _ in world.held_out[:n]] + [c.caption for c in world.canaries]
    with torch.no_grad():
        eu = ad.predict_noise(x, t, ad.encode_prompts([""]).expand(4, -1, -1))
        measured = np.array(
            [
                (ad.predict_noise(x, t, ad.encode_prompts([c]).expand(4, -1, -1)) - eu)
                .flatten(1)
                .norm(dim=1)
                .mean()
                .item()
                for c in caps
            ]
        )
    by_dup = res["canaries"][max(res["canaries"])]
    oracle = np.array(
        res["held_out"] + [by_dup[c.duplicates].pop(0) for c in world.canaries], dtype=float
    )
    ratio = measured[:n].mean() / oracle[:n].mean()
    # the textured-canary build overshoots the data-optimal value on held-out captions by about
    # a fifth (1.19 here, 1.20 / 0.98 in docs/evidence.md); the previous build was at 1.04
    assert 0.7 < ratio < 1.3, (ratio, measured[:n], oracle[:n])
    assert spearmanr(oracle, measured).statistic > 0.7, (oracle, measured)
