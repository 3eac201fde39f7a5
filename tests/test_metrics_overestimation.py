"""M2 (training pair under CFG) and M3 (trajectory k): identities and oracle predictors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from memberbench.metrics.overestimation import (
    TrainingPairOverestimation,
    TrajectoryK,
    adapter_predictor,
    eps_from_x0,
    overestimation_coefficient,
    seeded_noises,
    training_pair_from_adapter,
    training_pair_loss,
    trajectory_cos,
    trajectory_k,
    x0_from_eps,
)
from memberbench.types import MemberbenchError, Trace

SHAPE = (4, 8, 8)


def sd1_alphas() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def test_loss_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    eps = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    eps_hat = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    for abar in (0.01, 0.3, 0.9, 0.999):
        x_t = abar**0.5 * x + (1 - abar) ** 0.5 * eps
        x0_hat = (x_t - (1 - abar) ** 0.5 * eps_hat) / abar**0.5  # Tweedie, written out
        torch.testing.assert_close(x0_from_eps(x_t, eps_hat, abar), x0_hat)
        lhs = ((eps - eps_hat) ** 2).sum()
        rhs = abar / (1 - abar) * ((x - x0_hat) ** 2).sum()
        assert lhs.item() == pytest.approx(rhs.item(), rel=1e-10)
        torch.testing.assert_close(eps_from_x0(x_t, x0_hat, abar), eps_hat)


def test_cfg_identity():
    g = torch.Generator().manual_seed(1)
    x_t, e_u, e_c = (torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(3))
    abar, w = 0.2, 7.5
    e_g = e_u + w * (e_c - e_u)
    x0_u, x0_c = x0_from_eps(x_t, e_u, abar), x0_from_eps(x_t, e_c, abar)
    torch.testing.assert_close(x0_from_eps(x_t, e_g, abar), x0_u + w * (x0_c - x0_u))
    # and Wen's difference: eps_c - eps_u = -(sqrt(abar)/sqrt(1-abar)) (x0_c - x0_u)
    torch.testing.assert_close(e_c - e_u, -((abar / (1 - abar)) ** 0.5) * (x0_c - x0_u))


def oracle_predict(x: torch.Tensor, abar: torch.Tensor, k_u: float, k_c: float):
    """A predictor whose clean estimate is k_b * x (k_u unconditional, k_c conditional)."""

    def predict(x_t, t, which):
        ab = float(abar[int(t)])
        k = k_c if which == "c" else k_u
        return (x_t - ab**0.5 * k * x) / (1 - ab) ** 0.5

    return predict


def test_training_pair_oracle_values():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(SHAPE, generator=g)
    ac = sd1_alphas()
    ts = [981, 501, 21]
    res = training_pair_loss(x, ts, ac, oracle_predict(x, ac, 0.5, 1.0), guidance=7.5, n_noises=3)
    assert res.k["u"].shape == (3, 3)
    expect_k = {"u": 0.5, "c": 1.0, "g": 0.5 + 7.5 * (1.0 - 0.5)}
    xn2 = float((x.double() ** 2).sum())
    d = x.numel()
    for b, k in expect_k.items():
        np.testing.assert_allclose(res.k[b], k, rtol=1e-5)
        np.testing.assert_allclose(res.x0_err[b], (1 - k) ** 2 * xn2, rtol=1e-4, atol=1e-6)
        ab = ac[ts].numpy()[:, None]
        np.testing.assert_allclose(
            res.loss[b],
            np.broadcast_to(ab / (1 - ab) * (1 - k) ** 2 * xn2 / d, (3, 3)),
            rtol=1e-4,
            atol=1e-7,
        )
    # the conditional predictor is perfect: zero loss; guidance makes it large
    assert res.loss["c"].max() < 1e-8 and res.loss["g"].min() > 1e-3
    assert res.mean("k", "g").shape == (3,)
    d_ = res.to_dict()
    assert d_["seeds"] == [0, 1, 2] and len(d_["k"]["g"]) == 3


def test_training_pair_general_identities_and_seeding():
    """Arbitrary (non-oracle) predictor: loss = abar/(1-abar) x0_err / d and the CFG line in k."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(SHAPE, generator=g)
    W = torch.randn(2, *SHAPE, generator=g) * 0.3

    def predict(x_t, t, which):
        return torch.tanh(x_t + W[int(which == "c")] * (t / 1000))

    ac = sd1_alphas()
    ts = [901, 401, 41]
    res = training_pair_loss(x, ts, ac, predict, guidance=3.0, n_noises=4, seed=10)
    ab = ac[ts].numpy()[:, None]
    for b in "ucg":
        np.testing.assert_allclose(
            res.loss[b] * x.numel(),
            np.broadcast_to(ab / (1 - ab), (3, 4)) * res.x0_err[b],
            rtol=1e-4,
        )
    np.testing.assert_allclose(res.k["g"], res.k["u"] + 3.0 * (res.k["c"] - res.k["u"]), rtol=1e-4)
    # noise j depends on seed + j only
    res2 = training_pair_loss(x, ts, ac, predict, guidance=3.0, n_noises=2, seed=10)
    np.testing.assert_allclose(res2.loss["g"], res.loss["g"][:, :2], rtol=1e-6)
    torch.testing.assert_close(seeded_noises(SHAPE, 2, 5)[1], seeded_noises(SHAPE, 1, 6)[0])
    # k is the plain projection ratio
    x0 = torch.randn(2, *SHAPE, generator=g)
    k = overestimation_coefficient(x0, x)
    ref = (x0.double().reshape(2, -1) @ x.double().flatten()) / (x.double() ** 2).sum()
    np.testing.assert_allclose(k, ref.numpy(), rtol=1e-10)
    assert np.isnan(overestimation_coefficient(x0, torch.zeros(SHAPE))).all()


