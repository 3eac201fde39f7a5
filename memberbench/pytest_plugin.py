"""memberbench's pytest plugin: options, fixtures, metric recording, results, regression checks.

Installed through the ``pytest11`` entry point, so its options exist wherever memberbench is
installed (disable with ``-p no:memberbench``).  It does nothing heavy unless the collected tests
use its fixtures (``mb``, ``record_metric``): this module imports only the standard library and
pytest; torch, diffusers and the models are loaded when a task first needs them.

Options (group "memberbench"): declared once in :data:`memberbench.config.OPTIONS`; listed with
their allowed values and the quick / paper profile defaults in ``docs/options.md`` (generated from
that table) and by ``pytest --help``.

Fixtures: ``mb`` (session; the :class:`memberbench.benchrun.BenchRun`: adapter, prompt sets,
memoized generations and per-prompt quantities), ``mb_config``, ``mb_adapter``, ``mb_sscd``,
``mb_cache``, ``mb_guidance`` (parametrized over ``--sweep``), and the function-scoped recorders
``record_metric(name, value_or_Stat, *, stderr=, n=, ci=, per_prompt=,
prompt_set=, ...)``, ``record_per_prompt(name, {prompt_id: value}, prompt_set=)`` and
``record_series(name, data)``.  Each metric is recorded by exactly one test: the one that fails
when ``--mb-compare-fail`` finds it outside its tolerance.

A task that lacks what it needs raises ``memberbench.benchrun.Skip(reason)`` (or calls
``pytest.skip``): it is reported as skipped with the reason.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # the session object, for readers and type checkers (imported lazily at run)
    from memberbench.benchrun import BenchRun

RUN_KEY = pytest.StashKey[Any]()
REC_KEY = pytest.StashKey[Any]()
RANK_KEY = pytest.StashKey[int]()  # set on the ranks > 0 of a multi-process run
ROBUSTNESS_TEST = "test_sscd_regain"  # tasks/test_robustness.py's test (its generations)


def pytest_addoption(parser: pytest.Parser) -> None:
    from memberbench.config import add_pytest_options

    add_pytest_options(parser.getgroup("memberbench", "memberbench (memorization benchmark)"))


def _raw_options(config: pytest.Config) -> dict[str, Any]:
    from memberbench.config import raw_pytest_options

    return raw_pytest_options(config.getoption)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "memberbench: a memberbench task (uses the mb / record_metric fixtures)"
    )
    # Cheap, import-free parsing of every option value (memberbench.config), so that a malformed
    # value is reported at once (before collection, before any model loads) in one line.
    from memberbench.config import OPTIONS, make_config
    from memberbench.errors import MemberbenchError

    try:
        config.stash[RUN_KEY] = ("config", make_config(_raw_options(config)))
        for opt in OPTIONS:  # the plugin-only options (results, baselines)
            if opt.field_name is None:
                opt.parse_value(config.getoption(opt.option_dest))
    except MemberbenchError as e:
        raise pytest.UsageError(str(e)) from None
    fail_spec = config.getoption("mb_compare_fail")
    if fail_spec:
        from memberbench.compare import parse_tolerances

        try:
            parse_tolerances(fail_spec)
        except MemberbenchError as e:
            raise pytest.UsageError(str(e)) from None
        if not config.getoption("mb_compare"):
            raise pytest.UsageError("--mb-compare-fail needs --mb-compare NAME|PATH")


def _uses_memberbench(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return "mb" in names or "record_metric" in names or item.get_closest_marker("memberbench")


class Recorder:
    """Everything the tasks record during a session."""

    def __init__(self) -> None:
        self.metrics: dict[str, dict[str, Any]] = {}
        self.by_test: dict[str, list[str]] = {}
        self.series: dict[str, Any] = {}
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.skipped: list[dict[str, str]] = []
        self.outcomes: Counter[str] = Counter()
        self.items: set[str] = set()
        self.finished: set[str] = set()
        self.baseline: dict[str, Any] | None = None
        self.baseline_path: str | None = None
        self.tolerances: list[Any] = []
        self.identity_diffs: list[str] = []
        self.results_path: Path | None = None
        self.saved_path: Path | None = None
        self.write_failed = False
        self.write_error: str | None = None
        self.started = datetime.now(UTC)

    def add_metric(self, nodeid: str, name: str, entry: dict[str, Any]) -> None:
        from memberbench.types import MemberbenchError

        if name in self.metrics:
            prev = self.metrics[name].get("test")
            raise MemberbenchError(
                f"metric {name!r} recorded twice (first by {prev}, again by {nodeid}); "
                "each metric must be recorded by exactly one test"
            )
        entry["test"] = nodeid
        self.metrics[name] = entry
        self.by_test.setdefault(nodeid, []).append(name)

    def add_per_prompt(self, side: str, name: str, values: dict[str, Any]) -> None:
        from memberbench.results import to_jsonable

        for pid, v in values.items():
            row = self.rows.setdefault(
                (side, str(pid)), {"set": side, "prompt_id": str(pid), "metrics": {}}
            )
            row["metrics"][name] = to_jsonable(v)


def _activate(config: pytest.Config) -> Any:
    """Create the BenchRun and check the option values that need the registries (called when
    memberbench tasks were collected)."""
    state = config.stash.get(RUN_KEY, None)
    if state is None:
        return None
    if state[0] == "run":
        return state[1]
    from memberbench.benchrun import BenchRun

    cfg = state[1]
    tr = config.pluginmanager.get_plugin("terminalreporter")
    quiet = config.get_verbosity() < 0

    def log(msg: str) -> None:
        if tr is None or quiet:
            return
        capman = config.pluginmanager.getplugin("capturemanager")
        if capman is None:
            tr.write_line(msg)
            return
        with capman.global_and_fixture_disabled():  # shown live, also during a test
            tr.ensure_newline()
            tr.write_line(msg)

    run = BenchRun(cfg, log=log, progress=_progress_writer(config, tr))
    rec = Recorder()
    config.stash[RUN_KEY] = ("run", run)
    config.stash[REC_KEY] = rec
    config.pluginmanager.register(_ReportWatcher(rec), "memberbench-report-watcher")
    return run


def _on_ci() -> bool:
    return any(os.environ.get(k) for k in ("CI", "BUILD_NUMBER"))  # pytest's own test of CI


def _progress_writer(config: pytest.Config, tr: Any) -> _Progress | None:
    """Progress on a terminal (not on CI, not with -q), anywhere with --mb-progress."""
    if tr is None:
        return None
    tty = bool(getattr(tr, "isatty", False))
    asked = bool(config.getoption("mb_progress"))
    if not asked and (not tty or _on_ci() or config.get_verbosity() < 0):
        return None
    capman = config.pluginmanager.getplugin("capturemanager")
    return _Progress(tr, capman, tty=tty and not _on_ci())


class _Progress:
    """Generation progress (images done / total, rate, ETA) written to pytest's terminal past
    output capture: redrawn in place on a terminal and erased when done (the session's log line
    follows), else a line at every tenth of the way."""

    REDRAW_S = 0.2

    def __init__(self, tr: Any, capman: Any, tty: bool) -> None:
        self.tr, self.capman, self.tty = tr, capman, tty
        self.label: str | None = None
        self.t0 = self.last = 0.0
        self.done0 = self.done = self.tenth = 0

    def __call__(self, label: str, done: int, total: int) -> None:
        now = time.monotonic()
        first = label != self.label or done < self.done  # a new generation
        if first:
            self.label, self.t0, self.done0, self.last, self.tenth = label, now, done, 0.0, -1
        self.done = done
        final = done >= total
        tenth = done * 10 // max(total, 1)
        if self.tty and not (first or final) and now - self.last < self.REDRAW_S:
            return
        if not self.tty and not final and tenth == self.tenth:
            return
        self.last, self.tenth = now, tenth
        line = self.text(label, done, total, now)
        with self.capman.global_and_fixture_disabled() if self.capman else _nothing():
            if not self.tty:
                self.tr.write_line(line)
            elif final:
                self.tr.rewrite("", erase=True)
                self.tr.write("\r", flush=True)
            else:
                if first:
                    self.tr.ensure_newline()
                self.tr.rewrite(line, erase=True, flush=True)

    def text(self, label: str, done: int, total: int, now: float) -> str:
        elapsed = now - self.t0
        made = done - self.done0
        line = f"memberbench: generating {label}: {done}/{total} images"
        if done >= total:
            return line + f" in {elapsed:.1f} s"
        if made <= 0 or elapsed <= 0:
            return line + ", ETA --:--"
        rate = made / elapsed
        eta = math.ceil((total - done) / rate)
        return line + f", {rate:.3g} img/s, ETA {eta // 60}:{eta % 60:02d}"


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def _check_results_writable(config: pytest.Config, run: Any) -> None:
    """Refuse, before any work, a results path that the end of the run could not write."""
    from memberbench.io import writable_file_target
    from memberbench.results import per_prompt_path

    path = _results_path(config, run)
    targets = [("--results", path), ("--results", per_prompt_path(path))]
    if config.getoption("mb_save"):
        targets.append(("--mb-save", _storage(config) / f"{config.getoption('mb_save')}.json"))
    for opt, target in targets:
        why = writable_file_target(target)
        if why:
            raise pytest.UsageError(
                f"{opt}: cannot write {target} ({why}); pass a file path in a folder you can "
                "write to"
            )


def _check_run(config: pytest.Config, run: Any) -> None:
    from memberbench.types import MemberbenchError

    cfg = run.config
    if not config.option.collectonly:
        _check_results_writable(config, run)
    try:
        from memberbench.adapters import check_model_spec

        check_model_spec(cfg.model)
        _ = run.mitigation  # builds it: unknown names / parameters are refused here
        from memberbench.sampling.schedulers import check_scheduler_name

        check_scheduler_name(cfg.scheduler)
        for side in ("memorized", "nonmemorized"):
            run.prompt_set(side)
        if cfg.clip not in ("auto", "bundled", "none"):
            import difflib

            import open_clip

            known = open_clip.list_models()
            if cfg.clip not in known and not cfg.clip.startswith(("hf-hub:", "local-dir:")):
                close = difflib.get_close_matches(cfg.clip, known, n=3, cutoff=0.5)
                raise MemberbenchError(
                    f"unknown --clip {cfg.clip!r}: use auto, bundled, none or an open_clip "
                    f"model name{' (did you mean ' + ', '.join(close) + '?)' if close else ''}, "
                    "e.g. ViT-L-14, ViT-B-32 (see open_clip.list_models())"
                )
        if not config.option.collectonly:
            sscd = run.sscd_scorer  # an unusable SSCD model / recipe pair: refused before any work
            if cfg.sscd_model is not None:  # a user's file: loaded now, before the model
                _load_sscd(sscd, cfg.sscd_model)
            # load the model now: a missing or broken model is one clear error, not one per task
            run.mitigation.check_compatible(run.adapter)
            trained = int(run.adapter.scheduler_config.get("num_train_timesteps") or 0)
            if trained and cfg.steps > trained:
                raise MemberbenchError(
                    f"--steps {cfg.steps} is more than the {trained} timesteps this model was "
                    f"trained with; use --steps {trained} or fewer (e.g. 50)"
                )
    except MemberbenchError as e:
        raise pytest.UsageError(str(e)) from None
    rec: Recorder = config.stash[REC_KEY]
    target = config.getoption("mb_compare")
    if target:
        _load_baseline(config, run, rec, target)


def _load_sscd(sscd: Any, path: str) -> None:
    """Load a user-given SSCD model now: a file that is not a model is one line, not a
    traceback in every task that scores images."""
    from memberbench.types import MemberbenchError

    try:
        sscd._load()
    except MemberbenchError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime / torch raise many kinds
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise MemberbenchError(
            f"--sscd-model {path!r} could not be loaded as an SSCD model ({type(e).__name__}: "
            f"{first}); pass an SSCD .onnx export or Meta's sscd_disc_mixup.torchscript.pt"
        ) from None


def _storage(config: pytest.Config) -> Path:
    s = config.getoption("mb_storage")
    return Path(s) if s else Path(config.rootpath) / ".memberbench" / "baselines"


def _load_baseline(config: pytest.Config, run: Any, rec: Recorder, target: str) -> None:
    from memberbench.compare import check_patterns, identity_differences, parse_tolerances
    from memberbench.results import load_results
    from memberbench.types import MemberbenchError

    p = Path(target)
    if not (p.suffix == ".json" or p.is_file()):
        p = _storage(config) / f"{target}.json"
        if not p.is_file():
            saved = sorted(x.stem for x in _storage(config).glob("*.json"))
            raise pytest.UsageError(
                f"--mb-compare {target!r}: no such results file or saved baseline; saved "
                f"baselines in {_storage(config)}: {', '.join(saved) or 'none'} "
                "(save one with --mb-save NAME)"
            )
    try:
        base = load_results(p)
        tols = parse_tolerances(config.getoption("mb_compare_fail"))
        check_patterns(tols, list((base.get("metrics") or {}).keys()))
        current = run.identity(load_model=True)
    except MemberbenchError as e:
        raise pytest.UsageError(str(e)) from None
    diffs = identity_differences(base, current)
    if diffs and not config.getoption("mb_force"):
        raise pytest.UsageError(
            f"--mb-compare: the baseline {p} comes from a different setup; refusing to "
            "compare (pass --mb-force to compare anyway):\n  " + "\n  ".join(diffs)
        )
    rec.baseline, rec.baseline_path, rec.tolerances = base, str(p), tols
    rec.identity_diffs = diffs


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    mb_items = [it for it in items if _uses_memberbench(it)]
    if not mb_items:
        return
    run = _activate(config)
    if run is None:
        return
    config.stash[REC_KEY].items = {it.nodeid for it in mb_items}
    _check_run(config, run)
    if not config.option.collectonly:
        _generate_on_ranks(config, run, items, mb_items)


def _generate_on_ranks(config: pytest.Config, run: Any, items: list, mb_items: list) -> None:
    """Under a launcher (torchrun, accelerate --multi_gpu, memberbench run --processes N): every
    rank generates its share of the tasks' generations into the shared cache and waits for the
    others; rank 0 then runs the tasks (reading the cache) and writes the results, the other
    ranks' tasks are deselected.  A launcher that started one process of several is named."""
    from memberbench import ranks
    from memberbench.types import MemberbenchError

    try:
        rank, world = ranks.world()
    except MemberbenchError as e:
        raise pytest.UsageError(str(e)) from None
    warn = ranks.launcher_mismatch()
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if warn and tr is not None:
        tr.write_line(f"memberbench: {warn}", yellow=True)
    if world == 1:
        return
    sweep = set()
    for it in mb_items:
        g = getattr(getattr(it, "callspec", None), "params", {}).get("mb_guidance")
        if g is not None:
            sweep.add(float(g))
    # the robustness task's perturbed generations, when it was collected
    robust = (
        run.config.robustness if any(it.name.startswith(ROBUSTNESS_TEST) for it in mb_items) else []
    )
    try:
        run.generate_on_ranks(rank, world, sorted(sweep), robust)
    except MemberbenchError as e:
        raise pytest.UsageError(f"rank {rank} of {world}: {e}") from None
    if rank != 0:  # rank 0 alone computes the metrics and writes the results
        config.hook.pytest_deselected(items=list(mb_items))
        keep = set(map(id, mb_items))
        items[:] = [it for it in items if id(it) not in keep]
        config.stash[RANK_KEY] = rank


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "mb_guidance" not in metafunc.fixturenames:
        return
    state = metafunc.config.stash.get(RUN_KEY, None)
    if state is None:
        return
    cfg = state[1].config if state[0] == "run" else state[1]
    if cfg.sweep:
        metafunc.parametrize("mb_guidance", cfg.sweep, ids=[f"g={g:g}" for g in cfg.sweep])
    else:
        metafunc.parametrize(
            "mb_guidance",
            [
                pytest.param(
                    None, marks=pytest.mark.skip(reason="guidance sweep off (--sweep none)")
                )
            ],
            ids=["g=off"],
        )


