"""M2 (overestimation at the training pair) and M3 (overestimation along the trajectory).

M2 forward-noises the training latent x to x_t with J seeded noises at each timestep of the
sampling grid, asks the model for eps_u and eps_c, forms eps_g = eps_u + g (eps_c - eps_u), and per
branch b in {u, c, g} records

* the training loss ``||eps - eps_b||^2 / d``,
* the clean-estimate error ``||x - x0_hat_b||^2``,
* the overestimation coefficient ``k_b = <x0_hat_b, x> / ||x||^2``.

It is model-agnostic: it takes a callable ``predict(x_t, t, which) -> eps`` (``which`` is "u" or
"c"); :func:`adapter_predictor` builds one from a memberbench Adapter.

M3 reads ``k_i(b) = <x0_hat_i(b), x> / ||x||^2`` and ``cos(x0_hat_i(b), x)`` off a Trace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memberbench.metrics.base import Metric, TraceMetric, scalar, series
from memberbench.metrics.declare import Placement, declare, metric
from memberbench.metrics.stats import Stat, mean_stat
from memberbench.sampling import schedule as _schedule
from memberbench.types import BRANCHES, MemberbenchError, Trace

Predictor = Callable[[Any, Any, str], Any]  # (x_t (J, ...), t, "u" | "c") -> eps (J, ...)


# --------------------------------------------------------------------------------------------
# Tweedie helpers (torch or numpy)


def x0_from_eps(x_t: Any, eps: Any, abar: float) -> Any:
    """Clean estimate ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)``: the DDPM-family case of
    :func:`memberbench.sampling.schedule.x0_from_eps` (``a = sqrt(abar)``, ``b = sqrt(1 - abar)``)."""
    return _schedule.x0_from_eps(x_t, eps, abar**0.5, (1.0 - abar) ** 0.5)


def eps_from_x0(x_t: Any, x0: Any, abar: float) -> Any:
    """Inverse of :func:`x0_from_eps`: ``(x_t - sqrt(abar) x0) / sqrt(1 - abar)``."""
    return _schedule.eps_from_x0(x_t, x0, abar**0.5, (1.0 - abar) ** 0.5)


def overestimation_coefficient(x0_hat: Any, x: Any) -> np.ndarray:
    """``k = <x0_hat, x> / ||x||^2`` per row of ``x0_hat`` (B, ...); NaN if x is zero."""
    a = np.asarray(_np64(x0_hat)).reshape(len(x0_hat), -1)
    v = np.asarray(_np64(x)).reshape(-1)
    n2 = float(v @ v)
    if n2 == 0.0:
        return np.full(a.shape[0], np.nan)
    return a @ v / n2


def _np64(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# M2


@dataclass
class TrainingPairResult:
    """Arrays of shape (T, J): one row per timestep, one column per noise."""

    timesteps: np.ndarray
    abar: np.ndarray
    guidance: float
    seeds: list[int]
    loss: dict[str, np.ndarray] = field(default_factory=dict)
    x0_err: dict[str, np.ndarray] = field(default_factory=dict)
    k: dict[str, np.ndarray] = field(default_factory=dict)
    x_norm2: float = float("nan")
    dim: int = 0

    def mean(self, quantity: str, branch: str) -> np.ndarray:
        """Mean over the J noises, per timestep: ``quantity`` in loss / x0_err / k."""
        return getattr(self, quantity)[branch].mean(axis=1)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "timesteps": self.timesteps.tolist(),
            "abar": self.abar.tolist(),
            "guidance": self.guidance,
            "seeds": list(self.seeds),
            "x_norm2": self.x_norm2,
            "dim": self.dim,
        }
        for q in ("loss", "x0_err", "k"):
            out[q] = {b: getattr(self, q)[b].tolist() for b in BRANCHES}
        return out


def seeded_noises(shape: Sequence[int], n: int, seed: int = 0) -> Any:
    """``n`` standard-normal noises of ``shape``; noise j comes from seed ``seed + j`` alone
    (so the first J of a larger J are the same noises)."""
    import torch

    return torch.stack(
        [
            torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed + j))
            for j in range(n)
        ]
    )


def training_pair_loss(
    x: Any,
    timesteps: Sequence[int] | Any,
    alphas_cumprod: Any,
    predict: Predictor,
    *,
    guidance: float = 7.5,
    n_noises: int = 4,
    seed: int = 0,
    noises: Any = None,
) -> TrainingPairResult:
    """M2 for one training pair.

    ``x``: the training latent (C, H, W) or (1, C, H, W) (torch tensor or array);
    ``timesteps``: the sampling grid; ``alphas_cumprod``: the scheduler's training schedule,
    indexed by timestep; ``predict(x_t, t, which)``: eps prediction for the batch x_t (J, ...)
    at integer timestep t, ``which`` "u" (unconditional) or "c" (conditional).
    ``noises``: optional (J, ...) noises; by default :func:`seeded_noises` (seed, seed+1, ...).
    The same J noises are used at every timestep.
    """
    import torch

    xt = torch.as_tensor(x).float()
    if xt.ndim == 4 and xt.shape[0] == 1:
        xt = xt[0]
    shape = tuple(xt.shape)
    if noises is None:
        eps = seeded_noises(shape, n_noises, seed).to(xt.device)
        seeds = [seed + j for j in range(n_noises)]
    else:
        eps = torch.as_tensor(noises).float().to(xt.device)
        if tuple(eps.shape[1:]) != shape:
            raise MemberbenchError(f"noises {tuple(eps.shape)} do not match x {shape}")
        seeds = []
    J = eps.shape[0]
    d = int(np.prod(shape))
    ac = _np64(alphas_cumprod)
    ts = [int(t) for t in _np64(timesteps).round().astype(np.int64)]
    x64 = xt.double().reshape(-1).cpu()
    xn2 = float(x64 @ x64)
    g = float(guidance)
    res = TrainingPairResult(
        timesteps=np.array(ts), abar=ac[ts], guidance=g, seeds=seeds, x_norm2=xn2, dim=d
    )
    per: dict[str, dict[str, list[np.ndarray]]] = {
        q: {b: [] for b in BRANCHES} for q in ("loss", "x0_err", "k")
    }
    for t in ts:
        ab = float(ac[t])
        x_t = ab**0.5 * xt.unsqueeze(0) + (1.0 - ab) ** 0.5 * eps
        with torch.no_grad():
            e_u = torch.as_tensor(predict(x_t, t, "u")).float()
            e_c = torch.as_tensor(predict(x_t, t, "c")).float()
        e_g = e_u + g * (e_c - e_u)
        for b, e_b in zip(BRANCHES, (e_u, e_c, e_g)):
            e64 = e_b.double().reshape(J, -1).cpu()
            n64 = eps.double().reshape(J, -1).cpu()
            xt64 = x_t.double().reshape(J, -1).cpu()
            x0 = x0_from_eps(xt64, e64, ab)
            per["loss"][b].append(((n64 - e64) ** 2).sum(1).numpy() / d)
            per["x0_err"][b].append(((x64 - x0) ** 2).sum(1).numpy())
            per["k"][b].append((x0 @ x64).numpy() / xn2 if xn2 > 0 else np.full(J, np.nan))
    for q, by_b in per.items():
        getattr(res, q).update({b: np.stack(v) for b, v in by_b.items()})
    return res


def adapter_predictor(adapter: Any, prompt: str, negative_prompt: str = "") -> Predictor:
    """``predict(x_t, t, which)`` over an Adapter (``encode_prompts`` + ``predict_noise``):
    "c" conditions on ``prompt``, "u" on ``negative_prompt`` (default "")."""
    import torch

    emb = adapter.encode_prompts([negative_prompt, prompt])

    def predict(x_t: Any, t: Any, which: str) -> Any:
        if which not in ("u", "c"):
            raise ValueError(f"which must be 'u' or 'c', got {which!r}")
        B = x_t.shape[0]
        e = emb[1 if which == "c" else 0].unsqueeze(0).expand(B, *emb.shape[1:])
        tt = torch.full((B,), int(t), dtype=torch.long, device=adapter.device)
        out = adapter.predict_noise(x_t.to(adapter.device, adapter.dtype), tt, e)
        return out.float().cpu()

    return predict


def training_pair_from_adapter(
    adapter: Any,
    prompt: str,
    x: Any,
    *,
    steps: int = 50,
    guidance: float = 7.5,
    n_noises: int = 4,
    seed: int = 0,
    scheduler: str = "ddim",
    negative_prompt: str = "",
) -> TrainingPairResult:
    """M2 on the sampling grid of ``adapter.make_scheduler(scheduler)`` with ``steps`` steps."""
    sched = adapter.make_scheduler(scheduler)
    sched.set_timesteps(steps)
    if _schedule.is_flow_scheduler(sched):
        raise MemberbenchError(
            f"M2 (the training-pair loss) forward-noises with alphas_cumprod; model "
            f"{getattr(adapter, 'name', '?')!r} samples with {type(sched).__name__} (flow "
            "matching), which has none: M2 is not defined for it yet (M3 and D1/D2 are)"
        )
    return training_pair_loss(
        x,
        sched.timesteps,
        sched.alphas_cumprod,
        adapter_predictor(adapter, prompt, negative_prompt),
        guidance=guidance,
        n_noises=n_noises,
        seed=seed,
    )


class TrainingPairOverestimation(Metric):
    """M2 summary: ``k_b`` at the training pair, averaged over the first ``early`` (highest-noise)
    timesteps of the grid and over the J noises (stderr across noises)."""

    name = "k_training_pair"
    higher_is_better = False

    def __init__(
        self,
        guidance: float = 7.5,
        n_noises: int = 4,
        seed: int = 0,
        steps: int = 50,
        early: int = 10,
        branch: str = "g",
    ) -> None:
        if branch not in BRANCHES:
            raise MemberbenchError(f"branch must be one of {BRANCHES}, got {branch!r}")
        super().__init__(
            guidance=float(guidance),
            n_noises=int(n_noises),
            seed=int(seed),
            steps=int(steps),
            early=int(early),
            branch=branch,
        )

    def summarize(self, result: TrainingPairResult) -> Stat:
        if not result.x_norm2 > 0:
            return Stat.nan("the training latent x is zero: k undefined", n=len(result.seeds))
        k = result.k[self.params["branch"]][: self.params["early"]]  # (T_early, J)
        return mean_stat(k.mean(axis=0), what=self.name)

    def compute(
        self, predict: Predictor, x: Any, timesteps: Any, alphas_cumprod: Any
    ) -> TrainingPairResult:
        p = self.params
        return training_pair_loss(
            x,
            timesteps,
            alphas_cumprod,
            predict,
            guidance=p["guidance"],
            n_noises=p["n_noises"],
            seed=p["seed"],
        )

    def __call__(self, adapter: Any, prompt: str, x: Any) -> Stat:
        p = self.params
        res = training_pair_from_adapter(
            adapter,
            prompt,
            x,
            steps=p["steps"],
            guidance=p["guidance"],
            n_noises=p["n_noises"],
            seed=p["seed"],
        )
        return self.summarize(res)


# --------------------------------------------------------------------------------------------
# M3


def trajectory_k(trace: Trace, branch: str = "g") -> np.ndarray:
    """``k_i(b) = <x0_hat_i(b), x> / ||x||^2`` per step (NaN if x is zero)."""
    trace.require([f"x0_{branch}_dot_x", "x_norm2"], why="the trajectory k")
    n2 = scalar(trace, "x_norm2")
    dot = series(trace, f"x0_{branch}_dot_x")
    return dot / n2 if n2 > 0 else np.full(dot.shape, np.nan)


def trajectory_cos(trace: Trace, branch: str = "g") -> np.ndarray:
    """``cos(x0_hat_i(b), x)`` per step (NaN where a norm is zero)."""
    trace.require([f"x0_{branch}_dot_x", f"x0_{branch}_norm", "x_norm2"], why="cos(x0_hat, x)")
    den = series(trace, f"x0_{branch}_norm") * np.sqrt(scalar(trace, "x_norm2"))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, series(trace, f"x0_{branch}_dot_x") / den, np.nan)


class TrajectoryK(TraceMetric):
    """M3 summary: mean of ``k_i(b)`` over the first ``early`` steps, averaged over seeds."""

    name = "k_trajectory"
    higher_is_better = False

    def __init__(self, branch: str = "g", early: int = 10) -> None:
        if branch not in BRANCHES:
            raise MemberbenchError(f"branch must be one of {BRANCHES}, got {branch!r}")
        super().__init__(branch=branch, early=int(early))

    def required_fields(self) -> tuple[str, ...]:
        return (f"x0_{self.params['branch']}_dot_x", "x_norm2")

    def per_sample(self, trace: Trace) -> float:
        return float(trajectory_k(trace, self.params["branch"])[: self.params["early"]].mean())

    def degenerate(self, trace: Trace) -> str:
        if not trace.scalars.get("x_norm2", 0.0) > 0:
            return "the training latent x is zero: k undefined"
        return ""


# --------------------------------------------------------------------------------------------
# declarations (tasks/test_overestimation.py, tasks/test_guidance_sweep.py record them)


def training_pair(mb: Any, side: str) -> dict[str, TrainingPairResult]:
    """M2 at the first (highest-noise) min(10, steps) timesteps of the sampling grid, for
    the first ``m2_limit`` prompts with a training image of the session ``mb``:
    {prompt_id: TrainingPairResult} (memoized in the session).  Measured on the model itself
    (no mitigation): it is a property of the model."""

    def compute() -> dict[str, TrainingPairResult]:
        import time

        cfg = mb.config
        refs = mb.references(side)
        ids = [p for p in mb.prompt_set(side).prompt_ids() if p in refs]
        if cfg.m2_limit > 0:
            ids = ids[: cfg.m2_limit]
        sched = mb.adapter.make_scheduler(cfg.scheduler)
        sched.set_timesteps(cfg.steps)
        ts = sched.timesteps[: min(10, cfg.steps)]
        recs = mb.records(side)
        out = {}
        t0 = time.perf_counter()
        for pid in ids:
            out[pid] = training_pair_loss(
                refs[pid],
                ts,
                sched.alphas_cumprod,
                adapter_predictor(mb.adapter, recs[pid].caption),
                guidance=cfg.guidance,
                n_noises=cfg.m2_noises,
                seed=0,
            )
        mb.log(
            f"memberbench: M2 training-pair loss for {len(ids)} {side} prompts in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        return out

    return mb.memo(("m2", side), compute)


def trajectory_k_per_prompt(
    mb: Any, side: str, guidance: float | None = None, seeds: Any = None
) -> dict[str, float]:
    """{prompt_id: M3's trajectory k_i(g), mean over the first min(10, steps) steps and over
    seeds} for the session's prompts with a training image."""
    metric = TrajectoryK(branch="g", early=min(10, mb.config.steps))
    refs = mb.references(side)
    vals = mb.per_prompt("ktraj", side, lambda ts: metric(ts).value, guidance, seeds)
    return {p: v for p, v in vals.items() if p in refs}


