"""The traced sampler: equivalence with StableDiffusionPipeline, seeds, traces, hooks, failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memberbench.sampling.hooks import StepHook
from memberbench.sampling.sampler import (
    BASE_SERIES,
    REF_SERIES,
    TracedSampler,
    batch_plan,
    initial_noise,
)
from memberbench.types import BRANCHES, GenerationRequest, MemberbenchError

PROMPTS = ["a red circle", "a blue square on green", "zorblat quennix"]
STEPS = 6


def _reqs(steps=STEPS, guidance=7.5, scheduler="ddim", seeds=(0, 1, 2), **kw):
    return [
        GenerationRequest(p, seed=s, steps=steps, guidance=guidance, scheduler=scheduler, **kw)
        for p, s in zip(PROMPTS, seeds)
    ]


def _pipe_images(pipe, out):
    """uint8 images from a pipeline's output_type='np' result, as the pipeline's PIL path does."""
    return (np.asarray(out.images) * 255).round().astype(np.uint8)


def test_matches_pipeline_ddim(tiny_adapter):
    """With no hooks, TracedSampler reproduces StableDiffusionPipeline.__call__ (DDIM, eta 0,
    guidance 7.5) given the same components, scheduler config and initial latents.

    Tolerance: on CPU in fp32 with the same batch composition both run the same kernels on the
    same inputs in the same order, so the result is bit-identical; we assert max |diff| <= 1e-6
    on latents (measured 0.0) and identical uint8 images.  Different batch sizes are not
    bit-identical on CPU (see test_seed_independent_of_batch_size).
    """
    reqs = _reqs()
    samples = TracedSampler(tiny_adapter, batch_size=3).sample(reqs)
    pipe = tiny_adapter.pipe
    pipe.scheduler = tiny_adapter.make_scheduler("ddim")
    z = torch.stack([initial_noise(r.seed, tiny_adapter.latent_shape)[0] for r in reqs])
    out = pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=7.5, latents=z, output_type="np")
    ours = np.stack([s.image for s in samples])
    assert np.array_equal(ours, _pipe_images(pipe, out))
    lat = pipe(
        PROMPTS, num_inference_steps=STEPS, guidance_scale=7.5, latents=z, output_type="latent"
    ).images
    ours_lat = torch.from_numpy(np.stack([s.final_latent for s in samples]))
    assert (ours_lat - lat).abs().max().item() <= 1e-6
    for s in samples:
        assert s.ok and s.image.dtype == np.uint8 and s.image.shape == (64, 64, 3)
        assert s.final_latent.dtype == np.float32 and s.final_latent.shape == (4, 16, 16)
        assert s.unet_evals == 2 * STEPS


@pytest.mark.parametrize("name", ["euler_a", "ddpm"])
def test_matches_pipeline_stochastic(tiny_adapter, name):
    """Stochastic schedulers draw step noise from the per-request generator, like the pipeline
    with a list of generators: identical results (tolerance as in the DDIM test)."""
    reqs = _reqs(scheduler=name, steps=4)[:2]
    samples = TracedSampler(tiny_adapter, batch_size=2).sample(reqs)
    pipe = tiny_adapter.pipe
    pipe.scheduler = tiny_adapter.make_scheduler(name)
    gens = [torch.Generator("cpu").manual_seed(r.seed) for r in reqs]
    lat = pipe(
        PROMPTS[:2], num_inference_steps=4, guidance_scale=7.5, generator=gens, output_type="latent"
    ).images
    ours = torch.from_numpy(np.stack([s.final_latent for s in samples]))
    assert (ours - lat).abs().max().item() <= 1e-6


def test_seed_independent_of_batch_size(tiny_adapter):
    """A request's noise depends only on its seed: same x_T whatever the batch, and the same
    image up to CPU kernel differences between batch sizes (measured ~1e-5 on the latents
    after 6 steps of the random tiny model; images identical or off by one grey level)."""
    reqs = _reqs()
    a = TracedSampler(tiny_adapter, batch_size=1).sample(reqs)
    b = TracedSampler(tiny_adapter, batch_size=3).sample(list(reversed(reqs)))[::-1]
    for x, y in zip(a, b):
        assert x.request == y.request
        assert x.trace.scalars["xT_norm2"] == y.trace.scalars["xT_norm2"]
        np.testing.assert_allclose(x.final_latent, y.final_latent, atol=2e-4, rtol=0)
        assert np.abs(x.image.astype(int) - y.image.astype(int)).max() <= 1
    # and different seeds give different noise
    assert a[0].trace.scalars["xT_norm2"] != a[1].trace.scalars["xT_norm2"]


def test_trace_series_and_identities(tiny_adapter, tmp_path):
    reqs = _reqs()
    x = tiny_adapter.encode_images(np.full((1, 64, 64, 3), 200, dtype=np.uint8))[0]
    refs = [x, None, x * 0.5]
    samples = TracedSampler(tiny_adapter, record_latents_dir=tmp_path).sample(reqs, refs)
    T = STEPS
    sched = tiny_adapter.make_scheduler("ddim")
    sched.set_timesteps(T)
    ac = sched.alphas_cumprod.double().numpy()
    for s, ref in zip(samples, refs):
        tr = s.trace
        names = BASE_SERIES + (REF_SERIES if ref is not None else ())
        assert set(tr.series) == set(names)
        for k in names:
            assert tr[k].shape == (T,) and tr[k].dtype == np.float64
            assert np.isfinite(tr[k]).all(), k
        assert tr.num_steps == T
        np.testing.assert_array_equal(tr["timestep"], sched.timesteps.numpy())
        np.testing.assert_allclose(tr["abar_t"], ac[sched.timesteps.numpy()])
        assert tr["abar_next"][-1] == pytest.approx(float(sched.final_alpha_cumprod))
        np.testing.assert_allclose(tr["abar_next"][:-1], tr["abar_t"][1:])
        np.testing.assert_allclose(tr["guidance"], 7.5)
        # the full latents agree with the scalar records
        lat = np.load(tr.latents_path)["latents"].astype(np.float64).reshape(T + 1, -1)
        xT = lat[0]
        assert tr.scalars["xT_norm2"] == pytest.approx(xT @ xT, rel=1e-6)
        np.testing.assert_allclose(tr["latent_norm"], np.linalg.norm(lat[1:], axis=1), rtol=1e-6)
        np.testing.assert_allclose(tr["latent_dot_xT"], lat[1:] @ xT, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(lat[-1], s.final_latent.reshape(-1), atol=1e-6)
        # the final-latent basis, recorded on every trace (DDIM: VP form = the fp32 latents)
        np.testing.assert_allclose(tr["latent_dot_final"], lat[1:] @ lat[-1], rtol=1e-12)
        assert tr["latent_dot_final"][-1] == pytest.approx(tr.scalars["final_norm2"], rel=1e-12)
        assert tr.scalars["final_norm2"] == pytest.approx(lat[-1] @ lat[-1], rel=1e-12)
        assert tr.scalars["final_dot_xT"] == pytest.approx(lat[-1] @ xT, rel=1e-12)
        z, _ = initial_noise(s.request.seed, (4, 16, 16))
        np.testing.assert_allclose(xT, z.double().numpy().reshape(-1))
        if ref is None:
            assert "x_norm2" not in tr.scalars
            continue
        xr = np.asarray(ref, dtype=np.float64).reshape(-1)
        assert tr.scalars["x_norm2"] == pytest.approx(xr @ xr)
        np.testing.assert_allclose(tr["latent_dot_x"], lat[1:] @ xr, rtol=1e-5, atol=1e-6)
        # guidance is affine in the clean estimates: x0_g = x0_u + g (x0_c - x0_u)
        for name in ("x0_{}_dot_x", "eps_{}_dot_x", "eps_{}_dot_xT"):
            u, c, g = (tr[name.format(b)] for b in BRANCHES)
            np.testing.assert_allclose(g, u + 7.5 * (c - u), rtol=1e-4, atol=1e-3)
        # w0/wT from the recorded fit agree with the inner products
        from memberbench.metrics.decomposition import decompose_from_inner_products

        w0, wT, _ = decompose_from_inner_products(
            tr["latent_dot_x"],
            tr["latent_dot_xT"],
            tr["latent_norm"],
            tr.scalars["x_norm2"],
            tr.scalars["xT_norm2"],
            tr.scalars["x_dot_xT"],
            tr.scalars["dim"],
        )
        np.testing.assert_allclose(tr["w0"], w0, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(tr["wT"], wT, rtol=1e-6, atol=1e-8)
        # Tweedie: ||x - x0_hat||^2 = ||x0_hat||^2 - 2 <x0_hat, x> + ||x||^2
        for b in BRANCHES:
            lhs = tr[f"x0_{b}_err"]
            rhs = tr[f"x0_{b}_norm"] ** 2 - 2 * tr[f"x0_{b}_dot_x"] + xr @ xr
            np.testing.assert_allclose(lhs, rhs, rtol=1e-6)
    # a 50-step trace is kilobytes
    nbytes = sum(v.nbytes for v in samples[0].trace.series.values())
    assert nbytes / T * 50 < 16_000


class Recorder(StepHook):
    def __init__(self):
        self.calls = []

    def on_start(self, state):
        self.calls.append(("start", state.step, tuple(state.latents.shape)))

    def guidance(self, state, i, t, g):
        self.calls.append(("guidance", i, int(t)))
        assert state.step == i
        return g

    def combine(self, state, i, t, eps_u, eps_c, g):
        self.calls.append(("combine", i, int(t)))
        return None

    def after_step(self, state, i, t):
        self.calls.append(("after", i, int(t)))


def test_hooks_protocol(tiny_adapter):
    rec = Recorder()
    reqs = _reqs(steps=3)[:2]
    plain = TracedSampler(tiny_adapter).sample(reqs)
    hooked = TracedSampler(tiny_adapter, hooks=[rec]).sample(reqs)
    ts = [int(t) for t in hooked[0].trace["timestep"]]
    expected = [("start", -1, (2, 4, 16, 16))]
    for i, t in enumerate(ts):
        expected += [("guidance", i, t), ("combine", i, t), ("after", i, t)]
    assert rec.calls == expected
    for a, b in zip(plain, hooked):  # do-nothing hooks change nothing
        assert np.array_equal(a.final_latent, b.final_latent)


class GuidanceOne(StepHook):
    def guidance(self, state, i, t, g):
        return torch.ones_like(g)


class CondOnly(StepHook):
    def combine(self, state, i, t, eps_u, eps_c, g):
        return eps_c


class CountAndRecord(StepHook):
    def on_start(self, state):
        state.unet_evals += 3
        state.extra.setdefault("meta", {})["note"] = [f"s{r.seed}" for r in state.requests]


def test_hooks_change_sampling(tiny_adapter):
    reqs = _reqs(steps=3)[:2]
    g1 = TracedSampler(tiny_adapter).sample(_reqs(steps=3, guidance=1.0)[:2])
    via_hook = TracedSampler(tiny_adapter, hooks=[GuidanceOne()]).sample(reqs)
    via_combine = TracedSampler(tiny_adapter, hooks=[CondOnly()]).sample(reqs)
    for a, b, c in zip(g1, via_hook, via_combine):
        assert np.array_equal(a.final_latent, b.final_latent)
        np.testing.assert_allclose(a.final_latent, c.final_latent, atol=1e-5)
        np.testing.assert_allclose(b.trace["guidance"], 1.0)
    counted = TracedSampler(tiny_adapter, hooks=[CountAndRecord()]).sample(reqs)
    assert [s.unet_evals for s in counted] == [3 + 2 * 3] * 2
    assert [s.meta["note"] for s in counted] == ["s0", "s1"]


class Poison(StepHook):
    def after_step(self, state, i, t):
        if i == 1:
            state.latents[1] = float("nan")


def test_nan_fails_one_sample_only(tiny_adapter):
    reqs = _reqs(steps=4)
    plain = TracedSampler(tiny_adapter).sample(reqs)
    out = TracedSampler(tiny_adapter, hooks=[Poison()]).sample(reqs)
    assert [s.status for s in out] == ["ok", "failed", "ok"]
    bad = out[1]
    assert bad.failed_step == 1 and bad.image is None and bad.final_latent is None
    assert "update 1" in bad.error
    assert np.isfinite(bad.trace["eps_g_norm"][:2]).all()
    assert np.isnan(bad.trace["eps_g_norm"][2:]).all()
    assert np.isnan(bad.trace["latent_norm"][1:]).all()
    # no final latent: the final-basis inner products are NaN throughout
    assert np.isnan(bad.trace["latent_dot_final"]).all()
    assert np.isnan([bad.trace.scalars[k] for k in ("final_norm2", "final_dot_xT")]).all()
    assert bad.unet_evals == 4
    for i in (0, 2):
        assert np.array_equal(out[i].final_latent, plain[i].final_latent)
        assert np.isfinite(out[i].trace["latent_dot_final"]).all()
        np.testing.assert_array_equal(
            out[i].trace["latent_dot_final"], plain[i].trace["latent_dot_final"]
        )


@pytest.mark.parametrize(
    "name",
    ["ddim", "ddpm", "pndm", "euler", "euler_a", "dpm++", "lms", "heun", "UniPCMultistepScheduler"],
)
def test_every_scheduler_runs(tiny_adapter, name):
    r = GenerationRequest("a red circle", seed=3, steps=3, scheduler=name)
    (s,) = TracedSampler(tiny_adapter).sample([r])
    assert s.ok, s.error
    tr = s.trace
    assert s.unet_evals == 2 * tr.num_steps
    assert np.isfinite(tr["latent_norm"]).all() and np.isfinite(tr["x0_g_norm"]).all()
    assert ((tr["abar_t"] > 0) & (tr["abar_t"] < 1)).all()
    # states are in VP form: the first state has about unit variance per element
    assert 0.3 < tr.scalars["xT_norm2"] / tr.scalars["dim"] < 3


def test_unknown_scheduler_is_one_line(tiny_adapter):
    with pytest.raises(MemberbenchError) as e:
        TracedSampler(tiny_adapter).sample(
            [GenerationRequest("x", seed=0, steps=2, scheduler="nope")]
        )
    msg = str(e.value)
    assert "\n" not in msg and "'nope'" in msg and "ddim" in msg and "euler_a" in msg


def test_bf16_runs_close_to_fp32(tiny_pipeline_dir):
    from memberbench.adapters import load_adapter

    reqs = _reqs(steps=3)[:1]
    ad32 = load_adapter(f"bundled:path={tiny_pipeline_dir}", device="cpu")
    ad16 = load_adapter(f"bundled:path={tiny_pipeline_dir}", device="cpu", dtype="bf16")
    assert ad16.fingerprint() != ad32.fingerprint()
    (a,) = TracedSampler(ad32).sample(reqs)
    (b,) = TracedSampler(ad16).sample(reqs)
    assert b.ok and b.final_latent.dtype == np.float32
    # same noise (drawn in fp32, then cast), bf16 rounding after that
    assert (
        abs(a.trace.scalars["xT_norm2"] - b.trace.scalars["xT_norm2"]) / a.trace.scalars["xT_norm2"]
        < 1e-2
    )
    assert np.corrcoef(a.final_latent.ravel(), b.final_latent.ravel())[0, 1] > 0.9


def test_batch_plan_groups_compatible_requests():
    rs = [
        GenerationRequest("a", seed=0, steps=5),
        GenerationRequest("b", seed=0, steps=7),
        GenerationRequest("c", seed=1, steps=5, guidance=2.0),
        GenerationRequest("d", seed=2, steps=5),
    ]
    assert batch_plan(rs, 2) == [[0, 2], [3], [1]]
    with pytest.raises(MemberbenchError):
        batch_plan(rs, 0)


def test_reference_shape_is_checked(tiny_adapter):
    with pytest.raises(MemberbenchError, match="reference latent"):
        TracedSampler(tiny_adapter).sample(_reqs(steps=2)[:1], [torch.zeros(3, 8, 8)])


def _bundled_installed() -> bool:
    from memberbench.bundled import WEIGHTS_DIR

    return (WEIGHTS_DIR / "model" / "model_index.json").is_file()


@pytest.mark.skipif(not _bundled_installed(), reason="bundled weights not installed")
def test_matches_pipeline_on_bundled_model():
    """The same equivalence on the trained bundled model (manifest-verified load, fp32 CPU),
    against the pipeline with the model's own v-prediction DDIM scheduler: the adapter turns v
    into epsilon, so the maths is the same in another floating-point order (latents within
    1e-4, images within one uint8 level)."""
    from diffusers import DDIMScheduler

    from memberbench.adapters import load_adapter

    ad = load_adapter("bundled", device="cpu")
    assert ad.card.revision.startswith("manifest-sha256:")
    assert ad.prediction_type == "v_prediction"
    reqs = _reqs(steps=5)
    samples = TracedSampler(ad).sample(reqs)
    pipe = ad.pipe
    pipe.scheduler = DDIMScheduler.from_config(ad.scheduler_config)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    z = torch.stack([initial_noise(r.seed, ad.latent_shape)[0] for r in reqs])
    last = {}

    def keep_latents(_pipe, _i, _t, kw):
        last["latents"] = kw["latents"]
        return kw

    out = pipe(
        PROMPTS,
        num_inference_steps=5,
        guidance_scale=7.5,
        latents=z,
        output_type="np",
        callback_on_step_end=keep_latents,
    )
    np.testing.assert_allclose(
        np.stack([s.final_latent for s in samples]), last["latents"].numpy(), atol=1e-4
    )
    diff = np.abs(
        np.stack([s.image for s in samples]).astype(int) - _pipe_images(pipe, out).astype(int)
    )
    assert diff.max() <= 1
