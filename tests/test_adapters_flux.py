"""FLUX.1 (memberbench/adapters/flux.py) end to end on CPU with tiny random components.

The components are built from config as diffusers' own FluxPipeline tests build them
(tests/pipelines/flux: a one-layer FluxTransformer2DModel on 2x2-packed one-channel latents, a
tiny CLIPTextModel, a tiny T5EncoderModel from a T5Config, a one-block AutoencoderKL).  diffusers'
tests load their tokenizers from hub test repos, which are out of reach offline; here both
tokenizer slots hold the bundled model's CLIP tokenizer (the pipeline only calls the tokenizers'
``__call__``) and the tiny T5's vocabulary is sized to it.  The traced sampler is compared with
FluxPipeline itself, image for image, with the distilled guidance input and with true CFG.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from memberbench.adapters.base import ModelCard
from memberbench.types import GenerationRequest, MemberbenchError

SEQ = 16  # T5 tokens (the pipeline's max_sequence_length); FLUX.1-dev uses 512
RES = 16  # pixels = latent side (the tiny VAE does not downsample); 8x8 = 64 packed tokens


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True, dynamic: bool = True):
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    from memberbench.bundled.train import build_tokenizer
    from memberbench.testing import _tokenizer_dir

    tok = CLIPTokenizer.from_pretrained(_tokenizer_dir(build_tokenizer))
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance_embeds,
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
    text_encoder = CLIPTextModel(clip)
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
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    if dynamic:  # FLUX.1-dev's scheduler config
        sched = FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_image_seq_len=256,
            max_image_seq_len=4096,
            base_shift=0.5,
            max_shift=1.15,
        )
    else:  # FLUX.1-schnell's
        sched = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(
        scheduler=sched,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        text_encoder_2=t5,
        tokenizer_2=tok,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


CARD = ModelCard(
    name="tiny-flux",
    repo_id="local",
    revision=None,
    resolution=RES,
    prediction_type="flow",
    guidance_distilled=True,
    defaults={"guidance_embed": 3.5},
)


@pytest.fixture(scope="module")
def flux_pipe():
    return tiny_flux_pipeline()


def _adapter(pipe, **kw):
    from memberbench.adapters.flux import FluxAdapter

    return FluxAdapter(pipe, CARD, max_sequence_length=SEQ, **kw)


def _pipeline_run(pipe, reqs, shape, **kw):
    """FluxPipeline on the traced sampler's initial noise (packed, as FluxPipeline takes it)."""
    from memberbench.adapters.flux import pack_latents
    from memberbench.sampling.sampler import initial_noise

    z = torch.stack([initial_noise(r.seed, shape)[0] for r in reqs])
    args = dict(
        prompt=[r.prompt for r in reqs],
        num_inference_steps=reqs[0].steps,
        height=RES,
        width=RES,
        max_sequence_length=SEQ,
        **kw,
    )
    lat = pipe(latents=pack_latents(z.clone()), output_type="latent", **args).images
    img = pipe(latents=pack_latents(z.clone()), output_type="np", **args).images
    return lat, np.round(img * 255).astype(np.int64)


def _compare(samples, lat, theirs):
    from memberbench.adapters.flux import unpack_latents

    assert all(s.status == "ok" for s in samples)
    ours = np.stack([s.final_latent for s in samples])
    lat = unpack_latents(lat, RES, RES).numpy()
    assert np.abs(lat).max() > 0.1  # a real trajectory, not zeros
    np.testing.assert_allclose(ours, lat, rtol=1e-5, atol=1e-5)
    mine = np.stack([s.image for s in samples]).astype(np.int64)
    assert mine.shape == theirs.shape == (len(samples), RES, RES, 3)
    assert np.abs(mine - theirs).max() <= 1 and (mine == theirs).mean() > 0.99