# --------------------------------------------------------------------------------------------
# fixtures


def _run(config: pytest.Config) -> BenchRun:
    run = _activate(config)
    if run is None:  # pragma: no cover - configure always stores a config
        pytest.skip("memberbench is not configured")
    return run


@pytest.fixture(scope="session")
def mb(pytestconfig: pytest.Config) -> BenchRun:
    """The session's BenchRun (adapter, prompt sets, memoized generations and metrics)."""
    return _run(pytestconfig)


@pytest.fixture(scope="session")
def mb_config(mb: BenchRun) -> Any:  # a memberbench.config.BenchConfig
    return mb.config


@pytest.fixture(scope="session")
def mb_adapter(mb: Any) -> Any:
    return mb.adapter


@pytest.fixture(scope="session")
def mb_sscd(mb: Any) -> Any:
    return mb.sscd_scorer


@pytest.fixture(scope="session")
def mb_cache(mb: Any) -> Any:
    return mb.cache


_DECLARED: Any = object()  # record_metric's default: the direction comes from the declaration


def _family(node: pytest.Item) -> str:
    stem = Path(str(getattr(node, "path", node.nodeid.split("::")[0]))).stem
    return stem.removeprefix("test_")


@pytest.fixture
def record_metric(request: pytest.FixtureRequest) -> Any:
    """``record_metric(name, value, *, stderr=None, n=None, ci=None, per_prompt=None,
    prompt_set=None, unit="", description="", note="", family="")``.

    ``name`` must match exactly one declaration (:mod:`memberbench.metrics.declare`): the
    better direction, and the unit and description where not given, come from it; an
    undeclared name is an error.  (``higher_is_better=`` may still be passed: it must then
    agree with the declaration.)  ``value`` is a number or a
    :class:`memberbench.metrics.stats.Stat` (its stderr, CI, n, reason and note are used unless
    given).  ``per_prompt``: {prompt_id: value} (a number or a
    list, e.g. per seed) written to the per-prompt JSONL under this metric's name, for the set
    ``prompt_set`` ("memorized" or "nonmemorized"; default: "nonmemorized" if the name has
    ``.nonmem``, else "memorized").  ``family``: default the recording task file's name
    (``tasks/test_declared.py`` gives its declarations' own).
    """
    config = request.config
    _activate(config)
    rec: Recorder = config.stash[REC_KEY]
    nodeid = request.node.nodeid

    def record(
        name: str,
        value: Any,
        *,
        higher_is_better: Any = _DECLARED,
        stderr: Any = None,
        n: int | None = None,
        ci: tuple[Any, Any] | None = None,
        per_prompt: dict[str, Any] | None = None,
        prompt_set: str | None = None,
        unit: str = "",
        description: str = "",
        note: str = "",
        reason: str = "",
        family: str = "",
    ) -> dict[str, Any]:
        from memberbench.metrics.declare import lookup
        from memberbench.results import metric_entry
        from memberbench.types import MemberbenchError

        if not isinstance(name, str) or not name or any(c in name for c in ",: \t\n"):
            raise MemberbenchError(f"bad metric name {name!r}: no ',', ':' or spaces")
        decl = lookup(name)
        if higher_is_better is not _DECLARED and higher_is_better != decl.higher_is_better:
            raise MemberbenchError(
                f"metric {name!r}: recorded with higher_is_better={higher_is_better!r} but "
                f"declared ({decl.module}) with {decl.higher_is_better!r}; drop the argument"
            )
        higher_is_better = decl.higher_is_better
        unit = unit or decl.unit
        description = description or decl.description
        if hasattr(value, "value") and hasattr(value, "stderr"):  # a Stat
            st = value
            stderr = st.stderr if stderr is None else stderr
            n = st.n if n is None else n
            if ci is None and (math.isfinite(st.ci_low) or math.isfinite(st.ci_high)):
                ci = (st.ci_low, st.ci_high)
            reason = reason or st.reason
            note = note or st.note
            value = st.value
        side = prompt_set or ("nonmemorized" if ".nonmem" in name else "memorized")
        entry = metric_entry(
            value,
            higher_is_better=higher_is_better,
            stderr=stderr,
            n=int(n or 0),
            ci=ci,
            reason=reason,
            note=note,
            family=family or _family(request.node),
            prompt_set=side,
            unit=unit,
            description=description,
        )
        rec.add_metric(nodeid, name, entry)
        if per_prompt:
            rec.add_per_prompt(side, name, per_prompt)
        return entry

    return record


