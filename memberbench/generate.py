"""``memberbench generate``: generate images with traces, optionally sharded across processes.

Examples::

    memberbench generate --prompt "a red circle" --seeds 0-7 --out out/
    python -m memberbench.generate --prompts-file prompts.txt --model sd-1.4:dtype=fp16 --out out/
    torchrun --standalone --nproc_per_node 2 -m memberbench.generate --prompts-file p.txt \\
        --seeds 0-3 --cache-dir cache/ --out out/            # CPU or GPU processes
    accelerate launch --multi_gpu --num_processes 4 -m memberbench.generate ...   # 4 GPUs

Under a launcher each process generates a disjoint slice of the planned batches into the shared
cache (rank and world size from ``accelerate.PartialState``; RANK / WORLD_SIZE as a fallback) and
writes its own images and traces; every sample keeps the batch, and so the cache key, that one
process gives it, so a cache filled by any number of processes is the cache of one.  Note: accelerate 1.x runs ``accelerate launch --cpu
--num_processes N`` as ONE process unless an MPI hostfile is given (``--mpirun_hostfile``); that
process then generates everything (correct, not parallel).  On CPUs use torchrun.

``memberbench generate --tasks [BENCHMARK OPTIONS]`` instead generates what ``pytest tasks/``
with those options will ask for, under the keys the tasks use, into the cache only (any number of
processes or independent jobs with RANK / WORLD_SIZE), so that the suite then only reads it.

Output per request: ``<out>/<stem>.png`` (ok samples) and ``<out>/<stem>.json`` (request, status,
UNet evaluations, wall time, trace series and scalars), where ``stem`` is
``p<prompt index>-s<seed>``; and ``<out>/run.json`` (model, mitigation, settings) from rank 0.
Bad input exits with status 2 and one line naming the parameter and what is allowed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from memberbench.types import MemberbenchError

PROG = "memberbench generate"


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage block) and exit with status 2."""

    def error(self, message: str):  # type: ignore[override]
        # a declared option's message already starts with its flag: no "argument --x: " before it
        flag, sep, rest = message.removeprefix("argument ").partition(": ")
        if sep and rest.startswith(flag.split("/")[0] + " "):
            message = rest
        self.exit(2, f"{self.prog}: error: {message}\n")


def _finite_float(name: str, low: float | None = None, high: float | None = None):
    def conv(s: str) -> float:
        import math

        what = "a finite number"
        if low is not None and high is not None:
            what += f" in [{low}, {high}]"
        elif low is not None:
            what += f" >= {low:g}"
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {s!r}") from None
        if not math.isfinite(v) or (low is not None and v < low) or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {s!r}")
        return v

    return conv


# The benchmark's options that apply to generation (memberbench.config.OPTIONS: value syntax,
# checks, metavar, help and default declared there once), by field, with generate's flag where
# it differs from the declared one, and generate's own defaults where they differ.
SHARED_FLAGS = {
    "model": "--model",
    "mitigation": "--mitigation",
    "seeds": "--seeds",
    "steps": "--steps",
    "guidance": "--guidance",
    "scheduler": "--scheduler",
    "device": "--device",
    "dtype": "--dtype",
    "batch_size": "--batch-size",
    "cache_dir": "--cache-dir",
}
OWN_DEFAULTS: dict[str, Any] = {"seeds": None}  # seed 0, not a profile's seeds
OWN_HELP = {"seeds": " (default 0)"}


def _declared_type(field_name: str, flag: str):
    """The declared option's parser as an argparse type (its one-line message, naming
    ``flag``); the scheduler name is also resolved (the benchmark checks it after parsing)."""
    from memberbench.config import BY_FIELD

    opt = BY_FIELD[field_name]

    def conv(s: str) -> Any:
        if not s.strip():
            raise argparse.ArgumentTypeError(f"{flag} is empty: give a value ({opt.rule})")
        try:
            value = opt.parse(s, flag)
            if field_name == "scheduler":
                from memberbench.sampling.schedulers import check_scheduler_name

                check_scheduler_name(value)
        except MemberbenchError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value

    conv.__name__ = opt.metavar or field_name  # argparse names the type in some messages
    return conv


