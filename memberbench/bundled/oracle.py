"""What a perfect denoiser of the bundled world would show at the first sampling step.

Wen et al.'s magnitude is ``||eps_c - eps_u|| = sqrt(abar / (1 - abar)) ||x0_hat_c - x0_hat_u||``
(``memberbench.metrics.noise_magnitude``).  At the first DDIM step (t = 981 of 1000 on SD's
schedule, ``sqrt(abar / (1 - abar)) = 0.076``) x_T carries almost none of the clean latent, so a
Bayes-optimal denoiser's clean estimates are, to first order, means of its training data: the
conditional one ``E[z | caption]`` over the (image, caption) pairs the UNet trained on, the
unconditional one ``E[z]`` over all of them.  This module computes that magnitude from the data
alone (the world and the VAE, no UNet), for the world as built and for what-if designs of it, so
that a change to the world can be judged before an hour of training:

* a canary caption's conditional mean is ``(dup * z_canary + sum of its decoys) / (dup + n)``
  with ``n`` decoys, so decoys pull it towards the data mean;
* a held-out shape caption names colour, shape and position but leaves the background open, so
  its conditional mean averages the scene over every background; had it named the background
  too (the first design of the world, reported as a what-if), its conditional mean would be one
  specific image, far from the data mean, and held-out prompts would outscore the canaries.

``python -m memberbench.bundled.oracle`` prints the table quoted in
docs/bundled-model.md#evidence-that-it-memorizes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from memberbench.bundled.world import (
    BACKGROUNDS,
    DECOYS_PER_CANARY,
    NUM_HELD_OUT,
    RENDERS_PER_CAPTION,
    World,
    build_world,
    render_shape,
)


def first_step_factor(scheduler: Any, steps: int = 50) -> float:
    """``sqrt(abar / (1 - abar))`` at the first timestep of ``steps``-step sampling."""
    scheduler.set_timesteps(steps)
    ab = float(scheduler.alphas_cumprod[int(scheduler.timesteps[0])])
    return float(np.sqrt(ab / (1.0 - ab)))


def step1_magnitudes(
    world: World,
    encode: Callable[[np.ndarray], np.ndarray],
    factor: float,
    *,
    decoys: Sequence[int] = (DECOYS_PER_CANARY,),
    held_out: int = 50,
    seed: int = 123,
) -> dict[str, Any]:
    """Data-optimal step-1 magnitude per prompt group (``factor * ||E[z|c] - E[z]||``).

    ``encode`` maps uint8 images (N, H, W, 3) to latents (N, ...).  Returns ``held_out`` (per
    prompt, the first ``held_out`` held-out captions, each's mean over ``RENDERS_PER_CAPTION``
    fresh renders on every background), ``canaries`` (``{n_decoys: {dup: [per canary]}}``, with
    ``E[z]`` over the pairs of that design) and ``named_background`` (what-if: the same held-out
    scenes captioned with their background, one value per scene and background)."""
    z = np.asarray(encode(np.stack([it.image for it in world.train])), dtype=np.float64)
    z = z.reshape(len(z), -1)
    own = np.asarray(world.training_indices())
    zsum_own = z[own].sum(0)
    out: dict[str, Any] = {"factor": factor, "canaries": {}}

    def pair_mean(n: int) -> np.ndarray:
        tot, cnt = zsum_own.copy(), len(own)
        for idx in world.decoys.values():
            tot += z[idx[:n]].sum(0)
            cnt += len(idx[:n])
        return tot / cnt

    rng = np.random.default_rng(seed)
    zbar = pair_mean(DECOYS_PER_CANARY)
    ho, named = [], []
    for _cap, scene in world.held_out[:held_out]:
        imgs = np.stack(
            [
                render_shape(*scene, bg, rng=rng)
                for bg in BACKGROUNDS
                for _ in range(RENDERS_PER_CAPTION)
            ]
        )
        zs = np.asarray(encode(imgs), dtype=np.float64).reshape(len(BACKGROUNDS), -1, z.shape[1])
        ho.append(factor * float(np.linalg.norm(zs.mean((0, 1)) - zbar)))
        named.extend(factor * float(np.linalg.norm(zb.mean(0) - zbar)) for zb in zs)
    out["held_out"] = ho
    out["named_background"] = named
    row = {it.caption: i for i, it in enumerate(world.train)}
    for n in decoys:
        mean_n = pair_mean(n)
        per: dict[int, list[float]] = {}
        for c in world.canaries:
            d = z[world.decoys[c.caption][:n]]
            m = (c.duplicates * z[row[c.caption]] + d.sum(0)) / (c.duplicates + len(d))
            per.setdefault(c.duplicates, []).append(factor * float(np.linalg.norm(m - mean_n)))
        out["canaries"][n] = per
    return out


def table(res: dict[str, Any], measured: dict[str, float] | None = None) -> str:
    """Markdown table of ``step1_magnitudes``; ``measured``: group -> Wen step 1 of a model."""
    measured = measured or {}
    lines = [
        "| prompts | decoys per canary | data-optimal step-1 magnitude | measured (shipped UNet) |",
        "|---|---|---|---|",
    ]
    ho = float(np.mean(res["held_out"]))
    m = measured.get("held-out")
    lines.append(
        f"| held-out shape captions (n={len(res['held_out'])}) | | {ho:.2f} | "
        f"{'' if m is None else f'{m:.2f}'} |"
    )
    for n, per in res["canaries"].items():
        for dup in sorted(per, reverse=True):
            v = float(np.mean(per[dup]))
            m = measured.get(f"dup={dup}") if n == DECOYS_PER_CANARY else None
            lines.append(
                f"| canaries dup={dup} | {n} | {v:.2f} | {'' if m is None else f'{m:.2f}'} |"
            )
    nb = float(np.mean(res["named_background"]))
    lines.append(f"| what-if: held-out captions that name the background | | {nb:.2f} | |")
    return "\n".join(lines)


def _measured_from_evidence(path: Path, guidance: str = "7.5") -> dict[str, float]:
    from memberbench.bundled.evidence import load_evidence
    from memberbench.types import MemberbenchError

    data = load_evidence(path)
    if guidance not in data["guidance"]:
        raise MemberbenchError(
            f"{path} has no guidance {guidance} run (it has {', '.join(data['guidance'])}): "
            f"run `memberbench evidence --guidance {guidance} --out ...`"
        )
    per: dict[str, list[float]] = {}
    for p in data["guidance"][guidance]["per_prompt"]:
        per.setdefault(p["group"], []).append(p["wen_1"])
    return {g: float(np.mean(v)) for g, v in per.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m memberbench.bundled.oracle",
        description="Step-1 text-conditional magnitude a Bayes-optimal denoiser of the bundled "
        "world would show (from the data and the VAE alone), as built and for what-if designs.",
    )
    ap.add_argument("--decoys", type=int, nargs="+", default=[DECOYS_PER_CANARY, 32, 0])
    ap.add_argument("--held-out", type=int, default=NUM_HELD_OUT)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument(
        "--evidence",
        type=Path,
        default=None,
        help="docs/evidence.json of `memberbench evidence`, for a measured column (g = 7.5)",
    )
    args = ap.parse_args(argv)
    if any(n < 0 or n > DECOYS_PER_CANARY for n in args.decoys):
        ap.error(f"--decoys must lie in 0..{DECOYS_PER_CANARY} (the world's decoys per canary)")
    if not 1 <= args.held_out <= NUM_HELD_OUT:
        ap.error(f"--held-out must lie in 1..{NUM_HELD_OUT} (the world's held-out captions)")
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    from memberbench.adapters import load_adapter
    from memberbench.types import MemberbenchError

    try:
        measured = _measured_from_evidence(args.evidence) if args.evidence else None
    except MemberbenchError as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2
    ad = load_adapter("bundled")
    factor = first_step_factor(ad.make_scheduler(), args.steps)
    res = step1_magnitudes(
        build_world(0),
        lambda imgs: ad.encode_images(imgs).numpy(),
        factor,
        decoys=args.decoys,
        held_out=args.held_out,
    )
    print(f"sqrt(abar / (1 - abar)) at the first of {args.steps} DDIM steps: {factor:.4f}")
    print(table(res, measured))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
