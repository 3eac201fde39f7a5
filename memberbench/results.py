"""The results format of a memberbench run: schema, atomic writer, reader and validator.

A run writes two files side by side (``--results PATH``, default
``memberbench-results/<model>/<mitigation>.json``):

* ``PATH`` -- one JSON object, the **run record** (schema below);
* ``PATH`` with ``.json`` replaced by ``.prompts.jsonl`` -- the **per-prompt records**, one JSON
  object per line, so any number in a table can be traced to the prompts behind it.

Both are written only at the end of a session, as one **pair commit** (:func:`write_results`):
the JSONL under a hidden staged name carrying its sha256, then the JSON (which records that
sha256) as the commit point, then the JSONL renamed into place; each write is atomic
(:mod:`memberbench.io`: temp file in the same folder, fsync, ``os.replace``, mode from the
umask).  Readers take the JSONL whose sha256 the JSON records (:func:`per_prompt_file`), so a
run killed at any moment leaves the old pair or the new one, never a mix.  An interrupted run
(Ctrl-C) writes neither and leaves earlier files untouched.

Schema, version 1 (``"schema": "memberbench.results"``, ``"schema_version": 1``)
--------------------------------------------------------------------------------

==================  =====================================================================
key                 content
==================  =====================================================================
schema              ``"memberbench.results"``
schema_version      integer; this module reads versions ``SUPPORTED_VERSIONS`` and refuses
                    others naming the version found (older ones are upgraded in memory by
                    ``MIGRATIONS`` where a migration exists)
run                 ``id``, ``started`` / ``finished`` (ISO 8601 UTC), ``duration_s``,
                    ``status`` ("complete"), ``profile`` ("quick" / "paper"),
                    ``command`` (argv list), ``exitstatus`` (pytest's), ``outcomes``
                    ({passed, failed, skipped, error: int}), ``skipped`` (list of
                    {test, reason}), ``generation_s``, ``images_generated`` (images really
                    sampled, not read from the cache), ``generation`` (what generation did:
                    ``images_requested``, ``images_generated``, ``padding_rows``,
                    ``from_cache``, ``cache`` {hits, misses, corrupt, writes,
                    stale_tmp_removed, dir} or null, ``batch_sizes`` {size: samples},
                    ``numerics``; docs/reliability.md; in a multi-process run also
                    ``world_size`` and ``ranks``: per rank {rank, requested, generated,
                    from_cache, padding_rows, seconds, cache} before the tasks;
                    docs/cost-model.md)
model               ``spec`` (as given to --model), ``name``, ``card`` (the model card
                    dict: repo_id, revision, resolution, prediction_type, ...),
                    ``fingerprint`` (hash of weights + scheduler config), ``revision``,
                    ``dtype``, ``device``, ``scheduler_config`` (dict)
sampling            ``scheduler``, ``steps``, ``guidance``, ``eta``, ``seeds`` (list of
                    int), ``guidance_sweep`` (list of float), ``sweep_seeds``,
                    ``batch_size``, ``latents`` (whether full latents were recorded)
mitigation          ``spec`` (canonical name:key=value), ``name``, ``fingerprint``,
                    ``config`` (dict), ``citation``
prompt_sets         {"memorized": ..., "nonmemorized": ...}, each ``name``, ``source``,
                    ``content_hash`` (sha256 of captions + image hashes), ``n``,
                    ``n_with_image``, ``limit``
sscd                the SSCD scorer's description: ``model``, ``model_sha256``,
                    ``backend``, ``recipe`` (e.g. "skew_320"), ``thresholds``
clip                the CLIP scorer's description, or null when no CLIP score was taken
environment         ``memberbench``, ``python``, ``platform``, library versions (torch,
                    diffusers, transformers, open_clip_torch, onnxruntime, numpy, scipy,
                    scikit-learn), ``device_name``, ``cpu_count``, ``torch_threads``
metrics             {name: metric}; a metric is ``value`` (number or null when undefined),
                    ``stderr`` (number or null), ``n`` (int >= 0), ``higher_is_better``
                    (true / false / null for neutral quantities), ``ci`` ([low, high] or
                    null), ``reason`` ("" or why the value is null), ``note``,
                    ``test`` (node id of the task test that recorded it), ``family``,
                    ``prompt_set``, ``unit``, ``description``
series              {name: object of JSON arrays}: curves for figures, e.g.
                    ``decomposition.memorized`` = {steps, W0, WT, ref0_sqrt_abar,
                    refT_sqrt_abar, ref0_ddim_ideal, refT_ddim_ideal, n_prompts},
                    ``roc.<score>.k<k>`` = {fpr, tpr, auc}
per_prompt          ``path`` (file name of the JSONL, relative to the JSON), ``sha256``,
                    ``rows`` (line count)
==================  =====================================================================

Metric names: a bare name is measured on the memorized set (``sscd_mean``, ``d1``,
``clip_score``); ``.nonmem`` marks the non-memorized set; further dotted qualifiers give a
subgroup (``sscd_mean.dup=64``), a guidance scale (``d1.g=3``), a schedule or window
(``d1.ddim_ideal``, ``d1.early``) or a detection window (``detect_auc.wen.k5``).

Per-prompt JSONL rows: ``{"set", "prompt_id", "caption", "group", "seeds", "metrics":
{name: number | null | list}}`` -- every per-prompt value that any task recorded.

Validation (:func:`validate_file`) is pure JSON inspection: the file is parsed with
``json.loads`` (NaN / Infinity constants are rejected), nothing in it is imported, evaluated or
followed (the per-prompt path is only checked to be a plain relative file name).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

# atomic_write_text is re-exported for older callers: the one atomic writer is memberbench.io
from memberbench.io import (  # noqa: F401
    atomic_write_bytes,
    atomic_write_text,
    remove_stale_temps,
    replace,
)
from memberbench.types import MemberbenchError

SCHEMA = "memberbench.results"
SCHEMA_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)


def _from_1(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: the detection and correlation headlines changed meaning (version 2
    labels prompts by measured memorization and correlates over the memorized set), so a
    version-1 file's values move to the names of the variants they are: set-label detection
    ``detect_<stat>_set.<score>.k<k>`` (and its ``roc_set.`` curve), pooled correlation
    ``corr_<method>.<score>_sscd.pooled``.  Values are unchanged."""
    metrics = {}
    for name, m in (doc.get("metrics") or {}).items():
        det = re.fullmatch(r"detect_(auc|tpr1)\.([A-Za-z0-9_]+\.k\d+)", name)
        if det:
            name = f"detect_{det.group(1)}_set.{det.group(2)}"
        elif re.fullmatch(r"corr_(pearson|spearman)\.[A-Za-z0-9_]+_sscd", name):
            name += ".pooled"
        metrics[name] = m
    series = {
        (f"roc_set.{k[4:]}" if k.startswith("roc.") else k): v
        for k, v in (doc.get("series") or {}).items()
    }
    return {**doc, "schema_version": 2, "metrics": metrics, "series": series}


