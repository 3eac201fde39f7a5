"""Trajectory collapse and diversity (docs/metrics.md#trajectory-collapse-and-diversity-m5).

Per prompt across seeds: mean pairwise SSCD of the final images (``seed_sscd``, high = the seeds
collapsed onto one image), mean pairwise L2 between the final latents (``latent_l2``), and, when
full latents were recorded (``--mb-latents``), the pairwise L2 at every state: ``collapse_early``
is the distance at 20% of the steps relative to the distance between the initial noises
(memorized prompts collapse early, so theirs is small).

``seed_sscd`` and ``latent_l2`` are declared with ``record=`` (memberbench/metrics/diversity.py):
the generic task ``tasks/test_declared.py`` records them.
"""

from __future__ import annotations

import numpy as np
import pytest

from memberbench.benchrun import SIDES, SUFFIX
from memberbench.metrics.diversity import collapse_profiles, needs_two_seeds
from memberbench.metrics.stats import mean_stat

pytestmark = pytest.mark.memberbench


def _need_seeds(mb) -> None:
    why = needs_two_seeds(mb)
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("side", SIDES)
def test_collapse_profile(mb, record_metric, record_series, side):
    _need_seeds(mb)
    T = mb.config.steps
    i_early = max(1, round(0.2 * T))
    profiles, missing = collapse_profiles(mb, side)
    curves = list(profiles.values())
    early = {p: float(d[i_early] / d[0]) if d[0] > 0 else float("nan") for p, d in profiles.items()}
    if not curves:
        pytest.skip(
            "full latents were not recorded (--mb-latents none, over the auto size limit, or "
            f"samples came from the cache without latents: {missing} prompts)"
        )
    record_metric(
        f"collapse_early{SUFFIX[side]}",
        mean_stat(list(early.values()), "collapse_early"),
        per_prompt=early,
        prompt_set=side,
        description=f"M5: pairwise L2 at state {i_early} / pairwise L2 of the initial noises",
    )
    record_series(
        f"collapse.{side}",
        {"pairwise_l2": np.mean(curves, 0), "n_prompts": len(curves), "state_early": i_early},
    )
