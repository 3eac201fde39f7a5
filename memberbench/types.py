"""Plain data that flows through memberbench: requests in, samples with traces out.

prompt set -> GenerationRequest -> adapter + sampler (+ mitigation hooks) -> Sample(Trace) ->
metrics -> results JSON.  Everything here is a frozen dataclass or a thin container of numpy
arrays, so it can be hashed, cached and written to disk without torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from memberbench.errors import MemberbenchError as MemberbenchError  # re-exported

SEED_MAX = 2**63 - 1


def stable_hash(obj: Any, n: int = 16) -> str:
    """sha256 of a canonical JSON rendering (sorted keys), truncated to n hex chars."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


@dataclass(frozen=True)
class GenerationRequest:
    """One image to generate: a prompt, a seed and the sampler settings.

    The initial noise is drawn from ``seed`` alone (per request), so a request's image does not
    depend on which other requests share its batch.  Its last bits do depend on the batch *size*
    and the numerics of the process (matmul blocking: CPU threads, instruction set, GPU), so the
    generation cache keys entries by both (docs/reliability.md, "Cache and determinism").
    """

    prompt: str
    seed: int
    steps: int = 50
    guidance: float = 7.5
    scheduler: str = "ddim"
    eta: float = 0.0
    negative_prompt: str = ""
    height: int | None = None
    width: int | None = None
    prompt_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise MemberbenchError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps <= 0:
            raise MemberbenchError(
                f"steps must be a positive integer (1, 2, ...), got {self.steps!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise MemberbenchError(f"seed must be an integer in [0, 2**63-1], got {self.seed!r}")
        if not 0 <= int(self.seed) <= SEED_MAX:
            raise MemberbenchError(f"seed must be an integer in [0, 2**63-1], got {self.seed!r}")
        try:
            g = float(self.guidance)
        except (TypeError, ValueError):
            raise MemberbenchError(
                f"guidance must be a finite number (e.g. 7.5), got {self.guidance!r}"
            ) from None
        if isinstance(self.guidance, bool) or not math.isfinite(g):
            raise MemberbenchError(
                f"guidance must be a finite number (e.g. 7.5), got {self.guidance!r}"
            )
        object.__setattr__(self, "guidance", g)
        object.__setattr__(self, "seed", int(self.seed))
        if not (0.0 <= float(self.eta) <= 1.0):
            raise MemberbenchError(f"eta must be in [0, 1], got {self.eta!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        """Hash of every field that determines the output image."""
        d = self.to_dict()
        d.pop("prompt_id")
        return stable_hash(d)


# Names of the per-step scalar series a Trace holds.  Shape of each: (T,) for one sample.
# "b" ranges over the branches u (unconditional), c (conditional), g (guided).
#   timestep            the timestep t_i the UNet was evaluated at for update i
#   abar_t              alphas_cumprod[t_i]
#   abar_next           noise level of state i (the output of update i): alphas_cumprod of the
#                       next timestep, final_alpha_cumprod for the last update
#   guidance            the guidance scale actually used at step i (hooks may change it)
#   eps_{b}_norm        ||eps_b||
#   eps_diff_norm       ||eps_c - eps_u||   (Wen et al.'s text-conditional magnitude)
#   x0_diff_norm        ||x0_hat_c - x0_hat_u||  (Wen's magnitude of a flow model: / sigma)
#   eps_{b}_dot_xT      <eps_b, x_T>
#   x0_{b}_norm         ||x0_hat_b||
#   latent_norm         ||x_i||  (state after update i)
#   latent_dot_xT       <x_i, x_T>
#   latent_dot_final    <x_i, x_final>, x_final = the trajectory's own last state (after update T)
#                       (for the image-free, paper-code decomposition; NaN for a failed sample)
# Series that need the reference (training) latent x; absent when no reference was given:
#   eps_{b}_dot_x       <eps_b, x>
#   x0_{b}_dot_x        <x0_hat_b, x>
#   x0_{b}_err          ||x - x0_hat_b||^2
#   latent_dot_x        <x_i, x>
#   w0, wT, resid_rms   least-squares fit x_i ~ w0 * x + wT * x_T (+ residual RMS), per state
# Scalars (Trace.scalars): x_norm2 = ||x||^2, xT_norm2 = ||x_T||^2, x_dot_xT = <x, x_T>, dim = d,
# and on every trace final_norm2 = ||x_final||^2, final_dot_xT = <x_final, x_T> (NaN if failed).
BRANCHES = ("u", "c", "g")


@dataclass
class Trace:
    """Per-step scalar records of one sampling trajectory (kilobytes for 50 steps)."""

    series: dict[str, np.ndarray] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)
    latents_path: str | None = None  # set when full latents were written to disk

    def __getitem__(self, name: str) -> np.ndarray:
        return self.series[name]

    def has(self, *names: str) -> bool:
        return all(n in self.series or n in self.scalars for n in names)

    def require(self, names: list[str] | tuple[str, ...], why: str = "") -> None:
        missing = [n for n in names if n not in self.series and n not in self.scalars]
        if missing:
            hint = (
                " Record them by sampling with a reference latent (the prompt's training image),"
                " i.e. pass references= to the sampler / use a prompt set with training images."
            )
            raise MemberbenchError(
                f"trace lacks fields {missing}{' needed by ' + why if why else ''}.{hint}"
            )

    @property
    def num_steps(self) -> int:
        return len(self.series.get("timestep", ()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "series": {k: np.asarray(v).tolist() for k, v in self.series.items()},
            "scalars": dict(self.scalars),
            "latents_path": self.latents_path,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trace:
        return cls(
            series={k: np.asarray(v, dtype=np.float64) for k, v in d.get("series", {}).items()},
            scalars={k: float(v) for k, v in d.get("scalars", {}).items()},
            latents_path=d.get("latents_path"),
        )


@dataclass
class Sample:
    """The outcome of one GenerationRequest."""

    request: GenerationRequest
    image: np.ndarray | None  # uint8 HxWx3, None if failed
    trace: Trace
    final_latent: np.ndarray | None = None  # float32 CxHxW
    status: str = "ok"  # "ok" or "failed"
    failed_step: int | None = None
    error: str | None = None
    unet_evals: int = 0
    wall_time_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"
