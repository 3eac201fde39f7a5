"""Detection scores of the field, declared as detectors (docs/detectors.md: definitions, sources,
cost, published reference points).

* ``d1_rt``      real-time D1: the deviation of the first k states, image-free and computable at
                 step k, before the final latent (and the image) exists;
* ``webster``    Webster (2023)'s one-step white-box score, from the run's first step;
* ``anisotropy`` Asthana & Belagiannis (ICLR 2026): noise-difference norm plus the alignment of
                 the guidance vector with the unconditional prediction, at pure noise (own model
                 calls, no denoising step);
* ``sharpness``  Jeon et al. (ICML 2025): the norm of the Hessian-vector product of the
                 conditional-minus-unconditional log-density along the score difference, at the
                 first step (own model calls, Jacobian-vector products through the UNet).

The formulas are plain functions (numpy / torch, tested by hand); the detectors wrap them with
the run's traces or the run's adapter.  Own-call detectors query the model as loaded, without
the run's mitigation, at the run's seeds' initial noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from memberbench.metrics.declare import detector
from memberbench.types import MemberbenchError, Trace

# --------------------------------------------------------------------------------------------
# real-time D1


def realtime_w0(trace: Trace, k: int) -> np.ndarray:
    """``W0_i`` of the states i = 1..k as known at step k (no final latent):

    ``W0_i = ||x_i - <x_i, x_T> x_T / ||x_T||^2|| / ||x0_hat_k||``: the length of the part of
    the state orthogonal to the initial noise, in units of the guided clean-latent estimate of
    the k-th UNet evaluation (Tweedie, on state k-1), the latest estimate of the final latent
    available at step k.  When x_i = a_i x0 + b_i x_T with x0 orthogonal to x_T and x0_hat_k = x0,
    it is a_i exactly: the coefficient the paper's fit on ``[x0, x_T]`` gives."""
    trace.require(["latent_norm", "latent_dot_xT", "xT_norm2", "x0_g_norm"], why="real-time D1")
    n = len(trace.series["latent_norm"])
    if not 1 <= k <= n:
        raise MemberbenchError(f"real-time D1: window k={k} outside the trace's 1..{n} steps")
    norm = np.asarray(trace.series["latent_norm"][:k], dtype=np.float64)
    dot = np.asarray(trace.series["latent_dot_xT"][:k], dtype=np.float64)
    resid2 = np.clip(norm**2 - dot**2 / float(trace.scalars["xT_norm2"]), 0.0, None)
    x0k = float(trace.series["x0_g_norm"][k - 1])
    return np.sqrt(resid2) / x0k


def needs_ddpm_schedule(mb: Any) -> str | None:
    """The skip reason of a detector defined on the DDPM family's alphas_cumprod / epsilon
    (``abar`` at pure noise > 0) for a flow-matching model (SD3, FLUX), else None."""
    a = mb.adapter
    if getattr(a, "prediction", "epsilon") != "flow":
        return None
    return (
        f"defined on a DDPM-family schedule (alphas_cumprod, epsilon predictions); model "
        f"{getattr(a, 'name', '?')!r} is a flow-matching model (sigma = 1 at pure noise): not "
        "defined for it yet"
    )


def realtime_d1(trace: Trace, k: int) -> float:
    """Real-time D1 at step k: ``sum_{i<=k} (W0_i - sqrt(abar_i))`` with :func:`realtime_w0`
    (``abar_i`` the noise level of state i, ``abar_next`` of update i)."""
    w0 = realtime_w0(trace, k)
    from memberbench.sampling.schedule import Schedule, family_of

    a = Schedule.of_levels(trace.series["abar_next"][:k], family_of(trace)).a_next
    return float((w0 - a).sum())


@detector(
    "d1_rt",
    description="real-time D1 of the first k states: the part of each state orthogonal to x_T "
    "in units of the latest clean-latent estimate, above sqrt(abar), summed; image-free and "
    "known at step k (no final latent)",
    source="this project: the paper's D1 read out at step k (docs/detectors.md)",
)
def d1_rt_scores(mb: Any, side: str, k: int) -> dict[str, float]:
    k = min(k, mb.config.steps)
    return mb.per_prompt(f"d1rt{k}", side, lambda ts: np.mean([realtime_d1(t, k) for t in ts]))


# --------------------------------------------------------------------------------------------
# Webster's one-step white-box score


