"""The trace-series table: every per-step series the traced sampler records, declared once.

Each :class:`Series` has a name (the key in :attr:`memberbench.types.Trace.series`), a kind that
says when the sampler computes it and how a failed sample masks it, whether it needs the prompt's
reference (training) latent ``x``, and a description.  The sampler packs its values by name
(``pack``) and refuses a step whose names differ from the table's, so adding a series means one
row here and one value where the sampler computes it; metrics read series by name.

Kinds:

* ``schedule``: a property of the timestep grid (never masked);
* ``prediction``: from the UNet outputs at step i (NaN after a failure at step i);
* ``state``: from the state after update i (NaN from the failed update on);
* ``final``: needs the final state (all NaN for a failed sample).

Notation: ``x_T`` the initial noise (VP form), ``x_i`` the state after update i, ``x`` the
training latent, ``eps_b`` the noise predictions of branch ``b`` in ``u`` (unconditional), ``c``
(conditional), ``g`` (guided), ``x0_b`` the clean-latent estimates from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from memberbench.types import BRANCHES

KINDS = ("schedule", "prediction", "state", "final")


@dataclass(frozen=True)
class Series:
    name: str
    kind: str
    needs_reference: bool
    description: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"series {self.name!r}: kind must be one of {KINDS}, not {self.kind!r}"
            )


_B = {"u": "unconditional", "c": "conditional", "g": "guided"}

TABLE: tuple[Series, ...] = (
    Series("timestep", "schedule", False, "the scheduler's timestep t_i of update i"),
    Series("abar_t", "schedule", False, "alpha-bar at t_i (the level update i starts from)"),
    Series("abar_next", "schedule", False, "alpha-bar after update i (the level of x_i)"),
    Series("guidance", "prediction", False, "the guidance scale used at step i, after hooks"),
    *(Series(f"eps_{b}_norm", "prediction", False, f"||eps_{b}||, {_B[b]}") for b in BRANCHES),
    Series("eps_diff_norm", "prediction", False, "||eps_c - eps_u|| (Wen et al.'s magnitude)"),
    Series(
        "x0_diff_norm",
        "prediction",
        False,
        "||x0_c - x0_u|| (Wen's magnitude of a flow model at sigma = 1, where eps_c = eps_u)",
    ),
    *(Series(f"eps_{b}_dot_xT", "prediction", False, f"<eps_{b}, x_T>") for b in BRANCHES),
    *(Series(f"x0_{b}_norm", "prediction", False, f"||x0_{b}||") for b in BRANCHES),
    *(Series(f"eps_{b}_dot_x", "prediction", True, f"<eps_{b}, x>") for b in BRANCHES),
    *(Series(f"x0_{b}_dot_x", "prediction", True, f"<x0_{b}, x>") for b in BRANCHES),
    *(Series(f"x0_{b}_err", "prediction", True, f"||x - x0_{b}||^2") for b in BRANCHES),
    Series("latent_norm", "state", False, "||x_i||"),
    Series("latent_dot_xT", "state", False, "<x_i, x_T>"),
    Series("latent_dot_x", "state", True, "<x_i, x>"),
    Series("w0", "state", True, "M6 coefficient of x in the fit x_i ~ w0 x + wT x_T"),
    Series("wT", "state", True, "M6 coefficient of x_T in the same fit"),
    Series("resid_rms", "state", True, "RMS residual of that fit"),
    Series("latent_dot_final", "final", False, "<x_i, x_final> (the paper code's basis)"),
)

BY_NAME: dict[str, Series] = {s.name: s for s in TABLE}
if len(BY_NAME) != len(TABLE):  # pragma: no cover - a duplicated row is a bug in this file
    raise RuntimeError("duplicate series names in the trace-series table")


def names(*, kind: str | None = None, reference: bool | None = None) -> tuple[str, ...]:
    """Series names in table order, filtered by kind and by ``needs_reference``; ``reference=True``
    gives every series recorded when a reference latent is given (base + reference ones)."""
    out = []
    for s in TABLE:
        if kind is not None and s.kind != kind:
            continue
        if reference is False and s.needs_reference:
            continue
        out.append(s.name)
    return tuple(out)


# per-step series that need no reference latent, and those recorded only with one
BASE_SERIES = tuple(s.name for s in TABLE if not s.needs_reference)
REF_SERIES = tuple(s.name for s in TABLE if s.needs_reference)


class Packer:
    """Buffers for one batch: ``rec[name]`` rows of shape (steps, batch), filled by name."""

    def __init__(self, with_reference: bool) -> None:
        # the series without a reference first, then the reference ones (the order of traces)
        base = tuple(s.name for s in TABLE if not s.needs_reference)
        ref = tuple(s.name for s in TABLE if s.needs_reference)
        self.names = base + (ref if with_reference else ())
        self.col = {k: j for j, k in enumerate(self.names)}
        self._want = {
            kind: frozenset(names(kind=kind, reference=bool(with_reference))) for kind in KINDS
        }

    def check(self, kind: str, values: dict) -> tuple[str, ...]:
        """The names of ``values`` in buffer order, if they are exactly those of ``kind``."""
        got = frozenset(values)
        want = self._want[kind]
        if got != want:
            missing, extra = sorted(want - got), sorted(got - want)
            raise RuntimeError(
                f"trace series out of step with the table ({kind}): missing {missing}, "
                f"not declared {extra}; add a row to memberbench/sampling/series.py"
            )
        return tuple(k for k in self.names if k in got)


def masked_from(kind: str, failed_step: int) -> slice | None:
    """The steps of a ``kind`` series that a failure at ``failed_step`` makes meaningless."""
    if kind == "schedule":
        return None
    if kind == "final":
        return slice(0, None)
    if kind == "state":
        return slice(max(failed_step, 0), None)
    return slice(failed_step + 1, None)
