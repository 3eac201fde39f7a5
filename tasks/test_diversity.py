"""Trajectory collapse and diversity (SPEC M5).

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
from memberbench.metrics.diversity import mean_pairwise_similarity, pairwise_l2_by_state
from memberbench.metrics.stats import mean_stat

pytestmark = pytest.mark.memberbench


def _need_seeds(mb) -> None:
    if len(mb.config.seeds) < 2:
        pytest.skip("diversity needs at least 2 seeds (--seeds)")


@pytest.mark.parametrize("side", SIDES)
def test_seed_diversity(mb, record_metric, side):
    _need_seeds(mb)
    sim, l2 = {}, {}
    for pid, gens in mb.ok_gens(side).items():
        emb = [g.sscd_emb for g in gens if g.sscd_emb is not None]
        if len(emb) >= 2:
            sim[pid] = mean_pairwise_similarity(np.stack(emb))
        lat = [g.final_latent for g in gens if g.final_latent is not None]
        if len(lat) >= 2:
            l2[pid] = float(pairwise_l2_by_state(np.stack(lat)[:, None])[0])
    if not sim and not l2:
        pytest.skip(f"no {side} prompt has two successful generations")
    sfx = SUFFIX[side]
    if sim:
        record_metric(
            f"seed_sscd{sfx}",
            mean_stat(list(sim.values()), "seed_sscd"),
            higher_is_better=False,
            per_prompt=sim,
            prompt_set=side,
            description="M5: mean pairwise SSCD between the final images of different seeds",
        )
    if l2:
        record_metric(
            f"latent_l2{sfx}",
            mean_stat(list(l2.values()), "latent_l2"),
            higher_is_better=True,
            per_prompt=l2,
            prompt_set=side,
            description="M5: mean pairwise L2 between the final latents of different seeds",
        )


@pytest.mark.parametrize("side", SIDES)
def test_collapse_profile(mb, record_metric, record_series, side):
    _need_seeds(mb)
    curves, early = [], {}
    T = mb.config.steps
    i_early = max(1, round(0.2 * T))
    missing = 0
    for pid, gens in mb.ok_gens(side).items():
        lats = [mb.latents_of(g) for g in gens]
        if any(x is None for x in lats):
            missing += 1
            continue
        if len(lats) < 2:
            continue
        d = pairwise_l2_by_state(np.stack(lats))  # states 0..T
        curves.append(d)
        early[pid] = float(d[i_early] / d[0]) if d[0] > 0 else float("nan")
    if not curves:
        pytest.skip(
            "full latents were not recorded (--mb-latents none, over the auto size limit, or "
            f"samples came from the cache without latents: {missing} prompts)"
        )
    record_metric(
        f"collapse_early{SUFFIX[side]}",
        mean_stat(list(early.values()), "collapse_early"),
        higher_is_better=True,
        per_prompt=early,
        prompt_set=side,
        description=f"M5: pairwise L2 at state {i_early} / pairwise L2 of the initial noises",
    )
    record_series(
        f"collapse.{side}",
        {"pairwise_l2": np.mean(curves, 0), "n_prompts": len(curves), "state_early": i_early},
    )