def webster_score(trace: Trace) -> float:
    """Webster (2023)'s white-box score from the run's first step, up to the constant 1/d:
    ``sigma^2 ||eps_g||^2``, ``sigma^2 = (1 - abar) / abar`` at the first timestep.

    Webster's code runs one Euler/Heun step from pure noise to sigma = 0 and scores
    ``mean((z_0 - x0_hat)^2)``; in variance-exploding form ``z_0 = x_T / sqrt(abar)`` and
    ``x0_hat = (x_T - sqrt(1 - abar) eps_g) / sqrt(abar)``, so ``z_0 - x0_hat = sigma eps_g``
    and his score is this one divided by the latent's size d (the same for every prompt)."""
    trace.require(["eps_g_norm", "abar_t"], why="Webster's score")
    a = float(trace.series["abar_t"][0])
    e = float(trace.series["eps_g_norm"][0])
    return (1.0 - a) / a * e * e


@detector(
    "webster",
    description="Webster's one-step white-box score sigma^2 ||eps_g||^2 at the run's first step "
    "(the one-step denoising's distance from the initial noise; his mean = this / latent size)",
    windows=(1,),
    source="Webster 2023, A Reproducible Extraction of Training Images from Diffusion Models "
    "(ryanwebster90/onestep-extraction)",
    check=needs_ddpm_schedule,
)
def webster_scores(mb: Any, side: str, k: int) -> dict[str, float]:
    return mb.per_prompt("webster", side, lambda ts: np.mean([webster_score(t) for t in ts]))


# --------------------------------------------------------------------------------------------
# own model calls at the seeds' initial noise


def _noise_batch(mb: Any) -> Any:
    """The run's seeds' initial noises (S, C, h, w), fp32 standard normal (the VP x_T of a
    DDIM run; the model input at pure noise)."""
    import torch

    shape = tuple(mb.adapter.latent_shape)
    out = []
    for s in mb.config.seeds:
        g = torch.Generator("cpu").manual_seed(int(s))
        out.append(torch.randn(shape, generator=g, dtype=torch.float32))
    return torch.stack(out)


def _grid(mb: Any) -> tuple[Any, Any]:
    """The run's sampling timesteps and the training schedule's alphas_cumprod."""
    sched = mb.adapter.make_scheduler(mb.config.scheduler)
    sched.set_timesteps(mb.config.steps)
    return sched.timesteps, sched.alphas_cumprod


def _embeds(mb: Any, caption: str, n: int) -> Any:
    """[unconditional x n, conditional x n] text embeddings."""
    import torch

    emb = mb.adapter.encode_prompts(["", caption])
    return torch.cat([emb[:1].expand(n, *emb.shape[1:]), emb[1:].expand(n, *emb.shape[1:])])


def _per_prompt_calls(
    mb: Any, name: str, side: str, fn: Callable[[str, Any], float]
) -> dict[str, float]:
    """{prompt_id: fn(caption, noises)} over the side's prompt set, memoized in the run; a
    prompt whose computation fails or gives a non-finite value gets NaN (failed for this
    detector)."""
    memo = mb._memo  # the run's memo of per-prompt quantities
    key = ("detector", name, side)
    if key in memo:
        return memo[key]
    noise = _noise_batch(mb)
    out: dict[str, float] = {}
    for rec in mb.prompt_set(side):
        try:
            v = float(fn(rec.caption, noise))
        except (MemberbenchError, RuntimeError, ValueError) as e:
            mb.log(f"memberbench: detector {name}: prompt {rec.prompt_id} failed: {e}")
            v = float("nan")
        out[rec.prompt_id] = v
    memo[key] = out
    return out


# --------------------------------------------------------------------------------------------
# anisotropy (Asthana & Belagiannis)

ANISOTROPY_GAMMAS = (1.0, 2.0)  # (norm, cosine): the paper code's weights for SD 1.x


def anisotropy_parts(eps_u_hi: Any, eps_c_hi: Any, eps_u_lo: Any, eps_c_lo: Any) -> Any:
    """Per-sample ``(norm, cosine)`` of the anisotropy score, from predictions at pure noise:

    * ``norm``: ``||eps_c - eps_u||`` over the whole latent, at the first (highest) timestep;
    * ``cosine``: at a low-noise timestep with the same pure-noise input, the cosine between the
      unconditional prediction ``eps_u`` and the guidance vector ``eps_c - eps_u`` taken over
      the channels at each latent position, averaged over positions.

    Inputs (S, C, h, w); returns two (S,) float64 tensors."""
    import torch

    f = [torch.as_tensor(e).to(torch.float64) for e in (eps_u_hi, eps_c_hi, eps_u_lo, eps_c_lo)]
    norm = (f[1] - f[0]).flatten(1).norm(dim=1)
    cos = torch.nn.functional.cosine_similarity(f[2], f[3] - f[2], dim=1).flatten(1).mean(1)
    return norm, cos


def anisotropy_score(
    norm: Any, cosine: Any, gammas: tuple[float, float] = ANISOTROPY_GAMMAS
) -> float:
    """``gamma_norm * mean(norm) + gamma_cos * mean(cosine)`` over the seeds."""
    return float(gammas[0] * np.mean(np.asarray(norm)) + gammas[1] * np.mean(np.asarray(cosine)))