class _CacheDir(argparse.Action):
    """``--cache-dir none`` is ``--no-cache`` (as in the benchmark's options)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None):
        if values == "none":
            namespace.no_cache = True
            values = None
        setattr(namespace, self.dest, values)


def _add_declared(p: argparse.ArgumentParser, field_name: str, flag: str | None = None) -> None:
    from memberbench.config import BY_FIELD

    opt = BY_FIELD[field_name]
    flag = flag or SHARED_FLAGS[field_name]
    if field_name in OWN_DEFAULTS:
        default = OWN_DEFAULTS[field_name]
    else:
        default = opt.parse_value(opt.raw_default("quick"))
    shown = OWN_HELP.get(field_name)
    if shown is None:
        d = opt.default_text()
        shown = f" (default {d})" if d else ""
    kw: dict[str, Any] = {"action": _CacheDir} if field_name == "cache_dir" else {}
    p.add_argument(
        flag,
        type=_declared_type(field_name, flag),
        default=default,
        metavar=opt.metavar or None,
        help=(opt.help + shown).replace("%", "%%"),
        dest=field_name,
        **kw,
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Generate images with per-step traces.")
    src = p.add_argument_group("prompts")
    src.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    src.add_argument(
        "--prompts-file",
        help="text file with one prompt per line, or .jsonl with a 'prompt' or 'caption' field",
    )
    p.add_argument(
        "--seed", type=_declared_type("seeds", "--seed"), metavar="S", help="same as --seeds"
    )
    for field_name in SHARED_FLAGS:
        _add_declared(p, field_name)
    p.add_argument("--eta", type=_finite_float("--eta", 0.0, 1.0), default=0.0)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--out", default="memberbench-out", help="output folder")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument("--record-latents", action="store_true", help="also save full latents (npz)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-images", action="store_true", help="write traces only")
    return p


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    for k, p in enumerate(prompts, 1):
        if not p.strip():
            raise MemberbenchError(
                f"--prompt number {k} is empty: give a caption (an empty prompt is the "
                "unconditional one, which --guidance already uses)"
            )
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise MemberbenchError(f"--prompts-file: no such file {str(path)!r}")
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise MemberbenchError(
                f"--prompts-file {str(path)!r} is not UTF-8 text (line {line}): give a text file "
                "with one prompt per line, or .jsonl with a 'prompt' or 'caption' field"
            ) from None
        if "\x00" in text:
            line = text[: text.index("\x00")].count("\n") + 1
            raise MemberbenchError(
                f"--prompts-file {str(path)!r} is binary (a NUL byte on line {line}): give a "
                "text file with one prompt per line, or .jsonl with a 'prompt' or 'caption' field"
            )
        if path.suffix == ".jsonl":
            for k, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise MemberbenchError(
                        f"--prompts-file: line {k} of {path} is not valid JSON"
                    ) from None
                p = rec.get("prompt", rec.get("caption")) if isinstance(rec, dict) else None
                if not isinstance(p, str):
                    raise MemberbenchError(
                        f"--prompts-file: line {k} of {path} has no 'prompt' or 'caption' string"
                    )
                if not p.strip():
                    raise MemberbenchError(
                        f"--prompts-file: line {k} of {path} has an empty caption: give one or "
                        "delete the line"
                    )
                prompts.append(p)
        else:
            prompts.extend(line.strip() for line in text.splitlines() if line.strip())
    if not prompts:
        raise MemberbenchError(
            "no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE with at least one"
        )
    return prompts


# launchers' world-size variables: torchrun / accelerate (torch.distributed), mpirun (Open MPI,
# Intel MPI / MPICH, MVAPICH)
_WORLD_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def dist_info() -> tuple[int, int, Any]:
    """(rank, world_size, state) from accelerate's PartialState (or RANK/WORLD_SIZE)."""
    world = max(int(os.environ.get(k, "1") or 1) for k in _WORLD_VARS)
    if world > 1:
        try:
            from accelerate import PartialState

            st = PartialState(cpu=True) if not _has_gpu() else PartialState()
            return st.process_index, st.num_processes, st
        except Exception:  # noqa: BLE001 - fall back to the launcher's variables
            return int(os.environ.get("RANK", "0")), world, None
    return 0, 1, None


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in (
        "1",
        "true",
        "yes",
    )


