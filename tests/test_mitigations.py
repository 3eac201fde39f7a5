"""Mitigations: the contract, bad input, and that each method does what it claims (mechanics).

Everything runs on the tiny random pipeline (``tiny_pipeline_dir``), 5 DDIM steps, one prompt and
two seeds, through :func:`memberbench.runner.run_generation` exactly as the benchmark calls it.
Whether the methods lower memorization is tested on the bundled model in
``test_mitigations_bundled.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from memberbench.mitigations import BUILTIN, build_mitigation, describe_mitigations
from memberbench.mitigations.base import Mitigation, Param
from memberbench.registry import MITIGATIONS
from memberbench.sampling.hooks import SamplerState
from memberbench.types import GenerationRequest, MemberbenchError

PROMPT = "a red circle at the top left on a gray background"
STEPS = 5  # DDIM timesteps 801, 601, 401, 201, 1
G = 7.5


def requests(n: int = 2, steps: int = STEPS) -> list[GenerationRequest]:
    return [GenerationRequest(PROMPT, seed=s, steps=steps, guidance=G) for s in range(n)]


def run(adapter, mitigation, reqs=None):
    from memberbench.runner import run_generation

    return run_generation(adapter, reqs or requests(), mitigation=mitigation, progress=False)


def series(samples, name: str) -> np.ndarray:
    return np.stack([s.trace[name] for s in samples])


def finals(samples) -> np.ndarray:
    return np.stack([s.final_latent for s in samples])


@pytest.fixture(scope="module")
def adapter(tiny_pipeline_dir):
    from memberbench.adapters import load_adapter

    return load_adapter(f"bundled:path={tiny_pipeline_dir}", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def baseline(adapter):
    return run(adapter, None)


def fake_state(adapter, reqs, **kw) -> SamplerState:
    B = len(reqs)
    sched = adapter.make_scheduler("ddim")
    sched.set_timesteps(reqs[0].steps)
    emb = adapter.encode_prompts([r.prompt for r in reqs])
    unc = adapter.encode_prompts([""] * B)
    args = dict(
        requests=reqs,
        adapter=adapter,
        scheduler=sched,
        timesteps=sched.timesteps,
        latents=torch.randn(B, *adapter.latent_shape, generator=torch.Generator().manual_seed(0)),
        cond_embeds=emb,
        uncond_embeds=unc,
        guidance=torch.full((B,), G),
        unet_evals=torch.zeros(B, dtype=torch.long),
    )
    args.update(kw)
    return SamplerState(**args)


# --- contract, registry, bad input ---------------------------------------------------------------


def test_every_builtin_is_registered_cited_and_builds_with_defaults():
    assert set(BUILTIN) <= set(MITIGATIONS.names())
    for name in BUILTIN:
        m = build_mitigation(name)
        assert isinstance(m, Mitigation) and m.name == name
        assert name == "none" or m.citation, f"{name} cites no paper"
        assert type(m).__doc__ and type(m).__module__
        d = m.describe()
        assert d["spec"].startswith(name) and d["fingerprint"] == m.fingerprint()
        assert d["version"] == m.version()
        # the canonical spec rebuilds the same method
        assert build_mitigation(m.spec()).fingerprint() == m.fingerprint()
    info = describe_mitigations()
    assert "[0, 50]" in info["guidance-scale"]["params"]["scale"]


def test_fingerprint_tracks_parameters_and_version():
    a = build_mitigation("guidance-schedule:transition_t=800,before=-2")
    b = build_mitigation("guidance-schedule:before=-2.0,transition_t=800")
    c = build_mitigation("guidance-schedule:transition_t=700,before=-2")
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert build_mitigation(a, transition_t=700).fingerprint() == c.fingerprint()

    class Bumped(type(a)):
        def version(self) -> str:
            return "2"

    assert Bumped(**a.config).fingerprint() != a.fingerprint()


@pytest.mark.parametrize(
    "spec, needles",
    [
        (
            "guidance-scael",
            [
                "unknown mitigation 'guidance-scael'",
                "Did you mean 'guidance-scale'",
                "overestimation-guard",
            ],
        ),
        (
            "guidance-scale:scael=2",
            ["has no parameter 'scael'", "scale (a number in [0, 50], default 2"],
        ),
        ("guidance-scale:scale=99", ["scale=99 is out of range", "allowed: a number in [0, 50]"]),
        ("guidance-scale:scale=abc", ["scale='abc' is not valid", "a number in [0, 50]"]),
        ("guidance-scale:scale=nan", ["is not valid"]),
        ("caption-randomization:count=2.5", ["count='2.5' is not valid", "an integer in [1, 32]"]),
        ("guidance-schedule:mode=linear", ["mode='linear' is not valid", "one of static, dynamic"]),
        ("attention-reweight:mask_summary=maybe", ["true or false"]),
        ("initial-noise:max_iters=-3", ["out of range", "an integer in [0, 1000]"]),
    ],
)
def test_bad_specs_are_refused_with_what_exists(spec, needles):
    with pytest.raises(MemberbenchError) as e:
        build_mitigation(spec)
    for n in needles:
        assert n in str(e.value)


def test_out_of_range_is_refused_before_any_generation():
    from memberbench.runner import run_generation

    class NoAdapter:  # any generation attempt would fail on this with AttributeError
        pass

    with pytest.raises(MemberbenchError, match=r"out of range; allowed: a number in \[0, 1\]"):
        run_generation(NoAdapter(), requests(), mitigation="overestimation-guard:window=2")


def test_out_of_tree_methods_register_and_build_by_spec(monkeypatch):
    class Halve(Mitigation):
        """Half the guidance (a stand-in for an out-of-tree method)."""

        name = "test-halve"
        citation = "nobody"
        params = {"factor": Param(float, 0.5, "multiplier", 0.0, 1.0)}

    monkeypatch.setitem(MITIGATIONS._entries, "test-halve", Halve)
    m = build_mitigation("test-halve:factor=0.25")
    assert isinstance(m, Halve) and m.config == {"factor": 0.25}
    assert "test-halve" in str(MITIGATIONS.unknown("test-halv"))
    with pytest.raises(MemberbenchError, match=r"factor \(a number in \[0, 1\], default 0.5"):
        build_mitigation("test-halve:facter=1")


def test_param_conversion():
    p = Param(int, 3, low=0, high=10)
    assert p.convert("m", "k", "7") == 7 and p.convert("m", "k", 7.0) == 7
    with pytest.raises(MemberbenchError):
        p.convert("m", "k", True)
    assert Param(bool, False).convert("m", "k", "yes") is True
    assert Param(float, 0.0, low=0).allowed() == "a number >= 0"


# --- guidance-scale ------------------------------------------------------------------------------


def test_guidance_scale_uses_its_scale_at_every_step(adapter, baseline):
    out = run(adapter, "guidance-scale:scale=2")
    np.testing.assert_array_equal(series(out, "guidance"), 2.0)
    np.testing.assert_array_equal(series(baseline, "guidance"), G)
    assert not np.allclose(finals(out), finals(baseline))
    assert [s.unet_evals for s in out] == [2 * STEPS] * 2  # no extra cost


# --- guidance-schedule (Jain et al.) -------------------------------------------------------------


@pytest.mark.parametrize("before", [0.0, -2.0])
def test_static_schedule_withholds_or_opposes_guidance_before_the_transition(adapter, before):
    out = run(adapter, f"guidance-schedule:transition_t=500,before={before}")
    # timesteps 801, 601 lie above the transition, 401, 201, 1 below
    np.testing.assert_array_equal(series(out, "guidance"), [[before] * 2 + [G] * 3] * 2)
    assert [s.meta["transition_step"] for s in out] == [2, 2]


def test_dynamic_transition_is_the_first_local_minimum_per_sample(adapter):
    """Jain et al.'s rule: guidance starts at step j where d_j > d_{j-1} < d_{j-2}."""
    from memberbench.mitigations.guidance_schedule import _DynamicSchedule

    reqs = [GenerationRequest(PROMPT, seed=s, steps=6) for s in range(2)]
    state = fake_state(adapter, reqs)
    hook = _DynamicSchedule(before=-1.0, latest_t=0)
    hook.on_start(state)
    mags = [[5, 4, 3, 3.5, 2, 1], [5, 4, 4.5, 3, 2, 1]]  # minima at steps 2 and 1
    used = []
    eps_u = torch.zeros(2, 4, 16, 16)
    for i, t in enumerate(state.timesteps):
        eps_c = torch.zeros(2, 4, 16, 16)
        for b in range(2):
            eps_c[b, 0, 0, 0] = mags[b][i]
        hook.observe(state, i, t, eps_u, eps_c)
        used.append(hook.guidance(state, i, t, state.guidance).tolist())
    assert np.array(used).T.tolist() == [[-1, -1, -1, G, G, G], [-1, -1, G, G, G, G]]
    assert state.extra["meta"]["transition_step"] == [3, 2]
    assert state.guidance.tolist() == [G, G]  # the request's scales are not modified