# Upgrades of older versions, applied in memory when reading: {from_version: fn(doc) -> doc of
# from_version + 1}.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _from_1}
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 32
PER_PROMPT_SUFFIX = ".prompts.jsonl"

REQUIRED_TOP = (
    "schema",
    "schema_version",
    "run",
    "model",
    "sampling",
    "mitigation",
    "prompt_sets",
    "sscd",
    "environment",
    "metrics",
)
METRIC_KEYS = ("value", "stderr", "n", "higher_is_better")


class ResultsError(MemberbenchError):
    """A results file that cannot be read: its message names the file and the problem."""


# --------------------------------------------------------------------------------------------
# JSON helpers


def clean_number(x: Any) -> float | None:
    """A finite float, or None for NaN / inf / None (JSON has no NaN)."""
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def to_jsonable(obj: Any) -> Any:
    """Recursively turn numpy scalars/arrays, tuples, Paths and non-finite floats into JSON."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return to_jsonable(obj.tolist())
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    return str(obj)


def dumps(obj: Any, indent: int | None = 1) -> str:
    return json.dumps(to_jsonable(obj), indent=indent, sort_keys=False, allow_nan=False)


def per_prompt_path(results_path: str | Path) -> Path:
    p = Path(results_path)
    stem = p.name[:-5] if p.name.endswith(".json") else p.name
    return p.with_name(stem + PER_PROMPT_SUFFIX)


def staged_per_prompt_path(results_path: str | Path, name: str, sha256: str) -> Path:
    """Where a pair commit keeps the JSONL named ``name`` with digest ``sha256`` until it is
    renamed to ``name`` (hidden, beside the JSON)."""
    return Path(results_path).with_name(f".{name}.{sha256[:16]}.staged")


def per_prompt_file(results_path: str | Path, doc: Mapping[str, Any]) -> Path | None:
    """The per-prompt JSONL that belongs to the run record ``doc`` read from ``results_path``:
    the staged copy of an interrupted pair commit when there is one for ``doc``'s sha256, else
    the file named by ``per_prompt.path``; None when there is none (or the name is not a plain
    file name)."""
    pp = doc.get("per_prompt")
    if not isinstance(pp, Mapping):
        return None
    name, sha = pp.get("path"), pp.get("sha256")
    if not isinstance(name, str) or not _plain_name(name):
        return None
    if isinstance(sha, str) and sha:
        staged = staged_per_prompt_path(results_path, name, sha)
        if staged.is_file():
            return staged
    p = Path(results_path).with_name(name)
    return p if p.is_file() else None


def write_results(
    path: str | Path, doc: dict[str, Any], prompt_rows: Iterable[Mapping[str, Any]] = ()
) -> Path:
    """Write the run record and its per-prompt JSONL as one **pair commit**.

    ``doc`` is validated first; a document that does not match the schema is a bug and raises
    ResultsError before anything is written.  Then:

    1. the JSONL is written (atomically) under a hidden staged name that carries its sha256;
    2. the JSON, which records that sha256, is written atomically over ``path``: the commit
       point;
    3. the staged JSONL is renamed to its final name; older staged files are removed.

    A reader (:func:`per_prompt_file`, :func:`load_per_prompt`, :func:`validate_file`) takes the
    JSONL whose sha256 the JSON records: the staged one when step 3 has not happened yet.  So
    whatever moment the process dies at, readers see the old pair (death before step 2) or the
    new pair (after it), never a new JSONL beside an old JSON; the next write to ``path``
    tidies what an interrupted one left.
    """
    path = Path(path)
    lines = [json.dumps(to_jsonable(r), allow_nan=False, sort_keys=True) for r in prompt_rows]
    body = "".join(line + "\n" for line in lines).encode("utf-8")
    jl = per_prompt_path(path)
    sha = hashlib.sha256(body).hexdigest()
    doc = dict(doc)
    doc["per_prompt"] = {"path": jl.name, "sha256": sha, "rows": len(lines)}
    doc = to_jsonable(doc)
    errors = validate(doc)
    if errors:
        raise ResultsError(
            "refusing to write an invalid results document: " + "; ".join(errors[:5])
        )
    staged = staged_per_prompt_path(path, jl.name, sha)
    atomic_write_bytes(staged, body)  # 1
    try:
        atomic_write_text(path, dumps(doc) + "\n")  # 2: the commit point
    except BaseException:
        if not _refers_to(path, sha):  # the old record stands: its JSONL is untouched
            staged.unlink(missing_ok=True)
        raise
    replace(staged, jl)  # 3
    _tidy(path, jl.name)
    return path


def _refers_to(path: Path, sha: str) -> bool:
    try:
        doc = json.loads(path.read_bytes())
        return doc["per_prompt"]["sha256"] == sha
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return False


def _tidy(path: Path, jl_name: str) -> None:
    """Remove staged JSONLs of ``jl_name`` left by interrupted commits, and old temp files."""
    prefix = f".{jl_name}."
    for p in path.parent.iterdir():
        n = p.name
        if n.startswith(prefix) and n.endswith(".staged") and len(n) == len(prefix) + 16 + 7:
            p.unlink(missing_ok=True)
    remove_stale_temps(path.parent)


# --------------------------------------------------------------------------------------------
# reading


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name} (write null for undefined numbers)")


def parse_json_text(text: str, where: str = "results file") -> Any:
    """``json.loads`` that rejects NaN / Infinity; errors become ResultsError naming ``where``."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as e:
        raise ResultsError(f"{where}: not valid JSON ({e})") from None
    except RecursionError:
        raise ResultsError(
            f"{where}: nested too deeply to read (limit {MAX_DEPTH} levels)"
        ) from None