def _stem(prompt_index: int, seed: int) -> str:
    return f"p{prompt_index:04d}-s{seed}"


def write_sample(out: Path, stem: str, sample: Any, images: bool = True, rank: int = 0) -> None:
    from memberbench.io import atomic_write_text

    if images and sample.image is not None:
        from PIL import Image

        from memberbench.io import atomic_open

        with atomic_open(out / f"{stem}.png", "wb") as f:
            Image.fromarray(sample.image).save(f, format="PNG")
    rec = {
        "request": sample.request.to_dict(),
        "status": sample.status,
        "failed_step": sample.failed_step,
        "error": sample.error,
        "unet_evals": sample.unet_evals,
        "wall_time_s": sample.wall_time_s,
        "image": f"{stem}.png" if sample.image is not None and images else None,
        "meta": sample.meta,
        "rank": rank,
        "trace": sample.trace.to_dict(),
    }
    atomic_write_text(out / f"{stem}.json", json.dumps(rec, default=_json_default))


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _check_folder(flag: str, value: str) -> Path:
    """A folder to write into: refused when it, or the first existing folder above it, is a
    file (before any model loads; nothing is created here)."""
    path = Path(value).expanduser()
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == path else f"is inside {str(p)!r}, which is a file"
                raise MemberbenchError(
                    f"{flag} {value!r} {where}: pass a folder (created if missing)"
                )
            break
    return path


def _check_steps(steps: int, adapter: Any) -> None:
    trained = int(adapter.scheduler_config.get("num_train_timesteps") or 0)
    if trained and steps > trained:
        raise MemberbenchError(
            f"--steps {steps} is more than the {trained} timesteps this model was trained with; "
            f"use --steps {trained} or fewer (e.g. 50)"
        )


