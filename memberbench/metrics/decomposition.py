"""M6: latent decomposition x_i ~ w0_i * x + wT_i * x_T and the deviation from the schedule.

Two bases and two alignments (docs/metrics-conventions.md):

* basis ``"x"``: the prompt's training latent x (needs a reference latent at sampling time);
  basis ``"final"``: the trajectory's own generated final latent x_final, as in the code of
  Kim, Kim & Lee (yupeeee/Diffusion-Memorization, run/xt_decomposition.py).  It needs no
  training image: the sampler records ``latent_dot_final``, ``final_norm2`` and
  ``final_dot_xT`` on every trace (full latents are the fallback).
* convention ``"m6"`` (memberbench's): state i (the output of update i) is compared with the
  noise level it has, ``abar_next_i``; convention ``"paper"``: with ``abar_t_i``, the level
  update i started from (one step earlier), as that code does, with basis "final" and the
  ``sqrt_abar`` reference.  For a fixed basis the two differ by constants of the schedule:
  ``D1_paper - D1_m6 = sum_i sqrt(abar_next_i) - sum_i sqrt(abar_t_i)`` and
  ``D2_paper - D2_m6 = sum_i sqrt(1 - abar_t_i) - sum_i sqrt(1 - abar_next_i)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from memberbench.metrics.base import TraceMetric
from memberbench.metrics.declare import Headline, Placement, declare, detector
from memberbench.sampling.projection import decompose_batch
from memberbench.sampling.schedule import Schedule, family_of
from memberbench.types import MemberbenchError, Trace

# --------------------------------------------------------------------------------------------
# one trajectory


def decompose(states: Any, x: Any, x_T: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit every row of ``states`` as ``w0 * x + wT * x_T`` (fp64 normal equations).

    ``states``: (n, d) or (n, C, H, W) -- e.g. the T+1 states 0..T or the T states 1..T of one
    trajectory (alignment is the caller's: D1/D2 use states 1..T); ``x``, ``x_T``: (d,) or
    (C, H, W).  Returns numpy float64 ``(w0, wT, resid_rms)`` of shape (n,); NaN where x is zero
    or collinear with x_T.
    """
    import torch

    S = torch.as_tensor(np.asarray(states) if not torch.is_tensor(states) else states)
    n = S.shape[0]
    X = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).reshape(1, -1)
    N = torch.as_tensor(np.asarray(x_T) if not torch.is_tensor(x_T) else x_T).reshape(1, -1)
    w0, wT, rms = decompose_batch(S.reshape(n, -1), X, N)
    return w0.cpu().numpy(), wT.cpu().numpy(), rms.cpu().numpy()


