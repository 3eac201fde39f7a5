"""One schedule for every sampler: the state is ``x = a x0 + b eps`` at every noise level.

Every quantity of the decomposition that depends on the noise schedule is derived here, from the
pair ``(a, b)`` of each level, and nowhere else:

* DDPM family (DDIM, DDPM, PNDM, DPM++, and the Euler/Heun/LMS family once its latent is put in
  variance-preserving form): ``a = sqrt(abar)``, ``b = sqrt(1 - abar)``, so ``a^2 + b^2 = 1``;
* flow matching (rectified flow, ``FlowMatchEulerDiscreteScheduler``: SD3, FLUX):
  ``a = 1 - sigma``, ``b = sigma`` with the scheduler's own (shifted) sigmas, so ``a + b = 1``.
  The state is kept as the scheduler holds it (no rescaling).

Indexing (the sampler's and the traces'): update i (0-based) starts from level ``(a_t[i],
b_t[i])`` -- the level the model sees -- and produces state i+1 at ``(a_next[i], b_next[i])``.
State 0 is ``x_T`` at ``(a_t[0], b_t[0])``.

The ideal deterministic sampler (a perfect clean estimate x0_hat = x0 at every step, started from
x_T) keeps ``x_i = omega0_i x0 + omegaT_i x_T`` with ``omegaT_i = b_i / b_1`` and
``omega0_i = a_i - a_1 b_i / b_1``, where ``(a_1, b_1) = (a_t[0], b_t[0])`` is the level of x_T
and ``(a_i, b_i) = (a_next[i-1], b_next[i-1])`` that of state i.  For DDIM (eta 0) this is the
"DDIM-ideal" schedule; for the flow-matching Euler step ``x' = x + (sigma' - sigma) v`` it is the
same formula (``x_i = (1 - sigma_i / sigma_1) x0 + (sigma_i / sigma_1) x_T``).

Traces record the schedule as the series ``abar_t`` / ``abar_next`` in VP-equivalent form,
``abar = a^2 / (a^2 + b^2)`` (exactly alphas_cumprod for the DDPM family), and flow-matching
traces carry the scalar ``flow_matching = 1``; :meth:`Schedule.from_trace` inverts that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from memberbench.types import MemberbenchError

FAMILIES = ("vp", "flow")
# the Trace scalar that marks a flow-matching trajectory
FLOW_SCALAR = "flow_matching"
# the adapter prediction types the sampler understands
PREDICTIONS = ("epsilon", "flow")
REFERENCES = ("sqrt_abar", "ddim_ideal")


def _f64(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    return np.atleast_1d(np.asarray(a, dtype=np.float64))


def is_flow_scheduler(scheduler: Any) -> bool:
    """True for diffusers' flow-matching schedulers (``FlowMatch*``)."""
    return type(scheduler).__name__.startswith("FlowMatch")


