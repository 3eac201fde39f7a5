"""overestimation-steer (ours): the flag's score against closed forms and the exact sharpness,
and the steering through the sampler.

Linear toy: ``eps_u = 0``, ``eps_c = A x``.  Then ``d = A x``, ``d(x + h u) - d(x) = h A u`` for
every h, so the finite-difference score is exactly ``||A x|| ||A u|| / (1 - abar)`` with
``u = A x / ||A x||``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memberbench.mitigations import build_mitigation
from memberbench.mitigations.overestimation_steer import probe_seeds, sharpness_fd
from memberbench.types import GenerationRequest

STEPS = 5  # DDIM timesteps 801, 601, 401, 201, 1 on the tiny pipeline


def test_score_is_exact_on_a_linear_model():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(12, 12, generator=g, dtype=torch.float64)
    x = torch.randn(3, 12, generator=g, dtype=torch.float64)

    def pair(z):
        return torch.zeros_like(z), z @ A.T

    for h in (1e-3, 0.5, 3.0):
        s, n0 = sharpness_fd(pair, x, h, 0.25)
        ax = x @ A.T
        u = ax / ax.norm(dim=1, keepdim=True)
        want = ax.norm(dim=1) * (u @ A.T).norm(dim=1) / 0.25
        torch.testing.assert_close(s, want)
        torch.testing.assert_close(n0, ax.norm(dim=1))


def test_score_converges_to_jeons_sharpness():
    """On a nonlinear toy the score tends to the exact ||(H_c - H_u)(s_c - s_u)|| (computed with
    autograd's JVP by the ``sharpness`` detector) as h -> 0, with an O(h) error."""
    from memberbench.metrics.detectors import sharpness

    g = torch.Generator().manual_seed(1)
    W = torch.randn(10, 10, generator=g, dtype=torch.float64) / 3
    V = torch.randn(10, 10, generator=g, dtype=torch.float64) / 3
    x = torch.randn(1, 10, generator=g, dtype=torch.float64)

    def pair(z):
        return torch.tanh(z @ V.T), torch.sin(z @ W.T)

    one_minus = 0.3
    exact = float(sharpness(pair, x, one_minus)[0])
    # the detector's scores are -eps / sqrt(1 - abar): both factors give 1 / (1 - abar)
    errs = [abs(float(sharpness_fd(pair, x, h, one_minus)[0][0]) - exact) for h in (1e-2, 5e-3)]
    assert errs[0] < 2e-2 * exact
    assert errs[1] / errs[0] == pytest.approx(0.5, abs=0.1)


def test_probe_seeds_depend_on_the_prompt_only():
    assert probe_seeds("a red circle", 3) == probe_seeds("a red circle", 3)
    assert probe_seeds("a red circle", 3) != probe_seeds("a blue circle", 3)
    assert probe_seeds("a red circle", 3)[:2] == probe_seeds("a red circle", 2)


@pytest.fixture(scope="module")
def adapter(tiny_pipeline_dir):
    from memberbench.adapters import load_adapter

    return load_adapter(f"bundled:path={tiny_pipeline_dir}", device="cpu", dtype="fp32")


def _run(adapter, spec, prompts=("a red circle", "a blue square"), seeds=(0, 1)):
    from memberbench.runner import run_generation

    reqs = [GenerationRequest(p, seed=s, steps=STEPS, guidance=7.5) for p in prompts for s in seeds]
    return run_generation(adapter, reqs, mitigation=spec, progress=False)


def test_unflagged_prompts_are_sampled_as_without_the_method(adapter):
    base = _run(adapter, None)
    out = _run(adapter, "overestimation-steer:threshold=1e9,probes=2")
    for s, b in zip(out, base):
        np.testing.assert_array_equal(s.final_latent, b.final_latent)
        assert s.meta["steer_flagged"] is False
        assert s.unet_evals == b.unet_evals + 4 * 2
    # the verdict is the prompt's: both seeds of a prompt get the same score
    assert out[0].meta["steer_score"] == out[1].meta["steer_score"]
    assert out[0].meta["steer_score"] != out[2].meta["steer_score"]


def test_flagged_prompts_get_the_early_scale_until_the_transition(adapter):
    base = _run(adapter, None)
    scores = [s.meta["steer_score"] for s in _run(adapter, "overestimation-steer:threshold=1e9")]
    cut = (scores[0] + scores[2]) / 2  # flag exactly one of the two prompts
    out = _run(adapter, f"overestimation-steer:threshold={cut!r},transition_t=500,before=-1")
    for s, b, sc in zip(out, base, scores):
        flagged = sc > cut
        assert s.meta["steer_flagged"] is flagged
        want = [-1.0, -1.0, 7.5, 7.5, 7.5] if flagged else [7.5] * STEPS
        np.testing.assert_array_equal(s.trace["guidance"], want)  # t = 801, 601 > 500
        assert np.array_equal(s.final_latent, b.final_latent) is (not flagged)
    # a prompt's verdict does not depend on the batch it is sampled in
    alone = _run(adapter, f"overestimation-steer:threshold={cut!r}", prompts=("a blue square",))
    assert [s.meta["steer_score"] for s in alone] == pytest.approx(scores[2:], rel=1e-6)


def test_parameters_are_checked_before_generation():
    from memberbench.types import MemberbenchError

    with pytest.raises(MemberbenchError, match="probes"):
        build_mitigation("overestimation-steer:probes=0")


# --- the trace flag --------------------------------------------------------------------------


def _wen_of_plain_trace(s, step: int, flow: bool) -> float:
    """Wen's magnitude at ``step`` (1-based) as the sampler itself traced it in plain sampling:
    ||eps_c - eps_u||, or on a flow model ||v_c - v_u|| = eps_diff_norm + x0_diff_norm (the two
    are (1 - sigma) and sigma times it)."""
    d = np.asarray(s.trace["eps_diff_norm"])
    if flow:
        d = d + np.asarray(s.trace["x0_diff_norm"])
    return float(d[step - 1])


@pytest.mark.parametrize("k", [1, 3])
def test_trace_score_is_the_plain_trajectorys_magnitude_at_the_flag_step(adapter, k):
    base = _run(adapter, None)
    out = _run(adapter, f"overestimation-steer:flag=trace,flag_step={k},threshold=1e9")
    for s, b in zip(out, base):
        assert s.meta["steer_score"] == pytest.approx(_wen_of_plain_trace(b, k, False), rel=1e-5)
        np.testing.assert_array_equal(s.final_latent, b.final_latent)  # nothing flagged
        assert s.unet_evals == b.unet_evals + 2 * k
    # per trajectory: the seeds of one prompt get their own scores
    assert out[0].meta["steer_score"] != out[1].meta["steer_score"]


def test_trace_flag_steers_the_flagged_trajectories_from_the_first_step(adapter):
    base = _run(adapter, None)
    scores = [_wen_of_plain_trace(b, 2, False) for b in base]
    cut = float(np.median(scores))
    out = _run(
        adapter,
        f"overestimation-steer:flag=trace,flag_step=2,threshold={cut!r},transition_t=500,before=-1",
    )
    assert 0 < sum(sc > cut for sc in scores) < len(scores)
    for s, b, sc in zip(out, base, scores):
        flagged = sc > cut
        assert s.meta["steer_flagged"] is flagged
        want = [-1.0, -1.0, 7.5, 7.5, 7.5] if flagged else [7.5] * STEPS
        np.testing.assert_array_equal(s.trace["guidance"], want)
        assert np.array_equal(s.final_latent, b.final_latent) is (not flagged)


def test_trace_flag_runs_on_a_flow_model_and_the_probe_flag_is_refused():
    from test_sd3 import CARD, SEQ, tiny_sd3_pipeline

    from memberbench.adapters.sd3 import SD3Adapter
    from memberbench.runner import run_generation
    from memberbench.types import MemberbenchError

    ad = SD3Adapter(tiny_sd3_pipeline(), CARD, max_sequence_length=SEQ)
    reqs = [GenerationRequest("a red circle", seed=s, steps=6, guidance=5.0) for s in range(2)]
    base = run_generation(ad, reqs, progress=False)
    spec = "overestimation-steer:flag=trace,flag_step=3,threshold=1e9"
    out = run_generation(ad, reqs, mitigation=build_mitigation(spec), progress=False)
    for s, b in zip(out, base):
        assert s.meta["steer_score"] == pytest.approx(_wen_of_plain_trace(b, 3, True), rel=1e-5)
        np.testing.assert_array_equal(s.final_latent, b.final_latent)
    with pytest.raises(MemberbenchError, match="flag=trace") as e:
        run_generation(
            ad, reqs, mitigation=build_mitigation("overestimation-steer"), progress=False
        )
    assert "\n" not in str(e.value)


def test_a_flag_step_beyond_the_steps_is_one_line(adapter):
    from memberbench.types import MemberbenchError

    with pytest.raises(MemberbenchError, match="flag_step=9 is beyond the 5 sampling steps"):
        _run(adapter, "overestimation-steer:flag=trace,flag_step=9")
