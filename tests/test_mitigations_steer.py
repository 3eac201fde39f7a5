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
