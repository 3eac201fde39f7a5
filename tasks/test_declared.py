"""Every declared metric that asks for it (``record=`` of ``@metric`` / ``declare``), recorded
with no task of its own.

For each recorded name ``key`` of a declaration and each prompt set: skipped with the reason when
the declaration's ``check(mb)`` gives one, or when it needs training images and the set has none;
else ``compute(mb, side, **params)`` gives {prompt_id: value}, and the mean over prompts (with its
standard error over prompts) is recorded as ``key`` (``key.nonmem`` on the non-memorized set),
with the per-prompt values.  Direction, unit, description and family come from the declaration;
the leaderboard and the terminal summary place it from the declaration too
(docs/adding-a-metric.md).  Out-of-tree metrics (entry-point group ``memberbench.metrics``) are
included.
"""

from __future__ import annotations

import pytest

from memberbench.metrics.declare import get_record, recorded
from memberbench.metrics.stats import mean_stat

pytestmark = pytest.mark.memberbench
CASES = [pytest.param(r.key, side, id=f"{r.key}-{side}") for _, r in recorded() for side in r.sides]


@pytest.mark.parametrize("key, side", CASES)
def test_declared(mb, record_metric, key, side):
    decl, rec = get_record(key)
    why = decl.skip_reason(mb)
    if why:
        pytest.skip(why)
    if decl.needs_training_image:
        mb.require_images(side)  # skips with the reason when the set has none
    vals = decl.compute(mb, side, **dict(rec.params))
    if not vals:
        pytest.skip(f"{rec.name(side)}: no {side} prompt has a value")
    name = rec.name(side)
    record_metric(
        name,
        mean_stat(list(vals.values()), decl.name),
        per_prompt=vals,
        prompt_set=side,
        family=decl.family,
    )
