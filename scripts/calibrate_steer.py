#!/usr/bin/env python
"""Per-prompt flag scores of ``overestimation-steer`` on a model's prompt sets, by group.

Prints, for each duplication level / label of the memorized set and for two halves of the
non-memorized set (the first ``--eval`` prompts, which the mitigation sweep evaluates on, and the
rest, kept for calibration), the sorted per-prompt scores, and the calibration half's maximum and
90th percentile: a threshold chosen from the calibration half has not seen the evaluated prompts.
No sampling is done: the score needs only the first step's predictions at the probe noises.

    python scripts/calibrate_steer.py                                   # bundled model
    python scripts/calibrate_steer.py --spec overestimation-steer:probes=5,rho=0.01
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def scores(adapter, recs, spec: str, steps: int, guidance: float) -> np.ndarray:
    from memberbench.mitigations import build_mitigation
    from memberbench.sampling.hooks import SamplerState
    from memberbench.types import GenerationRequest

    sched = adapter.make_scheduler("ddim")
    sched.set_timesteps(steps)
    hook = build_mitigation(spec).hooks()[0]
    reqs = [GenerationRequest(r.caption, seed=0, steps=steps, guidance=guidance) for r in recs]
    B = len(reqs)
    state = SamplerState(
        requests=reqs,
        adapter=adapter,
        scheduler=sched,
        timesteps=sched.timesteps,
        latents=torch.zeros(B, *adapter.latent_shape),
        cond_embeds=adapter.encode_prompts([r.caption for r in recs]),
        uncond_embeds=adapter.encode_prompts([""] * B),
        guidance=torch.full((B,), guidance),
        unet_evals=torch.zeros(B, dtype=torch.long),
    )
    with torch.no_grad():
        hook.on_start(state)
    return np.asarray(state.extra["meta"]["steer_score"], dtype=float)


def main(argv: list[str] | None = None) -> int:
    from memberbench.adapters import load_adapter
    from memberbench.data.sets import load_prompt_set

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--memorized", default="bundled-memorized")
    ap.add_argument("--nonmemorized", default="bundled-nonmemorized")
    ap.add_argument("--spec", default="overestimation-steer")
    ap.add_argument("--eval", type=int, default=20, help="non-memorized prompts the sweep uses")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=7.5)
    a = ap.parse_args(argv)
    ad = load_adapter(a.model, device="cpu", dtype="fp32")
    mem = load_prompt_set(a.memorized).records
    non = load_prompt_set(a.nonmemorized).records
    sm = scores(ad, mem, a.spec, a.steps, a.guidance)
    sn = scores(ad, non, a.spec, a.steps, a.guidance)
    cal, ev = sn[a.eval :], sn[: a.eval]
    print(f"{a.spec} on {a.model}, first step of {a.steps} DDIM steps")
    if len(cal):
        print(
            f"calibration ({len(cal)} held-out prompts after the first {a.eval}): "
            f"max {cal.max():.3f}, q90 {np.quantile(cal, 0.9):.3f}"
        )
        print("  ", np.round(np.sort(cal), 3).tolist())
    print(f"evaluation ({len(ev)} held-out prompts):", np.round(np.sort(ev), 3).tolist())
    groups: dict[str, list[float]] = {}
    for r, v in zip(mem, sm):
        groups.setdefault(r.group or "memorized", []).append(float(v))
    for g in sorted(groups, key=lambda s: (len(s), s)):
        print(f"{g}:", np.round(np.sort(groups[g]), 3).tolist())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