def first_local_minimum(d: np.ndarray) -> int:
    """Jain et al.'s transition step, by hand: the first j with d_j > d_{j-1} < d_{j-2}."""
    return next((j for j in range(2, len(d)) if d[j] > d[j - 1] < d[j - 2]), -1)


def test_dynamic_schedule_runs_on_a_flow_model_on_the_velocity_difference():
    """On a flow-matching model the signal is ||v_c - v_u||, which the trace holds as
    eps_diff_norm + x0_diff_norm ((1 - sigma) ||dv|| + sigma ||dv||)."""
    from test_sd3 import CARD, SEQ, tiny_sd3_pipeline

    from memberbench.adapters.sd3 import SD3Adapter
    from memberbench.runner import run_generation

    ad = SD3Adapter(tiny_sd3_pipeline(), CARD, max_sequence_length=SEQ)
    m = build_mitigation("guidance-schedule:mode=dynamic,before=-1")
    reqs = [GenerationRequest("a red circle", seed=s, steps=12, guidance=5.0) for s in range(3)]
    plain = run_generation(ad, reqs, progress=False)
    out = run_generation(ad, reqs, mitigation=m, progress=False)
    for p, s in zip(plain, out):
        dv = np.asarray(s.trace["eps_diff_norm"]) + np.asarray(s.trace["x0_diff_norm"])
        j = first_local_minimum(dv)
        assert s.meta["transition_step"] == j
        k = j if j >= 0 else 12
        np.testing.assert_array_equal(s.trace["guidance"], [-1.0] * k + [5.0] * (12 - k))
        # up to the transition the schedule changes only the guidance, so the first step's
        # velocities equal plain sampling's
        np.testing.assert_allclose(
            dv[0],
            np.asarray(p.trace["eps_diff_norm"])[0] + np.asarray(p.trace["x0_diff_norm"])[0],
            rtol=1e-6,
        )


