"""Robustness of a mitigation (docs/metrics.md#robustness-sscd-regain): how much SSCD comes back
when the memorized prompts' text embeddings are perturbed a little before the run's mitigation
acts (Kowalczuk et al. 2025, "Finding Dori"; the perturbation:
:mod:`memberbench.mitigations.perturbation`).

Per memorized prompt, with the sweep's seeds (``--sweep-seeds``) and the main guidance, at each
scale of ``--robustness``: the mean over seeds of the SSCD of the perturbed generations minus the
mean over the same seeds of the unperturbed (mitigated) ones; across prompts its mean with the
standard error over prompts, overall and per memorized group.  ``sscd_perturbed.s=S`` is the
perturbed generations' own mean SSCD.  A robust method keeps ``sscd_regain`` near 0 (or below:
a perturbation can also move a prompt away from its training image); plain sampling shows how
much the perturbation alone changes.
"""

from __future__ import annotations

from typing import Any

from memberbench.metrics.declare import Placement, declare
from memberbench.metrics.sscd import sscd_summary, summary_of_gens


def perturbed_sscd_summary(mb: Any, side: str, scale: float, seeds: Any = None) -> Any:
    """SSCDSummary of the generations whose prompt embedding was perturbed by ``scale``
    (:meth:`memberbench.benchrun.BenchRun.perturbed_samples`), memoized in the session."""
    seeds = tuple(mb.config.sweep_seed_list if seeds is None else seeds)

    def compute() -> Any:
        gens = mb.perturbed_samples(side, scale, seeds)
        ok = {p: [g for g in gs if g.ok] for p, gs in gens.items()}
        return summary_of_gens(mb, side, {p: gs for p, gs in ok.items() if gs})

    return mb.memo(("sscd-perturbed", side, float(scale), seeds), compute)


def sscd_regain(mb: Any, side: str, scale: float, seeds: Any = None) -> dict[str, float]:
    """{prompt_id: mean SSCD over seeds after the perturbation minus without it (same seeds)},
    for the prompts scored both ways."""
    seeds = tuple(mb.config.sweep_seed_list if seeds is None else seeds)
    base = sscd_summary(mb, side, None, seeds).per_prompt
    pert = perturbed_sscd_summary(mb, side, scale, seeds).per_prompt
    return {p: pert[p]["mean"] - base[p]["mean"] for p in pert if p in base}


declare(
    "sscd_regain",
    keys=("sscd_regain.s={scale}", "sscd_regain.s={scale}.{group}"),
    family="memorization",
    higher_is_better=False,
    needs_training_image=True,
    description="robustness: mean SSCD after a random text-embedding perturbation of the given "
    "relative size minus without it (the run's mitigation applied both times), mean over "
    "memorized prompts",
    compute=sscd_regain,
    sections=(Placement("robustness", ("sscd_regain.s={scale}", "sscd_regain.s={scale}.{group}")),),
)
declare(
    "sscd_perturbed",
    keys=("sscd_perturbed.s={scale}",),
    family="memorization",
    higher_is_better=False,
    needs_training_image=True,
    description="robustness: mean SSCD of the memorized prompts' generations after a random "
    "text-embedding perturbation of the given relative size (the run's mitigation applied)",
    sections=(Placement("robustness", ("sscd_perturbed.s={scale}",), rank=1),),
)
