"""Robustness of the run's mitigation (docs/metrics.md#robustness-sscd-regain): does memorization
come back when the memorized prompts' text embeddings are perturbed a little?

After Kowalczuk et al. (2025, "Finding Dori"), who re-trigger replication after a mitigation by
small changes of the text embedding.  At each scale S of ``--robustness`` (default 0.05, 0.1,
0.2; ``none`` skips the task), every memorized prompt is generated again with the sweep's seeds
(``--sweep-seeds``) at the main guidance, each token of its embedding moved by S times its own
norm in a random direction drawn from the seed, and the run's mitigation applied to it
(memberbench/mitigations/perturbation.py; cached like any generation, the perturbation in the
key).  Recorded: ``sscd_regain.s=S`` (perturbed minus unperturbed mean SSCD per prompt, over the
same seeds; mean over prompts with its standard error), per memorized group
``sscd_regain.s=S.<group>``, and ``sscd_perturbed.s=S``.  Cost: |S| x memorized prompts x sweep
seeds generations (docs/cost-model.md).
"""

from __future__ import annotations

import pytest

from memberbench.metrics.robustness import perturbed_sscd_summary, sscd_regain
from memberbench.metrics.stats import mean_stat

pytestmark = pytest.mark.memberbench
SIDE = "memorized"


def test_sscd_regain_under_embedding_perturbation(mb, record_metric):
    scales = list(mb.config.robustness)
    if not scales:
        pytest.skip("robustness task off (--robustness none)")
    mb.require_images(SIDE)
    groups = mb.memorized_groups()
    recorded = 0
    for s in scales:
        tag = f".s={s:g}"
        regain = sscd_regain(mb, SIDE, s)
        if not regain:
            continue
        record_metric(
            f"sscd_regain{tag}",
            mean_stat(list(regain.values()), "sscd_regain"),
            per_prompt=regain,
            prompt_set=SIDE,
        )
        pert = perturbed_sscd_summary(mb, SIDE, s).prompt_means()
        record_metric(
            f"sscd_perturbed{tag}",
            mean_stat([pert[p] for p in regain], "sscd_perturbed"),
            prompt_set=SIDE,
        )
        for group, ids in sorted(groups.items()):
            vals = [regain[p] for p in ids if p in regain]
            if vals:
                record_metric(
                    f"sscd_regain{tag}.{group}",
                    mean_stat(vals, "sscd_regain"),
                    prompt_set=SIDE,
                    description=f"sscd_regain at scale {s:g}; prompts of group {group!r}",
                )
        recorded += 1
    if not recorded:
        pytest.skip("no memorized prompt could be scored with and without the perturbation")
