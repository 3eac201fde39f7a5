"""What a benchmark run costs: generations and UNet evaluations per task, and the wall time.

``memberbench cost --profile paper --model sd-1.4 [--images-per-s X] [--gpus 1,8]`` prints, per
task, the generations and the UNet evaluations the suite makes with a profile's defaults
(:mod:`memberbench.config`), counted the way the code spends them:

* the main generations (every prompt of both sides, every seed, the main guidance) are made once
  and shared by the memorization, diversity, utility, overestimation and detection tasks;
* the guidance sweep generates every memorized prompt and the first ``--sweep-limit``
  non-memorized ones with the first ``--sweep-seeds`` seeds at each scale, except a scale that
  equals the main guidance (its samples are the main ones);
* the robustness task generates every memorized prompt with the sweep's seeds at the main
  guidance once per perturbation scale of ``--robustness`` (its text embedding perturbed);
* the cost task generates 8 images afresh (never from the cache);
* M2 (overestimation's training-pair loss) runs the UNet without sampling: per prompt with a
  training image (the first ``--m2-limit`` of each set), ``min(10, steps)`` timesteps, the
  conditional and the unconditional prediction of ``--m2-noises`` noises;
* a generation costs ``2 * steps`` UNet evaluations (conditional and unconditional every step,
  at every guidance scale: the traces record both), plus the mitigation's own (none here).

Wall time: given a measured generation throughput (images per second at the run's steps and
batch size on one device), ``T(N) = (G_shared / N + G_rank0 + E_m2 / (2 * steps)) / ips``: the
ranks share the main and sweep generations (batches dealt in turn), rank 0 alone makes the
cost task's images and M2 (and the SSCD / CLIP embeddings and metrics, not counted here).

The prompt counts come from the sets themselves when they are on this machine (the bundled
ones), else from :data:`KNOWN_SET_SIZES` (the remote sets' row counts), or ``--prompts M,N``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memberbench.types import MemberbenchError

# rows of the field's remote sets (not downloadable offline): Webster's SD1 ground truth and
# NeMo's non-memorized LAION prompts
KNOWN_SET_SIZES = {"webster-sd1": 500, "nemo-sd1-nonmemorized": 500}
COST_TASK_IMAGES = 8  # tasks/test_cost.py's N_IMAGES
M2_TIMESTEPS = 10  # BenchRun.training_pair: the first min(10, steps) timesteps


@dataclass(frozen=True)
class TaskCost:
    task: str
    generations: int
    unet_evals: int
    distributed: bool  # shared by the ranks of a multi-process run (else rank 0 alone)
    note: str


def _set_size(spec: str) -> int:
    if spec in KNOWN_SET_SIZES:
        return KNOWN_SET_SIZES[spec]
    try:
        from memberbench.data import load_prompt_set

        return len(load_prompt_set(spec))
    except Exception as e:  # noqa: BLE001 - a remote set offline, a missing file
        raise MemberbenchError(
            f"cannot count the prompts of {spec!r} ({type(e).__name__}); pass --prompts M,N "
            "(memorized, non-memorized)"
        ) from None


def suite_cost(
    profile: str = "paper",
    model: str = "sd-1.4",
    *,
    prompts: tuple[int, int] | None = None,
    images: tuple[int, int] | None = None,
    **options: Any,
) -> list[TaskCost]:
    """Per task, the generations and UNet evaluations of ``pytest tasks/ --profile PROFILE
    --model MODEL`` (``options``: other option fields, raw as on the command line).
    ``prompts``: (memorized, non-memorized) prompt counts (default: the model card's sets);
    ``images``: how many of them have a training image (default: all, the most M2 costs)."""
    from memberbench.config import make_config

    cfg = make_config({"profile": profile, "model": model, **options})
    if prompts is None:
        from memberbench.adapters import model_card

        sets = dict(getattr(model_card(model), "prompt_sets", None) or {})
        sides = ("memorized", "nonmemorized")
        given = (cfg.prompts_memorized, cfg.prompts_nonmemorized)
        prompts = tuple(_set_size(g or sets[s]) for s, g in zip(sides, given))  # type: ignore[assignment]
    n_mem, n_non = prompts
    lim = cfg.limit
    if isinstance(lim, int):
        n_mem, n_non = min(n_mem, lim), min(n_non, lim)
    elif isinstance(lim, dict):
        n_mem = min(n_mem, lim.get("memorized", n_mem))
        n_non = min(n_non, lim.get("nonmemorized", n_non))
    i_mem, i_non = images if images is not None else (n_mem, n_non)
    per_gen = 2 * cfg.steps
    seeds = len(cfg.seeds)
    rows = [
        TaskCost(
            "main generations (memorization, diversity, utility, overestimation, detection)",
            (n_mem + n_non) * seeds,
            (n_mem + n_non) * seeds * per_gen,
            True,
            f"{n_mem} + {n_non} prompts x {seeds} seeds at guidance {cfg.guidance:g}",
        )
    ]
    sweep_seeds = cfg.sweep_seed_list
    sweep_non = n_non if cfg.sweep_limit <= 0 else min(n_non, cfg.sweep_limit)
    scales = [
        g
        for g in cfg.sweep
        if not (float(g) == cfg.guidance and set(sweep_seeds) <= set(cfg.seeds))
    ]
    g_sweep = len(scales) * (n_mem + sweep_non) * len(sweep_seeds)
    rows.append(
        TaskCost(
            "guidance sweep",
            g_sweep,
            g_sweep * per_gen,
            True,
            f"scales {','.join(f'{g:g}' for g in scales) or 'none'} (the main guidance's samples "
            f"are shared) x ({n_mem} + {sweep_non} prompts) x {len(sweep_seeds)} seeds",
        )
    )
    n_rob = len(cfg.robustness) * n_mem * len(sweep_seeds)
    rows.append(
        TaskCost(
            "robustness",
            n_rob,
            n_rob * per_gen,
            True,
            f"perturbation scales {','.join(f'{s:g}' for s in cfg.robustness) or 'none'} x "
            f"{n_mem} memorized prompts x {len(sweep_seeds)} seeds",
        )
    )
    rows.append(
        TaskCost("cost", COST_TASK_IMAGES, COST_TASK_IMAGES * per_gen, False, "fresh, never cached")
    )
    m2_mem = i_mem if cfg.m2_limit <= 0 else min(i_mem, cfg.m2_limit)
    m2_non = i_non if cfg.m2_limit <= 0 else min(i_non, cfg.m2_limit)
    t = min(M2_TIMESTEPS, cfg.steps)
    rows.append(
        TaskCost(
            "overestimation: M2 training-pair loss",
            0,
            (m2_mem + m2_non) * t * 2 * cfg.m2_noises,
            False,
            f"({m2_mem} + {m2_non} prompts with an image) x {t} timesteps x 2 x "
            f"{cfg.m2_noises} noises",
        )
    )
    return rows


def wall_time_s(rows: Sequence[TaskCost], images_per_s: float, gpus: int, steps: int) -> float:
    """Projected seconds of the suite on ``gpus`` devices at ``images_per_s`` generations per
    second each (generation and M2 only: see the module docstring)."""
    if not images_per_s > 0 or gpus < 1:
        raise MemberbenchError("--images-per-s must be > 0 and --gpus positive integers")
    shared = sum(r.generations for r in rows if r.distributed)
    alone = sum(r.generations for r in rows if not r.distributed)
    m2 = sum(r.unet_evals for r in rows if r.generations == 0)
    return (shared / gpus + alone + m2 / (2 * steps)) / images_per_s


def table(rows: Sequence[TaskCost]) -> str:
    """The rows as a Markdown table (docs/cost-model.md holds the paper profile's)."""
    lines = [
        "| task | generations | UNet evaluations | shared by the ranks | what |",
        "|---|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.task} | {r.generations:,} | {r.unet_evals:,} | "
            f"{'yes' if r.distributed else 'no (rank 0)'} | {r.note} |"
        )
    g = sum(r.generations for r in rows)
    e = sum(r.unet_evals for r in rows)
    lines.append(f"| **total** | **{g:,}** | **{e:,}** | | |")
    return "\n".join(lines)


def doc_block(
    profile: str = "paper", model: str = "sd-1.4", gpus: Sequence[int] = (1, 2, 4, 8)
) -> str:
    """docs/cost-model.md's generated part: the table and the device-time per device count in
    image-equivalents (seconds at 1 image/s: divide by the measured images/s)."""
    from memberbench.config import make_config

    rows = suite_cost(profile, model)
    steps = make_config({"profile": profile, "model": model}).steps
    lines = [
        table(rows),
        "",
        "| devices | image-equivalents (wall s at 1 image/s) |",
        "|---:|---:|",
    ]
    for n in gpus:
        lines.append(f"| {n} | {wall_time_s(rows, 1.0, n, steps):,.0f} |")
    return "\n".join(lines)


def _hms(s: float) -> str:
    h, rem = divmod(int(math.ceil(s)), 3600)
    return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"


def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"give two counts M,N, got {text!r}") from None
    if a < 0 or b < 0:
        raise argparse.ArgumentTypeError(f"counts must be >= 0, got {text!r}")
    return a, b


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage block) and exit with status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    p = _Parser(prog="memberbench cost", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--profile", default="paper")
    p.add_argument("--model", default="sd-1.4")
    p.add_argument("--steps", default=None, help="override the profile's steps")
    p.add_argument("--prompts", type=_pair, default=None, help="M,N prompts per side")
    p.add_argument("--images", type=_pair, default=None, help="M,N of them with an image")
    p.add_argument("--images-per-s", type=float, default=None, help="measured throughput")
    p.add_argument("--gpus", default="1,8", help="device counts to project for (1,8)")
    p.add_argument("--markdown", action="store_true", help="print docs/cost-model.md's table")
    try:
        ns = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        if ns.images_per_s is not None and not ns.images_per_s > 0:
            raise MemberbenchError(f"--images-per-s must be > 0, got {ns.images_per_s:g}")
        try:
            counts = [int(x) for x in ns.gpus.split(",")]
        except ValueError:
            counts = [0]
        if min(counts) < 1:
            raise MemberbenchError(f"--gpus: give device counts like 1,8, got {ns.gpus!r}")
        if ns.markdown:
            print(doc_block(ns.profile, ns.model))
            return 0
        opts = {"steps": ns.steps} if ns.steps else {}
        rows = suite_cost(ns.profile, ns.model, prompts=ns.prompts, images=ns.images, **opts)
        print(f"memberbench cost --profile {ns.profile} --model {ns.model}:")
        print(table(rows))
        if ns.images_per_s is not None:
            from memberbench.config import make_config

            steps = make_config({"profile": ns.profile, "model": ns.model, **opts}).steps
            for n in counts:
                s = wall_time_s(rows, ns.images_per_s, n, steps)
                print(f"projected on {n} device(s) at {ns.images_per_s:g} images/s each: {_hms(s)}")
    except MemberbenchError as e:
        print(f"memberbench cost: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
