"""PRSS (Chen et al., CVPR 2025): the re-anchoring ramp, the combined prediction, the prompt
search order, the alternatives file, and the method through the sampler.

The toy model makes the first-step magnitude of a prompt a number we choose: a text's embedding
is one scalar v (looked up in a table, "" -> 0) and ``eps(x, v) = v * 1 / sqrt(d)``, so
``||eps_c - eps_u|| = |v|``.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from memberbench.mitigations import build_mitigation
from memberbench.mitigations.prss import read_alternatives, reanchor_scale
from memberbench.sampling.hooks import SamplerState
from memberbench.types import GenerationRequest, MemberbenchError

SHAPE = (1, 2, 2)
D = math.prod(SHAPE)
MAG = {"": 0.0, "memorized": 5.0, "alt-a": 3.0, "alt-b": 0.5, "alt-c": 0.2, "safe": 0.4}


class ScalarToy:
    name = "toy"
    unet = None

    def __init__(self):
        self.encoded: list[str] = []

    def encode_prompts(self, texts):
        self.encoded += list(texts)
        return torch.tensor([MAG[t] for t in texts], dtype=torch.float32).view(-1, 1, 1)

    def predict_noise(self, x, t, emb):
        return emb.view(-1, 1, 1, 1).to(x.dtype) * torch.ones_like(x) / math.sqrt(D)


def toy_state(prompts, adapter=None):
    adapter = adapter or ScalarToy()
    reqs = [GenerationRequest(p, seed=k, steps=2, guidance=7.5) for k, p in enumerate(prompts)]
    B = len(reqs)
    return SamplerState(
        requests=reqs,
        adapter=adapter,
        scheduler=SimpleNamespace(scale_model_input=lambda x, t: x, init_noise_sigma=1.0),
        timesteps=torch.tensor([900, 100]),
        latents=torch.zeros(B, *SHAPE),
        cond_embeds=adapter.encode_prompts(prompts),
        uncond_embeds=adapter.encode_prompts([""] * B),
        guidance=torch.full((B,), 7.5),
        unet_evals=torch.zeros(B, dtype=torch.long),
    )


@pytest.fixture()
def alt_file(tmp_path):
    p = tmp_path / "alts.jsonl"
    rows = [
        {"caption": "memorized", "caption1": "alt-a", "caption2": "alt-b", "caption3": "alt-c"},
        {"prompt": "safe", "alternatives": ["alt-a"]},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def test_reanchor_scale_ramps_from_one_to_g():
    g = torch.tensor([7.5, 7.5, 7.5, 7.5])
    m = torch.tensor([3.0, 4.0, 5.0, 9.0])
    s = reanchor_scale(m, g, target_pr=3.0, thres_pr=5.0)
    # linear in m between (3, 1) and (5, g), capped at g
    torch.testing.assert_close(s, torch.tensor([1.0, 4.25, 7.5, 7.5]))


def test_combine_is_plain_cfg_below_target_and_reanchors_above(alt_file):
    m = build_mitigation(f"prss:alternatives={alt_file},target_ss=1,target_pr=3,thres_pr=5")
    hook = m.hooks()[0]
    state = toy_state(["memorized", "safe"])
    hook.on_start(state)
    g = torch.full((2,), 7.5)
    gen = torch.Generator().manual_seed(0)
    eps_u = torch.randn(2, *SHAPE, generator=gen)
    direction = torch.randn(2, *SHAPE, generator=gen)
    direction /= direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    mags = torch.tensor([4.0, 4.0])  # both above target_pr; only row 0 is triggered
    eps_c = eps_u + mags.view(-1, 1, 1, 1) * direction
    out = hook.combine(state, 0, state.timesteps[0], eps_u, eps_c, g)
    eps_o = torch.full(SHAPE, 5.0 / math.sqrt(D))  # the original prompt's prediction
    s = 4.25  # reanchor_scale at m = 4
    want0 = eps_o + s * (eps_c[0] - eps_o) + (7.5 - s) * (eps_c[0] - eps_u[0])
    torch.testing.assert_close(out[0], want0)
    torch.testing.assert_close(out[1], eps_u[1] + 7.5 * (eps_c[1] - eps_u[1]))
    # the eps_o evaluation is charged to the triggered sample only
    assert state.unet_evals.tolist()[0] - state.unet_evals.tolist()[1] >= 1
    # below target_pr nobody is re-anchored
    small = eps_u + 2.0 * direction
    assert hook.combine(state, 1, state.timesteps[1], eps_u, small, g) is None
    assert state.extra["meta"]["prss_pr_steps"] == [1, 0]


def test_search_takes_the_first_alternative_below_target_in_order(alt_file):
    ad = ScalarToy()
    state = toy_state(["memorized", "safe"], ad)
    build_mitigation(f"prss:alternatives={alt_file},target_ss=1").hooks()[0].on_start(state)
    meta = state.extra["meta"]
    assert meta["prss_triggered"] == [True, False]
    # alt-a (3.0) fails, alt-b (0.5) passes: alt-c is never tried; "safe" tries nothing
    assert meta["prss_choice"] == [2, 0] and meta["prss_prompt"] == ["alt-b", "safe"]
    assert ad.encoded[-2:] == ["alt-a", "alt-b"]
    assert state.cond_embeds.flatten().tolist() == pytest.approx([0.5, 0.4])
    assert meta["prss_magnitude"] == pytest.approx([5.0, 0.4])
    assert state.unet_evals.tolist() == [2 + 2, 2]


def test_search_falls_back_to_the_lowest_magnitude(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"prompt": "memorized", "alternatives": ["alt-a", "alt-b"]}) + "\n")
    state = toy_state(["memorized"])
    build_mitigation(f"prss:alternatives={p},target_ss=0.1").hooks()[0].on_start(state)
    assert state.extra["meta"]["prss_choice"] == [2]  # 0.5 < 3.0 < 5.0, none <= 0.1
    assert state.unet_evals.tolist() == [2 + 2]


def test_alternatives_file_formats_and_bad_input(tmp_path, alt_file):
    assert read_alternatives(alt_file) == {
        "memorized": ["alt-a", "alt-b", "alt-c"],
        "safe": ["alt-a"],
    }
    with pytest.raises(MemberbenchError, match="needs alternatives=PATH"):
        build_mitigation("prss:search=alternatives")
    with pytest.raises(MemberbenchError, match="not found"):
        build_mitigation(f"prss:alternatives={tmp_path / 'nope.jsonl'}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "alternatives": ["a"]}\n{oops\n')
    with pytest.raises(MemberbenchError, match=r"bad.jsonl:2 is not JSON"):
        read_alternatives(bad)
    with pytest.raises(MemberbenchError, match="must be above target_pr"):
        build_mitigation("prss:target_pr=3,thres_pr=2")
    # the alternatives' text enters the fingerprint (cache key, leaderboard row)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"prompt": "memorized", "alternatives": ["alt-c"]}) + "\n")
    a = build_mitigation(f"prss:alternatives={alt_file}")
    b = build_mitigation(f"prss:alternatives={other}")
    assert a.fingerprint() != b.fingerprint()


def test_prss_through_the_sampler_on_the_tiny_pipeline(tiny_pipeline_dir):
    from memberbench.adapters import load_adapter
    from memberbench.runner import run_generation

    ad = load_adapter(f"bundled:path={tiny_pipeline_dir}", device="cpu", dtype="fp32")
    steps = 4
    reqs = [GenerationRequest("a red circle", seed=s, steps=steps, guidance=7.5) for s in (0, 1)]
    base = run_generation(ad, reqs, mitigation=None, progress=False)
    # PR off and nothing to search: plain CFG, two evaluations more for the trigger check
    off = run_generation(ad, reqs, mitigation="prss:target_ss=0,target_pr=0", progress=False)
    for s, b in zip(off, base):
        np.testing.assert_allclose(s.final_latent, b.final_latent, rtol=0, atol=1e-6)
        assert s.unet_evals == b.unet_evals + 2
        assert s.meta["prss_triggered"] is True and s.meta["prss_pr_steps"] == 0
    # PR at every step (a tiny target_pr): one more evaluation per step, a different image
    on = run_generation(
        ad, reqs, mitigation="prss:target_ss=0,target_pr=1e-6,thres_pr=1e-5", progress=False
    )
    for s, b in zip(on, base):
        assert s.meta["prss_pr_steps"] == steps
        assert s.unet_evals == b.unet_evals + 2 + steps
        assert not np.allclose(s.final_latent, b.final_latent, atol=1e-4)
        # with s = g and the original prompt kept, re-anchoring is eps_c + 0 * ...: the
        # guided prediction equals the conditional one (trace: eps_g == eps_c at every step)
        np.testing.assert_allclose(s.trace["eps_g_norm"], s.trace["eps_c_norm"], rtol=1e-5)