def test_pack_unpack_round_trip_matches_flux_pipeline():
    from diffusers import FluxPipeline

    from memberbench.adapters.flux import latent_image_ids, pack_latents, unpack_latents

    x = torch.randn(2, 3, 6, 8)
    packed = pack_latents(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 3, 6, 8))
    assert torch.equal(unpack_latents(packed, 6, 8), x)
    assert torch.equal(unpack_latents(packed, 6, 8), FluxPipeline._unpack_latents(packed, 6, 8, 1))
    ids = FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32)
    assert torch.equal(latent_image_ids(6, 8, "cpu", torch.float32), ids)


def test_traced_sampler_matches_flux_pipeline_distilled(flux_pipe):
    """No true CFG: one conditional call per step with the request's guidance as the
    transformer's guidance input; the final latents and images are FluxPipeline's."""
    from memberbench.sampling.sampler import TracedSampler

    ad = _adapter(flux_pipe)
    assert not ad.has_unconditional and ad.latent_shape == (1, RES, RES)
    reqs = [
        GenerationRequest("a red square on a blue background", seed=10, steps=4, guidance=3.5),
        GenerationRequest("a green circle", seed=11, steps=4, guidance=3.5),
    ]
    samples = TracedSampler(ad).sample(reqs)
    assert samples[0].meta["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert samples[0].unet_evals == 4  # one call per step
    lat, img = _pipeline_run(flux_pipe, reqs, ad.latent_shape, guidance_scale=3.5)
    _compare(samples, lat, img)
    # the guidance input matters (a different one gives another image), and no branch is faked:
    # the unconditional series are NaN, not copies of the conditional ones
    (other,) = TracedSampler(ad).sample([GenerationRequest(reqs[0].prompt, 10, 4, 1.0)])
    assert np.abs(other.final_latent - samples[0].final_latent).max() > 1e-4
    tr = samples[0].trace
    assert np.isnan(tr.series["eps_u_norm"]).all() and np.isnan(tr.series["eps_diff_norm"]).all()
    assert np.isfinite(tr.series["x0_g_norm"]).all()
    np.testing.assert_allclose(tr.series["guidance"], 3.5)


def test_traced_sampler_matches_flux_pipeline_true_cfg(flux_pipe):
    """true_cfg: [negative "", prompt] per step, CFG on the velocity with the request's
    guidance, the transformer's guidance input fixed at guidance_embed: FluxPipeline's
    ``true_cfg_scale`` with ``negative_prompt=""``."""
    from memberbench.sampling.sampler import TracedSampler

    ad = _adapter(flux_pipe, true_cfg=True, guidance_embed=2.0)
    assert ad.has_unconditional and ad.unconditional_reason == ""
    reqs = [
        GenerationRequest("a red square on a blue background", seed=3, steps=3, guidance=4.0),
        GenerationRequest("a green circle", seed=4, steps=3, guidance=4.0),
    ]
    samples = TracedSampler(ad).sample(reqs)
    assert samples[0].unet_evals == 6
    lat, img = _pipeline_run(
        flux_pipe, reqs, ad.latent_shape, guidance_scale=2.0, true_cfg_scale=4.0, negative_prompt=""
    )
    _compare(samples, lat, img)
    tr = samples[0].trace
    assert np.isfinite(tr.series["eps_diff_norm"]).all() and tr.series["x0_diff_norm"][0] > 0


def test_schnell_scheduler_and_no_guidance_input():
    """FLUX.1-schnell's config (shift 1, no dynamic shifting, no guidance embedding): the grid is
    FluxPipeline's linspace(1, 1/N, N) unshifted, and the sampler still matches the pipeline."""
    from memberbench.sampling.sampler import TracedSampler

    pipe = tiny_flux_pipeline(seed=1, guidance_embeds=False, dynamic=False)
    ad = _adapter(pipe)
    assert ad.guidance_embed is None and ad.describe()["guidance_embed"] is None
    sched = ad.make_scheduler()
    sched.set_timesteps(4)
    np.testing.assert_allclose(sched.sigmas.numpy(), [1.0, 0.75, 0.5, 0.25, 0.0], atol=1e-6)
    reqs = [GenerationRequest("a cat", seed=5, steps=2, guidance=0.0)]
    samples = TracedSampler(ad).sample(reqs)
    lat, img = _pipeline_run(pipe, reqs, ad.latent_shape, guidance_scale=0.0)
    _compare(samples, lat, img)


def test_dynamic_shift_mu_is_flux_pipelines(flux_pipe):
    """mu from the packed sequence length as FluxPipeline computes it, and the shifted grid."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    ad = _adapter(flux_pipe)
    sched = ad.make_scheduler()
    n_tokens = (RES // 2) ** 2
    # by hand: mu = 0.5 + (1.15 - 0.5) (n - 256) / (4096 - 256)
    mu = 0.5 + (1.15 - 0.5) * (n_tokens - 256) / (4096 - 256)
    assert sched.flux_mu == pytest.approx(mu) == pytest.approx(calculate_shift(n_tokens))
    sched.set_timesteps(4)
    s = np.linspace(1.0, 0.25, 4)
    shifted = np.exp(mu) / (np.exp(mu) + (1 / s - 1))  # time_shift "exponential", sigma = 1
    np.testing.assert_allclose(sched.sigmas.numpy()[:4], shifted, rtol=1e-6)
    # the native 1024 px card: 4096 tokens, mu = max_shift
    from memberbench.adapters.flux import FLUX_DEV

    assert FLUX_DEV.resolution == 1024 and FLUX_DEV.guidance_distilled


# --------------------------------------------------------------------------------------------
# cards, local folders, bad input


@pytest.fixture(scope="module")
def flux_dir(flux_pipe, tmp_path_factory):
    d = tmp_path_factory.mktemp("flux") / "tiny-flux"
    flux_pipe.save_pretrained(d)
    return d


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("name", ["flux-dev", "flux-schnell"])
def test_cards(name):
    from memberbench.adapters import model_card
    from memberbench.listing import model_rows

    card = model_card(name)
    assert (card.resolution, card.prediction_type, card.guidance_distilled) == (1024, "flow", True)
    assert card.repo_id.startswith("black-forest-labs/FLUX.1-") and len(card.revision) == 40
    assert int(card.revision, 16) >= 0
    assert "guidance-distilled" in dict(model_rows())[name]
    assert model_card("sd-1.4").guidance_distilled is False


def test_local_folder_detects_flux_pipeline(flux_pipe, flux_dir):
    """``diffusers:path=DIR`` reads FluxPipeline from model_index.json, records "local", the
    weights' sha256 and guidance_distilled; it samples what the in-memory adapter samples."""
    from memberbench.adapters import load_adapter
    from memberbench.adapters.flux import FluxAdapter
    from memberbench.sampling.sampler import TracedSampler

    assert json.loads((flux_dir / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    ad = load_adapter(f"diffusers:path={flux_dir},resolution={RES}")
    assert isinstance(ad, FluxAdapter) and ad.family == "flux"
    assert ad.card.revision == "local" and ad.card.guidance_distilled
    assert ad.card.resolution == RES and not ad.has_unconditional
    ad.max_sequence_length = SEQ
    d = ad.describe()
    assert d["pipeline_class"] == "FluxPipeline" and len(d["weights_sha256"]) == 64
    assert d["card"]["guidance_distilled"] is True and d["true_cfg"] is False
    req = GenerationRequest("a red square", seed=2, steps=3, guidance=3.5)
    (a,) = TracedSampler(ad).sample([req])
    (b,) = TracedSampler(_adapter(flux_pipe)).sample([req])
    np.testing.assert_allclose(a.final_latent, b.final_latent, rtol=1e-6, atol=1e-6)
    cfg = load_adapter(f"diffusers:path={flux_dir},resolution={RES},true_cfg=on,guidance_embed=2")
    assert cfg.has_unconditional and cfg.guidance_embed == 2.0
    assert cfg.fingerprint() != ad.fingerprint()
    # the card's path= route: the card's name, revision "local"
    dev = load_adapter(f"flux-dev:path={flux_dir},resolution={RES},true_cfg=on")
    assert dev.card.name == "flux-dev" and dev.card.revision == "local" and dev.true_cfg
    assert dev.guidance_embed == 3.5  # the card's default guidance input


def test_folder_missing_a_component_is_one_line(flux_dir, tmp_path):
    import shutil

    from memberbench.adapters import load_adapter

    d = _copy(flux_dir, tmp_path / "f")
    shutil.rmtree(d / "text_encoder_2")
    for spec in (f"diffusers:path={d}", f"flux-dev:path={d}"):
        with pytest.raises(MemberbenchError) as e:
            load_adapter(spec)
        msg = str(e.value)
        assert "\n" not in msg
        assert "no component 'text_encoder_2' (transformers T5EncoderModel)" in msg
        assert "save_pretrained" in msg


def test_t5_without_weights_is_one_line(flux_dir, tmp_path):
    from memberbench.adapters import load_adapter

    d = _copy(flux_dir, tmp_path / "f")
    (d / "text_encoder_2" / "model.safetensors").unlink()
    assert (d / "text_encoder_2" / "config.json").is_file()
    for spec in (f"diffusers:path={d}", f"flux-schnell:path={d}"):
        with pytest.raises(MemberbenchError) as e:
            load_adapter(spec)
        msg = str(e.value)
        assert "\n" not in msg
        assert "text_encoder_2/ (T5EncoderModel) has no weights" in msg
        assert "model.safetensors" in msg and "huggingface-cli download" in msg


def test_missing_hub_weights_offline(monkeypatch, tmp_path):
    from memberbench.adapters import load_adapter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MemberbenchError) as e:
        load_adapter("flux-dev")
    msg = str(e.value)
    assert "\n" not in msg and "black-forest-labs/FLUX.1-dev" in msg
    assert "3de623fc3c33e44ffbe2bad470d0f45bccf2eb21" in msg and "flux-dev:path=" in msg


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("flux-dev:true_cfg=maybe", "true_cfg='maybe' is not valid; give true_cfg=on"),
        ("flux-dev:guidance_embed=-1", "guidance_embed='-1' is not valid"),
        ("flux-dev:vae=stabilityai/sd-vae-ft-mse", "has no parameter 'vae'"),
        ("flux-schnell:steps=4", "has no parameter 'steps'"),
        ("flux-dev:resolution=1000", "resolution=1000 is not a multiple of 16"),
        ("flux-dev:resolution=abc", "resolution='abc' is not valid"),
    ],
)
def test_bad_specs(spec, pattern):
    from memberbench.adapters import load_adapter

    with pytest.raises(MemberbenchError, match=pattern) as e:
        load_adapter(spec)
    assert "\n" not in str(e.value)