def run(args: argparse.Namespace) -> int:
    from memberbench.types import GenerationRequest

    prompts = read_prompts(args)
    out = _check_folder("--out", args.out)
    if not args.no_cache and args.cache_dir is not None:
        _check_folder("--cache-dir", args.cache_dir)
    if args.seed is not None and args.seeds is not None:
        raise MemberbenchError("give either --seed or --seeds, not both")
    seeds = args.seeds or args.seed or [0]
    requests = [
        GenerationRequest(
            prompt=p,
            seed=s,
            steps=args.steps,
            guidance=args.guidance,
            scheduler=args.scheduler,
            eta=args.eta,
            negative_prompt=args.negative_prompt,
            prompt_id=f"p{pi:04d}",
        )
        for pi, p in enumerate(prompts)
        for s in seeds
    ]
    stems = [_stem(pi, s) for pi in range(len(prompts)) for s in seeds]

    from memberbench.runner import resolve_mitigation, run_generation

    mitigation = resolve_mitigation(args.mitigation)  # bad specs fail before loading a model
    rank, world, state = dist_info()
    from memberbench.ranks import launcher_mismatch

    if warn := launcher_mismatch():
        print(f"{PROG}: {warn}", file=sys.stderr)
    from memberbench.adapters import load_adapter

    adapter = load_adapter(args.model, device=args.device, dtype=args.dtype)
    _check_steps(args.steps, adapter)
    if mitigation is not None:
        mitigation.check_compatible(adapter)
    from memberbench.cache import GenerationCache

    cache = None if args.no_cache else GenerationCache(args.cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    latents_dir = out / "latents" if args.record_latents else None
    gen: dict[str, Any] = {}
    samples = run_generation(  # this rank's share of the batches a single process would run
        adapter,
        requests,
        mitigation=mitigation,
        cache=cache,
        batch_size=args.batch_size,
        record_latents_dir=latents_dir,
        progress=not args.no_progress and rank == 0,
        stats=gen,
        shard=(rank, world),
    )
    idx = list(gen["indices"])
    generation = {
        "requested": len(idx),
        "generated": int(gen.get("generated", 0)),
        "padding_rows": int(gen.get("padding", 0)),
        "from_cache": int(gen.get("cached", 0)),
        "cache": cache.stats() if cache is not None else None,
    }
    where = f" (rank {rank} of {world})" if world > 1 else ""
    c = generation["cache"]
    print(
        f"{PROG}{where}: {generation['generated']} of {len(idx)} images generated, "
        f"{generation['from_cache']} from the cache"
        + (
            f" ({c['hits']} hits, {c['misses']} misses, {c['corrupt']} corrupt entries regenerated)"
            if c is not None
            else " (cache off)"
        ),
        file=sys.stderr,
    )
    for i, s in zip(idx, samples):
        write_sample(out, stems[i], s, images=not args.no_images, rank=rank)
    failed = sum(not s.ok for s in samples)
    if state is not None and world > 1:
        state.wait_for_everyone()
    if rank == 0:
        from memberbench.io import atomic_write_text

        run_info = {
            "model": adapter.describe(),
            "mitigation": mitigation.spec() if mitigation is not None else "none",
            "settings": {
                "steps": args.steps,
                "guidance": args.guidance,
                "scheduler": args.scheduler,
                "eta": args.eta,
                "negative_prompt": args.negative_prompt,
                "seeds": seeds,
            },
            "prompts": prompts,
            "samples": stems,
            "world_size": world,
            "cache_dir": str(cache.root) if cache is not None else None,
        }
        if world == 1:  # under a launcher each rank prints its own line
            run_info["generation"] = generation
        atomic_write_text(out / "run.json", json.dumps(run_info, indent=1, default=_json_default))
    if failed:
        print(
            f"{PROG}: {failed} of {len(samples)} samples failed (non-finite latents)",
            file=sys.stderr,
        )
    return 0


class _OptionGroup:
    """pytest's ``group.addoption`` over an argparse parser (for the benchmark's options)."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def addoption(self, *flags: str, **kw: Any) -> None:
        self.parser.add_argument(*flags, **kw)


def run_tasks(argv: list[str]) -> int:
    """``memberbench generate --tasks [BENCHMARK OPTIONS]``: generate into the cache exactly
    the generations ``pytest tasks/`` with the same options asks for (same requests, training
    latents, batches, so the same cache keys), so that the suite then only reads the cache.
    Under a launcher, or with RANK / WORLD_SIZE set by hand for independent jobs, each process
    generates its share of the batches (no process waits for another)."""
    from memberbench import ranks
    from memberbench.benchrun import BenchRun
    from memberbench.config import add_pytest_options, make_config, raw_pytest_options

    parser = _Parser(
        prog=f"{PROG} --tasks",
        description="Generate the task suite's generations into the cache (the options of "
        "`memberbench run` / pytest tasks/; docs/options.md).",
    )
    add_pytest_options(_OptionGroup(parser))
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    rank, world = ranks.world()
    warn = ranks.launcher_mismatch()
    if warn:
        print(f"{PROG}: {warn}", file=sys.stderr)
    cfg = make_config(raw_pytest_options(lambda dest: getattr(ns, dest)))
    run = BenchRun(cfg, log=lambda msg: print(msg, file=sys.stderr))
    if run.cache_dir is None:  # before the model loads
        raise MemberbenchError(
            "--tasks fills the generation cache the tasks read: pass --cache-dir DIR, not none"
        )
    try:
        _check_steps(cfg.steps, run.adapter)
        run.mitigation.check_compatible(run.adapter)
        d = run.pregenerate(rank, world)
    finally:
        run.close()
    where = f" (rank {rank} of {world})" if world > 1 else ""
    c = d["cache"]
    print(
        f"{PROG} --tasks{where}: {d['generated']} of {d['requested']} images generated, "
        f"{d['from_cache']} from the cache ({c['hits']} hits, {c['misses']} misses, "
        f"{c['corrupt']} corrupt entries regenerated) in {run.cache.root}",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--tasks"]:
        try:
            return run_tasks(argv[1:])
        except MemberbenchError as e:
            print(f"{PROG} --tasks: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted (finished samples are in the cache)", file=sys.stderr)
            return 130
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    try:
        return run(args)
    except MemberbenchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (finished samples are in the cache)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
