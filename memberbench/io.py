"""The one place memberbench writes a file atomically (standard library only).

Every file memberbench writes for later reading (results, cache entries, traces, fetched images,
manifests, the leaderboard README) goes through :func:`atomic_open` / :func:`atomic_write_bytes`
/ :func:`atomic_write_text`:

1. the data go to a temporary file in the **same folder** (so the final rename cannot cross a
   file system), named ``.<name>.mbtmp-<pid>-<random>.part`` (:func:`is_temp_name`);
2. the temporary file is created with mode ``0o666`` and ``O_EXCL``, so the kernel applies the
   process umask exactly as for a plain ``open(path, "w")`` (not ``mkstemp``'s ``0600``);
3. it is flushed and ``fsync``-ed, then ``os.replace``-d onto the final name, then the folder is
   ``fsync``-ed so the rename itself survives a power cut;
4. on any failure (an exception, including KeyboardInterrupt, raised while writing, syncing or
   renaming) the temporary file is removed and the final name is untouched.

A reader therefore sees either the old complete file or the new complete file, never a part.
A process killed with SIGKILL cannot run step 4: it leaves a temporary file, which
:func:`remove_stale_temps` removes later (only those older than ``min_age_s``, or whose writer
process is gone, so that a concurrent writer's temporary file is not pulled from under it); it is
the one such cleaner (the generation cache, the results folder, the image fetcher and the site
build all call it).

:func:`file_sha256` is the one sha256-of-a-file helper.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

TEMP_MARK = ".mbtmp-"
TEMP_SUFFIX = ".part"
_TEMP_RE = re.compile(r"^\..*\.mbtmp-(\d+)-[0-9a-f]{8}\.part$")
# keep the temporary name within the usual 255-byte limit
_MAX_STEM = 180


def temp_path(path: str | Path) -> Path:
    """A fresh temporary name beside ``path`` (not created)."""
    p = Path(path)
    stem = p.name[:_MAX_STEM]
    return p.with_name(f".{stem}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file name made by :func:`temp_path`."""
    return bool(_TEMP_RE.match(name))


def fsync_dir(folder: str | Path) -> None:
    """``fsync`` a folder (makes a rename in it durable); a no-op where unsupported."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace(src: str | Path, dst: str | Path) -> None:
    """``os.replace(src, dst)`` then ``fsync`` of the destination folder."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


@contextlib.contextmanager
def atomic_open(
    path: str | Path, mode: str = "wb", *, encoding: str = "utf-8", mkdir: bool = True
) -> Iterator[IO[Any]]:
    """``with atomic_open(path) as f: f.write(...)``: ``path`` appears complete when the block
    ends without an exception, and is untouched (no temporary file left) when it raises."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    final = Path(path)
    if mkdir:
        final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        if mode == "w":
            f: IO[Any] = os.fdopen(fd, "w", encoding=encoding, newline="")
        else:
            f = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, mkdir: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns ``path``."""
    with atomic_open(path, "wb", mkdir=mkdir) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(
    path: str | Path, text: str, *, encoding: str = "utf-8", mkdir: bool = True
) -> Path:
    """Write ``text`` to ``path`` atomically (newlines written as given); returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding), mkdir=mkdir)


def temp_writer_pid(name: str, patterns: Sequence[re.Pattern[str]] = ()) -> int | None:
    """The writer's pid when ``name`` is a temporary name (:func:`temp_path`'s, or one of
    ``patterns``, whose first group is the pid), else None."""
    for rx in (_TEMP_RE, *patterns):
        m = rx.match(name)
        if m:
            return int(m.group(1))
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours (PermissionError), or cannot tell: keep its file
        return True
    return True


def remove_stale_temps(
    folder: str | Path,
    *,
    min_age_s: float = 3600.0,
    dead_writer_age_s: float | None = None,
    patterns: Sequence[re.Pattern[str]] = (),
    dirs: bool = False,
    now: float | None = None,
) -> int:
    """The one cleaner of what killed writes leave: remove the temporary entries in ``folder``
    (not below it) last modified at least ``min_age_s`` seconds ago, and, with
    ``dead_writer_age_s``, those at least that old whose writer (the pid in the name) is not
    running on this machine; returns how many were removed.

    Temporary names are :func:`temp_path`'s plus ``patterns`` (regexes whose first group is the
    writer's pid).  ``dirs=False`` removes files (never links); ``dirs=True`` removes folders
    (a site build in progress) and nothing else.  ``min_age_s=0`` removes all: only for a folder
    the caller holds a lock on."""
    root = Path(folder)
    if not root.is_dir():
        return 0
    now = time.time() if now is None else now
    n = 0
    for p in root.iterdir():
        pid = temp_writer_pid(p.name, patterns)
        if pid is None:
            continue
        try:
            st = p.lstat()
            if p.is_symlink() or not (p.is_dir() if dirs else p.is_file()):
                continue
            age = now - st.st_mtime
            dead = (
                dead_writer_age_s is not None
                and age >= dead_writer_age_s
                and pid != os.getpid()
                and not _pid_alive(pid)
            )
            if age < min_age_s and not dead:
                continue
            if dirs:
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()
            n += 1
        except FileNotFoundError:  # removed by someone else meanwhile
            continue
    return n


def file_sha256(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def writable_file_target(path: str | Path) -> str | None:
    """Why :func:`atomic_write_bytes` could not write ``path``, or None when it can.

    Nothing is left behind: where the folder exists, a temporary file is created and removed
    in it (the way the real write starts); where it does not, the nearest existing ancestor
    must be a folder the process may create entries in."""
    p = Path(path)
    if p.is_dir():
        return f"{p} is a folder; name a file"
    if p.exists() and not p.is_file():
        return f"{p} exists and is not a regular file"
    parent = p.parent
    if parent.is_dir():
        tmp = temp_path(p)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as e:
            return f"cannot create files in {parent} ({e.strerror or e})"
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return None
    anc = parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        return f"{anc} is not a folder, so {parent} cannot be created"
    if not os.access(anc, os.W_OK | os.X_OK):
        return f"cannot create {parent}: {anc} is not writable"
    return None
