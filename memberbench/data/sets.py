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

Every remote set's file is pinned by hash (:data:`PINNED_HASHES`: Webster's published MD5s, the
sha256 of Wen's and NeMo's files at the pinned commits).  A downloaded file is checked before it
is parsed; a mismatch is a MemberbenchError, never a silently different prompt list.  A local
copy of the file is passed as ``load_prompt_set("webster-sd1", path="/data/x.parquet")`` or
through the environment variable ``MEMBERBENCH_SET_<NAME>`` (the name upper-cased, ``-`` as
``_``: ``MEMBERBENCH_SET_WEBSTER_SD1=/data/x.parquet``); it is checked against the same hash.
To read a file of another version without the check, load it as a plain prompt file:
``load_prompt_set("/data/x.parquet")``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from memberbench.data import hub as _hub
from memberbench.data.hub import load_hf_prompt_set
from memberbench.data.loaders import detect_format, load_prompt_file
from memberbench.data.options import _memorized_from_name
from memberbench.data.records import PromptSet
from memberbench.registry import PROMPT_SETS
from memberbench.types import MemberbenchError

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
BUNDLED_FILES = {"memorized": "memorized.jsonl", "nonmemorized": "nonmemorized.jsonl"}

# The field's prompt lists at pinned upstream commits (docs/metrics.md#which-prompts-a-run-uses).
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


# Hashes of the remote sets' files, checked before a file is parsed: (algorithm, hex digest).
# Webster et al. publish MD5s for their parquets; for Wen's and NeMo's files these are the sha256
# of the files at the commits pinned in REMOTE_SETS.
PINNED_HASHES: dict[str, tuple[str, str]] = {
    "wen-sd1-memorized": (
        "sha256",
        "8eb16c6ff1c7195cddf26b3207bdc7c6a905a20162c6070d79fe60336a525c60",
    ),
    "nemo-sd1-memorized": (
        "sha256",
        "0b527a5965dc463e7a3e0d234ff7fd5489b1a76869c456dbb209dc753cb4af25",
    ),
    "nemo-sd1-nonmemorized": (
        "sha256",
        "f453b418cc157864baacbf68d97447273feac41e8066b2ead6b307bf795988e1",
    ),
    "webster-sd1": ("md5", "72c2dded275dda496de9c3f7c33c4f3d"),
    "webster-sd2": ("md5", "c700ae1d156a9330940d339a24740ed1"),
    "webster-realistic-vision": ("md5", "d4ce3781e41efb78289c936d87a79edf"),
}


def set_file_env_var(set_name: str) -> str:
    """The environment variable that points a registered remote set at a local copy."""
    return "MEMBERBENCH_SET_" + set_name.upper().replace("-", "_")


def file_digest(path: str | Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _how_to_point(set_name: str, url: str) -> str:
    fname = Path(url).name
    return (
        f"download {url} and pass its local path: load_prompt_set({set_name!r}, "
        f"path='/data/{fname}'), memberbench fetch-images {set_name} --set-file /data/{fname}, "
        f"or set {set_file_env_var(set_name)}=/data/{fname}"
    )


def verify_pinned(set_name: str, path: str | Path, *, downloaded: bool) -> None:
    """Check a remote set's file against :data:`PINNED_HASHES` (no-op for unpinned names)."""
    if set_name not in PINNED_HASHES:
        return
    algorithm, expected = PINNED_HASHES[set_name]
    got = file_digest(path, algorithm)
    if got == expected:
        return
    url = REMOTE_SETS.get(set_name, "")
    if downloaded:
        raise MemberbenchError(
            f"prompt set {set_name!r}: the upstream file changed since its hash was pinned: "
            f"expected {algorithm} {expected}, got {got} ({url}); pass a local copy of the "
            f"pinned version with load_prompt_set({set_name!r}, path=...) or "
            f"{set_file_env_var(set_name)}=..., or load the new file as a plain prompt file "
            "(load_prompt_set('/path/to/file')) to use it unchecked"
        )
    raise MemberbenchError(
        f"prompt set {set_name!r}: {path} is not the pinned file: expected {algorithm} "
        f"{expected}, got {got}; {_how_to_point(set_name, url)}, or load it as a plain prompt "
        f"file (load_prompt_set({str(path)!r})) to use it unchecked"
    )


def _download(url: str, set_name: str) -> str:
    offline = _hub.hub_offline()
    host = url.split("/")[2]
    if not offline and not _hub.hub_reachable(url):
        raise MemberbenchError(
            f"cannot load prompt set {set_name!r}: {host} is unreachable from this machine. On a "
            f"machine with network, {_how_to_point(set_name, url)} (a local path; its hash is "
            "checked)"
        )
    import datasets

    try:
        return datasets.DownloadManager().download(url)
    except Exception as e:  # noqa: BLE001 - any download failure becomes one clear message
        why = (
            "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and no cached copy was found"
            if offline
            else f"{type(e).__name__}: {e}"
        )
        raise MemberbenchError(
            f"cannot download prompt set {set_name!r} ({why}). On a machine with network, "
            f"{_how_to_point(set_name, url)} (a local path; its hash is checked)"
        ) from None


def _load_remote(
    url: str,
    set_name: str,
    *,
    path: str | Path | None = None,
    memorized: bool | None = None,
    **options: Any,
) -> PromptSet:
    """A registered remote set: a local copy (``path=`` or the env var) or the pinned download.

    The file's hash is checked against :data:`PINNED_HASHES` before it is parsed.
    """
    options.setdefault("name", set_name)
    fname = Path(url).name
    env = set_file_env_var(set_name)
    via = "path="
    if path is None and os.environ.get(env, "").strip():
        path, via = os.environ[env].strip(), env
    if path is not None:
        local = Path(path).expanduser()
        if not local.is_file():
            raise MemberbenchError(
                f"prompt set {set_name!r}: local copy {local} (from {via}) not found; "
                f"{_how_to_point(set_name, url)}"
            )
        verify_pinned(set_name, local, downloaded=False)
        source = f"file:{local.resolve()} (pinned copy of {url})"
    else:
        local = Path(_download(url, set_name))
        verify_pinned(set_name, local, downloaded=True)
        source = f"url:{url}"
    options.setdefault("format", detect_format(fname))
    label = _memorized_from_name(fname)
    return load_prompt_file(
        local, memorized=label if memorized is None else memorized, source=source, **options
    )


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
