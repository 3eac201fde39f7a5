"""The trace-series table is the one declaration of what the sampler records, packed by name."""

from __future__ import annotations

import numpy as np
import pytest

from memberbench.sampling import series as S
from memberbench.sampling.hooks import StepHook
from memberbench.sampling.sampler import TracedSampler
from memberbench.types import GenerationRequest

STEPS = 4


def _reqs():
    return [
        GenerationRequest(p, seed=i, steps=STEPS, guidance=7.5)
        for i, p in enumerate(["a red circle", "zorblat quennix", "a blue square"])
    ]


def test_the_sampler_records_exactly_the_table(tiny_adapter):
    x = tiny_adapter.encode_images(np.full((1, 64, 64, 3), 90, dtype=np.uint8))[0]
    with_ref, without = TracedSampler(tiny_adapter).sample(_reqs()[:2], [x, None])
    # the reference-free rows in table order, then the reference rows in table order
    base = tuple(s.name for s in S.TABLE if not s.needs_reference)
    ref = tuple(s.name for s in S.TABLE if s.needs_reference)
    assert tuple(with_ref.trace.series) == base + ref
    assert tuple(without.trace.series) == base
    assert (base, ref) == (S.BASE_SERIES, S.REF_SERIES)
    assert {"latent_dot_final", "timestep"} <= set(base) and {"w0", "x0_c_err"} <= set(ref)
    # values land under their own names: two hand-checkable ones
    tr = with_ref.trace
    np.testing.assert_allclose(tr["guidance"], 7.5)
    np.testing.assert_allclose(
        tr["x0_g_err"],
        tr["x0_g_norm"] ** 2 - 2 * tr["x0_g_dot_x"] + tr.scalars["x_norm2"],
        rtol=1e-9,
        atol=1e-9,
    )


def test_a_row_without_a_value_is_refused(tiny_adapter, monkeypatch):
    """A series declared in the table but not computed (or computed but not declared) stops the
    sampler with a message naming it, instead of shifting every later series by one."""
    extra = S.Series("latent_dot_new", "state", False, "declared, never computed")
    monkeypatch.setattr(S, "TABLE", S.TABLE + (extra,))
    with pytest.raises(RuntimeError, match=r"missing \['latent_dot_new'\]"):
        TracedSampler(tiny_adapter).sample(_reqs()[:1])
    packer = S.Packer(with_reference=False)
    with pytest.raises(RuntimeError, match=r"not declared \['bogus'\]"):
        packer.check("schedule", {"timestep": 0, "abar_t": 0, "abar_next": 0, "bogus": 0})


class _NanAt(StepHook):
    def __init__(self, step, row):
        self.step, self.row = step, row

    def after_step(self, state, i, t):
        if i == self.step:
            state.latents[self.row] = float("nan")


@pytest.mark.parametrize("fail_step", [0, 2])
def test_a_failed_sample_is_masked_by_kind(tiny_adapter, fail_step):
    out = TracedSampler(tiny_adapter, hooks=[_NanAt(fail_step, 1)]).sample(_reqs())
    bad = out[1]
    assert bad.failed_step == fail_step
    for name, values in bad.trace.series.items():
        kind = S.BY_NAME[name].kind
        finite = np.isfinite(values)
        want = {
            "schedule": np.arange(STEPS) >= 0,  # never masked
            "prediction": np.arange(STEPS) <= fail_step,  # up to the failing step's predictions
            "state": np.arange(STEPS) < fail_step,  # states before the failed update
            "final": np.zeros(STEPS, bool),  # no final state at all
        }[kind]
        np.testing.assert_array_equal(finite, want, err_msg=name)
    assert all(np.isfinite(v).all() for v in out[0].trace.series.values())


def test_kinds_are_checked():
    with pytest.raises(ValueError, match="kind must be one of"):
        S.Series("x", "per-step", False, "")
