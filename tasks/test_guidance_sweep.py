"""Guidance sweep (docs/metrics.md#guidance-sweep-m8): memorization and overestimation as the guidance scale grows.

One test per guidance scale of ``--sweep`` (quick profile: 1, 3, 7.5; paper: 1, 2, 3, 5, 7.5,
10), on the memorized set and the first ``--sweep-limit`` non-memorized prompts, with the first
``--sweep-seeds`` seeds.  Expected on a memorizing model: SSCD, k, D1 and D2 rise with g, and at
g = 1 the effect is much weaker.  Names carry the scale: ``d1.g=3``, ``sscd_mean.g=3.nonmem``.
"""

from __future__ import annotations

import pytest

from memberbench.benchrun import SIDES, SUFFIX
from memberbench.metrics.decomposition import deviations
from memberbench.metrics.noise_magnitude import wen_magnitudes
from memberbench.metrics.overestimation import trajectory_k_per_prompt
from memberbench.metrics.sscd import sscd_summary
from memberbench.metrics.stats import mean_stat

pytestmark = pytest.mark.memberbench


def test_guidance_sweep(mb, record_metric, mb_guidance):
    mb.require_unconditional("the guidance sweep (M8)")  # no CFG scale to sweep without it
    g = float(mb_guidance)
    seeds = mb.config.sweep_seed_list
    tag = f".g={g:g}"
    recorded = 0
    for side in SIDES:
        ids = set(mb.sweep_prompt_ids(side))
        sfx = SUFFIX[side]
        has_images = mb.prompt_set(side).n_with_image > 0
        if has_images:
            summary = sscd_summary(mb, side, g, seeds)
            per = {p: d for p, d in summary.per_prompt.items() if p in ids}
            for key, name in (("mean", "sscd_mean"), ("frac_ge_0.5", "mem_rate_0.5")):
                record_metric(
                    f"{name}{tag}{sfx}",
                    mean_stat([d[key] for d in per.values()], name),
                    prompt_set=side,
                    description=f"M8: {name} at guidance {g:g}",
                )
            dev = {
                p: v for p, v in deviations(mb, side, guidance=g, seeds=seeds).items() if p in ids
            }
            for key, name in (("D1", "d1"), ("D2", "d2")):
                record_metric(
                    f"{name}{tag}{sfx}",
                    mean_stat([v[key] for v in dev.values()], name),
                    prompt_set=side,
                    description=f"M8: {key} (sqrt(abar) schedule) at guidance {g:g}",
                )
            kt = {p: v for p, v in trajectory_k_per_prompt(mb, side, g, seeds).items() if p in ids}
            record_metric(
                f"k_traj_g{tag}{sfx}",
                mean_stat(list(kt.values()), "k_traj_g"),
                prompt_set=side,
                description=f"M8: trajectory k_i(g), first 10 steps, at guidance {g:g}",
            )
        wen = {p: v for p, v in wen_magnitudes(mb, side, 1, g, seeds).items() if p in ids}
        record_metric(
            f"wen.k1{tag}{sfx}",
            mean_stat(list(wen.values()), "wen"),
            prompt_set=side,
            description=f"M8: Wen's ||eps_c - eps_u|| at step 1, guidance {g:g}",
        )
        recorded += 1
    if not recorded:
        pytest.skip("nothing to sweep")