def decompose_from_inner_products(
    latent_dot_x: Any,
    latent_dot_xT: Any,
    latent_norm: Any,
    x_norm2: float,
    xT_norm2: float,
    x_dot_xT: float,
    dim: float,
    *,
    rcond: float = 1e-10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same fit from the scalar records of a trace (no full latents needed).

    The residual uses ``||r||^2 = ||l||^2 - w0 <l,x> - wT <l,x_T>`` (true at the least-squares
    optimum), so it loses precision when the residual is tiny relative to ``||l||``.
    """
    p = np.asarray(latent_dot_x, dtype=np.float64)
    q = np.asarray(latent_dot_xT, dtype=np.float64)
    ln2 = np.asarray(latent_norm, dtype=np.float64) ** 2
    a, b, c = float(x_norm2), float(x_dot_xT), float(xT_norm2)
    det = a * c - b * b
    if not (a > 0 and c > 0 and det > rcond * a * c):
        nan = np.full(p.shape, np.nan)
        return nan, nan.copy(), nan.copy()
    w0 = (c * p - b * q) / det
    wT = (a * q - b * p) / det
    r2 = np.maximum(ln2 - w0 * p - wT * q, 0.0)
    return w0, wT, np.sqrt(r2 / float(dim))


# --------------------------------------------------------------------------------------------
# schedules and deviation scores

SCHEDULES = ("sqrt_abar", "ddim_ideal")
BASES = ("x", "final")
CONVENTIONS = ("m6", "paper")
EARLY_STATES = 10


def resolve_convention(
    convention: str = "m6", basis: str | None = None, schedule: str | None = None
) -> tuple[str, str]:
    """``(basis, schedule)`` for a convention; None means the convention's own choice.

    ``"m6"``: basis ``"x"`` and schedule ``"sqrt_abar"`` unless given.  ``"paper"``: basis
    ``"final"`` and schedule ``"sqrt_abar"`` only (the paper's code fits on its generated final
    latent and compares with sqrt(abar), sqrt(1 - abar)); anything else raises.
    """
    if convention == "m6":
        basis = "x" if basis is None else basis
        schedule = "sqrt_abar" if schedule is None else schedule
    elif convention == "paper":
        if basis not in (None, "final"):
            raise MemberbenchError(
                f"convention 'paper' fits on the generated final latent (basis 'final'); "
                f"got basis={basis!r}"
            )
        if schedule not in (None, "sqrt_abar"):
            raise MemberbenchError(
                f"convention 'paper' compares with sqrt(abar) and sqrt(1 - abar) (schedule "
                f"'sqrt_abar'); got schedule={schedule!r}"
            )
        basis, schedule = "final", "sqrt_abar"
    else:
        raise MemberbenchError(
            f"unknown convention {convention!r}; use one of {', '.join(CONVENTIONS)}"
        )
    if basis not in BASES:
        raise MemberbenchError(f"basis must be 'x' or 'final', got {basis!r}")
    if schedule not in SCHEDULES:
        raise MemberbenchError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    return basis, schedule


def schedule_reference(
    abar_next: Any, abar_t1: float, schedule: str = "sqrt_abar"
) -> tuple[np.ndarray, np.ndarray]:
    """Reference coefficients ``(ref0_i, refT_i)`` of the states i = 1..T of a DDPM-family grid.

    ``abar_next``: noise level of each state (alphas_cumprod of the next timestep; the last state
    uses final_alpha_cumprod); ``abar_t1``: alphas_cumprod of the first sampling timestep.  A
    thin wrapper of :meth:`memberbench.sampling.schedule.Schedule.reference` (the one place the
    references are derived, for every schedule family):

    * ``sqrt_abar``: ``(sqrt(abar_i), sqrt(1 - abar_i))`` -- the forward-process coefficients;
    * ``ddim_ideal``: ``omega0_i = sqrt(abar_i) - sqrt(abar_t1) sqrt(1 - abar_i) / sqrt(1 - abar_t1)``,
      ``omegaT_i = sqrt(1 - abar_i) / sqrt(1 - abar_t1)`` -- what deterministic DDIM gives for a
      perfect predictor x0_hat = x started from x_T (x_i = omega0_i x + omegaT_i x_T).
    """
    if schedule not in SCHEDULES:
        raise MemberbenchError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    return vp_grid(abar_next, abar_t1).reference(schedule)


def vp_grid(abar_next: Any, abar_t1: float) -> Schedule:
    """The DDPM-family :class:`Schedule` of a grid given by its states' levels and the first
    timestep's (update i+1 starts where update i ended)."""
    ab = np.atleast_1d(np.asarray(abar_next, dtype=np.float64))
    return Schedule.vp(np.concatenate([[float(abar_t1)], ab[:-1]]), ab)


def window_slice(window: str | int, n: int) -> slice:
    """``"all"`` -> states 1..T; ``"early"`` -> the first 10 states; an int k -> the first k."""
    if window == "all":
        return slice(0, n)
    if window == "early":
        return slice(0, min(EARLY_STATES, n))
    if isinstance(window, int | np.integer) and not isinstance(window, bool) and window > 0:
        return slice(0, min(int(window), n))
    raise MemberbenchError(f"window must be 'all', 'early' or a positive int, got {window!r}")


def deviation_scores(
    W0: Any,
    WT: Any,
    abar_next: Any,
    abar_t1: float,
    *,
    schedule: str = "sqrt_abar",
    window: str | int = "all",
) -> tuple[float, float]:
    """``D1 = sum_i (W0_i - ref0_i)`` and ``D2 = -sum_i (WT_i - refT_i)`` over the window, on a
    DDPM-family grid (:func:`deviation_on` for any :class:`Schedule`).

    ``W0``, ``WT``: seed-averaged coefficients of the states 1..T (same length as abar_next).
    """
    ab = np.asarray(abar_next, dtype=np.float64)
    if ab.ndim != 1:
        raise MemberbenchError(
            f"deviation_scores: abar_next {ab.shape} must be 1-d (one entry per state 1..T)"
        )
    if schedule not in SCHEDULES:
        raise MemberbenchError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    return deviation_on(W0, WT, vp_grid(ab, abar_t1), schedule=schedule, window=window)


def deviation_on(
    W0: Any,
    WT: Any,
    sched: Schedule,
    *,
    schedule: str = "sqrt_abar",
    window: str | int = "all",
    convention: str = "m6",
) -> tuple[float, float]:
    """D1/D2 of the coefficients ``W0``, ``WT`` of the states 1..T against the reference
    ``schedule`` of ``sched`` (:meth:`Schedule.reference`), over the window."""
    W0 = np.asarray(W0, dtype=np.float64)
    WT = np.asarray(WT, dtype=np.float64)
    if not (W0.shape == WT.shape == (len(sched),)):
        raise MemberbenchError(
            f"deviation_scores: W0 {W0.shape}, WT {WT.shape} and abar_next ({len(sched)},) must "
            "be 1-d of the same length (one entry per state 1..T)"
        )
    ref0, refT = sched.reference(schedule, convention)
    sl = window_slice(window, len(sched))
    return float((W0[sl] - ref0[sl]).sum()), float(-(WT[sl] - refT[sl]).sum())


# --------------------------------------------------------------------------------------------
# from traces

_IP_FIELDS = ("latent_dot_x", "latent_dot_xT", "latent_norm", "x_norm2", "xT_norm2", "x_dot_xT")


_FINAL_IP_FIELDS = (
    "latent_dot_final",
    "latent_dot_xT",
    "latent_norm",
    "final_norm2",
    "xT_norm2",
    "final_dot_xT",
)


def final_basis_fit(trace: Trace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(w0, wT, resid_rms)`` of ``x_i ~ w0_i x_final + wT_i x_T`` for the states 1..T.

    x_final is the trajectory's own last state (so w0 = 1, wT = 0 there).  From the inner
    products the sampler records on every trace (``latent_dot_final``, ``latent_dot_xT``,
    ``latent_norm`` and the scalars ``final_norm2``, ``xT_norm2``, ``final_dot_xT``, ``dim``;
    :func:`decompose_from_inner_products`), else from the full latents at ``latents_path``.
    NaN for a failed trajectory (no final latent).
    """
    if trace.has(*_FINAL_IP_FIELDS):
        sc = trace.scalars
        return decompose_from_inner_products(
            trace.series["latent_dot_final"],
            trace.series["latent_dot_xT"],
            trace.series["latent_norm"],
            sc["final_norm2"],
            sc["xT_norm2"],
            sc["final_dot_xT"],
            sc.get("dim", 1.0),
        )
    if not trace.latents_path:
        missing = [n for n in _FINAL_IP_FIELDS if not trace.has(n)]
        raise MemberbenchError(
            f"basis 'final' needs the inner products {missing} (recorded on every trace by "
            "memberbench's sampler since SAMPLER_VERSION 2) or the trajectory's full latents "
            "(latents_path); regenerate the samples, or sample with full latents saved"
        )
    lat = load_trace_latents(trace).reshape(trace.num_steps + 1, -1)
    return decompose(lat[1:], lat[-1], lat[0])


def trace_coefficients(trace: Trace, basis: str = "x") -> tuple[np.ndarray, np.ndarray]:
    """``(w0, wT)`` of the states 1..T of one trace.

    ``basis="x"``: the recorded w0/wT series, or else the fit from the recorded inner products
    with the training latent.  ``basis="final"``: :func:`final_basis_fit`.
    """
    if basis == "final":
        w0, wT, _ = final_basis_fit(trace)
        return w0, wT
    if basis != "x":
        raise MemberbenchError(f"basis must be 'x' or 'final', got {basis!r}")
    if trace.has("w0", "wT"):
        return (
            np.asarray(trace.series["w0"], dtype=np.float64),
            np.asarray(trace.series["wT"], dtype=np.float64),
        )
    if not trace.has(*_IP_FIELDS):
        missing = [n for n in ("w0", "wT", *_IP_FIELDS) if not trace.has(n)]
        raise MemberbenchError(
            f"trace lacks fields {missing} needed by the decomposition (it needs either the "
            "w0/wT series or the inner products latent_dot_x, latent_dot_xT, latent_norm and the "
            "scalars x_norm2, xT_norm2, x_dot_xT). Record them by sampling with a reference latent "
            "(the prompt's training image), i.e. pass references= to the sampler."
        )
    sc = trace.scalars
    w0, wT, _ = decompose_from_inner_products(
        trace.series["latent_dot_x"],
        trace.series["latent_dot_xT"],
        trace.series["latent_norm"],
        sc["x_norm2"],
        sc["xT_norm2"],
        sc["x_dot_xT"],
        sc.get("dim", 1.0),
    )
    return w0, wT


def load_trace_latents(trace: Trace) -> np.ndarray:
    """Full latents of a trace saved at ``trace.latents_path``: states 0..T, shape (T+1, ...).

    Accepts ``.npy`` or ``.npz`` (first array, or the one named ``latents``).
    """
    if not trace.latents_path:
        raise MemberbenchError(
            "basis='final' needs the full latents of each trajectory, but this trace has no "
            "latents_path; sample with full latents saved, or call deviation_from_latents()"
        )
    data = np.load(trace.latents_path)
    if isinstance(data, np.lib.npyio.NpzFile):
        data = data["latents"] if "latents" in data.files else data[data.files[0]]
    arr = np.asarray(data, dtype=np.float64)
    T = trace.num_steps
    if arr.shape[0] != T + 1:
        raise MemberbenchError(
            f"{trace.latents_path}: expected states 0..{T} ({T + 1} rows), got {arr.shape[0]}"
        )
    return arr


def _schedule_of(trace: Trace) -> Schedule:
    """The sampling schedule of a trace (:meth:`Schedule.from_trace`; DDPM family or flow
    matching).  Which level each state 1..T is compared with is the convention's
    (:meth:`Schedule.state_levels`): ``"m6"`` the state's own level (``abar_next``),
    ``"paper"`` the level of the timestep update i started from (``abar_t``)."""
    trace.require(["abar_t", "abar_next"], why="the schedule reference of D1/D2")
    return Schedule.from_trace(trace)


def trace_deviation(
    trace: Trace,
    *,
    schedule: str | None = None,
    window: str | int = "all",
    basis: str | None = None,
    convention: str = "m6",
) -> tuple[float, float]:
    """(D1, D2) of one trajectory (basis/schedule default to the convention's; see
    :func:`resolve_convention`)."""
    basis, schedule = resolve_convention(convention, basis, schedule)
    sched = _schedule_of(trace)
    w0, wT = trace_coefficients(trace, basis)
    return deviation_on(w0, wT, sched, schedule=schedule, window=window, convention=convention)


def deviation_from_traces(
    traces: Trace | Sequence[Trace],
    *,
    schedule: str | None = None,
    window: str | int = "all",
    basis: str | None = None,
    convention: str = "m6",
) -> dict[str, Any]:
    """Seed-averaged ``W0``, ``WT`` and D1/D2 for the traces of one prompt (one per seed).

    ``convention="m6"`` (default: basis ``"x"``, schedule ``"sqrt_abar"``, state i against
    ``abar_next_i``) or ``"paper"`` (basis ``"final"``, ``sqrt_abar`` at ``abar_t_i``: the
    paper code's alignment; image-free).  ``basis="final"`` reads the recorded inner products
    with the final latent, else the full latents.  Returns ``W0``, ``WT`` (per state 1..T),
    ``D1``, ``D2``, ``n_seeds``, ``basis``, ``schedule``, ``convention``.
    """
    from memberbench.metrics.base import as_traces

    basis, schedule = resolve_convention(convention, basis, schedule)
    ts = as_traces(traces)
    sched = _schedule_of(ts[0])
    ab = sched.state_levels(convention)[0]
    ws = []
    for t in ts:
        s_t = _schedule_of(t)
        ab_t = s_t.state_levels(convention)[0]
        if s_t.family != sched.family or ab_t.shape != ab.shape or not np.allclose(ab_t, ab):
            raise MemberbenchError("traces of one prompt must share the sampling schedule")
        ws.append(trace_coefficients(t, basis))
    W0 = np.mean([w[0] for w in ws], axis=0)
    WT = np.mean([w[1] for w in ws], axis=0)
    d1, d2 = deviation_on(W0, WT, sched, schedule=schedule, window=window, convention=convention)
    return {
        "W0": W0,
        "WT": WT,
        "D1": d1,
        "D2": d2,
        "n_seeds": len(ts),
        "basis": basis,
        "schedule": schedule,
        "convention": convention,
    }


def paper_deviation_from_traces(
    traces: Trace | Sequence[Trace], *, window: str | int = "all"
) -> dict[str, Any]:
    """D1/D2 with the paper code's conventions (image-free; every prompt):
    ``deviation_from_traces(traces, convention="paper", window=window)``.

    ``D1 = sum_i (W0_i - sqrt(abar_t_i))``, ``D2 = -sum_i (WT_i - sqrt(1 - abar_t_i))`` over
    the states i = 1..T (the output of update i, paired with ``abar_t`` at
    ``scheduler.timesteps[i]``), W0/WT the seed means of the fit on ``[x_final, x_T]``.
    """
    return deviation_from_traces(traces, convention="paper", window=window)


def deviation_from_latents(
    states: Any,
    x: Any,
    x_T: Any,
    abar_next: Any,
    abar_t1: float,
    *,
    schedule: str = "sqrt_abar",
    window: str | int = "all",
    basis: str = "x",
) -> dict[str, Any]:
    """D1/D2 from full latents of one prompt.

    ``states``: (S, T, ...) states 1..T of S seeds; ``x``: the training latent (ignored for
    ``basis="final"``, where each trajectory's own final state is the basis); ``x_T``: (S, ...)
    initial noises.
    """
    st = np.asarray(states, dtype=np.float64)
    S, T = st.shape[:2]
    st = st.reshape(S, T, -1)
    xT = np.asarray(x_T, dtype=np.float64).reshape(S, -1)
    if basis not in ("x", "final"):
        raise MemberbenchError(f"basis must be 'x' or 'final', got {basis!r}")
    w0s, wTs, rs = [], [], []
    for s in range(S):
        base = st[s, -1] if basis == "final" else np.asarray(x, dtype=np.float64).ravel()
        w0, wT, r = decompose(st[s], base, xT[s])
        w0s.append(w0)
        wTs.append(wT)
        rs.append(r)
    W0, WT = np.mean(w0s, 0), np.mean(wTs, 0)
    d1, d2 = deviation_scores(W0, WT, abar_next, abar_t1, schedule=schedule, window=window)
    return {
        "W0": W0,
        "WT": WT,
        "resid_rms": np.mean(rs, 0),
        "w0": np.array(w0s),
        "wT": np.array(wTs),
        "D1": d1,
        "D2": d2,
        "n_seeds": S,
    }


class _Deviation(TraceMetric):
    higher_is_better = False
    _index = 0

    def __init__(
        self,
        schedule: str | None = None,
        window: str | int = "all",
        basis: str | None = None,
        convention: str = "m6",
    ) -> None:
        basis, schedule = resolve_convention(convention, basis, schedule)
        window_slice(window, 1)
        super().__init__(schedule=schedule, window=window, basis=basis, convention=convention)

    def required_fields(self) -> tuple[str, ...]:
        return ("abar_t", "abar_next")

    def values(self, traces: Trace | Sequence[Trace]) -> np.ndarray:
        from memberbench.metrics.base import as_traces

        ts = as_traces(traces)
        for t in ts:
            t.require(list(self.required_fields()), why=f"metric {self.name!r}")
            trace_coefficients(t, self.params["basis"])  # raises naming the missing fields
        return np.array([self.per_sample(t) for t in ts], dtype=np.float64)

    def per_sample(self, trace: Trace) -> float:
        return trace_deviation(trace, **self.params)[self._index]

    def degenerate(self, trace: Trace) -> str:
        if self.params["basis"] == "x" and trace.has("x_norm2") and trace.scalars["x_norm2"] <= 0:
            return "the training latent x is zero, so the decomposition is undefined"
        if not np.isfinite(self.per_sample(trace)):
            return "the decomposition is undefined (x zero or collinear with x_T)"
        return ""


class D1(_Deviation):
    """D1: training-image share above the schedule, sum_i (W0_i - ref0_i) (overestimation)."""

    name = "d1"
    _index = 0


class D2(_Deviation):
    """D2: initial noise suppressed below the schedule, -sum_i (WT_i - refT_i)."""

    name = "d2"
    _index = 1


def noise_suppression(trace: Trace, first_k: int = 1) -> float:
    """Image-free overestimation score of one trajectory: how far the initial noise's share of
    the latent, by projection on x_T alone, falls below the schedule's b (sqrt(1 - abar) for the
    DDPM family, sigma for flow matching), summed
    over the first k states: ``-sum_{i<=k} (<x_i, x_T> / ||x_T||^2 - sqrt(1 - abar_i))`` (an
    image-free D2)."""
    trace.require(["latent_dot_xT", "xT_norm2", "abar_next"], why="noise suppression")
    wt = np.asarray(trace.series["latent_dot_xT"][:first_k]) / float(trace.scalars["xT_norm2"])
    ref = Schedule.of_levels(trace.series["abar_next"][:first_k], family_of(trace)).b_next
    return -float((wt - ref).sum())


# --------------------------------------------------------------------------------------------
# declarations (tasks/test_overestimation.py, tasks/test_detection.py, the sweep record them)


declare(
    "d1",
    keys=("d1[.ddim_ideal][.early][.nonmem]", "d1.g={g}[.nonmem]"),
    family="overestimation",
    higher_is_better=False,
    needs_training_image=True,
    description="M6: D1, the training image's share of the latent above the schedule, summed "
    "over the states (.ddim_ideal: against the DDIM-ideal schedule; .early: first 10 states)",
    sections=(
        Placement("overestimation", ("d1", "d1.nonmem", "d1.ddim_ideal", "d1.early"), rank=30),
        Placement("guidance_sweep", ("d1.g={g}[.nonmem]",)),
    ),
    headline=(
        Headline("d1", "D1", 40),
        Headline("d1.nonmem", "D1 non-mem", 45, leaderboard=False),
    ),
)
declare(
    "d2",
    keys=("d2[.ddim_ideal][.early][.nonmem]", "d2.g={g}[.nonmem]"),
    family="overestimation",
    higher_is_better=False,
    needs_training_image=True,
    description="M6: D2, the initial noise's share of the latent below the schedule, summed "
    "over the states (qualifiers as for d1)",
    sections=(Placement("overestimation", ("d2", "d2.nonmem"), rank=40),),
    headline=(Headline("d2", "D2", 50),),
)
for _key in ("D1", "D2"):
    declare(
        f"{_key.lower()}.paper",
        family="overestimation",
        higher_is_better=None,
        description=f"M6, the paper code's convention: {_key} on the [x_final, x_T] basis, "
        "sqrt(abar_t) alignment (image-free)",
    )


def deviations(
    mb: Any,
    side: str,
    *,
    schedule: str = "sqrt_abar",
    window: str | int = "all",
    guidance: float | None = None,
    seeds: Any = None,
) -> dict[str, dict[str, Any]]:
    """{prompt_id: {"D1", "D2", "W0", "WT"}} of the session ``mb``'s generations, for prompts
    with a training image (memoized in the session)."""
    key = ("dev", side, schedule, window, guidance, None if seeds is None else tuple(seeds))

    def compute() -> dict[str, dict[str, Any]]:
        refs = mb.references(side)
        out: dict[str, dict[str, Any]] = {}
        for pid, gens in mb.ok_gens(side, guidance, seeds).items():
            if pid not in refs:
                continue
            try:
                out[pid] = deviation_from_traces(
                    [x.trace for x in gens], schedule=schedule, window=window
                )
            except MemberbenchError:
                continue
        return out

    return mb.memo(key, compute)


def paper_deviations(
    mb: Any, side: str, window: str | int = "all", guidance: float | None = None
) -> dict[str, dict[str, Any]]:
    """{prompt_id: {"D1", "D2", "W0", "WT"}} with the paper code's conventions (each state
    fitted on the trajectory's own final latent and x_T; sqrt(abar_t) alignment): needs no
    training image, so every prompt gets one (memoized in the session)."""

    def compute() -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for pid, gens in mb.ok_gens(side, guidance).items():
            try:
                out[pid] = paper_deviation_from_traces([x.trace for x in gens], window=window)
            except MemberbenchError:
                continue
        return out

    return mb.memo(("devpaper", side, window, guidance), compute)


@detector(
    "nsupp",
    description="noise suppression: the initial noise's share of the latent (projection on "
    "x_T) below sqrt(1 - abar), summed over the first k states (image-free)",
    source="this project (an image-free D2)",
)
def nsupp_scores(mb: Any, side: str, k: int) -> dict[str, float]:
    k = min(k, mb.config.steps)
    return mb.per_prompt(
        f"nsupp{k}", side, lambda ts: float(np.mean([noise_suppression(t, k) for t in ts]))
    )


@detector(
    "d1_paper",
    description="D1 of the first k states with the paper code's conventions (each state fitted "
    "on the trajectory's own final latent and x_T): image-free, but it needs the final latent, "
    "so the whole generation",
    unet_evals=lambda k, steps: 2 * steps,
    source="the paper's code (final-latent basis)",
)
def d1_paper_scores(mb: Any, side: str, k: int) -> dict[str, float]:
    return {p: v["D1"] for p, v in paper_deviations(mb, side, window=k).items()}


@detector(
    "d1",
    description="D1 over the first k states against each prompt's training image (an oracle "
    "score: it needs the training image)",
    needs_training_image=True,
    source="docs/metrics.md#decomposition-d1-and-d2-m6 (training-latent basis)",
)
def d1_scores(mb: Any, side: str, k: int) -> dict[str, float]:
    mb.require_images(side)
    return {p: v["D1"] for p, v in deviations(mb, side, window=k).items()}