class FakeAdapter:
    """Duck-typed adapter: embeds encode k (0.5 for "", 1.0 otherwise) for an oracle UNet."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, x):
        self.x = x
        self.calls = []

    def make_scheduler(self, name="ddim"):
        from diffusers import DDIMScheduler

        return DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            steps_offset=1,
            set_alpha_to_one=False,
            clip_sample=False,
        )

    def encode_prompts(self, prompts):
        return torch.tensor([[[0.5 if p == "" else 1.0] * 3] * 2 for p in prompts])

    def predict_noise(self, latents, t, embeds):
        self.calls.append((latents.shape[0], t.tolist(), embeds.shape))
        ac = self.make_scheduler().alphas_cumprod
        ab = ac[t].view(-1, 1, 1, 1)
        k = embeds[:, 0, 0].view(-1, 1, 1, 1)
        return (latents - ab.sqrt() * k * self.x) / (1 - ab).sqrt()


def test_adapter_wrapper_and_metric():
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    ad = FakeAdapter(x)
    pred = adapter_predictor(ad, "a prompt")
    out = pred(torch.randn(2, *SHAPE), 981, "c")
    assert out.shape == (2, *SHAPE)
    assert ad.calls[-1] == (2, [981, 981], (2, 2, 3))
    res = training_pair_from_adapter(ad, "a prompt", x, steps=10, guidance=2.0, n_noises=2)
    assert res.timesteps.tolist()[0] == 901 and len(res.timesteps) == 10
    np.testing.assert_allclose(res.k["g"], 0.5 + 2.0 * 0.5, rtol=1e-4)
    m = TrainingPairOverestimation(guidance=2.0, n_noises=2, steps=10, early=3)
    st = m(ad, "a prompt", x)
    assert st.value == pytest.approx(1.5, rel=1e-4) and st.n == 2
    assert m.higher_is_better is False and m.describe()["guidance"] == 2.0
    assert math.isnan(
        m.summarize(
            training_pair_loss(
                torch.zeros(SHAPE), [981], ad.make_scheduler().alphas_cumprod, pred, n_noises=2
            )
        ).value
    )
    with pytest.raises(ValueError):
        pred(torch.randn(1, *SHAPE), 1, "g")


def make_trace(x_norm2=4.0):
    return Trace(
        series={
            "x0_g_dot_x": np.array([12.0, 8.0, 4.0]),
            "x0_g_norm": np.array([6.0, 4.0, 2.0]),
            "x0_u_dot_x": np.array([2.0, 2.0, 4.0]),
        },
        scalars={"x_norm2": x_norm2},
    )


def test_trajectory_k_and_cos():
    tr = make_trace()
    np.testing.assert_allclose(trajectory_k(tr), [3.0, 2.0, 1.0])
    np.testing.assert_allclose(trajectory_cos(tr), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(trajectory_k(tr, "u"), [0.5, 0.5, 1.0])
    m = TrajectoryK(early=2)
    st = m([tr, tr])
    assert st.value == pytest.approx(2.5) and st.n == 2 and st.stderr == 0.0
    bad = m([make_trace(0.0)])
    assert math.isnan(bad.value) and "zero" in bad.reason
    with pytest.raises(MemberbenchError, match="x0_c_dot_x"):
        TrajectoryK(branch="c")([tr])
    with pytest.raises(MemberbenchError):
        TrajectoryK(branch="x")
