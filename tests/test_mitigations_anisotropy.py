"""anisotropy-prompt (Asthana & Belagiannis, ICLR 2026): the score, one AdamW step by hand, the
untouched rows, the cost, and the method through the sampler.

The toy model ignores x and t and predicts the second token of the embedding as a 2-channel,
1x1 latent: ``eps(x, t, e) = e[1]``.  The unconditional embedding's second token is
``u = (1, 0)``, so for a prompt whose second token is ``e1``: ``d = e1 - u``, the norm part is
``||d||`` and the cosine part ``cos(u, d)``.  Hence ``e1 = (1, 1)``: d = (0, 1), score 1 + 2 * 0 =
1; ``e1 = (2, 0)``: d = (1, 0), score 1 + 2 * 1 = 3; ``e1 = (0, 0)``: d = (-1, 0), score 1 - 2 = -1.
At ``e1 = (2, 0)`` the gradient is (1, 0) (the norm's d / ||d||; the cosine's is zero when d and
u are parallel), so AdamW's first step (bias-corrected m / sqrt(v) = sign(g)) with lr 0.1 and
weight decay 0.01 is ``e1 <- 0.999 * e1 - 0.1 * (1, 0) = (1.898, 0)``: score 0.898 + 2 = 2.898.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from memberbench.mitigations import build_mitigation
from memberbench.mitigations.anisotropy_prompt import anisotropy_objective
from memberbench.sampling.hooks import SamplerState
from memberbench.types import GenerationRequest, MemberbenchError


class TokenToy:
    name = "toy"
    unet = None
    family = "sd"

    def predict_noise(self, x, t, emb):
        return emb[:, 1, :].to(x.dtype).view(-1, 2, 1, 1)


def toy_state(second_tokens, bos=(0.5, 0.5)):
    B = len(second_tokens)
    reqs = [GenerationRequest("p", seed=k, steps=3, guidance=7.5) for k in range(B)]
    cond = torch.tensor([[bos, e1] for e1 in second_tokens], dtype=torch.float32)
    uncond = torch.tensor([[bos, (1.0, 0.0)]] * B, dtype=torch.float32)
    return SamplerState(
        requests=reqs,
        adapter=TokenToy(),
        scheduler=SimpleNamespace(scale_model_input=lambda x, t: x, init_noise_sigma=1.0),
        timesteps=torch.tensor([900, 500, 100]),
        latents=torch.zeros(B, 2, 1, 1),
        cond_embeds=cond,
        uncond_embeds=uncond,
        guidance=torch.full((B,), 7.5),
        unet_evals=torch.zeros(B, dtype=torch.long),
    )


def test_objective_by_hand():
    u = torch.tensor([[1.0, 0.0]] * 3).view(3, 2, 1, 1)
    c = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 0.0]]).view(3, 2, 1, 1)
    score, norm, cos = anisotropy_objective(u, c, u, c)
    torch.testing.assert_close(score, torch.tensor([1.0, 3.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(norm, torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(cos, torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64))
    # the weights are the detector's (1, 2); other weights move only the cosine's share
    s2, _, _ = anisotropy_objective(u, c, u, c, gammas=(1.0, 0.5))
    torch.testing.assert_close(s2, torch.tensor([1.0, 1.5, 0.5], dtype=torch.float64))


def test_one_adamw_step_by_hand_and_the_rows_below_target_untouched():
    state = toy_state([(1.0, 1.0), (2.0, 0.0)])
    before = state.cond_embeds.clone()
    build_mitigation("anisotropy-prompt:target=2,max_iters=1,lr=0.1").hooks()[0].on_start(state)
    meta = state.extra["meta"]
    assert meta["aniso_initial"] == pytest.approx([1.0, 3.0])
    assert meta["aniso_iters"] == [0, 1]
    # row 0 (score 1 <= 2) is not touched at all; row 1 took one AdamW step
    assert torch.equal(state.cond_embeds[0], before[0])
    want = torch.tensor([[0.5 * 0.999, 0.5 * 0.999], [2 * 0.999 - 0.1, 0.0]])  # BOS: decay only
    torch.testing.assert_close(state.cond_embeds[1], want, rtol=0, atol=1e-6)
    assert meta["aniso_last"] == pytest.approx([1.0, 2.898], abs=1e-6)
    assert meta["aniso_norm"] == pytest.approx([1.0, 0.898], abs=1e-6)
    assert meta["aniso_cos"] == pytest.approx([0.0, 1.0], abs=1e-6)
    # cost: 2 unconditional + 2 conditional per check; an AdamW step adds 2 backward passes (x2)
    assert state.unet_evals.tolist() == [4, 4 + 6]


def test_iterations_stop_at_the_target():
    state = toy_state([(2.0, 0.0)])
    build_mitigation("anisotropy-prompt:target=2.5,max_iters=50,lr=0.1").hooks()[0].on_start(state)
    meta = state.extra["meta"]
    n = meta["aniso_iters"][0]
    assert 1 <= n < 50 and meta["aniso_last"][0] <= 2.5
    assert state.unet_evals.tolist() == [4 + 6 * n]


def test_bad_specs_are_refused_in_one_line():
    with pytest.raises(MemberbenchError, match="max_iters=-1 is out of range"):
        build_mitigation("anisotropy-prompt:max_iters=-1")
    with pytest.raises(MemberbenchError, match="no parameter 'thres'"):
        build_mitigation("anisotropy-prompt:thres=1")


def test_through_the_sampler_on_the_tiny_pipeline(tiny_adapter):
    from memberbench.metrics.detectors import anisotropy_parts, anisotropy_score
    from memberbench.runner import run_generation
    from memberbench.sampling.sampler import initial_noise

    ad = tiny_adapter
    reqs = [GenerationRequest("a red circle", seed=s, steps=5, guidance=7.5) for s in (0, 1)]
    base = run_generation(ad, reqs, mitigation=None, progress=False)
    # a target above every score: plain CFG to the bit, at the score's cost (4 evaluations)
    off = run_generation(ad, reqs, mitigation="anisotropy-prompt:target=1e6", progress=False)
    for s, b in zip(off, base):
        np.testing.assert_array_equal(s.final_latent, b.final_latent)
        assert s.unet_evals == 2 * 5 + 4 and s.meta["aniso_iters"] == 0
    # a target below any score (>= -2): exactly max_iters steps, a different sample
    on = run_generation(
        ad, reqs, mitigation="anisotropy-prompt:target=-5,max_iters=2", progress=False
    )
    sched = ad.make_scheduler("ddim")
    sched.set_timesteps(5)
    t_hi, t_lo = sched.timesteps[0], sched.timesteps[-3]
    emb = ad.encode_prompts(["", "a red circle"])
    for s, b in zip(on, base):
        assert s.meta["aniso_iters"] == 2
        assert s.unet_evals == 2 * 5 + 4 + 6 * 2
        assert not np.allclose(s.final_latent, b.final_latent)
        # the first score is the anisotropy detector's formula at the request's own x_T
        x = torch.as_tensor(initial_noise(b.request.seed, ad.latent_shape)[0])[None]
        xx = torch.cat([x, x]) * sched.init_noise_sigma
        with torch.no_grad():
            hi = ad.predict_noise(sched.scale_model_input(xx, t_hi), t_hi, emb)
            lo = ad.predict_noise(sched.scale_model_input(xx, t_hi), t_lo, emb)  # same input
        norm, cos = anisotropy_parts(hi[:1], hi[1:], lo[:1], lo[1:])
        want = anisotropy_score(norm.numpy(), cos.numpy())
        assert s.meta["aniso_initial"] == pytest.approx(want, rel=1e-4)
