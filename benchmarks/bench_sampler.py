"""Benchmark the traced sampler against StableDiffusionPipeline.__call__, and the cache.

    python benchmarks/bench_sampler.py                       # 50 steps, batch 16
    python benchmarks/bench_sampler.py --steps 20 --batch 8 --repeats 5 --threads 1

Prints a small table:

* wall time of ``TracedSampler.sample`` (no reference; with a reference latent, i.e. the full M2-M6
  series; with full latents saved to disk) against the pipeline on the same model, scheduler
  (DDIM, eta 0), guidance, initial latents and batch (target ratio <= 1.05);
* peak resident memory of each mode, each measured in a fresh subprocess as ``ru_maxrss`` minus the
  resident size after loading the model;
* ``run_generation`` with a cold cache vs a warm rerun.

Uses the bundled model when its weights are installed, else a tiny random pipeline of the same
architecture (same cost per step).  A script, not a timed test: numbers on a shared machine are
noisy; the median and the minimum of ``--repeats`` interleaved runs are reported (on a shared
machine the minimum is the better estimate of the intrinsic cost).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = [
    "a red circle on a blue background",
    "a green triangle at the top left",
    "zorblat quennix",
    "a yellow square",
]


def model_spec(tmp: Path) -> tuple[str, str]:
    from memberbench.bundled import WEIGHTS_DIR

    if (WEIGHTS_DIR / "model" / "model_index.json").is_file():
        return "bundled", "bundled model"
    from memberbench.testing import make_tiny_pipeline_dir

    d = tmp / "tiny"
    if not (d / "model_index.json").is_file():
        make_tiny_pipeline_dir(d)
    return f"bundled:path={d}", "tiny random pipeline (bundled architecture)"


def setup(spec: str, steps: int, batch: int):
    import torch

    from memberbench.adapters import load_adapter
    from memberbench.sampling.sampler import initial_noise
    from memberbench.types import GenerationRequest

    ad = load_adapter(spec, device="cpu")
    reqs = [GenerationRequest(PROMPTS[i % len(PROMPTS)], seed=i, steps=steps) for i in range(batch)]
    z = torch.stack([initial_noise(r.seed, ad.latent_shape)[0] for r in reqs])
    refs = [torch.randn(ad.latent_shape, generator=torch.Generator().manual_seed(99))] * batch
    pipe = ad.pipe
    pipe.scheduler = ad.make_scheduler("ddim")
    return ad, reqs, z, refs, pipe


def run_mode(mode: str, ad, reqs, z, refs, pipe, tmp: Path):
    from memberbench.sampling.sampler import TracedSampler

    B = len(reqs)
    if mode == "pipeline":
        return pipe(
            [r.prompt for r in reqs],
            num_inference_steps=reqs[0].steps,
            guidance_scale=reqs[0].guidance,
            latents=z,
            output_type="np",
        )
    if mode == "traced":
        return TracedSampler(ad, batch_size=B).sample(reqs)
    if mode == "traced+ref":
        return TracedSampler(ad, batch_size=B).sample(reqs, refs)
    if mode == "traced+ref+latents":
        return TracedSampler(ad, batch_size=B, record_latents_dir=tmp / "lat").sample(reqs, refs)
    raise ValueError(mode)


MODES = ("pipeline", "traced", "traced+ref", "traced+ref+latents")


def loop_overhead(ad, reqs, refs, repeats: int = 3) -> dict[str, float]:
    """Per-step cost of the traced loop beyond a bare pipeline-style CFG loop, both with a stub
    in place of the UNet and the VAE: a noise-robust measure of what tracing adds."""
    import numpy as np
    import torch

    from memberbench.sampling.sampler import TracedSampler

    steps, B = reqs[0].steps, len(reqs)
    saved = ad.predict_noise, ad.decode
    ad.predict_noise = lambda x, t, e: x * 0.1
    ad.decode = lambda z: np.zeros((len(z), 8, 8, 3), np.uint8)
    try:

        def bare() -> None:
            sch = ad.make_scheduler("ddim")
            sch.set_timesteps(steps)
            x = torch.randn(B, *ad.latent_shape)
            for t in sch.timesteps:
                e = ad.predict_noise(sch.scale_model_input(torch.cat([x] * 2), t), t, None)
                eu, ec = e.chunk(2)
                x = sch.step(eu + 7.5 * (ec - eu), t, x, return_dict=False)[0]

        def best(fn) -> float:
            out = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
            return min(out)

        s = TracedSampler(ad, batch_size=B)
        b0 = best(bare)
        return {
            "traced": (best(lambda: s.sample(reqs)) - b0) / steps * 1e3,
            "traced+ref": (best(lambda: s.sample(reqs, refs)) - b0) / steps * 1e3,
        }
    finally:
        ad.predict_noise, ad.decode = saved


def memory_child(args) -> None:
    """Subprocess: load, then run one mode and print the peak RSS growth (MiB)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    ad, reqs, z, refs, pipe = setup(args.spec, args.steps, args.batch)
    rss0 = _rss_mib()
    run_mode(args.mode, ad, reqs, z, refs, pipe, Path(args.tmp))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"mode": args.mode, "rss0": rss0, "peak": peak, "delta": peak - rss0}))


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--_child", dest="mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_spec", dest="spec", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_tmp", dest="tmp", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        memory_child(args)
        return

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="mb-bench-"))
    spec, what = model_spec(tmp)
    ad, reqs, z, refs, pipe = setup(spec, args.steps, args.batch)
    print(
        f"model: {what} | {args.steps} DDIM steps, guidance 7.5, batch {args.batch}, "
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs"
    )

    # warm-up, then interleaved repeats
    for mode in MODES:
        run_mode(mode, ad, reqs[:2], z[:2], refs[:2], pipe, tmp)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            t0, c0 = time.perf_counter(), time.process_time()
            run_mode(mode, ad, reqs, z, refs, pipe, tmp)
            times[mode].append(time.perf_counter() - t0)
            cpu[mode].append(time.process_time() - c0)
    med = {m: statistics.median(v) for m, v in times.items()}
    best = {m: min(v) for m, v in times.items()}
    cpu_med = {m: statistics.median(v) for m, v in cpu.items()}
    loop_ms = loop_overhead(ad, reqs, refs)

    mem: dict[str, float] = {}
    if not args.skip_memory:
        for mode in MODES:
            cmd = [
                sys.executable, __file__, "--_child", mode, "--_spec", spec, "--_tmp", str(tmp),
                "--steps", str(args.steps), "--batch", str(args.batch),
                "--threads", str(args.threads),
            ]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            mem[mode] = json.loads(out.strip().splitlines()[-1])["delta"]

    # cache: cold vs warm
    from memberbench.cache import GenerationCache
    from memberbench.runner import run_generation

    cache = GenerationCache(tmp / "cache")
    t0 = time.perf_counter()
    run_generation(ad, reqs, references=refs, cache=cache, batch_size=args.batch, progress=False)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_generation(ad, reqs, references=refs, cache=cache, batch_size=args.batch, progress=False)
    warm = time.perf_counter() - t0

    base, base_best, cbase = med["pipeline"], best["pipeline"], cpu_med["pipeline"]
    print()
    print(
        f"{'mode':<20}{'median s':>9}{'ratio':>7}{'min s':>9}{'ratio':>7}"
        f"{'CPU s':>9}{'ratio':>7}{'peak RSS +MiB':>15}"
    )
    for mode in MODES:
        m = f"{mem[mode]:.1f}" if mode in mem else "-"
        print(
            f"{mode:<20}{med[mode]:>9.3f}{med[mode] / base:>7.3f}"
            f"{best[mode]:>9.3f}{best[mode] / base_best:>7.3f}"
            f"{cpu_med[mode]:>9.3f}{cpu_med[mode] / cbase:>7.3f}{m:>15}"
        )
    print("(wall: median and min of the repeats; CPU: median process CPU time)")
    step_ms = base_best / args.steps * 1e3
    print()
    print(f"loop overhead with the UNet stubbed out (ms per step, batch {args.batch}):")
    for k, v in loop_ms.items():
        print(
            f"  {k:<18}{v:>8.2f} ms  = {v / step_ms * 100:5.2f}% of a real step ({step_ms:.0f} ms)"
        )
    print()
    print(f"{'cache':<22}{'wall s':>16}{'per image ms':>14}")
    print(f"{'cold (generate+store)':<22}{cold:>16.3f}{cold / len(reqs) * 1e3:>14.2f}")
    print(f"{'warm (read only)':<22}{warm:>16.3f}{warm / len(reqs) * 1e3:>14.2f}")
    print(f"warm/cold ratio: {warm / cold:.4f}")
    print(f"all runs (s): {json.dumps({k: [round(x, 3) for x in v] for k, v in times.items()})}")


if __name__ == "__main__":
    main()
