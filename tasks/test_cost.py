"""Cost of sampling with the mitigation: UNet evaluations and wall time per image.

A fresh generation (never from the cache) of up to 8 requests, with the run's sampler settings
and mitigation, batched as in the rest of the run: half from the memorized set and half from the
non-memorized set, each half spread evenly over its set (so, on the bundled model, over the
duplication levels) with the run's seeds taken in turn.  A mitigation whose work depends on the
prompt (prompt-embedding and initial-noise optimise only until a target is met) is then timed on
easy and hard prompts alike, not on the first few of one kind.  Per image: UNet evaluations
(the sampler's two per step plus whatever the mitigation spends) and wall time (seconds on this
machine: compare wall times only between runs on the same hardware; ``environment`` in the
results says which).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from memberbench.benchrun import SIDES
from memberbench.metrics.stats import mean_stat
from memberbench.types import GenerationRequest

pytestmark = pytest.mark.memberbench
N_IMAGES = 8


def spread(items: list, k: int) -> list:
    """``k`` items evenly spaced over ``items`` (first and last included), or all of them."""
    if k >= len(items):
        return list(items)
    if k <= 0:
        return []
    if k == 1:
        return [items[0]]
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def test_cost_per_image(mb, record_metric):
    from memberbench.runner import run_generation

    reqs, ref_list = [], []
    for side, k in zip(SIDES, (N_IMAGES - N_IMAGES // 2, N_IMAGES // 2)):
        records = list(mb.prompt_set(side))
        refs = mb.references(side)
        for j, rec in enumerate(spread(records, k)):
            reqs.append(
                GenerationRequest(
                    prompt=rec.caption,
                    seed=mb.config.seeds[j % len(mb.config.seeds)],
                    steps=mb.config.steps,
                    guidance=mb.config.guidance,
                    scheduler=mb.config.scheduler,
                    prompt_id=rec.prompt_id,
                )
            )
            ref_list.append(refs.get(rec.prompt_id))
    if not reqs:
        pytest.skip("no prompts")
    t0 = time.perf_counter()
    samples = run_generation(
        mb.adapter,
        reqs,
        references=ref_list,
        mitigation=mb.mitigation,
        cache=None,
        batch_size=mb.config.batch_size,
        progress=False,
    )
    total = time.perf_counter() - t0
    ok = [s for s in samples if s.ok]
    if not ok:
        pytest.skip("every sample of the cost batch failed")
    record_metric(
        "unet_evals_per_image",
        mean_stat([s.unet_evals for s in ok], "unet_evals"),
    )
    record_metric(
        "wall_s_per_image",
        total / len(reqs),
        n=len(reqs),
        note=f"{len(reqs)} images in {total:.2f} s, batch size {mb.config.batch_size}; one "
        "timed batch, so no standard error",
    )
    record_metric(
        "images_per_s",
        len(reqs) / total if total > 0 else float("nan"),
        n=len(reqs),
    )
    assert np.all([s.unet_evals > 0 for s in ok]), "samples report no UNet evaluations"
