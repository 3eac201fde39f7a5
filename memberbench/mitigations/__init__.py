"""Inference-time memorization mitigations, one file per method, behind one contract.

``build_mitigation("guidance-schedule:transition_t=800,before=-2")`` resolves a spec
``name:key=value,...`` through :data:`memberbench.registry.MITIGATIONS` (the built-ins below,
registered lazily so nothing heavy is imported until a method is used, plus the
``memberbench.mitigations`` entry-point group for out-of-tree methods) and returns a configured
:class:`Mitigation`; unknown names, unknown parameters and out-of-range values are refused here,
before any generation.

=======================  ===========================  ==========================================
name                     file                         method
=======================  ===========================  ==========================================
none                     none.py                      plain CFG sampling (the baseline row)
guidance-scale           guidance_scale.py            a lower global guidance scale
guidance-schedule        guidance_schedule.py         Jain et al. (CVPR 2025): no / opposite
                                                      guidance until a static or per-sample
                                                      (dynamic) transition step
caption-randomization    caption_randomization.py     Somepalli et al. (NeurIPS 2023): random
                                                      token / number addition to the caption
prompt-embedding         prompt_embedding.py          Wen et al. (ICLR 2024): optimise the prompt
                                                      embedding to shrink ||eps_c - eps_u||
attention-reweight       attention_reweight.py        Ren et al. (ECCV 2024): cross-attention
                                                      re-weighting (BOS logit, summary tokens,
                                                      trigger tokens)
initial-noise            initial_noise.py             Han et al. (NeurIPS 2025): adjust x_T so
                                                      the trajectory leaves the attraction basin
sail                     sail.py                      Jeon et al. (ICML 2025): choose x_T whose
                                                      text-added sharpness at the first step is
                                                      small
prss                     prss.py                      Chen et al. (CVPR 2025): re-anchor CFG on
                                                      the memorized prompt, sample with an
                                                      alternative phrasing
anisotropy-prompt        anisotropy_prompt.py         Asthana & Belagiannis (ICLR 2026): adapt a
                                                      flagged prompt's embedding until its
                                                      anisotropy score is low
overestimation-guard     overestimation_guard.py      ours: cap the early overestimation of the
                                                      guided clean estimate, online
overestimation-steer     overestimation_steer.py      ours: flag a prompt by its text-added
                                                      sharpness before sampling, steer only
                                                      its early steps
=======================  ===========================  ==========================================
"""

from __future__ import annotations

from typing import Any

from memberbench.mitigations.base import Mitigation, Param, count_unet_evals, record_meta
from memberbench.registry import MITIGATIONS, parse_spec
from memberbench.types import MemberbenchError

__all__ = [
    "BUILTIN",
    "Mitigation",
    "Param",
    "build_mitigation",
    "count_unet_evals",
    "describe_mitigations",
    "record_meta",
]

BUILTIN: dict[str, str] = {
    "none": "memberbench.mitigations.none:NoMitigation",
    "guidance-scale": "memberbench.mitigations.guidance_scale:GuidanceScale",
    "guidance-schedule": "memberbench.mitigations.guidance_schedule:GuidanceSchedule",
    "caption-randomization": "memberbench.mitigations.caption_randomization:CaptionRandomization",
    "prompt-embedding": "memberbench.mitigations.prompt_embedding:PromptEmbeddingOptimization",
    "attention-reweight": "memberbench.mitigations.attention_reweight:AttentionReweight",
    "initial-noise": "memberbench.mitigations.initial_noise:InitialNoiseAdjustment",
    "sail": "memberbench.mitigations.sail:SAIL",
    "prss": "memberbench.mitigations.prss:PRSS",
    "anisotropy-prompt": "memberbench.mitigations.anisotropy_prompt:AnisotropyPrompt",
    "overestimation-guard": "memberbench.mitigations.overestimation_guard:OverestimationGuard",
    "overestimation-steer": "memberbench.mitigations.overestimation_steer:OverestimationSteer",
}


def register_builtin_mitigations() -> None:
    """Put the built-in names into MITIGATIONS (idempotent, lazy "module:Class" entries)."""
    for name, entry in BUILTIN.items():
        if name not in MITIGATIONS:
            MITIGATIONS.register(name, entry)


register_builtin_mitigations()


def mitigation_class(name: str) -> type[Mitigation]:
    """The class registered under ``name`` (unknown names list the known ones)."""
    cls = MITIGATIONS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Mitigation)):
        raise MemberbenchError(
            f"mitigation {name!r} is registered as {cls!r}, which is not a Mitigation subclass"
        )
    return cls


def build_mitigation(spec: str | Mitigation | None = None, **overrides: Any) -> Mitigation:
    """A configured mitigation from ``name`` or ``name:key=value,...`` (None means ``none``).

    ``overrides`` are extra parameters (they win over the spec's).  Raises MemberbenchError for an
    unknown name (listing the known ones), an unknown parameter (listing the method's parameters
    with their ranges) or a value out of range (naming the allowed range).
    """
    if isinstance(spec, Mitigation):
        if overrides:
            return type(spec)(**{**spec.config, **overrides})
        return spec
    name, params = parse_spec(spec if spec is not None else "none")
    cls = mitigation_class(name)
    return cls(**{**params, **overrides})


def describe_mitigations() -> dict[str, dict[str, Any]]:
    """Every registered method: citation and parameters (for ``--help`` texts and docs)."""
    out: dict[str, dict[str, Any]] = {}
    for name in MITIGATIONS.names():
        try:
            cls = mitigation_class(name)
        except Exception as e:  # an out-of-tree entry that fails to import: say so, go on
            out[name] = {"error": str(e)}
            continue
        out[name] = {
            "citation": cls.citation,
            "families": sorted(getattr(cls, "families", ())),
            "params": {k: p.describe() for k, p in cls.params.items()},
        }
    return out
