"""``guidance-schedule``: delayed and opposite classifier-free guidance (Jain et al., CVPR 2025).

Jain, Kobayashi, Shibuya, Takida, Memon, Togelius & Mitsufuji, "Classifier-Free Guidance inside
the Attraction Basin May Cause Memorization", CVPR 2025 (arXiv 2411.16738; code:
github.com/SonyResearch/mitigating_memorization).  Memorization happens because CFG applied
inside an *attraction basin* pulls the trajectory onto the training image; withholding guidance
until the trajectory has left the basin (the *transition point*) avoids it, and *opposite
guidance* (a negative scale) before the transition leaves the basin sooner.  Kim, Kim & Lee (arXiv
2509.25705) locate the overestimation in exactly those first steps, so the schedule removes it
where it arises.

Modes
-----
``static``   the scale ``before`` is used at every sampling timestep ``t > transition_t``, the
             request's guidance from there on (the paper's "static transition point";
             its examples: ``before=0`` until t=500, ``before=-2`` until t=650 on SD 2.1).
``dynamic``  per sample, the transition is the first local minimum of the text-conditional
             magnitude ``||eps_c - eps_u||`` along the trajectory (as in the authors'
             ``generate_test_dataset_dtp.py``: at step j, ``d_j > d_{j-1} < d_{j-2}``); guidance
             switches on from step j.  ``latest_t`` forces the switch at the latest at that
             timestep (0: never force, as in the paper).  The authors' dynamic script uses
             ``before=1`` (conditional prediction only); the default here is 0 for both modes.

Static schedules go through the ``guidance`` hook.  Dynamic ones read step j's predictions in
``observe`` (the signal of step j is only known once the model has run, and the sampler chooses
the guidance after that) and set the scale in ``guidance``, so the trace's ``guidance`` series
shows what was applied.  On flow-matching models the signal is the velocities' difference
``||v_c - v_u||`` (Wen's magnitude on velocity, docs/metrics.md#flow-matching-models).  The transition step
of each sample is recorded as ``Sample.meta["transition_step"]`` (-1: never).  No extra UNet
evaluations.
"""

from __future__ import annotations

import torch

from memberbench.mitigations.base import Mitigation, Param, per_batch, record_meta
from memberbench.sampling.hooks import SamplerState, StepHook


class _StaticSchedule(StepHook):
    def __init__(self, transition_t: int, before: float) -> None:
        self.transition_t = transition_t
        self.before = before

    def on_start(self, state: SamplerState) -> None:
        ts = [float(t) for t in state.timesteps]
        first = next((i for i, t in enumerate(ts) if t <= self.transition_t), -1)
        record_meta(state, "transition_step", [first] * len(state.requests))

    def guidance(
        self, state: SamplerState, i: int, t: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        if float(t) > self.transition_t:
            return torch.full_like(g, self.before)
        return g


class _DynamicSchedule(StepHook):
    def __init__(self, before: float, latest_t: int) -> None:
        self.before = before
        self.latest_t = latest_t

    def on_start(self, state: SamplerState) -> None:
        B = len(state.requests)
        s = per_batch(state, self)
        s["prev"] = torch.full((B,), float("nan"), dtype=torch.float64)
        s["prev2"] = torch.full((B,), float("nan"), dtype=torch.float64)
        s["step"] = torch.full((B,), -1, dtype=torch.long)
        record_meta(state, "transition_step", s["step"])

    def observe(self, state, i, t, pred_u, pred_c):
        s = per_batch(state, self)
        d = (pred_c - pred_u).flatten(1).to(torch.float64).norm(dim=1).cpu()
        on = s["step"] >= 0
        # first local minimum at step i-1: d_i > d_{i-1} and d_{i-2} > d_{i-1} (NaN compares false)
        found = (~on) & (d > s["prev"]) & (s["prev2"] > s["prev"])
        if self.latest_t > 0 and float(t) <= self.latest_t:
            found = found | ~on
        s["step"] = torch.where(found, torch.full_like(s["step"], i), s["step"])
        s["prev2"], s["prev"] = s["prev"], d
        record_meta(state, "transition_step", s["step"])

    def guidance(
        self, state: SamplerState, i: int, t: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        on = per_batch(state, self)["step"] >= 0
        g = torch.as_tensor(g)
        g = g.expand(len(state.requests)) if g.ndim == 0 else g
        return torch.where(on.to(g.device), g, torch.full_like(g, self.before))


class GuidanceSchedule(Mitigation):
    """No guidance (``before=0``), conditional-only (``before=1``) or opposite guidance
    (``before<0``) until a static or per-sample dynamic transition, then the request's scale."""

    name = "guidance-schedule"
    families = frozenset({"sd", "sdxl", "pixart", "sd3"})  # changes only the guidance of each step
    citation = (
        "Jain, Kobayashi, Shibuya, Takida, Memon, Togelius & Mitsufuji, 'Classifier-Free "
        "Guidance inside the Attraction Basin May Cause Memorization', CVPR 2025 "
        "(arXiv 2411.16738)"
    )
    params = {
        "mode": Param(
            str,
            "static",
            "static transition timestep or dynamic per-sample transition",
            choices=("static", "dynamic"),
        ),
        "transition_t": Param(
            int, 500, "static: the scale 'before' is used while the timestep is above this", 0, 1000
        ),
        "before": Param(
            float,
            0.0,
            "guidance scale before the transition (0: none, <0: opposite guidance)",
            -20.0,
            20.0,
        ),
        "latest_t": Param(
            int,
            0,
            "dynamic: switch on guidance at the latest at this timestep (0: never force)",
            0,
            1000,
        ),
    }

    def hooks(self) -> list[StepHook]:
        c = self.config
        if c["mode"] == "static":
            return [_StaticSchedule(c["transition_t"], c["before"])]
        return [_DynamicSchedule(c["before"], c["latest_t"])]