def test_dynamic_schedule_trace_shows_the_scale_used(adapter):
    out = run(adapter, "guidance-schedule:mode=dynamic,before=0,latest_t=500")
    for s in out:
        j = s.meta["transition_step"]
        assert 0 <= j <= 2  # forced at the latest at t=401 (step 2)
        np.testing.assert_array_equal(s.trace["guidance"], [0.0] * j + [G] * (STEPS - j))


# --- caption-randomization (Somepalli et al.) ----------------------------------------------------


@pytest.mark.parametrize("mode", ["token", "number", "repeat"])
def test_caption_randomization_is_reproducible_paired_and_changes_the_prompt(mode):
    m = build_mitigation(f"caption-randomization:mode={mode},count=3")
    reqs = requests(3)
    a = m.transform_requests(reqs)
    b = m.transform_requests(list(reversed(reqs)))[::-1]  # another order / batch: same captions
    assert [r.prompt for r in a] == [r.prompt for r in b]
    assert all(r.prompt != PROMPT for r in a)
    assert len({r.prompt for r in a}) == 3  # one draw per seed
    assert all(r.seed == q.seed and r.prompt_id == PROMPT for r, q in zip(a, reqs))
    if mode != "token":  # a decoded BPE token may hold spaces or be blank
        assert all(len(r.prompt.split(" ")) == len(PROMPT.split(" ")) + 3 for r in a)
    other = build_mitigation(f"caption-randomization:mode={mode},count=3,seed=1")
    assert [r.prompt for r in other.transform_requests(reqs)] != [r.prompt for r in a]
    if mode == "number":
        extra = [w for w in a[0].prompt.split(" ") if w not in PROMPT.split(" ")]
        assert len(extra) == 3 and all(w.isdigit() for w in extra)