def test_local_resolution_must_fit_the_packing(flux_dir):
    from memberbench.adapters import load_adapter
    from memberbench.sampling.sampler import TracedSampler

    ad = load_adapter(f"diffusers:path={flux_dir},resolution=24")  # tiny VAE factor 1: 24 % 2 ok
    assert ad.latent_shape == (1, 24, 24)
    from dataclasses import replace

    ad.card = replace(ad.card, resolution=25)  # what no spec can give, but a custom card could
    with pytest.raises(MemberbenchError, match="resolution=25 is not a multiple of 2") as e:
        TracedSampler(ad).sample([GenerationRequest("a cat", seed=0, steps=1)])
    assert "\n" not in str(e.value)


def test_true_cfg_on_a_non_flux_folder_is_refused(tiny_pipeline_dir):
    from memberbench.adapters import load_adapter

    with pytest.raises(MemberbenchError, match="true_cfg= applies to FLUX folders only"):
        load_adapter(f"diffusers:path={tiny_pipeline_dir},true_cfg=on")


def test_mitigations_for_other_families_are_refused(flux_pipe):
    """The built-in methods declare their families; none but ``none`` declares flux, so the
    others are refused in one line naming the family."""
    from memberbench.mitigations import build_mitigation

    ad = _adapter(flux_pipe)
    for name in ("sail", "guidance-schedule", "prompt-embedding"):
        with pytest.raises(MemberbenchError, match="family 'flux'") as e:
            build_mitigation(name).check_compatible(ad)
        assert "\n" not in str(e.value)
    build_mitigation("none").check_compatible(ad)


