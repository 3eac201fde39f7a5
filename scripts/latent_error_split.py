#!/usr/bin/env python
"""Where do a memorized prompt's generations lose SSCD against the VAE ceiling?

For each memorized prompt (by default the bundled canaries with 64 or more copies), generate
its seeds with the benchmark's own sampler (g = 7.5, DDIM 50 unless told otherwise), take each
generation's final latent ``z`` and the training image's latent ``z0``, and split the error
``e = z - z0`` into a coarse part (``e`` averaged over ``--pool`` x ``--pool`` latent pixels and
upsampled back) and the fine rest.  Then decode and score with SSCD against the training image:

* ``gen``       the generation itself, ``decode(z)``;
* ``ceiling``   the VAE's own reconstruction, ``decode(z0)``;
* ``z0+coarse`` the training latent plus only the coarse part of the error;
* ``z0+fine``   the training latent plus only the fine part.

If ``z0+coarse`` scores near the ceiling and ``z0+fine`` near ``gen``, the generations have the
training image's layout and colours right and lose their SSCD to fine latent detail.  Rows are
per duplication level, over all generations and over the copies only (latent cosine to ``z0``
above ``--copy-cos``; the rest are generations that went to other images of the caption).

Usage::

    python scripts/latent_error_split.py                     # bundled canaries, 64+ copies
    python scripts/latent_error_split.py --min-dup 1 --seeds 0-3
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

NAMES = ("gen", "ceiling", "z0+coarse", "z0+fine", "fine share", "latent cos")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--prompts", default="bundled-memorized", help="memorized prompt set")
    ap.add_argument("--min-dup", type=int, default=64, help="prompts with this many copies or more")
    ap.add_argument("--seeds", default="0-9")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--pool", type=int, default=4, help="coarse = mean over pool x pool latents")
    ap.add_argument("--copy-cos", type=float, default=0.5)
    ap.add_argument("--cache-dir", default=None)
    return ap.parse_args(argv)


def measure(args: argparse.Namespace) -> dict[int, dict[str, list[float]]]:
    """Per duplication level: per generation, each of ``NAMES`` (and ``<name> (copies)``, the
    generations whose latent cosine exceeds ``args.copy_cos``).  Raises MemberbenchError on bad
    input."""
    import torch
    import torch.nn.functional as F

    from memberbench.adapters import load_adapter
    from memberbench.benchrun import parse_seeds
    from memberbench.data import load_prompt_set
    from memberbench.metrics.sscd import SSCDScorer
    from memberbench.runner import run_generation
    from memberbench.types import GenerationRequest, MemberbenchError

    seeds = parse_seeds(args.seeds)
    if args.pool < 1:
        raise MemberbenchError(f"--pool must be a positive integer, got {args.pool}")
    records = [
        r
        for r in load_prompt_set(args.prompts).records
        if r.image is not None and (r.duplicates or 0) >= args.min_dup
    ]
    if not records:
        raise MemberbenchError(
            f"no prompt of {args.prompts!r} has a training image and at least "
            f"{args.min_dup} copies: lower --min-dup"
        )
    adapter = load_adapter(args.model)
    scorer = SSCDScorer()
    with torch.no_grad():
        z0 = adapter.encode_images(np.stack([r.image for r in records]))
    if z0.shape[-1] % args.pool or z0.shape[-2] % args.pool:
        raise MemberbenchError(
            f"--pool {args.pool} does not divide the latent size {tuple(z0.shape[-2:])}"
        )
    ref_emb = scorer.embed(np.stack([r.image for r in records]))
    reqs = [
        GenerationRequest(
            prompt=r.caption,
            seed=s,
            steps=args.steps,
            guidance=args.guidance,
            prompt_id=r.prompt_id,
        )
        for r in records
        for s in seeds
    ]
    samples = run_generation(adapter, reqs, cache=args.cache_dir, batch_size=50, progress=False)
    rows: dict[int, dict[str, list[float]]] = {}
    for i, r in enumerate(records):
        own = [s for s in samples[i * len(seeds) : (i + 1) * len(seeds)] if s.ok]
        if not own:
            continue
        z = torch.from_numpy(np.stack([s.final_latent for s in own])).float()
        ref = z0[i : i + 1].expand_as(z)
        e = z - ref
        coarse = F.interpolate(F.avg_pool2d(e, args.pool), scale_factor=args.pool, mode="nearest")
        fine = e - coarse

        def sscd(lat: torch.Tensor, i: int = i) -> np.ndarray:
            with torch.no_grad():
                return scorer.embed(adapter.decode(lat)) @ ref_emb[i]

        cos = F.cosine_similarity(z.flatten(1), ref.flatten(1)).numpy()
        out = rows.setdefault(int(r.duplicates), {})
        for name, v in (
            ("gen", sscd(z)),
            # decoded at the generations' batch shape, like the rows beside it: a decoder's
            # output can move with the batch size by enough to flip uint8 pixels
            ("ceiling", sscd(ref.contiguous())),
            ("z0+coarse", sscd(ref + coarse)),
            ("z0+fine", sscd(ref + fine)),
            ("fine share", (fine.flatten(1).norm(dim=1) / e.flatten(1).norm(dim=1)).numpy()),
            ("latent cos", cos),
        ):
            out.setdefault(name, []).extend(v.tolist())
            out.setdefault(name + " (copies)", []).extend(v[cos > args.copy_cos].tolist())
    return rows


def main(argv: list[str] | None = None) -> int:
    from memberbench.types import MemberbenchError

    args = parse_args(argv)
    try:
        rows = measure(args)
    except MemberbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = list(NAMES)
    print(
        f"model {args.model}, g = {args.guidance}, {args.steps} steps, seeds {args.seeds}, "
        f"coarse = {args.pool}x{args.pool} latent mean; SSCD to the training image\n"
    )
    print("| copies | generations | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    for dup in sorted(rows, reverse=True):
        for suffix, label in (("", "all"), (" (copies)", f"latent cos > {args.copy_cos}")):
            vals = [rows[dup][n + suffix] for n in names]
            if not vals[0]:
                continue
            cells = " | ".join(f"{np.mean(v):.3f}" for v in vals)
            print(f"| {dup} | {len(vals[0])} ({label}) | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