def k_pair(mb: Any, side: str, branch: str) -> dict[str, float]:
    """{prompt_id: M2's k of one branch at the training pair, mean over timesteps and noises}."""
    return {p: float(r.k[branch].mean()) for p, r in training_pair(mb, side).items()}


declare(
    "k_pair_g",
    family="overestimation",
    higher_is_better=False,
    needs_training_image=True,
    description="M2: guided k_g = <x0_hat_g, x>/||x||^2 at the training pair, mean over noises",
    sections=(Placement("overestimation", ("k_pair_g", "k_pair_g.nonmem"), rank=10),),
    compute=k_pair,
)
for _b in ("c", "u"):
    declare(
        f"k_pair_{_b}",
        family="overestimation",
        higher_is_better=None,
        needs_training_image=True,
        description=f"M2: k_{_b} = <x0_hat_{_b}, x>/||x||^2 at the training pair (a reference "
        "branch: no better direction)",
        compute=k_pair,
    )


@metric(
    "m2_loss_ratio_gc",
    family="overestimation",
    higher_is_better=False,
    needs_training_image=True,
    description="M2: guided / conditional training loss at the first sampling timestep",
)
def m2_loss_ratio_gc(mb: Any, side: str) -> dict[str, float]:
    """{prompt_id: guided / conditional training loss at the first timestep, mean over noises}."""
    res = training_pair(mb, side)
    return {p: float(r.loss["g"][0].mean() / r.loss["c"][0].mean()) for p, r in res.items()}


declare(
    "k_traj_g",
    keys=("k_traj_g[.nonmem]", "k_traj_g.g={g}[.nonmem]"),
    family="overestimation",
    higher_is_better=False,
    needs_training_image=True,
    description="M3: k_i(g) along the trajectory, mean over the first 10 steps and seeds",
    sections=(Placement("overestimation", ("k_traj_g", "k_traj_g.nonmem"), rank=20),),
)