# --------------------------------------------------------------------------------------------
# the task suite on a guidance-distilled model

pytest_plugins = ["pytester"]


@pytest.fixture
def _this_checkout(monkeypatch):
    """Subprocess runs import memberbench from this checkout, whatever is installed."""
    from pathlib import Path

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))


def _run_tasks(pytester, flux_dir, spec_extra, tag):
    from pathlib import Path

    from test_plugin import write_prompt_files

    tasks = Path(__file__).resolve().parents[1] / "tasks"
    mem, non = write_prompt_files(pytester.path, n=1)
    out = pytester.path / f"{tag}.json"
    r = pytester.runpytest_subprocess(
        str(tasks / "test_guidance_sweep.py"),
        str(tasks / "test_overestimation.py"),
        str(tasks / "test_detection.py"),
        str(tasks / "test_memorization.py"),
        "-p",
        "no:cacheprovider",
        f"--model=diffusers:path={flux_dir},resolution=32{spec_extra}",
        f"--prompts-memorized={mem}",
        f"--prompts-nonmemorized={non}",
        "--seeds=0",
        "--steps=2",
        "--sweep=1",
        "--n-boot=10",
        "--m2-limit=1",
        "--m2-noises=1",
        f"--cache-dir={pytester.path / ('cache-' + tag)}",
        f"--results={out}",
        "-rs",
    )
    outcomes = r.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, r.stdout.str()
    return json.loads(out.read_text())


