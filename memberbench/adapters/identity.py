"""Full-byte model identity: sha256 of every weight file, memoised so that it stays cheap.

A model's fingerprint must change when any byte of what it computes with changes (one flipped
byte in a weight file, weights zeroed in a local copy), so it hashes whole files, never a
sample of their values.  Hashing a multi-gigabyte checkpoint on every load would be slow, so each
file's sha256 is remembered in a small sidecar, ``$MEMBERBENCH_CACHE/file-sha256.json``, keyed by
the file's real path and its ``(size, mtime_ns, ctime_ns, inode)``: any write to the file (which
moves its ctime, a stamp user code cannot set back) or a replacement (a new inode) makes the
memo stale and the file is hashed again.  The sidecar is only a cache: losing it, or two
processes overwriting each other's additions, costs a rehash, never a wrong answer.

For a model that exists only in memory (no files), :func:`tensors_sha256` hashes every byte of
every tensor.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from memberbench.io import atomic_write_text, file_sha256

SIDECAR_NAME = "file-sha256.json"
SIDECAR_VERSION = 1

# in-process memo: realpath -> (stamp, sha256); the sidecar is read into it once per path
_MEMO: dict[str, tuple[tuple[int, int, int, int], str]] = {}
_SIDECAR_LOADED: set[str] = set()


def sidecar_path() -> Path:
    """``$MEMBERBENCH_CACHE/file-sha256.json`` (default ``~/.cache/memberbench/...``)."""
    base = os.environ.get("MEMBERBENCH_CACHE") or str(Path.home() / ".cache" / "memberbench")
    return Path(base) / SIDECAR_NAME


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return (int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_ino))


def hash_file(path: str | os.PathLike) -> str:
    """sha256 (hex) of every byte of ``path`` (:func:`memberbench.io.file_sha256`; no memo)."""
    return file_sha256(path)


def _load_sidecar(side: Path) -> dict[str, Any]:
    try:
        doc = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("version") != SIDECAR_VERSION:
        return {}
    files = doc.get("files")
    return files if isinstance(files, dict) else {}


def _merge_sidecar(side: Path, new: Mapping[str, tuple[tuple[int, int, int, int], str]]) -> None:
    """Add ``new`` to the sidecar (read, merge, atomic replace), dropping files that no longer
    exist; failures are ignored (the sidecar is only a cache)."""
    try:
        side.parent.mkdir(parents=True, exist_ok=True)
        files = {p: v for p, v in _load_sidecar(side).items() if os.path.exists(p)}
        for p, (stamp, digest) in new.items():
            files[p] = [*stamp, digest]
        atomic_write_text(side, json.dumps({"version": SIDECAR_VERSION, "files": files}))
    except OSError:
        pass


def files_sha256(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """{real path: sha256} of every file, hashing only those whose stamp is not memoised."""
    side = sidecar_path()
    key = str(side)
    if key not in _SIDECAR_LOADED:
        for p, v in _load_sidecar(side).items():
            if isinstance(v, list) and len(v) == 5 and p not in _MEMO:
                _MEMO[p] = (tuple(int(x) for x in v[:4]), str(v[4]))  # type: ignore[assignment]
        _SIDECAR_LOADED.add(key)
    out: dict[str, str] = {}
    fresh: dict[str, tuple[tuple[int, int, int, int], str]] = {}
    for p in paths:
        real = os.path.realpath(p)
        stamp = _stamp(os.stat(real))
        hit = _MEMO.get(real)
        if hit is not None and hit[0] == stamp:
            out[real] = hit[1]
            continue
        digest = hash_file(real)
        if _stamp(os.stat(real)) != stamp:  # written while we read it: do not memoise
            out[real] = digest
            continue
        _MEMO[real] = fresh[real] = (stamp, digest)
        out[real] = digest
    if fresh:
        _merge_sidecar(side, fresh)
    return out


def model_files(root: str | os.PathLike) -> list[Path]:
    """Every file under ``root`` (symlinks followed, as in a Hugging Face snapshot), sorted;
    hidden names (``.cache/``, ``.gitattributes``) and ``__pycache__`` are left out."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in filenames:
            if not name.startswith("."):
                out.append(Path(dirpath) / name)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def dirs_sha256(roots: Iterable[str | os.PathLike]) -> tuple[str, int]:
    """(sha256 over every file's relative path and sha256 in each root, number of files)."""
    h = hashlib.sha256(b"memberbench-files-v1")
    n = 0
    for i, root in enumerate(roots):
        files = model_files(root)
        if not files:
            raise FileNotFoundError(f"no files under {root}")
        digests = files_sha256(files)
        for p in files:
            rel = p.relative_to(root).as_posix()
            h.update(f"{i}\0{rel}\0{digests[os.path.realpath(p)]}\n".encode())
            n += 1
    return h.hexdigest(), n


def tensors_sha256(tensors: Mapping[str, Any]) -> str:
    """sha256 over every tensor's name, dtype, shape and every byte of its values."""
    import torch

    h = hashlib.sha256(b"memberbench-tensors-v1")
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{k}\0{t.dtype}\0{tuple(tensors[k].shape)}\n".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sampled_tensor_hash(tensors: Mapping[str, Any], per_tensor: int = 4096) -> str:
    """sha256 over names, shapes and a strided sample (about ``per_tensor`` values) of each
    tensor.  Cheap, and *not* an identity: it only catches edits that touch sampled values (the
    fingerprint of a model loaded from files adds it to the files' full hashes, to notice
    in-memory edits made after loading)."""
    h = hashlib.sha256(b"memberbench-sampled-v1")
    for k in sorted(tensors):
        v = tensors[k].detach().reshape(-1)
        step = max(1, v.numel() // per_tensor)
        h.update(f"{k}\0{tuple(tensors[k].shape)}\n".encode())
        h.update(v[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()


def clear_memo() -> None:
    """Forget the in-process memo (the sidecar is read again on the next call)."""
    _MEMO.clear()
    _SIDECAR_LOADED.clear()