def _low_noise_t(timesteps: Any) -> Any:
    """The paper code's low-noise timestep: the third-last of the sampling grid (41 on SD's
    50-step DDIM grid), or the last of a shorter grid."""
    return timesteps[-3] if len(timesteps) >= 3 else timesteps[-1]


@detector(
    "anisotropy",
    description="Asthana & Belagiannis' anisotropy score at pure noise: ||eps_c - eps_u|| at the "
    "first timestep + 2 x the cosine between eps_u and eps_c - eps_u at a low-noise timestep "
    "(no denoising step)",
    windows=(0,),
    unet_evals=4,
    own_calls=True,
    source="Asthana & Belagiannis, ICLR 2026 (rohanasthana/memorization-anisotropy)",
    check=needs_ddpm_schedule,
)
def anisotropy_scores(mb: Any, side: str, k: int) -> dict[str, float]:
    import torch

    ts, _ = _grid(mb)
    t_hi, t_lo = ts[0], _low_noise_t(ts)
    a = mb.adapter

    def one(caption: str, noise: Any) -> float:
        n = noise.shape[0]
        emb = _embeds(mb, caption, n)
        x = torch.cat([noise, noise]).to(a.device, a.dtype)
        with torch.no_grad():
            hi = a.predict_noise(x, t_hi.to(a.device), emb).float().cpu()
            lo = a.predict_noise(x, t_lo.to(a.device), emb).float().cpu()
        norm, cos = anisotropy_parts(hi[:n], hi[n:], lo[:n], lo[n:])
        return anisotropy_score(norm.numpy(), cos.numpy())

    return _per_prompt_calls(mb, "anisotropy", side, one)


# --------------------------------------------------------------------------------------------
# sharpness (Jeon et al.)


def sharpness(eps_fn: Callable[[Any], Any], x: Any, one_minus_abar: float) -> Any:
    """Jeon et al.'s sharpness at ``x`` (S, ...): per sample ``||(H_c - H_u) (s_c - s_u)||``.

    ``eps_fn(x)`` returns ``(eps_u, eps_c)`` for the batch; the scores are
    ``s_b = -eps_b / sqrt(1 - abar)`` (the gradient of log p_b in x), their Jacobians
    ``H_b = d s_b / d x`` the Hessians of log p_b, so ``H_b v`` is one Jacobian-vector product
    through the model (``torch.autograd.functional.jvp``, double backward).  Returns (S,)."""
    import torch

    c = 1.0 / float(one_minus_abar) ** 0.5

    def scores(z: Any) -> Any:
        eu, ec = eps_fn(z)
        return torch.stack([-eu * c, -ec * c])

    with torch.no_grad():
        s = scores(x)
    v = (s[1] - s[0]).detach()
    with _math_attention():  # the fused attention kernels have no double backward
        _, hv = torch.autograd.functional.jvp(scores, (x.detach(),), (v,))
    return (hv[1] - hv[0]).flatten(1).norm(dim=1)


def _math_attention() -> Any:
    """A context in which scaled-dot-product attention takes its plain (math) kernel."""
    import contextlib

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # an older torch: its default kernels
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


@detector(
    "sharpness",
    description="Jeon et al.'s sharpness: ||(H_c - H_u)(s_c - s_u)||, the Hessian of the "
    "conditional-minus-unconditional log-density along the score difference, at the first step "
    "from the seeds' initial noise",
    windows=(1,),
    unet_evals=4,
    grad_passes=4,
    own_calls=True,
    needs_gradients=True,
    source="Jeon, Kim & No, ICML 2025 (Dongjae0324/sharpness_memorization_diffusion)",
    check=needs_ddpm_schedule,
)
def sharpness_scores(mb: Any, side: str, k: int) -> dict[str, float]:
    import torch

    ts, abar = _grid(mb)
    t = ts[0]
    a = mb.adapter
    one_minus = 1.0 - float(abar[int(t)])

    def one(caption: str, noise: Any) -> float:
        emb = _embeds(mb, caption, 1).detach()
        tt = t.to(a.device)

        def eps_fn(z: Any) -> tuple[Any, Any]:
            out = a.predict_noise(torch.cat([z, z]), tt, emb).to(torch.float32)
            return out[:1], out[1:]

        vals = []
        for x in noise:  # one seed at a time: the double backward holds the UNet's graph
            with torch.enable_grad():
                vals.append(float(sharpness(eps_fn, x[None].to(a.device, a.dtype), one_minus)))
        return float(np.mean(vals))

    return _per_prompt_calls(mb, "sharpness", side, one)


__all__: Sequence[str] = (
    "anisotropy_parts",
    "anisotropy_score",
    "realtime_d1",
    "realtime_w0",
    "sharpness",
    "webster_score",
)
