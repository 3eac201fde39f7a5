#!/usr/bin/env python
"""Hyperparameter sweeps of every mitigation, written as leaderboard rows.

Each setting is one benchmark run (``pytest tasks/... --mitigation SPEC``) that writes a full
results file through the results API of the pytest plugin (``memberbench.results``) to
``<out>/<model>/sweep--<slug(spec)>.json`` (plus its ``.prompts.jsonl``), which ``memberbench
leaderboard`` turns into the tables and the SSCD-vs-CLIP trade-off figure.  Every run uses the
same model, prompt sets, seeds, steps and guidance, so the rows are paired: the same (prompt,
seed) requests under every method, and the ``none`` row is their common baseline.  Generations
go through the shared cache, so rerunning a sweep only computes what is new.

Usage::

    python scripts/sweep_mitigations.py --list                       # the settings
    python scripts/sweep_mitigations.py --dry-run                    # the commands
    python scripts/sweep_mitigations.py                              # everything, bundled model
    python scripts/sweep_mitigations.py --methods none,guidance-schedule --seeds 0-3 --steps 50
    python scripts/sweep_mitigations.py --model sd-1.4 --profile paper --out leaderboard/results
    python scripts/sweep_mitigations.py --only overestimation-guard:threshold=2.5 --seeds 0-1
    python scripts/sweep_mitigations.py --skip-existing -- --limit 8   # args after -- go to pytest

Then ``memberbench leaderboard`` rebuilds ``leaderboard/README.md`` and the figures.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# At least three settings per method, spanning weak to strong.  Values were calibrated on the
# bundled model's 32 px build (same 4x16x16 latents; recheck on the 64 px one); targets in
# eps_diff_norm units scale with the latent size (SD 1.x latents are 16x larger, so norms
# about 4x larger).
SWEEPS: dict[str, list[str]] = {
    "none": ["none"],
    "guidance-scale": [f"guidance-scale:scale={g}" for g in (1.0, 2.0, 3.5, 5.0)],
    "guidance-schedule": [
        *(f"guidance-schedule:transition_t={t},before=0" for t in (800, 600, 500)),
        *(f"guidance-schedule:transition_t={t},before=-2" for t in (800, 600)),
        "guidance-schedule:mode=dynamic,before=1,latest_t=600",
        "guidance-schedule:mode=dynamic,before=0",
        "guidance-schedule:mode=dynamic,before=-2,latest_t=600",
    ],
    "caption-randomization": [
        *(f"caption-randomization:mode=token,count={k}" for k in (1, 4, 8)),
        *(f"caption-randomization:mode=number,count={k}" for k in (1, 4, 8)),
    ],
    "prompt-embedding": [
        f"prompt-embedding:target={tgt},max_iters=10,lr=0.05" for tgt in (0.6, 0.3, 0.15)
    ],
    "attention-reweight": [
        *(f"attention-reweight:c1={c}" for c in (1.1, 1.25, 1.5)),
        "attention-reweight:c1=1.25,trigger_top_k=2,trigger_scale=0.3",
    ],
    "initial-noise": [
        *(f"initial-noise:target={tgt},max_iters=30,lr=0.02" for tgt in (0.6, 0.3, 0.15)),
        *(f"initial-noise:mode=batch,rho={r}" for r in (0.2, 0.39, 0.8)),
    ],
    "overestimation-guard": [
        *(f"overestimation-guard:threshold={thr}" for thr in (1.5, 2.0, 3.0)),
        "overestimation-guard:threshold=1.5,window=1",
    ],
    # targets in the anisotropy detector's units; on the bundled model (50 DDIM steps, seeds
    # 0-1) held-out prompts score 0.42-1.40 (mean 0.88), the 64-copy canaries 0.31-1.61 (mean
    # 1.18), the 256-copy ones 1.16-2.64 (mean 2.17): weak (most 256-copy samples) to strong
    # (most held-out samples adapted too)
    "anisotropy-prompt": [
        f"anisotropy-prompt:target={tgt},max_iters=10,lr=0.05" for tgt in (1.6, 1.2, 0.8)
    ],
    # thresholds in the units of the bundled model's flag scores (scripts/calibrate_steer.py)
    "overestimation-steer": [f"overestimation-steer:threshold={thr}" for thr in (0.35, 0.45, 0.6)],
    # SAIL's objective at x_T on the bundled model (docs/mitigations.md): held-out prompts
    # 2.3-3.05, 64/256-copy canaries 2.1-3.95; the first target keeps the held-out ones as they are
    "sail": [
        *(f"sail:target={tgt}" for tgt in (3.0, 2.6, 2.2)),
        "sail:target=2.6,candidates=4",
    ],
    # PRSS: first-step ||eps_c - eps_u|| on the bundled model, held-out prompts 0.6-1.45,
    # 256-copy canaries 1.0-2.3 (the reference's 1 / 3 / 5 are SD 1.4's units); no language
    # model ships, so the search is none (re-anchoring alone) or Wen's embedding optimisation
    "prss": [
        "prss:target_ss=1.35,target_pr=1.5,thres_pr=2.5",
        "prss:target_ss=1.35,target_pr=1.0,thres_pr=2.0",
        "prss:target_ss=1.0,target_pr=1.0,thres_pr=1.5",
        "prss:target_ss=1.35,target_pr=1.5,thres_pr=2.5,search=embedding",
    ],
}

# Settings that differ by model (units are the model's own): on the flow-matching transformer
# the steer's probe flag is refused (flow models have no DDPM first step), so it is swept with
# the trace flag, whose thresholds come from the calibration half of the held-out prompts only
# (scripts/calibrate_steer.py --model bundled-flow --seeds 0-3 --spec
# overestimation-steer:flag=trace,flag_step=K): at step 8 its maximum 8.12 and 90th percentile
# 6.50, at step 10 its maximum 6.91 (2 x 10 extra evaluations: 1.2x plain sampling), at step 12
# its maximum 6.16 (1.24x, over the 1.2x budget)
MODEL_SWEEPS: dict[str, dict[str, list[str]]] = {
    "bundled-flow": {
        "overestimation-steer": [
            "overestimation-steer:flag=trace,flag_step=8,threshold=8.12",
            "overestimation-steer:flag=trace,flag_step=8,threshold=6.5",
            "overestimation-steer:flag=trace,flag_step=10,threshold=6.91",
            "overestimation-steer:flag=trace,flag_step=12,threshold=6.16",
        ],
    },
}

# The task files that score a mitigation: memorization (SSCD, rates), overestimation (D1/D2, k),
# utility (CLIP score on both sets), cost (UNet evaluations, wall time per image) and robustness
# (how much SSCD a perturbed text embedding brings back under the method).
DEFAULT_TASKS = (
    "tasks/test_memorization.py",
    "tasks/test_overestimation.py",
    "tasks/test_utility.py",
    "tasks/test_cost.py",
    "tasks/test_robustness.py",
)


def settings(methods: list[str] | None, model: str = "bundled") -> list[str]:
    sweeps = {**SWEEPS, **MODEL_SWEEPS.get(model, {})}
    names = methods or list(sweeps)
    unknown = [m for m in names if m not in sweeps]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; swept: {', '.join(sweeps)}")
    specs = ["none"] + [s for m in names for s in sweeps[m] if s != "none"]
    settings_check(specs)  # refuse a bad setting before running anything
    return specs


def settings_check(specs: list[str]) -> None:
    from memberbench.mitigations import build_mitigation

    for s in specs:
        build_mitigation(s)


def command(spec: str, args: argparse.Namespace, out: Path, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", *args.tasks, "-q", "-p", "no:cacheprovider"]
    cmd += ["--model", args.model, "--mitigation", spec, "--results", str(out)]
    cmd += ["--seeds", args.seeds, "--steps", str(args.steps), "--guidance", str(args.guidance)]
    cmd += ["--sweep", "none"]
    if args.profile:
        cmd += ["--profile", args.profile]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    return cmd + extra


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        k = argv.index("--")
        argv, extra = argv[:k], argv[k + 1 :]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="bundled", help="model spec (default: bundled)")
    ap.add_argument("--methods", default="", help="comma-separated methods (default: all)")
    ap.add_argument(
        "--only", action="append", default=[], help="run just this spec (repeatable; + none)"
    )
    ap.add_argument("--seeds", default="0-3", help="seeds, the same for every run (default 0-3)")
    ap.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    ap.add_argument("--guidance", type=float, default=7.5, help="guidance scale (default 7.5)")
    ap.add_argument("--profile", default="", help="pytest plugin profile (quick / paper)")
    ap.add_argument("--cache-dir", default="", help="generation cache folder (plugin default)")
    ap.add_argument("--out", default=str(ROOT / "leaderboard" / "results"), help="results root")
    ap.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="task files to run")
    ap.add_argument(
        "--prefix",
        default="sweep--",
        help="file-name prefix of the rows (default 'sweep--'): a sweep never overwrites the "
        "model's main rows (e.g. <model>/none.json from a full `memberbench run`), and its own "
        "'none' row is the paired baseline of its settings",
    )
    ap.add_argument("--skip-existing", action="store_true", help="keep rows already written")
    ap.add_argument("--list", action="store_true", help="print the settings and exit")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = ap.parse_args(argv)

    from memberbench.registry import parse_spec, slug

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] or None
    specs = settings(methods, args.model)
    if args.only:
        specs = ["none"] + [s for s in args.only if s != "none"]
        settings_check(specs)
    if args.list:
        for s in specs:
            print(s)
        return 0
    model_dir = Path(args.out) / slug(parse_spec(args.model)[0])
    failures = []
    for n, spec in enumerate(specs, 1):
        out = model_dir / f"{args.prefix}{slug(spec)}.json"
        cmd = command(spec, args, out, extra)
        if args.dry_run:
            print(shlex.join(cmd))
            continue
        if args.skip_existing and out.is_file():
            print(f"[{n}/{len(specs)}] {spec}: exists, skipped ({out})")
            continue
        print(f"[{n}/{len(specs)}] {spec} -> {out}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=ROOT)
        print(f"    exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0 or not out.is_file():
            failures.append(spec)
    if failures:
        print("runs without a results file or with failing tasks:", *failures, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
