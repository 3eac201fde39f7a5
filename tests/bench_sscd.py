"""Throughput of SSCD embedding (images/second); a measurement, not a timed assertion.

As a script:   python tests/bench_sscd.py [--n 64] [--batch 16] [--size 512] [--threads N]
With pytest-benchmark (not collected by default; name it explicitly):
               python -m pytest tests/bench_sscd.py -p no:memberbench --benchmark-only
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def make_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def measure(n: int = 64, batch: int = 16, size: int = 512, threads: int | None = None) -> dict:
    from memberbench.metrics.sscd import SSCDScorer

    sc = SSCDScorer(batch_size=batch, threads=threads)
    ims = make_images(n, size)
    sc.embed(ims[:batch])  # warm-up (session creation, first run)
    t0 = time.perf_counter()
    sc.embed(ims)
    dt = time.perf_counter() - t0
    return {"images": n, "batch": batch, "size": size, "seconds": dt, "images_per_s": n / dt}


def test_bench_sscd_embed(benchmark):
    from memberbench.metrics.sscd import SSCDScorer

    sc = SSCDScorer(batch_size=16)
    ims = make_images(16, 512)
    sc.embed(ims[:1])
    benchmark.extra_info["images_per_call"] = len(ims)
    emb = benchmark(sc.embed, ims)
    assert emb.shape == (16, 512)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    r = measure(a.n, a.batch, a.size, a.threads)
    print(
        f"SSCD (int8 ONNX, skew_320): {r['images']} images {r['size']}x{r['size']} in "
        f"{r['seconds']:.2f} s, batch {r['batch']}: {r['images_per_s']:.1f} images/s"
    )