def read_json_file(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ResultsError(f"{p}: no such file")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ResultsError(f"{p}: {size} bytes is larger than the {MAX_FILE_BYTES} byte limit")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ResultsError(f"{p}: not UTF-8 text (byte {e.start})") from None
    return parse_json_text(text, str(p))


def upgrade(doc: Any, where: str = "results file") -> dict[str, Any]:
    """Check the schema tag and version; apply migrations of older versions (in memory)."""
    if not isinstance(doc, dict):
        raise ResultsError(f"{where}: the top level must be a JSON object, got {_kind(doc)}")
    if doc.get("schema") != SCHEMA:
        raise ResultsError(
            f"{where}: not a memberbench results file (schema is {doc.get('schema')!r}, "
            f"expected {SCHEMA!r})"
        )
    v = doc.get("schema_version")
    if isinstance(v, bool) or not isinstance(v, int):
        raise ResultsError(f"{where}: schema_version must be an integer, got {v!r}")
    if v > SCHEMA_VERSION:
        raise ResultsError(
            f"{where}: schema_version {v} is newer than this memberbench understands (it reads "
            f"versions {_versions()}); upgrade memberbench"
        )
    while v < SCHEMA_VERSION:
        step = MIGRATIONS.get(v)
        if step is None:
            raise ResultsError(
                f"{where}: schema_version {v} is no longer supported (this memberbench reads "
                f"versions {_versions()}); rerun the benchmark to produce a current file"
            )
        doc = step(dict(doc))
        nv = doc.get("schema_version")
        if nv != v + 1:
            raise ResultsError(f"{where}: migration from schema_version {v} gave {nv!r}")
        v = nv
    return doc


def _versions() -> str:
    return ", ".join(str(v) for v in SUPPORTED_VERSIONS)


def load_results(path: str | Path, *, check: bool = True) -> dict[str, Any]:
    """Read, upgrade and (by default) validate a results file; ResultsError if it is bad."""
    doc = upgrade(read_json_file(path), str(path))
    if check:
        errors = validate(doc)
        if errors:
            raise ResultsError(
                f"{path}: does not match the results schema: " + "; ".join(errors[:10])
            )
    return doc


def load_per_prompt(results_path: str | Path, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-prompt rows of a results file (empty list if it has none); the JSONL is the one
    :func:`per_prompt_file` picks, so an interrupted pair commit is read consistently."""
    p = per_prompt_file(results_path, doc)
    if p is None:
        return []
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ResultsError(f"{p}: not UTF-8 text (byte {e.start})") from None
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            row = parse_json_text(line, f"{p}:{i}")
            if isinstance(row, dict):
                rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# validation (pure JSON checks)


def _kind(x: Any) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "boolean"
    if isinstance(x, int | float):
        return "number"
    if isinstance(x, str):
        return "string"
    if isinstance(x, list):
        return "array"
    if isinstance(x, dict):
        return "object"
    return type(x).__name__


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def _depth(x: Any, limit: int = 32) -> int:
    stack = [(x, 1)]
    deepest = 0
    while stack:
        cur, d = stack.pop()
        deepest = max(deepest, d)
        if d > limit:
            return d
        if isinstance(cur, dict):
            stack.extend((v, d + 1) for v in cur.values())
        elif isinstance(cur, list):
            stack.extend((v, d + 1) for v in cur)
    return deepest


def _need(errors: list[str], obj: Any, where: str, keys: dict[str, tuple[str, ...]]) -> None:
    """``keys``: {key: allowed kinds}."""
    if not isinstance(obj, dict):
        errors.append(f"{where} must be an object, got {_kind(obj)}")
        return
    for k, kinds in keys.items():
        if k not in obj:
            errors.append(f"{where}.{k} is missing")
        elif _kind(obj[k]) not in kinds:
            errors.append(
                f"{where}.{k} must be {' or '.join(kinds)}, got {_kind(obj[k])} ({obj[k]!r:.60})"
            )


def _is_count(x: Any) -> bool:
    return _is_num(x) and x >= 0 and int(x) == x


def _optional(
    errors: list[str], obj: Any, where: str, keys: dict[str, tuple[Callable[[Any], bool], str]]
) -> None:
    """Type checks of documented keys that may be absent: ``keys``: {key: (test, what)}."""
    if not isinstance(obj, dict):
        return
    for k, (test, what) in keys.items():
        if k in obj and not test(obj[k]):
            errors.append(f"{where}.{k} must be {what}, got {_kind(obj[k])} ({obj[k]!r:.60})")


def _num_or_null(x: Any) -> bool:
    return x is None or _is_num(x)


def _numeric_array(x: Any, depth: int = 0) -> bool:
    """A JSON array whose items are numbers, nulls or (nested) such arrays."""
    if not isinstance(x, list) or depth > 4:
        return False
    return all(_num_or_null(v) or _numeric_array(v, depth + 1) for v in x)


_RUN_OPTIONAL = {
    "duration_s": ((lambda x: _is_num(x) and x >= 0), "a number >= 0 (seconds)"),
    "generation_s": ((lambda x: _is_num(x) and x >= 0), "a number >= 0 (seconds)"),
    "images_generated": (_is_count, "an integer >= 0"),
    "selected_tests": (_is_count, "an integer >= 0"),
    "exitstatus": ((lambda x: _is_num(x) and int(x) == x), "an integer"),
    "profile": ((lambda x: isinstance(x, str)), "a string"),
    "command": (
        (lambda x: isinstance(x, list) and all(isinstance(v, str) for v in x)),
        "a list of strings",
    ),
    "outcomes": (
        (lambda x: isinstance(x, dict) and all(_is_count(v) for v in x.values())),
        "an object of integer counts >= 0",
    ),
    "skipped": (
        (
            lambda x: (
                isinstance(x, list)
                and all(
                    isinstance(v, dict)
                    and isinstance(v.get("test"), str)
                    and isinstance(v.get("reason"), str)
                    for v in x
                )
            )
        ),
        "a list of {test, reason} strings",
    ),
    "compared_with": ((lambda x: x is None or isinstance(x, str)), "a string or null"),
}
_SAMPLING_OPTIONAL = {
    "eta": (_num_or_null, "a number or null"),
    "guidance_sweep": (
        (lambda x: isinstance(x, list) and all(_is_num(v) for v in x)),
        "a list of numbers",
    ),
    "sweep_seeds": (
        (lambda x: isinstance(x, list) and all(_is_count(v) for v in x)),
        "a list of integers >= 0",
    ),
    "batch_size": ((lambda x: _is_count(x) and x >= 1), "an integer >= 1"),
}
_PROMPT_SET_OPTIONAL = {
    "n_with_image": (_is_count, "an integer >= 0"),
    "limit": ((lambda x: x is None or _is_count(x)), "an integer >= 0 or null"),
    "source": ((lambda x: x is None or isinstance(x, str)), "a string or null"),
}
_STR = ((lambda x: isinstance(x, str)), "a string")
_MODEL_OPTIONAL = {"dtype": _STR, "device": _STR}
_MITIGATION_OPTIONAL = {
    "config": ((lambda x: isinstance(x, dict)), "an object"),
    "citation": _STR,
}
_SSCD_OPTIONAL = {
    "backend": _STR,
    "thresholds": (
        (lambda x: isinstance(x, list) and all(_is_num(v) for v in x)),
        "a list of numbers",
    ),
}
# run outcomes that mean some task did not pass
FAILED_OUTCOMES = ("failed", "error", "errors")


def run_failures(doc: Any) -> list[str]:
    """Why a (schema-valid) run record is a failed or unfinished run, or [] for a clean one:
    ``run.status`` other than "complete", failed / errored tasks, a non-zero exit status."""
    run = doc.get("run") if isinstance(doc, dict) else None
    if not isinstance(run, dict):
        return []
    out = []
    if run.get("status") != "complete":
        out.append(f"run.status is {run.get('status')!r}, not 'complete'")
    outcomes = run.get("outcomes")
    if isinstance(outcomes, dict):
        bad = {k: v for k, v in outcomes.items() if k in FAILED_OUTCOMES and _is_num(v) and v > 0}
        if bad:
            out.append(
                "tasks did not pass: " + ", ".join(f"{v} {k}" for k, v in sorted(bad.items()))
            )
    es = run.get("exitstatus")
    if _is_num(es) and es != 0:
        out.append(f"pytest exit status {int(es)}")
    return out


def validate_metric(name: str, m: Any) -> list[str]:
    errors: list[str] = []
    where = f"metrics[{name!r}]"
    if not isinstance(name, str) or not name or any(c in name for c in ",: \t\n"):
        errors.append(f"{where}: a metric name must be non-empty, without ',', ':' or spaces")
    _need(
        errors,
        m,
        where,
        {
            "value": ("number", "null"),
            "stderr": ("number", "null"),
            "n": ("number",),
            "higher_is_better": ("boolean", "null"),
        },
    )
    if not isinstance(m, dict):
        return errors
    n = m.get("n")
    if _is_num(n) and (n < 0 or int(n) != n):
        errors.append(f"{where}.n must be a non-negative integer, got {n!r}")
    se = m.get("stderr")
    if _is_num(se) and se < 0:
        errors.append(f"{where}.stderr must be >= 0, got {se!r}")
    ci = m.get("ci")
    if ci is not None and not (
        isinstance(ci, list) and len(ci) == 2 and all(v is None or _is_num(v) for v in ci)
    ):
        errors.append(f"{where}.ci must be null or [low, high], got {ci!r:.60}")
    if m.get("value") is None and not (isinstance(m.get("reason"), str) and m["reason"]):
        errors.append(f"{where}: value is null but no reason says why")
    for k in ("reason", "note", "test", "family", "prompt_set", "unit", "description"):
        if k in m and not isinstance(m[k], str):
            errors.append(f"{where}.{k} must be a string, got {_kind(m[k])}")
    return errors


def validate(doc: Any) -> list[str]:
    """All schema problems of a (current-version) results document, as messages; [] if valid."""
    errors: list[str] = []
    if not isinstance(doc, dict):
        return [f"the top level must be an object, got {_kind(doc)}"]
    if _depth(doc) > MAX_DEPTH:
        return [f"nesting deeper than {MAX_DEPTH} levels"]
    missing = [k for k in REQUIRED_TOP if k not in doc]
    if missing:
        errors.append(f"missing top-level keys: {', '.join(missing)}")
    if doc.get("schema") != SCHEMA:
        errors.append(f"schema must be {SCHEMA!r}, got {doc.get('schema')!r}")
    if doc.get("schema_version") not in SUPPORTED_VERSIONS:
        errors.append(
            f"schema_version {doc.get('schema_version')!r} is not one of {list(SUPPORTED_VERSIONS)}"
        )
    if "run" in doc:
        _need(
            errors,
            doc["run"],
            "run",
            {
                "id": ("string",),
                "started": ("string",),
                "finished": ("string",),
                "status": ("string",),
            },
        )
        _optional(errors, doc["run"], "run", _RUN_OPTIONAL)
    if "model" in doc:
        _need(
            errors,
            doc["model"],
            "model",
            {
                "spec": ("string",),
                "name": ("string",),
                "fingerprint": ("string",),
                "card": ("object",),
                "scheduler_config": ("object",),
                "revision": ("string", "null"),
            },
        )
        _optional(errors, doc["model"], "model", _MODEL_OPTIONAL)
    if "sampling" in doc:
        _need(
            errors,
            doc["sampling"],
            "sampling",
            {
                "scheduler": ("string",),
                "steps": ("number",),
                "guidance": ("number",),
                "seeds": ("array",),
            },
        )
        s = doc["sampling"]
        if isinstance(s, dict) and isinstance(s.get("seeds"), list):
            bad = [x for x in s["seeds"] if not (_is_num(x) and int(x) == x and x >= 0)]
            if bad or not s["seeds"]:
                errors.append("sampling.seeds must be a non-empty list of non-negative integers")
        _optional(errors, s, "sampling", _SAMPLING_OPTIONAL)
    if "mitigation" in doc:
        _need(
            errors,
            doc["mitigation"],
            "mitigation",
            {"spec": ("string",), "name": ("string",), "fingerprint": ("string",)},
        )
        _optional(errors, doc["mitigation"], "mitigation", _MITIGATION_OPTIONAL)
    if "prompt_sets" in doc:
        ps = doc["prompt_sets"]
        if not isinstance(ps, dict) or not ps:
            errors.append("prompt_sets must be a non-empty object")
        else:
            for side, d in ps.items():
                _need(
                    errors,
                    d,
                    f"prompt_sets.{side}",
                    {"name": ("string",), "content_hash": ("string",), "n": ("number",)},
                )
                _optional(errors, d, f"prompt_sets.{side}", _PROMPT_SET_OPTIONAL)
    if "sscd" in doc:
        _need(
            errors,
            doc["sscd"],
            "sscd",
            {"recipe": ("string",), "model_sha256": ("string",), "model": ("string",)},
        )
        _optional(errors, doc["sscd"], "sscd", _SSCD_OPTIONAL)
    if "environment" in doc and not isinstance(doc["environment"], dict):
        errors.append(f"environment must be an object, got {_kind(doc['environment'])}")
    if "clip" in doc and doc["clip"] is not None and not isinstance(doc["clip"], dict):
        errors.append(f"clip must be an object or null, got {_kind(doc['clip'])}")
    metrics = doc.get("metrics")
    if "metrics" in doc:
        if not isinstance(metrics, dict):
            errors.append(f"metrics must be an object, got {_kind(metrics)}")
        else:
            for name, m in metrics.items():
                errors.extend(validate_metric(name, m))
    series = doc.get("series", {})
    if not isinstance(series, dict):
        errors.append(f"series must be an object, got {_kind(series)}")
    else:
        for name, s in series.items():
            if not isinstance(s, dict):
                errors.append(f"series[{name!r}] must be an object, got {_kind(s)}")
                continue
            for k, v in s.items():
                if not (_num_or_null(v) or _numeric_array(v)):
                    errors.append(
                        f"series[{name!r}].{k} must be a number, null or an array of numbers, "
                        f"got {_kind(v)} ({v!r:.60})"
                    )
    pp = doc.get("per_prompt")
    if pp is not None:
        _need(
            errors,
            pp,
            "per_prompt",
            {"path": ("string",), "sha256": ("string",), "rows": ("number",)},
        )
        if isinstance(pp, dict) and isinstance(pp.get("path"), str) and not _plain_name(pp["path"]):
            errors.append(
                f"per_prompt.path must be a plain file name beside the JSON, got {pp['path']!r}"
            )
    return errors


def validate_file(path: str | Path, *, check_per_prompt: bool = True) -> tuple[list[str], Any]:
    """Validate a results file: ``(errors, doc)``.  Never executes anything in the file.

    Reads with NaN rejection and a size limit, checks the schema tag and version (an older
    version is upgraded when a migration exists, else refused naming the version), then the
    schema; with ``check_per_prompt`` also the per-prompt JSONL beside it (sha256, row count,
    each line an object), when that file is present.
    """
    try:
        doc = upgrade(read_json_file(path), str(path))
    except ResultsError as e:
        return [str(e)], None
    errors = validate(doc)
    if check_per_prompt and not errors:
        errors.extend(_check_per_prompt(Path(path), doc))
    return errors, doc


def _check_per_prompt(path: Path, doc: dict[str, Any]) -> list[str]:
    pp = doc.get("per_prompt")
    if not isinstance(pp, dict):
        return []
    jl = per_prompt_file(path, doc)
    if jl is None:
        return []  # the run record alone is still a valid submission
    data = jl.read_bytes()
    name = pp["path"]
    errors = []
    if hashlib.sha256(data).hexdigest() != pp["sha256"]:
        errors.append(
            f"{name}: sha256 does not match per_prompt.sha256 (the file was changed, or it "
            "belongs to another run record)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return [*errors, f"{name}: not UTF-8 text (byte {e.start})"]
    rows = 0
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        rows += 1
        try:
            row = json.loads(line, parse_constant=_reject_constant)
        except ValueError as e:
            errors.append(f"{name}:{i}: not valid JSON ({e})")
            continue
        except RecursionError:
            errors.append(f"{name}:{i}: nested deeper than {MAX_DEPTH} levels")
            continue
        if _depth(row) > MAX_DEPTH:
            errors.append(f"{name}:{i}: nested deeper than {MAX_DEPTH} levels")
        elif not isinstance(row, dict) or not isinstance(row.get("prompt_id"), str):
            errors.append(f"{name}:{i}: each line must be an object with a prompt_id")
        elif "metrics" in row and not isinstance(row["metrics"], dict):
            errors.append(f"{name}:{i}: metrics must be an object, got {_kind(row['metrics'])}")
        if len(errors) > 50:
            errors.append(f"{name}: stopped after 50 problems")
            return errors
    if rows != pp["rows"]:
        errors.append(f"{name}: {rows} rows, but per_prompt.rows says {pp['rows']}")
    return errors


def metric_entry(
    value: Any,
    *,
    higher_is_better: bool | None,
    stderr: Any = None,
    n: int = 0,
    ci: tuple[Any, Any] | None = None,
    reason: str = "",
    note: str = "",
    **extra: str,
) -> dict[str, Any]:
    """One ``metrics`` entry in schema form (NaN -> null with a reason)."""
    v = clean_number(value)
    if v is None and not reason:
        reason = "undefined (NaN)"
    c = None
    if ci is not None:
        lo, hi = clean_number(ci[0]), clean_number(ci[1])
        c = None if lo is None and hi is None else [lo, hi]
    return {
        "value": v,
        "stderr": clean_number(stderr),
        "n": int(n),
        "higher_is_better": higher_is_better,
        "ci": c,
        "reason": reason if v is None else "",
        "note": note,
        **{k: str(x) for k, x in extra.items()},
    }
