"""The robustness check (Kowalczuk et al. 2025): the text-embedding perturbation by hand, its seed
determinism and batch independence, its place in the cache key, and the task end to end on the
tiny pipeline (with mitigation none, scale 0 reproduces the unperturbed SSCD exactly)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_plugin import _this_checkout, write_prompt_files  # noqa: F401 (autouse fixture)

from memberbench.mitigations import build_mitigation
from memberbench.mitigations.perturbation import (
    Perturbed,
    perturb_embedding,
    perturbation_noise,
)
from memberbench.sampling.hooks import SamplerState
from memberbench.types import GenerationRequest

pytest_plugins = ["pytester"]


def test_every_token_moves_by_exactly_scale_times_its_norm():
    e = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0], [1.0, 1.0, 1.0]])  # norms 5, 2, sqrt 3
    for scale in (0.0, 0.05, 0.1, 0.2):
        p = perturb_embedding(e, scale, seed=7)
        moved = (p - e).norm(dim=-1)
        torch.testing.assert_close(moved, scale * e.norm(dim=-1), rtol=1e-6, atol=1e-7)
    assert torch.equal(perturb_embedding(e, 0.0, seed=7), e)  # scale 0: to the bit
    # one direction per (seed, draw), whatever the scale: only the length changes
    d1 = perturb_embedding(e, 0.1, seed=7) - e
    d2 = perturb_embedding(e, 0.2, seed=7) - e
    torch.testing.assert_close(d2, 2 * d1, rtol=1e-5, atol=1e-6)


def test_directions_are_unit_and_determined_by_seed_and_draw():
    a = perturbation_noise(3, 0, (4, 5))
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(4))
    assert torch.equal(a, perturbation_noise(3, 0, (4, 5)))
    assert not torch.allclose(a, perturbation_noise(4, 0, (4, 5)))
    assert not torch.allclose(a, perturbation_noise(3, 1, (4, 5)))
    # a direction is drawn independently of the initial noise of the same seed (another stream)
    g = torch.Generator().manual_seed(3)
    z = torch.randn((4, 5), generator=g)
    assert not torch.allclose(a, z / z.norm(dim=-1, keepdim=True))


def _state(seeds, emb):
    reqs = [GenerationRequest("p", seed=s, steps=2, guidance=7.5) for s in seeds]
    B = len(reqs)
    return SamplerState(
        requests=reqs,
        adapter=None,
        scheduler=SimpleNamespace(),
        timesteps=torch.tensor([900, 100]),
        latents=torch.zeros(B, 1, 1, 1),
        cond_embeds=emb.clone(),
        uncond_embeds=torch.zeros_like(emb),
        guidance=torch.full((B,), 7.5),
    )


def test_the_hook_perturbs_each_row_by_its_own_seed_whatever_the_batch():
    emb = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(0))
    mit = Perturbed(build_mitigation("none"), 0.1)
    both = _state([5, 9, 5], emb)
    for h in mit.hooks():
        h.on_start(both)
    alone = _state([9], emb[1:2])
    for h in mit.hooks():
        h.on_start(alone)
    assert torch.equal(both.cond_embeds[1], alone.cond_embeds[0])
    torch.testing.assert_close(both.cond_embeds[0], perturb_embedding(emb[0], 0.1, 5))
    assert torch.equal(both.uncond_embeds, torch.zeros_like(emb))  # "" is never perturbed
    assert both.extra["meta"]["perturb_scale"] == [0.1] * 3


def test_the_perturbation_enters_the_fingerprint():
    inner = build_mitigation("guidance-scale:scale=3")
    fps = {Perturbed(inner, s).fingerprint() for s in (0.0, 0.1, 0.2)}
    fps.add(inner.fingerprint())
    fps.add(Perturbed(inner, 0.1, draw=1).fingerprint())
    fps.add(Perturbed(build_mitigation("guidance-scale:scale=2"), 0.1).fingerprint())
    assert len(fps) == 6
    assert Perturbed(inner, 0.1).fingerprint() == Perturbed(inner, 0.1).fingerprint()
    assert Perturbed(inner, 0.1).spec() == "guidance-scale:scale=3.0 +perturb(scale=0.1,draw=0)"


def test_scale_zero_is_plain_sampling_to_the_bit_and_cached_apart(tiny_adapter, tmp_path):
    from memberbench.cache import GenerationCache
    from memberbench.runner import run_generation

    reqs = [GenerationRequest("a red circle", seed=s, steps=3, guidance=7.5) for s in (0, 1)]
    cache = GenerationCache(tmp_path / "c")
    plain = run_generation(tiny_adapter, reqs, cache=cache, progress=False)
    zero = run_generation(
        tiny_adapter, reqs, mitigation=Perturbed(build_mitigation("none"), 0.0), cache=cache,
        progress=False,
    )  # fmt: skip
    some = run_generation(
        tiny_adapter, reqs, mitigation=Perturbed(build_mitigation("none"), 0.2), cache=cache,
        progress=False,
    )  # fmt: skip
    assert len(cache) == 6  # three keys per request: plain, scale 0, scale 0.2
    for p, z, s in zip(plain, zero, some):
        np.testing.assert_array_equal(z.final_latent, p.final_latent)
        assert not np.allclose(s.final_latent, p.final_latent)
        assert z.unet_evals == p.unet_evals == s.unet_evals == 2 * 3  # no evaluations of its own


def test_the_task_end_to_end_scale_zero_gives_zero_regain_exactly(pytester, tiny_pipeline_dir):
    mem, non = write_prompt_files(pytester.path, n=2)
    tasks = Path(__file__).resolve().parents[1] / "tasks"
    args = [
        str(tasks / "test_memorization.py"),
        str(tasks / "test_robustness.py"),
        "-p",
        "no:cacheprovider",
        f"--model=bundled:path={tiny_pipeline_dir}",
        f"--prompts-memorized={mem}",
        f"--prompts-nonmemorized={non}",
        "--seeds=0-1",
        "--sweep-seeds=0",
        "--steps=3",
        "--sweep=none",
        "--robustness=0,0.3",
        f"--cache-dir={pytester.path / 'cache'}",
    ]
    out = pytester.path / "res" / "run.json"
    r = pytester.runpytest_subprocess(*args, f"--results={out}", "-rs")
    outcomes = r.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, r.stdout.str()
    m = json.loads(out.read_text())["metrics"]
    assert m["sscd_regain.s=0"]["value"] == 0.0  # exactly: the same images
    assert m["sscd_perturbed.s=0"]["value"] == m["sscd_mean"]["value"]
    assert m["sscd_regain.s=0"]["n"] == 2 and m["sscd_regain.s=0"]["stderr"] == 0.0
    assert m["sscd_regain.s=0.3"]["value"] == pytest.approx(
        m["sscd_perturbed.s=0.3"]["value"] - m["sscd_mean"]["value"], abs=1e-12
    )
    assert m["sscd_regain.s=0.3"]["value"] != 0.0
    assert {"sscd_regain.s=0.3.dup=1", "sscd_regain.s=0.3.dup=4"} <= set(m)
    # a rerun reads every generation from the cache (the perturbation is part of the key)
    out2 = pytester.path / "res" / "run2.json"
    r2 = pytester.runpytest_subprocess(*args, f"--results={out2}")
    assert r2.parseoutcomes().get("failed", 0) == 0
    doc2 = json.loads(out2.read_text())
    assert doc2["run"]["images_generated"] == 0
    assert doc2["metrics"]["sscd_regain.s=0.3"]["value"] == m["sscd_regain.s=0.3"]["value"]


def test_robustness_metrics_have_their_leaderboard_section():
    """The site shows the robustness metrics in their own section: the perturbed SSCD first,
    then the regain overall and per group, at each recorded scale (and nothing else)."""
    from memberbench.metrics.declare import section_columns, sections

    assert "robustness" in [s.id for s in sections()]
    recorded = {"sscd_regain.s=0.1", "sscd_regain.s=0.1.dup=64", "sscd_perturbed.s=0.1",
                "sscd_regain.s=0.2", "sscd_mean", "sscd_mean.dup=64"}  # fmt: skip
    assert section_columns("robustness", recorded) == [
        "sscd_perturbed.s=0.1",
        "sscd_regain.s=0.1",
        "sscd_regain.s=0.1.dup=64",
        "sscd_regain.s=0.2",
    ]
