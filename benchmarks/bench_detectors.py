"""Speed of every declared detector per prompt, against one plain generation of the prompt.

    OMP_NUM_THREADS=1 python benchmarks/bench_detectors.py              # bundled model, CPU
    python benchmarks/bench_detectors.py --sd15                         # SD 1.5 size, fp16, GPU

For each detector (``memberbench.metrics.declare.detector``) at each of its windows k: its
declared cost per prompt (UNet evaluations and gradient passes over the run's seeds), the
measured wall time of its read-out on top of the run's generations, the seconds per prompt it
costs on its own (read-out, plus for a detector that reads the generations the share of the
generation it reads: its UNet evaluations at the generation's measured seconds per evaluation)
and that cost as a ratio to one plain generation of the prompt (all its seeds, CFG, every step).

Every (detector, window) is measured cold: what it memoizes in the run is dropped before the
next one, the generations are kept (made once, first, with a fresh cache).  ``--sd15`` builds an
SD 1.5-architecture pipeline with random weights (benchmarks/bench_sd_scale.py; random weights
cost what trained ones do) in fp16 on CUDA and refuses with one line when CUDA is absent.  A
script, not a test: speed targets live here, never in timed assertions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _sd15_run(cfg, tmp: Path):
    """A BenchRun whose adapter is a random-weight SD 1.5-size pipeline (fp16, CUDA)."""
    import torch
    from bench_sd_scale import build_random_sd

    from memberbench.adapters.stable_diffusion import StableDiffusionAdapter
    from memberbench.benchrun import BenchRun

    pipe, n = build_random_sd(512)
    print(f"random SD 1.5-size pipeline: UNet {n / 1e6:.0f} M parameters", file=sys.stderr)
    run = BenchRun(cfg, log=lambda s: print(s, file=sys.stderr))
    run._adapter = StableDiffusionAdapter(pipe, None, device="cuda", dtype=torch.float16)
    return run


def plain_generation(run, cfg, sync) -> float:
    """Seconds to generate every prompt of the run at its seeds, CFG, every step, decoded:
    the plain pipeline (no cache, no mitigation, no reference decomposition), after a warm-up
    (the detectors' own generations were made first)."""
    from memberbench.config import SIDES
    from memberbench.runner import run_generation
    from memberbench.types import GenerationRequest

    reqs = [
        GenerationRequest(
            prompt=rec.caption,
            seed=int(seed),
            steps=cfg.steps,
            guidance=cfg.guidance,
            scheduler=cfg.scheduler,
            prompt_id=rec.prompt_id,
        )
        for side in SIDES
        for rec in run.prompt_set(side)
        for seed in cfg.seeds
    ]
    sync()
    t0 = time.perf_counter()
    run_generation(run.adapter, reqs, batch_size=cfg.batch_size, progress=False)
    sync()
    return time.perf_counter() - t0


def measure(args: argparse.Namespace) -> dict:
    import torch

    from memberbench.benchrun import BenchRun
    from memberbench.config import SIDES, make_config
    from memberbench.metrics.declare import detectors

    cuda = args.sd15

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    tmp = Path(tempfile.mkdtemp(prefix="bench-detectors-"))
    opts = {
        "model": "bundled",
        "seeds": args.seeds,
        "steps": str(args.steps),
        "limit": str(args.prompts),
        "cache_dir": str(tmp / "cache"),
        "device": "cuda" if cuda else "cpu",
        "latents": "none",
    }
    cfg = make_config(opts)
    run = _sd15_run(cfg, tmp) if args.sd15 else BenchRun(cfg, log=lambda s: None)
    adapter = run.adapter  # loaded before any clock starts
    n_seeds, steps = len(cfg.seeds), cfg.steps
    n_prompts = sum(len(run.ok_gens(side)) for side in SIDES)  # the detectors' generations
    gen_per_prompt = plain_generation(run, cfg, sync) / n_prompts
    gen_evals = 2 * steps * n_seeds  # CFG: two UNet evaluations per step and seed
    s_per_eval = gen_per_prompt / gen_evals
    kept = set(run._memo)
    rows = []
    for det in sorted(detectors(), key=lambda d: d.name):
        why = det.skip_reason(run)
        for k in det.windows_for(steps, (1, 5, 50)):
            evals, grads = det.cost(k, n_seeds, steps)
            row = {"detector": det.name, "k": k, "unet_evals": evals, "grad_passes": grads}
            if why:
                rows.append({**row, "skipped": why})
                continue
            for key in set(run._memo) - kept:  # cold: nothing of an earlier detector left
                del run._memo[key]
            t0 = time.perf_counter()
            n = 0
            for side in SIDES:
                n += len(det.compute(run, side, k))
            sync()
            readout = (time.perf_counter() - t0) / max(n, 1)
            alone = readout + (0.0 if det.own_calls else evals * s_per_eval)
            rows.append(
                {
                    **row,
                    "own_calls": det.own_calls,
                    "readout_s": readout,
                    "s_per_prompt": alone,
                    "ratio": alone / gen_per_prompt,
                }
            )
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "model": "random SD 1.5-size (fp16)" if args.sd15 else "bundled",
        "device": str(adapter.device)
        + (
            f" ({torch.cuda.get_device_name()})" if cuda else f", {torch.get_num_threads()} threads"
        ),
        "torch": torch.__version__,
        "prompts": n_prompts,
        "seeds": n_seeds,
        "steps": steps,
        "generation_s_per_prompt": gen_per_prompt,
        "generation_unet_evals_per_prompt": gen_evals,
        "rows": rows,
    }


def table(res: dict) -> str:
    from tabulate import tabulate

    body = []
    for r in res["rows"]:
        k = f"k{r['k']}" + (" (all)" if r["k"] == res["steps"] else "")
        if "skipped" in r:
            body.append(
                [r["detector"], k, f"{r['unet_evals']:g}", f"{r['grad_passes']:g}"]
                + [f"skipped: {r['skipped']}", "", ""]
            )
            continue
        body.append(
            [
                r["detector"],
                k,
                f"{r['unet_evals']:g}" + (" own" if r["own_calls"] else ""),
                f"{r['grad_passes']:g}",
                f"{r['readout_s']:.3g}",
                f"{r['s_per_prompt']:.3g}",
                f"{r['ratio']:.3g}",
            ]
        )
    head = (
        f"{res['date']}, {res['model']} on {res['device']}, torch {res['torch']}: "
        f"{res['prompts']} prompts x {res['seeds']} seeds, {res['steps']} steps; one plain "
        f"generation of a prompt: {res['generation_unet_evals_per_prompt']} UNet evaluations, "
        f"{res['generation_s_per_prompt']:.3g} s"
    )
    return (
        head
        + "\n\n"
        + tabulate(
            body,
            headers=[
                "detector",
                "k",
                "UNet evals",
                "grad passes",
                "read-out s/prompt",
                "s/prompt",
                "x generation",
            ],
            tablefmt="github",
            disable_numparse=True,
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=4, help="prompts of each set (default 4)")
    p.add_argument("--seeds", default="0-3", help="seeds of each prompt (default 0-3)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    p.add_argument("--sd15", action="store_true", help="SD 1.5-size random weights, fp16 on CUDA")
    p.add_argument("--json", help="also write the measurements to this file")
    args = p.parse_args(argv)
    if args.sd15:
        import torch

        if not torch.cuda.is_available():
            print(
                "bench_detectors: --sd15 runs SD 1.5-size fp16 on a CUDA GPU and this machine "
                "has none; run it on a GPU machine, or drop --sd15 for the CPU benchmark",
                file=sys.stderr,
            )
            return 2
    res = measure(args)
    print(table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