@dataclass(frozen=True)
class Schedule:
    """The ``(a, b)`` levels of a sampling grid: ``*_t[i]`` where update i starts, ``*_next[i]``
    of the state update i produces.  Arrays are float64 of one length (the number of updates)."""

    family: str
    a_t: np.ndarray
    b_t: np.ndarray
    a_next: np.ndarray
    b_next: np.ndarray

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise MemberbenchError(
                f"schedule family must be one of {FAMILIES}, not {self.family!r}"
            )
        n = {len(self.a_t), len(self.b_t), len(self.a_next), len(self.b_next)}
        if len(n) != 1:
            raise MemberbenchError("a schedule's a_t, b_t, a_next and b_next need one length")

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def vp(cls, abar_t: Any, abar_next: Any) -> Schedule:
        """DDPM family: ``a = sqrt(abar)``, ``b = sqrt(1 - abar)``."""
        at, an = _f64(abar_t), _f64(abar_next)
        return cls("vp", np.sqrt(at), np.sqrt(1.0 - at), np.sqrt(an), np.sqrt(1.0 - an))

    @classmethod
    def flow(cls, sigma_t: Any, sigma_next: Any) -> Schedule:
        """Flow matching: ``a = 1 - sigma``, ``b = sigma``."""
        st, sn = _f64(sigma_t), _f64(sigma_next)
        return cls("flow", 1.0 - st, st, 1.0 - sn, sn)

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> Schedule:
        """The schedule of a diffusers scheduler after ``set_timesteps`` (the VE Euler family in
        VP form, as the sampler records it)."""
        n = len(scheduler.timesteps)
        if is_flow_scheduler(scheduler):
            sig = _f64(scheduler.sigmas)
            if sig.size < n + 1:
                raise MemberbenchError(
                    f"{type(scheduler).__name__} has {sig.size} sigmas for {n} timesteps"
                )
            return cls.flow(sig[:n], sig[1 : n + 1])
        from memberbench.sampling.schedulers import noise_levels

        abar_t, abar_next = noise_levels(scheduler)
        return cls.vp(abar_t, abar_next)

    @classmethod
    def from_levels(cls, abar_t: Any, abar_next: Any, family: str = "vp") -> Schedule:
        """From the VP-equivalent levels a trace records (:meth:`abar_equivalent`)."""
        if family == "vp":
            return cls.vp(abar_t, abar_next)
        if family != "flow":
            raise MemberbenchError(f"schedule family must be one of {FAMILIES}, not {family!r}")
        # a / b = sqrt(abar / (1 - abar)) = (1 - sigma) / sigma  ->  sigma = 1 / (1 + a / b)
        with np.errstate(divide="ignore"):
            sig = [1.0 / (1.0 + np.sqrt(_f64(ab) / (1.0 - _f64(ab)))) for ab in (abar_t, abar_next)]
        return cls.flow(*sig)

    @classmethod
    def from_trace(cls, trace: Any) -> Schedule:
        """The schedule a trace was sampled on (its ``abar_t``/``abar_next`` series)."""
        trace.require(["abar_t", "abar_next"], why="the sampling schedule")
        return cls.from_levels(trace.series["abar_t"], trace.series["abar_next"], family_of(trace))

    @classmethod
    def of_levels(cls, abar: Any, family: str = "vp") -> Schedule:
        """A schedule whose ``*_t`` and ``*_next`` are both the levels ``abar`` (for quantities
        that need one level per step only)."""
        return cls.from_levels(abar, abar, family)

    # --- derived quantities -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.a_t)

    def abar_equivalent(self) -> tuple[np.ndarray, np.ndarray]:
        """``(abar_t, abar_next)`` of the VP process with the same signal-to-noise ratios,
        ``a^2 / (a^2 + b^2)``: alphas_cumprod itself for the DDPM family."""
        if self.family == "vp":
            return self.a_t**2, self.a_next**2
        return tuple(
            a**2 / (a**2 + b**2) for a, b in ((self.a_t, self.b_t), (self.a_next, self.b_next))
        )  # type: ignore[return-value]

    def state_levels(self, convention: str = "m6") -> tuple[np.ndarray, np.ndarray]:
        """``(a_i, b_i)`` each state 1..T is compared with: its own level (``"m6"``) or the level
        update i started from (``"paper"``, one step earlier)."""
        if convention == "paper":
            return self.a_t, self.b_t
        if convention != "m6":
            raise MemberbenchError(f"unknown convention {convention!r}; use 'm6' or 'paper'")
        return self.a_next, self.b_next

    def ideal(self) -> tuple[np.ndarray, np.ndarray]:
        """``(omega0_i, omegaT_i)`` of the states 1..T of the ideal deterministic sampler:
        ``omegaT_i = b_i / b_1``, ``omega0_i = a_i - a_1 b_i / b_1`` (module docstring)."""
        omega_T = self.b_next / self.b_t[0]
        return self.a_next - self.a_t[0] * omega_T, omega_T

    def reference(
        self, kind: str = "sqrt_abar", convention: str = "m6"
    ) -> tuple[np.ndarray, np.ndarray]:
        """The reference coefficients ``(ref0_i, refT_i)`` of D1/D2 for the states 1..T:
        ``"sqrt_abar"`` the forward-process ``(a_i, b_i)`` (``(sqrt(abar), sqrt(1 - abar))`` for
        the DDPM family, ``(1 - sigma, sigma)`` for flow matching), ``"ddim_ideal"`` :meth:`ideal`
        (m6 alignment only)."""
        if kind == "sqrt_abar":
            return self.state_levels(convention)
        if kind == "ddim_ideal":
            if convention != "m6":
                raise MemberbenchError("the ideal-sampler reference is defined for convention 'm6'")
            return self.ideal()
        raise MemberbenchError(f"unknown schedule {kind!r}; use one of {', '.join(REFERENCES)}")

    def signal_to_noise(self) -> np.ndarray:
        """``a_t / b_t`` per update: ``eps_c - eps_u = -(a/b) (x0_c - x0_u)`` at a fixed state."""
        return self.a_t / self.b_t

    def raw_output_factor(self, prediction_type: str) -> np.ndarray:
        """Per update, ``||raw_c - raw_u|| / ||eps_c - eps_u||`` at a fixed state, for a model
        whose raw output is ``prediction_type``.  With ``x = a x0 + b eps`` fixed,
        ``d x0 = -(b/a) d eps``, so: epsilon 1; x0 (``"sample"``) ``b / a``; VP velocity
        (``"v_prediction"``, ``v = a eps - b x0``) ``(a^2 + b^2) / a = 1 / a``; flow velocity
        (``"flow"``, ``v = eps - x0``) ``(a + b) / a = 1 / a``."""
        a, b = self.a_t, self.b_t
        if prediction_type == "epsilon":
            return np.ones_like(a)
        if prediction_type == "sample":
            return b / a
        if prediction_type == "v_prediction" and self.family == "vp":
            return (a**2 + b**2) / a
        if prediction_type == "flow" and self.family == "flow":
            # at sigma = 1 (a = 0) eps_hat = x whatever v is: ||eps_c - eps_u|| = 0 carries no
            # velocity difference, so the factor is undefined (NaN), not infinite
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(a > 0, (a + b) / np.where(a > 0, a, 1.0), np.nan)
        allowed = (
            "epsilon, v_prediction, sample" if self.family == "vp" else "epsilon, sample, flow"
        )
        raise MemberbenchError(
            f"unknown prediction_type {prediction_type!r} for a {self.family} schedule; Wen et "
            f"al.'s raw-output magnitude is defined for {allowed} (the model card says which)"
        )

    # --- predictions at one level ---------------------------------------------------------------
    def split(self, x: Any, pred: Any, i: int, prediction: str = "epsilon") -> tuple[Any, Any]:
        """``(eps_hat, x0_hat)`` from the model output ``pred`` at state ``x`` of update i.

        ``"epsilon"``: ``x0_hat = (x - b eps) / a``.  ``"flow"`` (velocity ``v = eps - x0`` of a
        flow-matching model): ``x0_hat = x - sigma v`` and ``eps_hat = x + (1 - sigma) v``, with no
        division (so it holds at sigma = 1, where a = 0).
        """
        a, b = float(self.a_t[i]), float(self.b_t[i])
        if prediction == "epsilon":
            return pred, (x - b * pred) / a
        if prediction == "flow":
            if self.family != "flow":
                raise MemberbenchError(
                    "a flow (velocity) prediction needs a flow-matching scheduler"
                )
            return x + a * pred, x - b * pred
        raise MemberbenchError(f"prediction must be one of {PREDICTIONS}, not {prediction!r}")


def family_of(trace: Any) -> str:
    """``"flow"`` for a trace the sampler marked flow-matching (:data:`FLOW_SCALAR`), else
    ``"vp"``."""
    return "flow" if float(trace.scalars.get(FLOW_SCALAR, 0.0)) == 1.0 else "vp"


def x0_from_eps(x_t: Any, eps: Any, a: float, b: float) -> Any:
    """Clean estimate ``(x_t - b eps) / a`` at level (a, b)."""
    return (x_t - b * eps) / a


def eps_from_x0(x_t: Any, x0: Any, a: float, b: float) -> Any:
    """Inverse of :func:`x0_from_eps`: ``(x_t - a x0) / b``."""
    return (x_t - a * x0) / b
