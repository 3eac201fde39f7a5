"""``memberbench`` command line.

Subcommands (each imports what it needs only when run)::

    memberbench run [PYTEST/PLUGIN OPTIONS...]   the benchmark: `pytest tasks/` with the options
    memberbench generate ...                     images + traces for prompts (memberbench.generate)
    memberbench validate FILE [FILE...] [--allow-failed]
                                                 check results files against the schema (a
                                                 failed run is flagged and exits 1)
    memberbench leaderboard [--root DIR] [--add FILE]... [--replace] [--allow-failed]
                                                 add runs (all or none); rebuild README.md
                                                 and figures
    memberbench compare BASELINE CURRENT [--fail SPEC] [--force]
                                                 compare two results files (regression check)
    memberbench train-bundled --out DIR ...      retrain the bundled model
    memberbench evidence ...                     the bundled model's evidence report
    memberbench fetch-images SOURCE --out DIR    recover a prompt set's training images from
                                                 its URLs (memberbench.data.fetch)
    memberbench cost [--profile P] [--model M] [--images-per-s X --gpus 1,8]
                                                 generations and UNet evaluations per task
                                                 (memberbench.cost; docs/cost-model.md)
    memberbench list [KIND] [--tasks DIR]        what is registered, one line each: models,
                                                 mitigations, prompt-sets, detectors, tasks

``memberbench run --processes N ...`` runs it as N ranks (memberbench.ranks.launch): each
generates its share of the generations into the shared cache, rank 0 writes the results.
``memberbench run`` passes every other argument after it to pytest, e.g.
``memberbench run --model sd-1.4 --profile paper -x``; ``--tasks DIR`` picks another task
folder (default: the installed package's ``memberbench.tasks``, which a wheel ships from the
repository's tasks/ folder; in a source checkout, that tasks/ folder).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memberbench.types import MemberbenchError

PASSTHROUGH = ("run", "generate", "evidence", "cost")


def find_tasks_dir(explicit: str | None = None) -> Path:
    """The task folder: ``--tasks DIR``, else the installed package's ``memberbench.tasks``
    (found through importlib, whatever the current directory), else the tasks/ folder of the
    source checkout the package is imported from (a clone on PYTHONPATH)."""
    if explicit:
        p = Path(explicit)
        if not p.is_dir():
            raise MemberbenchError(f"--tasks {explicit}: no such folder")
        return p
    for here in _packaged_tasks_dirs():
        if (here / "test_memorization.py").is_file():
            return here
    here = Path(__file__).resolve().parents[1] / "tasks"
    if (here / "test_memorization.py").is_file():
        return here
    raise MemberbenchError(
        "could not find the memberbench task suite (memberbench.tasks in the installed package, "
        "or tasks/ beside a source checkout): reinstall memberbench or pass --tasks DIR"
    )


def _packaged_tasks_dirs() -> list[Path]:
    from importlib.util import find_spec

    try:
        spec = find_spec("memberbench.tasks")
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    return [Path(p) for p in (spec.submodule_search_locations or ())]


def cmd_run(argv: Sequence[str]) -> int:
    """`pytest <tasks> <argv>` in this process; returns pytest's exit code."""
    import pytest

    args = list(argv)
    tasks = None
    if "--tasks" in args:
        i = args.index("--tasks")
        if i + 1 >= len(args):
            raise MemberbenchError("--tasks needs a folder")
        tasks = args[i + 1]
        del args[i : i + 2]
    else:
        for a in list(args):
            if a.startswith("--tasks="):
                tasks = a.split("=", 1)[1]
                args.remove(a)
    processes = _pop_processes(args)
    if processes is not None and processes > 1:  # each rank runs this command without it
        from memberbench.ranks import launch

        rest = ([f"--tasks={tasks}"] if tasks else []) + args
        return launch([sys.executable, "-m", "memberbench.cli", "run", *rest], processes)
    target = find_tasks_dir(tasks)
    # -p memberbench.pytest_plugin makes the plugin available even without installed metadata
    plugin_args = [] if _plugin_installed() else ["-p", "memberbench.pytest_plugin"]
    # memberbench is already imported here, so pytest cannot assertion-rewrite the plugin
    # module; that is expected, not worth a warning
    quiet = ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
    # tasks outside the current folder (the installed package's): pytest's rootdir (its cache,
    # the baselines' default folder, the test ids' base) is the current folder, not an ancestor
    # of site-packages
    root = [] if _inside_cwd(target) or _has_rootdir(args) else [f"--rootdir={Path.cwd()}"]
    return int(pytest.main([str(target), *quiet, *plugin_args, *root, *args]))


