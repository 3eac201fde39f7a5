#!/usr/bin/env python
"""How much of the VAE ceiling does SSCD give a near-copy, per canary kind?

A memorized generation is never the training latent exactly: the bundled model's copies sit at
latent cosine 0.9-0.97 to it.  This script renders fresh canaries of every kind of the bundled
world (with and without its surface texture), encodes them with a model's VAE, perturbs each
latent ``z0`` by random noise scaled to a given cosine to ``z0`` (white noise per latent pixel,
and the same noise smoothed over 2 x 2 latent pixels), decodes, and scores against the image
with SSCD.  It prints, per kind and texture, the ceiling (SSCD of ``decode(z0)``) and each
perturbation's SSCD as a share of that ceiling.  The images are not in the training data, so the
ceilings are lower than a trained canary's; the shares are what the kinds are compared on.

Usage::

    python scripts/sscd_robustness.py                       # bundled model, 8 canaries a kind
    python scripts/sscd_robustness.py --n 16 --cos 0.97,0.9 --texture 0,0.2,0.4
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def _floats(text: str, name: str, low: float, high: float) -> list[float]:
    from memberbench.types import MemberbenchError

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(low <= v <= high for v in values):
        raise MemberbenchError(
            f"--{name} takes comma-separated numbers in [{low}, {high}], got {text!r}"
        )
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--n", type=int, default=8, help="canaries rendered per kind")
    ap.add_argument("--cos", default="0.95,0.9", help="latent cosines of the perturbed copies")
    ap.add_argument("--texture", default=None, help="texture amplitudes (default: 0 and shipped)")
    ap.add_argument("--seed", type=int, default=1)
    return ap.parse_args(argv)


def perturb(z0, cos: float, smooth: int, seed: int):
    """``z0`` plus noise whose norm puts each result at cosine ``cos`` to its ``z0`` in
    expectation (exactly, for noise orthogonal to ``z0``)."""
    import torch
    import torch.nn.functional as F

    e = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    if smooth > 1:
        e = F.interpolate(F.avg_pool2d(e, smooth), scale_factor=smooth, mode="bilinear")
    # remove the part along z0 so that the cosine is exact
    flat, ref = e.flatten(1), z0.flatten(1)
    flat = flat - (flat * ref).sum(1, keepdim=True) / (ref * ref).sum(1, keepdim=True) * ref
    scale = ref.norm(dim=1, keepdim=True) * np.sqrt(1 / cos**2 - 1) / flat.norm(dim=1, keepdim=True)
    return z0 + (flat * scale).reshape(z0.shape)


def measure(args: argparse.Namespace) -> list[dict]:
    import torch

    from memberbench.adapters import load_adapter
    from memberbench.bundled.world import CANARY_KINDS, CANARY_TEXTURE, render_canary
    from memberbench.metrics.sscd import SSCDScorer
    from memberbench.types import MemberbenchError

    if args.n < 1:
        raise MemberbenchError(f"--n must be a positive integer, got {args.n}")
    cosines = _floats(args.cos, "cos", 0.05, 1.0)
    textures = (
        [0.0, CANARY_TEXTURE] if args.texture is None else _floats(args.texture, "texture", 0, 1)
    )
    adapter = load_adapter(args.model)
    scorer = SSCDScorer()
    rows = []
    for kind in CANARY_KINDS:
        for amp in [0.0] if kind == "noise texture" else textures:
            rng = np.random.default_rng(args.seed)
            images = np.stack([render_canary(kind, rng, texture=amp) for _ in range(args.n)])
            ref = scorer.embed(images)
            with torch.no_grad():
                z0 = adapter.encode_images(images)

                def sscd(z, ref: np.ndarray = ref) -> np.ndarray:
                    return np.sum(scorer.embed(adapter.decode(z)) * ref, axis=1)

                ceiling = sscd(z0)
                row = {"kind": kind, "texture": amp, "ceiling": float(ceiling.mean())}
                for smooth in (1, 2):
                    for c in cosines:
                        got = sscd(perturb(z0, c, smooth, args.seed))
                        row[f"{'white' if smooth == 1 else 'smooth'} {c:g}"] = float(
                            np.mean(got / ceiling)
                        )
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    from memberbench.types import MemberbenchError

    args = parse_args(argv)
    try:
        rows = measure(args)
    except MemberbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cols = [k for k in rows[0] if k not in ("kind", "texture", "ceiling")]
    print(
        f"{args.n} fresh canaries a kind, model {args.model}; SSCD of the perturbed copy / ceiling"
    )
    print()
    print("| kind | texture | VAE ceiling | " + " | ".join(f"cos {c}" for c in cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for r in rows:
        vals = " | ".join(f"{r[c]:.2f}" for c in cols)
        print(f"| {r['kind']} | {r['texture']:g} | {r['ceiling']:.3f} | {vals} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