@pytest.fixture
def record_per_prompt(request: pytest.FixtureRequest) -> Any:
    """``record_per_prompt(name, {prompt_id: value}, prompt_set="memorized")``: per-prompt values
    that are not a metric of their own (e.g. the SSCD of every seed), for the per-prompt JSONL."""
    config = request.config
    _activate(config)
    rec: Recorder = config.stash[REC_KEY]

    def record(name: str, values: dict[str, Any], prompt_set: str = "memorized") -> None:
        rec.add_per_prompt(prompt_set, name, values)

    return record


@pytest.fixture
def record_series(request: pytest.FixtureRequest) -> Any:
    """``record_series(name, data: dict)``: a curve for figures (JSON-able values)."""
    config = request.config
    _activate(config)
    rec: Recorder = config.stash[REC_KEY]

    def record(name: str, data: dict[str, Any]) -> None:
        from memberbench.results import to_jsonable

        rec.series[name] = to_jsonable(data)

    return record


# --------------------------------------------------------------------------------------------
# per-test hooks


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    # memberbench.benchrun (numpy) is imported only by runs that use memberbench: a Skip can come
    # only from there, so plain test runs do not import it here either
    benchrun = sys.modules.get("memberbench.benchrun")
    skip: Any = benchrun.Skip if benchrun is not None else ()
    try:
        result = yield
    except skip as e:
        pytest.skip(str(e))
    rec = item.config.stash.get(REC_KEY, None)
    if rec is not None and rec.baseline is not None and item.nodeid in rec.by_test:
        from memberbench.compare import compare_metric, tolerance_for

        failures = []
        for name in rec.by_test[item.nodeid]:
            tol = tolerance_for(name, rec.tolerances)
            if tol is None:
                continue
            comp = compare_metric(
                name, (rec.baseline.get("metrics") or {}).get(name), rec.metrics[name], tol
            )
            if comp.failed:
                failures.append(comp.message)
        if failures:
            pytest.fail(
                f"memberbench regression against {rec.baseline_path}:\n  " + "\n  ".join(failures),
                pytrace=False,
            )
    return result


