#!/usr/bin/env python
"""Train a bundled model's denoiser and text encoder for more steps, into a new bundle.

Starts from the shipped weights (or any bundle folder: ``model/`` + ``clip/`` +
``recipe.json`` + ``MANIFEST.sha256``, as ``memberbench train-bundled`` writes it), checks its
manifest, and continues ``train_unet`` of the recipe on the same world (the recipe's seed), the
same prediction type and the same latents (the bundle's own VAE).  The VAE, tokenizer, scheduler
and CLIP scorer are copied unchanged.  The new bundle gets its own manifest, and its
``recipe.json`` lists every continuation (source manifest, settings, wall time), so it loads like
the shipped one: ``--model bundled:path=OUT/model``.

What it is for: measuring how far more training moves the bundled model, without retraining the
hour-long recipe, e.g. whether the most duplicated canaries approach the VAE ceiling::

    python scripts/continue_training.py --steps 1200 --out /tmp/more1200
    python scripts/continue_training.py --from /tmp/more1200 --steps 1200 --out /tmp/more2400
    python scripts/latent_error_split.py --model bundled:path=/tmp/more2400/model
    memberbench evidence --model bundled:path=/tmp/more2400/model --guidance 7.5

Nothing is written to ``--out`` until the run has finished (it trains in ``<out>.partial``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--from",
        dest="source",
        default=None,
        help="bundle folder to start from (default: the shipped weights)",
    )
    ap.add_argument("--out", required=True, help="new bundle folder (must not exist)")
    ap.add_argument("--steps", type=int, required=True, help="further training steps")
    ap.add_argument(
        "--lr", type=float, default=2e-4, help="peak learning rate (the refine stage's)"
    )
    ap.add_argument(
        "--ema",
        type=float,
        default=0.999,
        help="EMA decay of the returned weights, as the recipe's refine stage; 0 = no EMA",
    )
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--seed", type=int, default=200, help="seed of the batches and noise")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def _check(args: argparse.Namespace) -> None:
    from memberbench.types import MemberbenchError

    if args.steps < 1:
        raise MemberbenchError(f"--steps must be at least 1, got {args.steps}")
    if args.batch < 1:
        raise MemberbenchError(f"--batch must be at least 1, got {args.batch}")
    if not args.lr >= 0:
        raise MemberbenchError(f"--lr must be 0 or more, got {args.lr}")
    if not 0 <= args.ema < 1:
        raise MemberbenchError(f"--ema must be in [0, 1) (0 = no EMA), got {args.ema}")


def continue_training(args: argparse.Namespace, world: Any = None) -> dict[str, Any]:
    """Run the continuation; returns the entry appended to the new bundle's recipe.json.

    ``world``: the training world to use instead of the recipe's (tests pass a small one)."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    from memberbench.bundled import MANIFEST, WEIGHTS_DIR, verify_manifest, write_manifest
    from memberbench.bundled.train import _encode_modes, images_to_tensor, train_unet
    from memberbench.types import MemberbenchError

    _check(args)
    src = Path(args.source) if args.source else WEIGHTS_DIR
    out = Path(args.out)
    if out.exists():
        raise MemberbenchError(f"--out {out} already exists: choose a new folder or remove it")
    if not (src / "model").is_dir():
        raise MemberbenchError(
            f"--from {src} is not a bundle folder: it has no model/ (expected model/, clip/, "
            f"recipe.json and {MANIFEST}, as `memberbench train-bundled --out DIR` writes)"
        )
    src_digest = verify_manifest(src)  # names a missing or altered file
    recipe_path = src / "recipe.json"
    recipe = json.loads(recipe_path.read_text()) if recipe_path.is_file() else {}
    if args.threads:
        torch.set_num_threads(args.threads)

    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        shutil.copytree(src, tmp)
        pipe = StableDiffusionPipeline.from_pretrained(tmp / "model")
        prediction_type = pipe.scheduler.config.prediction_type
        if world is None:
            from memberbench.bundled.world import build_world

            world = build_world(int(recipe.get("seed", 0)))
        latents = _encode_modes(
            pipe.vae, images_to_tensor(np.stack([it.image for it in world.train]))
        )
        t0 = time.perf_counter()
        unet, text_encoder = train_unet(
            world,
            latents,
            pipe.tokenizer,
            args.steps,
            args.batch,
            args.seed,
            lr=args.lr,
            warmup=min(50, args.steps),
            ema_decay=args.ema or None,
            models=(pipe.unet, pipe.text_encoder),
            desc="continue",
            progress=not args.no_progress,
            prediction_type=prediction_type,
        )
        train_s = time.perf_counter() - t0
        unet.save_pretrained(tmp / "model" / "unet")
        # diffusers records where the weights were loaded from: keep the scratch path out
        config = tmp / "model" / "unet" / "config.json"
        cfg = json.loads(config.read_text())
        cfg.pop("_name_or_path", None)
        config.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        text_encoder.save_pretrained(tmp / "model" / "text_encoder")
        entry = {
            "from": str(src),
            "from_manifest_sha256": src_digest,
            "steps": args.steps,
            "lr": args.lr,
            "ema_decay": args.ema or None,
            "batch": args.batch,
            "seed": args.seed,
            "prediction_type": prediction_type,
            "train_s": round(train_s, 1),
            "torch_threads": torch.get_num_threads(),
            "command": "python scripts/continue_training.py "
            + (f"--from {src} " if args.source else "")
            + f"--steps {args.steps} --lr {args.lr} --ema {args.ema} --batch {args.batch} "
            f"--seed {args.seed} --out DIR",
        }
        recipe.setdefault("continued", []).append(entry)
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2))
        write_manifest(tmp)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return entry


def main(argv: list[str] | None = None) -> int:
    from memberbench.types import MemberbenchError

    args = parse_args(argv)
    try:
        entry = continue_training(args)
    except MemberbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: {entry['steps']} more steps in {entry['train_s']:.0f} s; "
        f"load it with --model bundled:path={Path(args.out) / 'model'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