def test_caption_randomization_through_the_runner_keeps_the_callers_request(adapter):
    out = run(adapter, "caption-randomization:mode=number,count=2", requests(1, steps=2))
    s = out[0]
    assert s.request.prompt == PROMPT
    assert s.meta["sampled_request"]["prompt"] != PROMPT
    assert s.meta["sampled_request"]["seed"] == s.request.seed


# --- prompt-embedding (Wen et al.) ---------------------------------------------------------------


def test_prompt_embedding_optimisation_lowers_the_step1_magnitude(adapter, baseline):
    out = run(adapter, "prompt-embedding:target=0,max_iters=3,lr=0.05")
    before = series(baseline, "eps_diff_norm")[:, 0]
    after = series(out, "eps_diff_norm")[:, 0]
    assert (after < before).all(), (before, after)
    for s, b in zip(out, before):
        assert s.meta["pe_iters"] == 3
        assert s.meta["pe_initial"] == pytest.approx(b, rel=1e-4)
        # cost: 1 unconditional + 3 x (forward + backward counted 2)
        assert s.unet_evals == 2 * STEPS + 1 + 3 * 3


def test_prompt_embedding_leaves_samples_below_target_untouched(adapter, baseline):
    out = run(adapter, "prompt-embedding:target=1e5")
    np.testing.assert_array_equal(finals(out), finals(baseline))
    assert [s.meta["pe_iters"] for s in out] == [0, 0]
    assert [s.unet_evals for s in out] == [2 * STEPS + 2] * 2  # the check costs 2


# --- attention-reweight (Ren et al.) -------------------------------------------------------------


def _registered(adapter, spec: str, prompt: str = PROMPT):
    """(mitigation, wrapped adapter, [cond, uncond] embeddings) with the hook's registration."""
    m = build_mitigation(spec)
    wrapped = m.wrap_adapter(adapter)
    reqs = [GenerationRequest(prompt, seed=0, steps=STEPS)]
    state = fake_state(wrapped, reqs)
    for h in m.hooks():
        h.on_start(state)
    emb = torch.cat([state.cond_embeds, state.uncond_embeds])
    return m, wrapped, emb