def _inside_cwd(path: Path) -> bool:
    return path.resolve().is_relative_to(Path.cwd().resolve())


def _has_rootdir(args: Sequence[str]) -> bool:
    return any(a == "--rootdir" or a.startswith("--rootdir=") for a in args)


def _pop_processes(args: list[str]) -> int | None:
    """Remove ``--processes N`` / ``--processes=N`` from ``args``; N, or None if absent."""
    for i, a in enumerate(args):
        if a == "--processes" or a.startswith("--processes="):
            raw = a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
            del args[i : i + (1 if "=" in a else 2)]
            if not raw.isdigit() or int(raw) < 1:
                raise MemberbenchError(
                    f"--processes must be a positive integer (1, 2, ...), got {raw!r}"
                )
            return int(raw)
    return None


def _plugin_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.value == "memberbench.pytest_plugin" for ep in entry_points(group="pytest11"))


def cmd_generate(argv: Sequence[str]) -> int:
    from memberbench import generate

    return int(generate.main(list(argv)) or 0)


def cmd_evidence(argv: Sequence[str]) -> int:
    from memberbench.bundled import evidence

    return int(evidence.main(list(argv)) or 0)


def cmd_validate(ns: argparse.Namespace) -> int:
    from memberbench.results import run_failures, validate_file

    status = 0
    for f in ns.files:
        errors, doc = validate_file(f)
        if errors:
            status = 1
            print(f"{f}: INVALID")
            for e in errors:
                print(f"  - {e}")
            continue
        n = len(doc.get("metrics") or {})
        summary = (
            f"schema_version {doc['schema_version']}, model {doc['model']['name']}, "
            f"mitigation {doc['mitigation']['spec']}, {n} metrics"
        )
        failures = run_failures(doc)
        if failures:
            if not ns.allow_failed:
                status = 1
            print(f"{f}: FAILED RUN ({summary})")
            for e in failures:
                print(f"  - {e}")
            if not ns.allow_failed:
                print("  (the schema is fine; pass --allow-failed to accept failed runs)")
        else:
            print(f"{f}: ok ({summary})")
    return status


def cmd_leaderboard(ns: argparse.Namespace) -> int:
    from memberbench.leaderboard import add_runs, build

    if ns.add:
        added, readme, errors, entries = add_runs(
            ns.add,
            ns.root,
            replace=ns.replace,
            allow_failed=ns.allow_failed,
            figures=not ns.no_figures,
        )
        for src, dst in added:
            print(f"added {src} as {dst}")
    else:
        readme, errors, entries = build(ns.root, figures=not ns.no_figures)
    print(f"wrote {readme} ({len(entries)} runs)")
    from memberbench.site import build_site

    site, n_pages = build_site(ns.root)
    print(f"wrote {site}/ ({n_pages} pages; open {site}/index.html)")
    for e in errors:
        print(f"invalid: {e}", file=sys.stderr)
    return 1 if errors else 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from memberbench.compare import (
        check_patterns,
        compare_runs,
        format_table,
        identity_differences,
        parse_tolerances,
    )
    from memberbench.results import load_results

    base = load_results(ns.baseline)
    cur = load_results(ns.current)
    diffs = identity_differences(base, cur)
    if diffs and not ns.force:
        raise MemberbenchError(
            "the baseline comes from a different setup; refusing to compare (pass --force to "
            "compare anyway):\n  " + "\n  ".join(diffs)
        )
    tols = parse_tolerances(ns.fail)
    check_patterns(tols, list((base.get("metrics") or {}).keys()))
    comps = compare_runs(base, cur.get("metrics") or {}, tols)
    if diffs:
        print("warning: compared despite differences (--force):\n  " + "\n  ".join(diffs))
    print(format_table(comps, only_checked=ns.only_checked))
    failed = [c for c in comps if c.failed]
    for c in failed:
        print(f"FAIL {c.test or c.name}: {c.message}")
    return 1 if failed else 0