class _ReportWatcher:
    """Counts the outcomes of the memberbench tests and keeps the skip reasons."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        rec = self.rec
        if report.nodeid not in rec.items:
            return
        if not (report.when == "call" or (report.when == "setup" and not report.passed)):
            return
        rec.finished.add(report.nodeid)
        outcome = "error" if (report.when == "setup" and report.failed) else report.outcome
        rec.outcomes[outcome] += 1
        if report.skipped:
            lr = report.longrepr
            reason = lr[2] if isinstance(lr, tuple) else str(lr)
            rec.skipped.append({"test": report.nodeid, "reason": str(reason)})


# --------------------------------------------------------------------------------------------
# session end: results, baseline, summary


def _results_path(config: pytest.Config, run: Any) -> Path:
    p = config.getoption("mb_results")
    if p:
        return Path(p)
    from memberbench.registry import parse_spec, slug

    model = slug(parse_spec(run.config.model)[0])
    return (
        Path(config.invocation_params.dir)
        / "memberbench-results"
        / model
        / f"{slug(run.config.mitigation)}.json"
    )


def build_document(config: pytest.Config, run: Any, rec: Recorder, exitstatus: int) -> dict:
    from memberbench.benchrun import SIDES, environment
    from memberbench.results import SCHEMA, SCHEMA_VERSION

    finished = datetime.now(UTC)
    complete = rec.items <= rec.finished
    doc = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "run": {
            "id": uuid.uuid4().hex[:12],
            "started": rec.started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "duration_s": round((finished - rec.started).total_seconds(), 2),
            "generation_s": round(run.generation_s, 2),
            "images_generated": run.n_generated,
            "generation": run.describe_generation(),
            "status": "complete" if complete else "partial",
            "profile": run.config.profile,
            "command": list(config.invocation_params.args),
            "exitstatus": int(exitstatus),
            "selected_tests": len(rec.items),
            "outcomes": dict(rec.outcomes),
            "skipped": rec.skipped,
            "compared_with": rec.baseline_path,
        },
        "model": run.describe_model(),
        "sampling": run.config.sampling_dict(),
        "mitigation": run.describe_mitigation(),
        "prompt_sets": run.describe_prompt_sets(),
        "labels": run.describe_labels(),
        "sscd": run.sscd_scorer.describe(),
        "clip": run.clip_describe(),
        "environment": environment(),
        "metrics": dict(sorted(rec.metrics.items())),
        "series": rec.series,
    }
    doc["sampling"]["latents"] = run.config.latents
    # per-prompt rows: fill caption / group / seeds from the prompt sets
    rows = []
    for side in SIDES:
        recs = run.records(side)
        for (s, pid), row in sorted(rec.rows.items()):
            if s != side:
                continue
            r = recs.get(pid)
            gens = run._memo.get(("gen", side, run.config.guidance, tuple(run.config.seeds)), {})
            rows.append(
                {
                    "set": side,
                    "prompt_id": pid,
                    "caption": getattr(r, "caption", None),
                    "group": getattr(r, "group", ""),
                    "image_available": bool(getattr(r, "image_available", False)),
                    "seeds": [g.seed for g in gens.get(pid, []) if g.ok],
                    "metrics": row["metrics"],
                }
            )
    doc["_rows"] = rows
    return doc


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state = config.stash.get(RUN_KEY, None)
    rec = config.stash.get(REC_KEY, None)
    if state is None or state[0] != "run" or rec is None:
        return
    run = state[1]
    if config.stash.get(RANK_KEY, 0) and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK  # a rank > 0 only generated its share
    try:
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            rec.write_error = (
                "interrupted: no results written (earlier results files are untouched; "
                "finished generations are kept in the generation cache)"
            )
            return
        if not rec.metrics:
            return
        from memberbench.results import write_results

        try:
            doc = build_document(config, run, rec, int(exitstatus))
            rows = doc.pop("_rows")
            path = _results_path(config, run)
            rec.results_path = write_results(path, doc, rows)
            name = config.getoption("mb_save")
            if name:
                rec.saved_path = write_results(_storage(config) / f"{name}.json", doc, rows)
        except Exception as e:  # report, do not crash the session summary
            rec.write_error = f"could not write results: {type(e).__name__}: {e}"
            rec.write_failed = True
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED  # a run without results
    finally:
        run.close()


def _write_coverage(tr: Any, config: pytest.Config, rec: Recorder) -> None:
    """What the run could measure: each set's training-image coverage, the measured labels,
    and every skipped task with its reason."""
    state = config.stash.get(RUN_KEY, None)
    run = state[1] if state is not None and state[0] == "run" else None
    if run is not None:
        try:
            sets = run.describe_prompt_sets()
            labels = run.describe_labels()
        except Exception as e:  # the sets failed to load: the error was reported already
            sets, labels = {}, {}
            tr.write_line(f"prompt sets: not loaded ({type(e).__name__})")
        for side, d in sets.items():
            moved = d.get("from_other_side") or 0
            tr.write_line(
                f"{side} set {d['name']}: {d['n_with_image']} of {d['n']} training images"
                + (f" ({moved} prompts labelled {side} came from the other set)" if moved else "")
            )
        by_set = labels.get("by_set") or {}
        if by_set:
            parts = [
                f"{side} set {v['n_memorized']} of {v['n_labelled']} memorized"
                for side, v in by_set.items()
            ]
            tr.write_line(f"measured labels ({labels['rule']}): " + ", ".join(parts))
    if rec.skipped:
        tr.write_line(f"skipped tasks ({len(rec.skipped)}):", yellow=True)
        for item in rec.skipped:
            reason = str(item["reason"]).removeprefix("Skipped: ")
            tr.write_line(f"  {item['test']}: {reason}", yellow=True)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rec = config.stash.get(REC_KEY, None)
    if rec is None or (not rec.metrics and not rec.write_error):
        return
    tr = terminalreporter
    tr.section("memberbench")
    if rec.metrics:
        from tabulate import tabulate

        from memberbench.metrics.declare import headlines

        verbose = config.get_verbosity() > 0
        order = [h.key for h in headlines("summary")]
        names = [n for n in rec.metrics if verbose or n in order]
        rows = []
        for n in sorted(names, key=lambda x: (order.index(x) if x in order else len(order), x)):
            m = rec.metrics[n]
            arrow = {True: "↑", False: "↓"}.get(m["higher_is_better"], "")
            v = m["value"]
            val = "n/a" if v is None else f"{v:.4g}"
            se = "" if m["stderr"] is None else f"± {m['stderr']:.2g}"
            rows.append([f"{n} {arrow}".strip(), val, se, m["n"], m.get("reason", "")[:50]])
        more = "" if verbose else f" (headline; -v shows all {len(rec.metrics)})"
        tr.write_line(f"metrics{more}:")
        tr.write_line(
            tabulate(
                rows, headers=["metric", "value", "stderr", "n", "note"], disable_numparse=True
            )
        )
    _write_coverage(tr, config, rec)
    if rec.baseline is not None:
        from memberbench.compare import compare_runs, format_table

        comps = compare_runs(rec.baseline, rec.metrics, rec.tolerances)
        tr.write_line("")
        tr.write_line(f"comparison with {rec.baseline_path}:")
        if rec.identity_diffs:
            tr.write_line("  (forced despite: " + "; ".join(rec.identity_diffs) + ")")
        tr.write_line(format_table(comps, only_checked=bool(rec.tolerances)))
        failed = [c for c in comps if c.failed]
        if failed:
            tr.write_line(f"{len(failed)} metric(s) outside tolerance:", red=True)
            for c in failed:
                tr.write_line(f"  {c.test}: {c.message}", red=True)
    state = config.stash.get(RUN_KEY, None)
    if state is not None and state[0] == "run":
        tr.write_line(state[1].cache_summary())
    if rec.results_path:
        tr.write_line(f"results: {rec.results_path}")
    if rec.saved_path:
        tr.write_line(f"saved baseline: {rec.saved_path}")
    if rec.write_error:
        if rec.write_failed:
            tr.write_line(rec.write_error, red=True)
        else:
            tr.write_line(rec.write_error, yellow=True)