def _unet(a, emb, seed: int = 0):
    x = torch.randn(2, *a.latent_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return a.predict_noise(x, torch.tensor(801), emb)


def test_attention_reweight_changes_only_the_conditional_rows(adapter):
    _, wrapped, emb = _registered(adapter, "attention-reweight")
    plain, mod = _unet(adapter, emb), _unet(wrapped, emb)
    assert (plain[0] - mod[0]).abs().max() > 1e-3  # conditional row re-weighted
    torch.testing.assert_close(plain[1], mod[1], rtol=0, atol=0)  # unconditional row untouched


def test_attention_reweight_identity_settings_reproduce_the_unet(adapter):
    _, wrapped, emb = _registered(adapter, "attention-reweight:c1=1,mask_summary=false")
    torch.testing.assert_close(_unet(wrapped, emb), _unet(adapter, emb), rtol=1e-4, atol=1e-5)


def test_attention_reweight_acts_only_through_the_chosen_tokens(adapter):
    """With the summary tokens masked, changing their embeddings no longer changes the output."""
    spec = "attention-reweight:c1=1,mask_summary=true"
    m, wrapped, emb = _registered(adapter, spec)
    n = len(adapter.tokenizer(PROMPT).input_ids)  # BOS + tokens + EOS: the kept positions
    noisy = emb.clone()
    noisy[0, n:] += torch.randn(noisy[0, n:].shape, generator=torch.Generator().manual_seed(1))
    m.hooks()[0].control.register(noisy[:1], [n])
    out_a = _unet(wrapped, noisy)
    m.hooks()[0].control.register(emb[:1], [n])
    out_b = _unet(wrapped, emb)
    torch.testing.assert_close(out_a[0], out_b[0], rtol=1e-4, atol=1e-5)
    plain_a, plain_b = _unet(adapter, noisy), _unet(adapter, emb)
    assert (plain_a[0] - plain_b[0]).abs().max() > 1e-3
    # top-k trigger down-weighting changes the output on top of that
    _, wrapped_k, emb_k = _registered(adapter, spec + ",trigger_top_k=2,trigger_scale=0")
    assert (_unet(wrapped_k, emb_k)[0] - out_b[0]).abs().max() > 1e-4


def test_attention_reweight_restores_the_processors(adapter, baseline):
    before = dict(adapter.unet.attn_processors)
    out = run(adapter, "attention-reweight")
    assert dict(adapter.unet.attn_processors) == before
    assert not np.allclose(finals(out), finals(baseline))
    assert [s.unet_evals for s in out] == [2 * STEPS] * 2

    # restored on errors too, and swapped in during the call
    seen = []

    def failing(latents, t, embeds):
        from memberbench.mitigations.attention_reweight import ReweightProcessor

        seen.extend(type(p) for p in adapter.unet.attn_processors.values())
        assert any(p is ReweightProcessor for p in seen)
        raise RuntimeError("boom")

    broken = copy.copy(adapter)
    broken.predict_noise = failing
    _, wrapped, emb = _registered(broken, "attention-reweight")
    with pytest.raises(RuntimeError, match="boom"):
        _unet(wrapped, emb)
    assert dict(adapter.unet.attn_processors) == before


def test_attention_reweight_is_refused_without_attention_processors(adapter):
    m = build_mitigation("attention-reweight")
    with pytest.raises(MemberbenchError, match="attention processors"):
        m.check_compatible(type("A", (), {"name": "plain", "unet": None})())
    with pytest.raises(MemberbenchError, match="attention processors"):
        m.check_compatible(type("A", (), {"name": "plain", "unet": torch.nn.Linear(2, 2)})())
    from memberbench.runner import run_generation

    with pytest.raises(MemberbenchError, match="cannot work with model 'plain'"):
        run_generation(type("A", (), {"name": "plain", "unet": None})(), requests(), mitigation=m)
    # the hook refuses an adapter that was not wrapped
    state = fake_state(adapter, requests(1))
    with pytest.raises(MemberbenchError, match="not wrapped"):
        m.hooks()[0].on_start(state)


# --- initial-noise (Han et al.) ------------------------------------------------------------------


def test_initial_noise_per_sample_reduces_its_objective(adapter, baseline):
    out = run(adapter, "initial-noise:target=0,max_iters=3,lr=0.05")
    for s, b in zip(out, baseline):
        assert s.meta["noise_iters"] == 3
        assert s.meta["noise_final"] < s.meta["noise_initial"]
        assert s.meta["noise_initial"] == pytest.approx(b.trace["eps_diff_norm"][0], rel=1e-4)
        # the trajectory starts from the adjusted x_T, whose objective is the final one
        assert s.trace["eps_diff_norm"][0] == pytest.approx(s.meta["noise_final"], rel=1e-4)
        assert s.trace.scalars["xT_norm2"] != b.trace.scalars["xT_norm2"]
        # cost: 3 x (2 forward + 2 backward counted 4) + the final check (2)
        assert s.unet_evals == 2 * STEPS + 3 * 6 + 2
    np.testing.assert_array_equal(series(out, "guidance"), G)


def test_initial_noise_batch_mode_moves_xT_then_delays_guidance(adapter, baseline):
    out = run(adapter, "initial-noise:mode=batch,iters=1,unguided_steps=2")
    np.testing.assert_array_equal(series(out, "guidance"), [[0.0, 0.0, G, G, G]] * 2)
    for s, b in zip(out, baseline):
        assert s.trace.scalars["xT_norm2"] != b.trace.scalars["xT_norm2"]
        assert s.unet_evals == 2 * STEPS + 4


# --- overestimation-guard (ours) -----------------------------------------------------------------


def test_limit_guidance_solves_for_the_threshold():
    from memberbench.mitigations.overestimation_guard import limit_guidance

    gen = torch.Generator().manual_seed(0)
    x0_u = torch.randn(64, 32, generator=gen, dtype=torch.float64) * 0.3
    spread = torch.logspace(-3, 0, 64, dtype=torch.float64)[:, None]  # from tiny to large d
    x0_c = x0_u + spread * torch.randn(64, 32, generator=gen, dtype=torch.float64)
    g = torch.full((64,), 7.5, dtype=torch.float64)
    ratio, g_used = limit_guidance(x0_u, x0_c, g, threshold=2.0, min_guidance=1.0)
    over = ratio > 2.0
    assert over.any() and (~over).any()
    after = (x0_u + g_used[:, None] * (x0_c - x0_u)).norm(dim=1) / x0_c.norm(dim=1)
    torch.testing.assert_close(after[over], torch.full_like(after[over], 2.0))
    assert (g_used[over] >= 1.0).all() and (g_used[over] < 7.5).all()
    torch.testing.assert_close(g_used[~over], g[~over], rtol=0, atol=0)
    # the memorized caricature: x0_u = 0, x0_c = x gives ratio = g, limited to the threshold
    x = torch.randn(1, 32, generator=gen, dtype=torch.float64)
    r, gu = limit_guidance(
        torch.zeros_like(x), x, torch.tensor([7.5], dtype=torch.float64), 3.0, 1.0
    )
    assert float(r) == pytest.approx(7.5) and float(gu) == pytest.approx(3.0)


def test_overestimation_guard_is_inert_below_its_threshold(adapter, baseline):
    out = run(adapter, "overestimation-guard:threshold=100")
    np.testing.assert_array_equal(finals(out), finals(baseline))
    assert [s.meta["guard_steps"] for s in out] == [0, 0]


def test_overestimation_guard_limits_guidance_only_where_the_signal_exceeds(adapter):
    thr = 1.01
    out = run(adapter, f"overestimation-guard:threshold={thr},window=0.4")
    for s in out:
        ratio = np.array(s.meta["guard_ratio"], dtype=float)
        g = s.trace["guidance"]
        assert np.isnan(ratio[2:]).all() and not np.isnan(ratio[:2]).any()  # window: 2 steps
        over = ratio[:2] > thr
        assert over.any(), ratio
        assert (g[:2][over] < G).all() and (g[:2][~over] == G).all() and (g[2:] == G).all()
        assert s.meta["guard_steps"] == int(over.sum())
        # the guided clean estimate of the trace sits exactly at the threshold where limited
        r_used = s.trace["x0_g_norm"][:2] / s.trace["x0_c_norm"][:2]
        np.testing.assert_allclose(r_used[over], thr, rtol=1e-5)
        assert s.unet_evals == 2 * STEPS


# --- families ------------------------------------------------------------------------------------


def test_every_builtin_declares_its_families():
    from memberbench.mitigations import mitigation_class

    for name in BUILTIN:
        cls = mitigation_class(name)
        fam = cls.__dict__.get("families")
        assert isinstance(fam, frozenset) and ("sd" in fam or fam == {"*"}), name  # on the class
        assert describe_mitigations()[name]["families"] == sorted(fam)
    # the methods that edit SD's CLIP token embeddings or its cross-attention are SD-only
    assert mitigation_class("prompt-embedding").families == {"sd"}
    assert mitigation_class("attention-reweight").families == {"sd"}
    assert "sdxl" in mitigation_class("guidance-schedule").families
    assert mitigation_class("none").families == {"*"}  # plain sampling: any model


class _OtherFamily:
    """An adapter of a family no method declares; generating with it would fail loudly."""

    name = "other-model"
    family = "other"
    unet = None

    def __getattr__(self, attr):
        raise AssertionError(f"generation started: adapter.{attr} was used")


@pytest.mark.parametrize("name", sorted(set(BUILTIN) - {"none"}))
def test_unsupported_family_is_refused_before_generation(name):
    from memberbench.runner import run_generation

    m = build_mitigation(name)
    req = GenerationRequest("a red circle", seed=0, steps=2)
    with pytest.raises(MemberbenchError) as e:
        run_generation(_OtherFamily(), [req], mitigation=m, progress=False)
    msg = str(e.value)
    assert f"mitigation {name!r} does not support model 'other-model' (family 'other')" in msg
    assert "\n" not in msg and "Methods that support 'other': none" in msg
    build_mitigation("none").check_compatible(_OtherFamily())  # "*": any family


def test_mitigations_declared_for_sd3_run_on_it():
    """The methods that declare the sd3 family run on the tiny SD 3 model (tests/test_sd3.py's
    components, flow matching); the others are refused before generation."""
    from test_sd3 import CARD, SEQ, tiny_sd3_pipeline

    from memberbench.adapters.sd3 import SD3Adapter
    from memberbench.mitigations import mitigation_class
    from memberbench.runner import run_generation

    ad = SD3Adapter(tiny_sd3_pipeline(), CARD, max_sequence_length=SEQ)
    req = GenerationRequest("a red circle", seed=0, steps=3, guidance=5.0)
    ran = []
    flow_spec = {"overestimation-steer": "overestimation-steer:flag=trace,flag_step=2"}
    for name in sorted(BUILTIN):
        m = build_mitigation(flow_spec.get(name, name))
        fams = mitigation_class(name).families
        if "sd3" in fams or "*" in fams:
            (s,) = run_generation(ad, [req], mitigation=m, progress=False)
            assert s.ok, name
            ran.append(name)
        else:
            with pytest.raises(MemberbenchError, match="does not support model 'tiny-sd3'"):
                run_generation(ad, [req], mitigation=m, progress=False)
    assert ran == [
        "caption-randomization",
        "guidance-scale",
        "guidance-schedule",
        "none",
        "overestimation-steer",
    ]


def test_sd_only_method_is_refused_for_sdxl_naming_the_alternatives():
    sdxl_like = type("A", (), {"name": "sdxl", "family": "sdxl", "unet": None})()
    for name in ("prompt-embedding", "attention-reweight"):
        with pytest.raises(MemberbenchError) as e:
            build_mitigation(name).check_compatible(sdxl_like)
        msg = str(e.value)
        assert "family 'sdxl'" in msg and "supports the families sd." in msg
        assert "guidance-schedule" in msg and "prompt-embedding," not in msg
    build_mitigation("guidance-schedule").check_compatible(sdxl_like)  # declared: accepted


def test_own_check_compatible_still_checks_the_family():
    class Picky(Mitigation):
        name = "picky"

        def check_compatible(self, adapter):  # does not call super()
            pass

    with pytest.raises(MemberbenchError, match="does not support model 'other-model'"):
        Picky().check_compatible(_OtherFamily())
    Picky().check_compatible(type("A", (), {"name": "sd-model"})())  # no family: "sd"