@pytest.mark.slow
def test_guidance_tasks_skip_with_the_reason_and_results_record_the_card(
    pytester, flux_dir, _this_checkout
):
    """Without true_cfg every task that needs cond - uncond is skipped with the reason (how to
    enable true CFG); the results' model section records guidance_distilled; with
    true_cfg=on the same tasks run."""
    doc = _run_tasks(pytester, flux_dir, "", "distilled")
    model = doc["model"]
    assert model["card"]["guidance_distilled"] is True and model["guidance_distilled"] is True
    assert model["true_cfg"] is False and model["pipeline_class"] == "FluxPipeline"
    skipped = {s["test"].split("::")[-1]: s["reason"] for s in doc["run"]["skipped"]}
    for test in (
        "test_guidance_sweep[g=1]",
        "test_noise_magnitude_m4",
        "test_training_pair_m2[memorized]",
        "test_deviation_d1_d2[memorized]",
        "test_correlation_with_sscd_m7",
        "test_detection[wen]",
        "test_detection[d1]",
        "test_detection_set_labels[wen]",
        "test_detection_set_labels[nsupp]",
    ):
        assert test in skipped, (test, sorted(skipped))
        assert "guidance-distilled" in skipped[test] and "true_cfg=on" in skipped[test]
    # memorization (SSCD) is measured; nothing guidance-based is recorded
    assert "sscd_mean" in doc["metrics"]
    guided = ("wen", "d1", "d2", "k_pair", "k_traj", "detect", "corr", "m2_")
    assert not [k for k in doc["metrics"] if k.startswith(guided)], sorted(doc["metrics"])

    doc = _run_tasks(pytester, flux_dir, ",true_cfg=on", "cfg")
    assert doc["model"]["card"]["guidance_distilled"] is True and doc["model"]["true_cfg"]
    skipped = {s["test"].split("::")[-1]: s["reason"] for s in doc["run"]["skipped"]}
    assert not any("guidance-distilled" in r for r in skipped.values()), skipped
    assert "d1" in doc["metrics"] and "wen.k1.g=1" in doc["metrics"]
