"""Memorization severity (docs/metrics.md#sscd-m1): SSCD of the generated images to the prompts' training images.

Per prompt: mean and max SSCD over seeds and the fraction of seeds at or above 0.75 (the
reference paper's threshold) and 0.5 (Somepalli et al.); across prompts: the mean of each, with
its standard error over prompts.  Bare names are the memorized set, ``.nonmem`` the
non-memorized set (scored against each caption's nearest training image), ``.<group>`` a
duplication level or verbatim type of the memorized set.
"""

from __future__ import annotations

import pytest

from memberbench.metrics.sscd import sscd_ceiling, sscd_rel_mean, sscd_summary
from memberbench.metrics.stats import mean_stat

pytestmark = pytest.mark.memberbench

KEYS = (
    ("mean", "sscd_mean"),
    ("max", "sscd_max"),
    ("frac_ge_0.75", "mem_rate_0.75"),
    ("frac_ge_0.5", "mem_rate_0.5"),
)
DESCRIPTIONS = {
    "sscd_mean": "SSCD to the training image, mean over seeds, mean over prompts",
    "sscd_max": "SSCD to the training image, max over seeds, mean over prompts",
    "mem_rate_0.75": "fraction of generations with SSCD >= 0.75 (mean over prompts)",
    "mem_rate_0.5": "fraction of generations with SSCD >= 0.5 (mean over prompts)",
}


def _record_summary(record_metric, summary, side: str, suffix: str, ids=None) -> None:
    per = summary.per_prompt if ids is None else {p: summary.per_prompt[p] for p in ids}
    note = f"{summary.n_skipped} prompts skipped: no training image" if summary.n_skipped else ""
    for key, name in KEYS:
        vals = {pid: d[key] for pid, d in per.items()}
        record_metric(
            name + suffix,
            mean_stat(list(vals.values()), name),
            per_prompt=vals if ids is None else None,
            prompt_set=side,
            description=DESCRIPTIONS[name],
            note=note,
        )


def test_sscd_memorized(mb, record_metric, record_per_prompt):
    mb.require_images("memorized")
    summary = sscd_summary(mb, "memorized")
    if summary.n_scored == 0:
        pytest.skip("no memorized prompt could be scored (no training image or all failed)")
    _record_summary(record_metric, summary, "memorized", "")
    record_per_prompt(
        "sscd_per_seed",
        {pid: [round(float(x), 5) for x in s] for pid, s in summary.scores.items()},
        prompt_set="memorized",
    )


def test_sscd_nonmemorized(mb, record_metric):
    mb.require_images("nonmemorized")
    summary = sscd_summary(mb, "nonmemorized")
    if summary.n_scored == 0:
        pytest.skip("no non-memorized prompt could be scored")
    _record_summary(record_metric, summary, "nonmemorized", ".nonmem")


def test_sscd_by_group(mb, record_metric):
    """Per duplication level ("dup=N") or verbatim type, where the memorized set has groups."""
    mb.require_images("memorized")
    groups = mb.memorized_groups()
    if not groups:
        pytest.skip("the memorized prompt set has no groups (duplication level / verbatim type)")
    summary = sscd_summary(mb, "memorized")
    recorded = 0
    for group, ids in sorted(groups.items()):
        ids = [p for p in ids if p in summary.per_prompt]
        if not ids:
            continue
        for key, name in (
            ("mean", "sscd_mean"),
            ("frac_ge_0.5", "mem_rate_0.5"),
            ("frac_ge_0.75", "mem_rate_0.75"),
        ):
            record_metric(
                f"{name}.{group}",
                mean_stat([summary.per_prompt[p][key] for p in ids], name),
                prompt_set="memorized",
                description=f"{DESCRIPTIONS[name]}; prompts of group {group!r}",
            )
        recorded += 1
    if not recorded:
        pytest.skip("no group has a scored prompt")


def test_sscd_ceiling(mb, record_metric):
    """How far SSCD can go through this model's VAE: each training image against its own VAE
    reconstruction; and the generations' SSCD relative to that ceiling."""
    mb.require_images("memorized")
    ceiling = sscd_ceiling(mb, "memorized")
    if not ceiling:
        pytest.skip("the adapter cannot reconstruct training images (no encode/decode)")
    record_metric(
        "sscd_ceiling",
        mean_stat(list(ceiling.values()), "sscd_ceiling"),
        per_prompt=ceiling,
        prompt_set="memorized",
        description="SSCD of each training image to its own VAE reconstruction",
    )
    rel = sscd_rel_mean(mb, "memorized")
    if rel:
        record_metric(
            "sscd_rel_mean",
            mean_stat(list(rel.values()), "sscd_rel_mean"),
            per_prompt=rel,
            prompt_set="memorized",
            description="per-prompt mean SSCD divided by its VAE-reconstruction ceiling",
        )
