#!/usr/bin/env python
"""Per-prompt flag scores of ``overestimation-steer`` on a model's prompt sets, by group.

Prints, for each duplication level / label of the memorized set and for two halves of the
non-memorized set (the first ``--eval`` prompts, which the mitigation sweep evaluates on, and the
rest, kept for calibration), the sorted per-prompt scores, and the calibration half's maximum and
90th percentile: a threshold chosen from the calibration half has not seen the evaluated prompts.
No sampling is done for the probe flag (it needs only the first step's predictions at the probe
noises); the trace flag runs its own pre-pass of ``flag_step`` steps per seed.

    python scripts/calibrate_steer.py                                   # bundled model
    python scripts/calibrate_steer.py --spec overestimation-steer:probes=5,rho=0.01
    python scripts/calibrate_steer.py --model bundled-flow --seeds 0-3 \
        --spec overestimation-steer:flag=trace,flag_step=8
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def scores(adapter, recs, spec: str, steps: int, guidance: float, seeds: list[int]) -> np.ndarray:
    """(prompts, seeds) flag scores: the probe flag's are the same for every seed of a prompt,
    the trace flag's are per trajectory (its pre-pass starts from the seed's own x_T)."""
    from memberbench.mitigations import build_mitigation
    from memberbench.sampling.hooks import SamplerState
    from memberbench.sampling.sampler import initial_noise
    from memberbench.types import GenerationRequest

    hook = build_mitigation(spec).hooks()[0]
    out = []
    for seed in seeds:
        reqs = [
            GenerationRequest(r.caption, seed=seed, steps=steps, guidance=guidance) for r in recs
        ]
        sched = adapter.make_scheduler(reqs[0].scheduler)
        sched.set_timesteps(steps)
        B = len(reqs)
        x = torch.stack([initial_noise(seed, adapter.latent_shape)[0]] * B)
        state = SamplerState(
            requests=reqs,
            adapter=adapter,
            scheduler=sched,
            timesteps=sched.timesteps,
            latents=x * float(getattr(sched, "init_noise_sigma", 1.0)),
            cond_embeds=adapter.encode_prompts([r.caption for r in recs]),
            uncond_embeds=adapter.encode_prompts([""] * B),
            guidance=torch.full((B,), guidance),
            unet_evals=torch.zeros(B, dtype=torch.long),
        )
        with torch.no_grad():
            hook.on_start(state)
        out.append(np.asarray(state.extra["meta"]["steer_score"], dtype=float))
    return np.stack(out, 1)


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
    ap.add_argument("--seeds", default="0", help="seeds (the sweep's: 0-3), for flag=trace")
    a = ap.parse_args(argv)
    lo, _, hi = a.seeds.partition("-")
    seeds = list(range(int(lo), int(hi or lo) + 1))
    ad = load_adapter(a.model, device="cpu", dtype="fp32")
    mem = load_prompt_set(a.memorized).records
    non = load_prompt_set(a.nonmemorized).records
    sm = scores(ad, mem, a.spec, a.steps, a.guidance, seeds)
    sn = scores(ad, non, a.spec, a.steps, a.guidance, seeds)
    cal, ev = sn[a.eval :].ravel(), sn[: a.eval].ravel()
    print(
        f"{a.spec} on {a.model}, {a.steps} steps, seeds {a.seeds} (one score per prompt and seed)"
    )
    if len(cal):
        print(
            f"calibration ({len(cal)} held-out prompts after the first {a.eval}): "
            f"max {cal.max():.3f}, q90 {np.quantile(cal, 0.9):.3f}"
        )
        print("  ", np.round(np.sort(cal), 3).tolist())
    print(f"evaluation ({len(ev)} held-out prompts):", np.round(np.sort(ev), 3).tolist())
    groups: dict[str, list[float]] = {}
    for r, v in zip(mem, sm):
        groups.setdefault(r.group or "memorized", []).extend(float(u) for u in v)
    for g in sorted(groups, key=lambda s: (len(s), s)):
        v = np.array(groups[g])
        print(f"{g}:", np.round(np.sort(v), 3).tolist())
        if len(cal):
            print(
                f"   flagged at the calibration max: {np.mean(v > cal.max()):.2f}; at q90: "
                f"{np.mean(v > np.quantile(cal, 0.9)):.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
