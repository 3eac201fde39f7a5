"""Named prompt sets and :func:`load_prompt_set`, the one entry point for "which prompts".

Names live in ``memberbench.registry.PROMPT_SETS``.  Each entry is a callable
``loader(*, limit=None, memorized=None, **options) -> PromptSet``, registered lazily (as a
``"module:attr"`` string, imported on first use) or through the ``memberbench.prompt_sets``
entry-point group by other packages.

Built in:

* ``bundled-memorized`` / ``bundled-nonmemorized``: the bundled model's canary prompts (with
  their training images and duplication levels) and held-out shape prompts, shipped in
  ``memberbench/data/bundled/``.
* ``wen-sd1-memorized``, ``nemo-sd1-memorized``, ``nemo-sd1-nonmemorized``, ``webster-sd1``,
  ``webster-sd2``, ``webster-realistic-vision``: the field's public prompt lists, downloaded from
  their pinned upstream locations (needs network; offline, pass a local copy of the file).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from memberbench.data.prompts import (
    PromptSet,
    load_hf_prompt_set,
    load_prompt_file,
)
from memberbench.registry import PROMPT_SETS
from memberbench.types import MemberbenchError

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
BUNDLED_FILES = {"memorized": "memorized.jsonl", "nonmemorized": "nonmemorized.jsonl"}

# The field's prompt lists at pinned upstream commits (see SPEC.md, "Prompt sets used by the field").
_GH = "https://raw.githubusercontent.com"
_WEBSTER = (
    "https://huggingface.co/datasets/fraisdufour/templates-verbs/resolve/main/groundtruth_parquets"
)
REMOTE_SETS: dict[str, str] = {
    "wen-sd1-memorized": f"{_GH}/YuxinWenRick/diffusion_memorization/"
    "ca60157f40a5d3bc41763e922ce27187fdf1adc4/examples/sdv1_500_memorized.jsonl",
    "nemo-sd1-memorized": f"{_GH}/ml-research/localizing_memorization_in_diffusion_models/"
    "c8de0c620ec511cdb9e937905d1503cd9758910b/prompts/memorized_laion_prompts.csv",
    "nemo-sd1-nonmemorized": f"{_GH}/ml-research/localizing_memorization_in_diffusion_models/"
    "c8de0c620ec511cdb9e937905d1503cd9758910b/prompts/unmemorized_laion_prompts.csv",
    "webster-sd1": f"{_WEBSTER}/sdv1_bb_edge_groundtruth.parquet",
    "webster-sd2": f"{_WEBSTER}/sdv2_bb_edge_groundtruth.parquet",
    "webster-realistic-vision": f"{_WEBSTER}/realistic_vision_sdv1_edge_groundtruth.parquet",
}


def load_bundled(
    which: str,
    directory: str | Path | None = None,
    *,
    limit: int | None = None,
    memorized: bool | None = None,
) -> PromptSet:
    """Load one of the bundled sets (``which`` = "memorized" or "nonmemorized").

    ``directory`` holds ``memorized.jsonl`` / ``nonmemorized.jsonl`` and the PNGs they name by
    relative path (default: the package's ``memberbench/data/bundled``).  Each line:
    ``{"prompt_id", "caption", "image", "image_sha256", "duplicates", "group", "memorized",
    "canary_kind" or "attributes", "nearest_train_index", "nearest_rms"}``.  The file is read in
    strict mode: a bad line, a missing PNG or an image whose pixels do not match its
    ``image_sha256`` is a MemberbenchError naming the file.
    """
    if which not in BUNDLED_FILES:
        raise MemberbenchError(
            f"unknown bundled set {which!r}: use one of {', '.join(BUNDLED_FILES)}"
        )
    root = Path(directory) if directory is not None else BUNDLED_DIR
    path = root / BUNDLED_FILES[which]
    if not path.is_file():
        raise MemberbenchError(
            f"bundled prompt set file not found: {path}. The bundled sets are written by the "
            "bundled-model build into memberbench/data/bundled/; reinstall memberbench or "
            "rebuild the bundled model, or pass a prompt file instead."
        )
    return load_prompt_file(
        path,
        format="jsonl",
        memorized=memorized,
        limit=limit,
        strict=True,
        name=f"bundled-{which}",
        source=f"bundled:{path}",
    )


def load_bundled_memorized(
    directory: str | Path | None = None,
    *,
    limit: int | None = None,
    memorized: bool | None = None,
) -> PromptSet:
    """The bundled model's canary prompts (duplicated in training; group "dup=<n>")."""
    return load_bundled("memorized", directory, limit=limit, memorized=memorized)


def load_bundled_nonmemorized(
    directory: str | Path | None = None,
    *,
    limit: int | None = None,
    memorized: bool | None = None,
) -> PromptSet:
    """The bundled model's held-out shape prompts (never seen in training)."""
    return load_bundled("nonmemorized", directory, limit=limit, memorized=memorized)


def _load_remote(url: str, set_name: str, **options: Any) -> PromptSet:
    options.setdefault("name", set_name)
    return load_hf_prompt_set(url, **options)


def register_builtin_sets() -> None:
    """Put the built-in names into PROMPT_SETS (idempotent)."""
    builtin: dict[str, Any] = {
        "bundled-memorized": "memberbench.data.sets:load_bundled_memorized",
        "bundled-nonmemorized": "memberbench.data.sets:load_bundled_nonmemorized",
    }
    for set_name, url in REMOTE_SETS.items():
        builtin[set_name] = partial(_load_remote, url, set_name)
    for set_name, entry in builtin.items():
        if set_name not in PROMPT_SETS:
            PROMPT_SETS.register(set_name, entry)


register_builtin_sets()


def _looks_like_path(spec: str) -> bool:
    return any(sep in spec for sep in ("/", "\\")) or Path(spec).suffix != ""


def load_prompt_set(
    spec: str | Path,
    *,
    memorized: bool | None = None,
    limit: int | None = None,
    **options: Any,
) -> PromptSet:
    """A prompt set by registered name, file path, ``hf:owner/name`` or URL.

    ``memorized`` overrides every record's label (None keeps what the source says); ``limit``
    keeps the first ``limit`` records.  Other keyword options go to the loader: for files
    ``format``, ``caption_column``, ``group_column``, ``strict``, ``delimiter``, ``name``; for
    the hub also ``split``, ``config``, ``revision``, ``data_files``.
    """
    if isinstance(spec, Path):
        return load_prompt_file(spec, memorized=memorized, limit=limit, **options)
    if not isinstance(spec, str) or not spec.strip():
        raise MemberbenchError(
            f"prompt set must be a name, a file path, 'hf:owner/name' or a URL; got {spec!r}. "
            f"Known names: {', '.join(PROMPT_SETS.names())}"
        )
    spec = spec.strip()
    if spec in PROMPT_SETS:
        loader = PROMPT_SETS.get(spec)
        if isinstance(loader, PromptSet):
            ps = loader.limit(limit)
            return ps if memorized is None else _relabel(ps, memorized)
        try:
            result = loader(limit=limit, memorized=memorized, **options)
        except TypeError as e:
            if "unexpected keyword" not in str(e):
                raise
            raise MemberbenchError(
                f"prompt set {spec!r} does not take option(s) {sorted(options)}: {e}"
            ) from None
        if not isinstance(result, PromptSet):
            raise MemberbenchError(
                f"prompt set {spec!r} is registered to a loader that returned "
                f"{type(result).__name__}, not a PromptSet"
            )
        return result
    if spec.startswith(("hf:", "http://", "https://")):
        return load_hf_prompt_set(spec, memorized=memorized, limit=limit, **options)
    path = Path(spec).expanduser()
    if not path.exists() and not _looks_like_path(spec):
        err = PROMPT_SETS.unknown(spec)
        raise MemberbenchError(
            f"{err} Or pass a prompt file path (.jsonl, .csv, .parquet, .txt), 'hf:owner/name' "
            "or a URL."
        )
    return load_prompt_file(path, memorized=memorized, limit=limit, **options)


def _relabel(ps: PromptSet, memorized: bool) -> PromptSet:
    return replace(ps, records=tuple(replace(r, memorized=memorized) for r in ps.records))


def describe_sets() -> str:
    """One line per registered set (name: where it comes from), for help texts and docs."""
    lines = []
    for set_name in PROMPT_SETS.names():
        which = set_name.removeprefix("bundled-")
        if set_name in REMOTE_SETS:
            where = REMOTE_SETS[set_name]
        elif set_name.startswith("bundled-") and which in BUNDLED_FILES:
            where = str(BUNDLED_DIR / BUNDLED_FILES[which])
        else:
            where = "registered by a plugin"
        lines.append(f"{set_name}: {where}")
    return "\n".join(lines)