# train-bundled's --unet-steps default per family (literals: the parser must not import torch;
# tests/test_cli_commands.py checks them against the recipes' own defaults)
UNET_STEPS = 2400
FLOW_STEPS = 2500


def cmd_train_bundled(ns: argparse.Namespace) -> int:
    if ns.family == "flow":
        return _train_bundled_flow(ns)
    from memberbench.bundled.train import train_bundled

    info = train_bundled(
        ns.out,
        seed=ns.seed,
        vae_steps=ns.vae_steps,
        unet_steps=UNET_STEPS if ns.unet_steps is None else ns.unet_steps,
        refine_steps=ns.refine_steps,
        clip_steps=ns.clip_steps,
        batch=ns.batch,
        vae_from=ns.vae_from,
        offset_noise=ns.offset_noise,
        prediction_type=ns.prediction_type,
        clip_from=ns.clip_from,
        unet_channels=ns.unet_channels,
    )
    print(f"trained the bundled model into {ns.out}")
    if isinstance(info, dict):
        for k, v in info.items():
            if not isinstance(v, dict | list):
                print(f"  {k}: {v}")
    return 0


def _train_bundled_flow(ns: argparse.Namespace) -> int:
    from memberbench.bundled.train_flow import train_bundled_flow

    unet_only = {
        "--vae-steps": ns.vae_steps != 2000,
        "--refine-steps": ns.refine_steps != 600,
        "--clip-steps": ns.clip_steps != 600,
        "--vae-from": ns.vae_from is not None,
        "--offset-noise": bool(ns.offset_noise),
        "--prediction-type": ns.prediction_type != "v_prediction",
        "--unet-channels": tuple(ns.unet_channels) != (32, 64, 96),
        "--clip-from": ns.clip_from is not None,
    }
    given = [k for k, v in unet_only.items() if v]
    if given:
        raise MemberbenchError(
            f"{', '.join(given)}: options of --family unet; --family flow reuses the shipped VAE "
            "and CLIP scorer and takes --out, --seed, --unet-steps (transformer steps) and --batch"
        )
    info = train_bundled_flow(
        ns.out,
        seed=ns.seed,
        steps=FLOW_STEPS if ns.unet_steps is None else ns.unet_steps,
        batch=ns.batch,
        log_file=ns.log,
    )
    print(f"trained the bundled flow-matching transformer into {ns.out}")
    for k, v in info.items():
        if not isinstance(v, dict | list):
            print(f"  {k}: {v}")
    return 0


def cmd_fetch_images(ns: argparse.Namespace) -> int:
    from memberbench.data.fetch import fetch_images

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        report = fetch_images(
            ns.source,
            ns.out,
            limit=ns.limit,
            workers=ns.workers,
            timeout=ns.timeout,
            retries=ns.retries,
            rate=ns.rate,
            backoff=ns.backoff,
            local_dir=ns.local_dir,
            hf_dataset=ns.hf_dataset,
            hf_key=ns.hf_key,
            hf_image_column=ns.hf_image_column,
            hf_split=ns.hf_split,
            url_template=ns.url_template,
            sources=ns.sources.split(",") if ns.sources else None,
            set_file=ns.set_file,
            skip_failed=ns.skip_failed,
            progress=progress,
        )
    except KeyboardInterrupt:
        print(
            f"memberbench: interrupted; the images finished so far are kept (see {ns.out}/"
            "manifest.jsonl): rerun the same command to fetch the rest",
            file=sys.stderr,
        )
        return 130
    for line in report.summary_lines():
        print(line)
    return 0


def cmd_list(ns: argparse.Namespace) -> int:
    from memberbench.listing import list_kind

    if ns.tasks is not None and ns.kind != "tasks":
        raise MemberbenchError("--tasks DIR goes with `memberbench list tasks` only")
    tasks = find_tasks_dir(ns.tasks) if ns.kind == "tasks" else None
    text = list_kind(ns.kind, tasks)
    if text:
        print(text)
    return 0


