"""Trajectory collapse and diversity (docs/metrics.md#trajectory-collapse-and-diversity-m5).

Per prompt across seeds: mean pairwise SSCD of the final images (``seed_sscd``, high = the seeds
collapsed onto one image), mean pairwise L2 between the final latents (``latent_l2``), and, when
full latents were recorded (``--mb-latents``), the pairwise L2 at every state: ``collapse_early``
is the distance at 20% of the steps relative to the distance between the initial noises
(memorized prompts collapse early, so theirs is small).
"""

from __future__ import annotations

import numpy as np
import pytest

from memberbench.benchrun import SIDES, SUFFIX
from memberbench.metrics.diversity import collapse_profiles, latent_l2, seed_sscd
from memberbench.metrics.stats import mean_stat

pytestmark = pytest.mark.memberbench


def _need_seeds(mb) -> None:
    if len(mb.config.seeds) < 2:
        pytest.skip("diversity needs at least 2 seeds (--seeds)")


@pytest.mark.parametrize("side", SIDES)
def test_seed_diversity(mb, record_metric, side):
    _need_seeds(mb)
    sim, l2 = seed_sscd(mb, side), latent_l2(mb, side)
    if not sim and not l2:
        pytest.skip(f"no {side} prompt has two successful generations")
    sfx = SUFFIX[side]
    if sim:
        record_metric(
            f"seed_sscd{sfx}",
            mean_stat(list(sim.values()), "seed_sscd"),
            per_prompt=sim,
            prompt_set=side,
        )
    if l2:
        record_metric(
            f"latent_l2{sfx}",
            mean_stat(list(l2.values()), "latent_l2"),
            per_prompt=l2,
            prompt_set=side,
        )


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