def _count(kind: type, least: float, what: str):  # noqa: ANN202 - an argparse type
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def _unet_channels(text: str) -> tuple[int, int, int]:
    from memberbench.bundled.train import check_unet_channels

    try:
        return check_unet_channels(text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="memberbench",
        description="A pytest-native benchmark for memorization in text-to-image diffusion models.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="run the benchmark (pytest tasks/ ...); options go to pytest")
    sub.add_parser("generate", help="generate images and traces (see `memberbench generate -h`)")
    sub.add_parser("evidence", help="the bundled model's evidence report")
    sub.add_parser("cost", help="generations, UNet evaluations and wall time of a profile")

    v = sub.add_parser("validate", help="check results files against the schema")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.add_argument(
        "--allow-failed",
        action="store_true",
        help="accept runs whose tasks failed or errored (they are still listed)",
    )

    lb = sub.add_parser("leaderboard", help="rebuild leaderboard/README.md and figures")
    lb.add_argument(
        "--root", default="leaderboard", help="leaderboard folder (default %(default)s)"
    )
    lb.add_argument("--no-figures", action="store_true", help="tables only")
    lb.add_argument(
        "--add",
        action="append",
        metavar="FILE",
        help="first copy this results file (validated, with its per-prompt JSONL) to "
        "results/<model>/<mitigation>.json; repeatable: all files are validated and the "
        "leaderboard is built in a temporary folder before anything is written",
    )
    lb.add_argument(
        "--replace",
        action="store_true",
        help="with --add: replace a row (model x mitigation) that is already there",
    )
    lb.add_argument(
        "--allow-failed",
        action="store_true",
        help="with --add: accept runs whose tasks failed or errored",
    )

    c = sub.add_parser("compare", help="compare a results file against a baseline results file")
    c.add_argument("baseline")
    c.add_argument("current")
    c.add_argument(
        "--fail",
        default="",
        metavar="SPEC",
        help="tolerances, e.g. 'sscd_mean:10%%,d1:0.5,clip_score:2se,mem_rate_0.5:-50%%'",
    )
    c.add_argument("--force", action="store_true", help="compare even if the setups differ")
    c.add_argument("--only-checked", action="store_true", help="list only metrics with a tolerance")

    t = sub.add_parser("train-bundled", help="train the bundled model from scratch")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument(
        "--family",
        choices=("unet", "flow"),
        default="unet",
        help="unet (default): the bundled UNet model (VAE, UNet, text encoder, CLIP scorer); "
        "flow: the bundled flow-matching transformer over the shipped VAE "
        "(docs/bundled-model.md)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--vae-steps", type=int, default=2000)
    t.add_argument(
        "--unet-steps",
        type=int,
        default=None,
        help="denoiser training steps (default 2400 for the UNet, 2500 for the transformer)",
    )
    t.add_argument("--log", default=None, help="--family flow: append progress lines to this file")
    t.add_argument("--refine-steps", type=int, default=600, help="EMA refine pass (0: none)")
    t.add_argument("--clip-steps", type=int, default=600)
    t.add_argument("--batch", type=int, default=48)
    t.add_argument(
        "--vae-from",
        default=None,
        help="reuse stage 1: a vae.pt saved by an earlier run with the same seed and --vae-steps",
    )
    t.add_argument(
        "--offset-noise",
        type=float,
        default=0.0,
        help="std of a per-channel constant added to the training noise (0: none, the shipped "
        "weights)",
    )
    t.add_argument(
        "--prediction-type",
        choices=("v_prediction", "epsilon"),
        default="v_prediction",
        help="UNet output (default %(default)s, the shipped weights; see train_bundled)",
    )
    t.add_argument(
        "--unet-channels",
        type=_unet_channels,
        default="32,64,96",
        metavar="C16,C8,C4",
        help="UNet widths at the 16x16, 8x8 and 4x4 latent levels, multiples of 32 (default "
        "%(default)s, the shipped weights)",
    )
    t.add_argument(
        "--clip-from",
        default=None,
        help="reuse the CLIP scorer: the clip/ folder of an earlier run with the same seed and "
        "--clip-steps",
    )

    f = sub.add_parser(
        "fetch-images",
        help="recover a prompt set's training images from its URLs (and other sources)",
        description="Fetch the image behind each row's URL into DIR/images, resumably, and write "
        "DIR/prompts.jsonl (every row; image/image_sha256 on recovered rows) and "
        "DIR/manifest.jsonl (per image: status, source, file, sha256, error). Extra sources "
        "are tried in the order of --sources for rows the URL did not give. "
        "See docs/fetch-images.md.",
    )
    f.add_argument(
        "source",
        metavar="SOURCE",
        help="a registered set name (wen-sd1-memorized, webster-sd1, ...) or a prompt file "
        "(.jsonl/.csv/.parquet) with a url column",
    )
    f.add_argument("--out", required=True, metavar="DIR", help="output folder")
    f.add_argument(
        "--limit",
        type=_count(int, 0, "an integer >= 0"),
        default=None,
        metavar="N",
        help="only the first N rows",
    )
    f.add_argument(
        "--workers",
        type=_count(int, 1, "an integer >= 1"),
        default=8,
        help="concurrent downloads (default %(default)s)",
    )
    f.add_argument(
        "--timeout",
        type=_count(float, 1e-3, "seconds > 0"),
        default=20.0,
        help="connect/read timeout per request in seconds; a whole download may "
        "take 5x this (default %(default)s)",
    )
    f.add_argument(
        "--retries",
        type=_count(int, 0, "an integer >= 0"),
        default=2,
        help="retries on connection errors, timeouts, truncated bodies, 5xx and 429 "
        "(default %(default)s)",
    )
    f.add_argument(
        "--rate",
        type=_count(float, 0, "requests/s >= 0"),
        default=10.0,
        help="global request rate, requests/s; 0: no limit (default %(default)s)",
    )
    f.add_argument(
        "--backoff",
        type=_count(float, 0, "seconds >= 0"),
        default=1.0,
        help="first retry delay in seconds, doubled each retry (default %(default)s)",
    )
    f.add_argument(
        "--local-dir",
        metavar="D",
        default=None,
        help="folder of images named <index>.*, <prompt_id>.*, <sha1(url)>.* or <sha256(url)>.*",
    )
    f.add_argument(
        "--hf-dataset",
        metavar="NAME_OR_PATH",
        default=None,
        help="a datasets dataset with an image column (a save_to_disk folder or a hub name)",
    )
    f.add_argument(
        "--hf-key",
        choices=("url", "index"),
        default="url",
        help="the --hf-dataset column to match rows by (default %(default)s)",
    )
    f.add_argument(
        "--hf-image-column",
        default=None,
        metavar="COL",
        help="image column of --hf-dataset (default: the first Image column)",
    )
    f.add_argument("--hf-split", default="train", help="split of --hf-dataset (default train)")
    f.add_argument(
        "--url-template",
        default=None,
        metavar="T",
        help="a mirror URL with {url}, {url_quoted}, {index} or {prompt_id}, e.g. "
        "'https://web.archive.org/web/2023id_/{url}'",
    )
    f.add_argument(
        "--sources",
        default=None,
        metavar="LIST",
        help="comma-separated sources in the order to try (default "
        "url,local-dir,hf-dataset,url-template: the row's URL first, then those "
        "given); leave out url to use only mirrors",
    )
    f.add_argument(
        "--set-file",
        default=None,
        metavar="PATH",
        help="a local copy of a registered remote set's file (its pinned hash is checked)",
    )
    f.add_argument(
        "--skip-failed", action="store_true", help="do not retry rows a previous run failed on"
    )

    ls = sub.add_parser(
        "list",
        help="list models, mitigations, prompt-sets, detectors or tasks, one line each",
        description="What is registered (out-of-tree packages' entry points included), one "
        "line each: name and description. Without KIND: the kinds.",
    )
    ls.add_argument(
        "kind", nargs="?", default=None, metavar="KIND", help="models, mitigations, ..."
    )
    ls.add_argument("--tasks", default=None, metavar="DIR", help="with KIND tasks: the task folder")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in PASSTHROUGH:
            rest = argv[1:]
            if argv[0] == "run":
                return cmd_run(rest)
            if argv[0] == "generate":
                return cmd_generate(rest)
            if argv[0] == "cost":
                from memberbench import cost

                return int(cost.main(rest) or 0)
            return cmd_evidence(rest)
        parser = build_parser()
        ns = parser.parse_args(argv)
        if ns.command is None:
            parser.print_help()
            return 2
        handler = {
            "validate": cmd_validate,
            "leaderboard": cmd_leaderboard,
            "compare": cmd_compare,
            "train-bundled": cmd_train_bundled,
            "fetch-images": cmd_fetch_images,
            "list": cmd_list,
        }[ns.command]
        return handler(ns)
    except MemberbenchError as e:
        print(f"memberbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memberbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
