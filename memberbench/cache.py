"""Content-addressed generation cache: one file per sample, written atomically.

The key of a sample hashes everything that determines it: the adapter's fingerprint (weights,
scheduler config, dtype, device type), the request's key (prompt, seed, steps, guidance,
scheduler, eta, negative prompt, size), the mitigation's fingerprint (or ``"none"``), the hash of
the reference latent it was traced against (or ``"none"``), :data:`SAMPLER_VERSION`, the batch
size the sample is generated in and the numerics of this process (:func:`generation_numerics`:
torch / diffusers versions, device, CPU threads and instruction set, or GPU model and TF32
switches).  The batch size is there because a sample's last bits depend on the shape of the
batch it is computed in (matmul blocking): the same request in batches of 1 and 16 differs by
~1e-5 in the latents; within one batch size the rows are independent of their neighbours.

Every file an entry points to is covered: an entry that recorded a full-latents file keeps that
file's sha256, and a latents file that no longer matches makes the entry corrupt (both removed,
regenerated).  Temporary files of a killed write are removed when the cache is
opened, once they are stale (their process is gone, or they are older than
:data:`STALE_TMP_S`).  :meth:`GenerationCache.stats` counts hits, misses, corrupt entries,
writes and removed temporary files.

Layout: ``root/<key[:2]>/<key>.npz`` holding the image, the final latent, every trace series and
a JSON header (request, scalars, status, timings, meta) with a sha256 over all of it.  Entries are
written to a unique temporary file and ``os.replace``d into place, so readers never see a partial
entry and several processes may fill one cache concurrently (the same key always has the same
content, so the last writer winning is harmless).  An unreadable or checksum-failing entry is
treated as missing (and removed), so it is regenerated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from memberbench.io import atomic_open, file_sha256, remove_stale_temps
from memberbench.sampling.sampler import SAMPLER_VERSION
from memberbench.types import GenerationRequest, Sample, Trace, stable_hash

FORMAT_VERSION = 2  # 2: latents_sha256 covers the full-latents file
_SERIES_PREFIX = "series__"
STALE_TMP_S = 600.0  # a temporary file this old is stale whoever wrote it
_DEAD_TMP_S = 60.0  # ... and one whose (local) writer process is gone, once this old


def default_cache_dir() -> Path:
    """``$MEMBERBENCH_CACHE/generations`` (default ``~/.cache/memberbench/generations``)."""
    base = os.environ.get("MEMBERBENCH_CACHE") or str(Path.home() / ".cache" / "memberbench")
    return Path(base) / "generations"


def tensor_hash(t: Any) -> str:
    """sha256 (16 hex) of a tensor/array's float32 values and shape; "none" for None."""
    if t is None:
        return "none"
    try:
        import torch

        if torch.is_tensor(t):
            t = t.detach().to("cpu", torch.float32).numpy()
    except ImportError:  # pragma: no cover
        pass
    a = np.ascontiguousarray(np.asarray(t, dtype=np.float32))
    h = hashlib.sha256(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def _fingerprint_of(obj: Any) -> str:
    if obj is None:
        return "none"
    if isinstance(obj, str):
        return obj
    return str(obj.fingerprint())


def generation_numerics(adapter: Any = None) -> dict[str, Any]:
    """What a sample's bits depend on besides its inputs, for the process generating it now.

    CPU: torch's intra-op thread count and CPU instruction set (both change the blocking of the
    matmuls); CUDA: the GPU model, CUDA version and TF32 switches; always the torch and diffusers
    versions and the device type.
    """
    import torch

    try:
        dev = torch.device(getattr(adapter, "device", None) or "cpu")
    except (RuntimeError, TypeError):
        dev = torch.device("cpu")
    try:
        from importlib.metadata import version

        diffusers_version = version("diffusers")
    except Exception:  # noqa: BLE001 - not installed
        diffusers_version = None
    d: dict[str, Any] = {
        "torch": torch.__version__,
        "diffusers": diffusers_version,
        "device": dev.type,
    }
    if dev.type == "cpu":
        d["threads"] = int(torch.get_num_threads())
        d["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    elif dev.type == "cuda":
        d["gpu"] = torch.cuda.get_device_name(dev)
        d["cuda"] = torch.version.cuda
        d["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
        d["tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
    return d


def sample_key(
    adapter: Any,
    request: GenerationRequest,
    mitigation: Any = None,
    reference: Any = None,
    *,
    reference_hash: str | None = None,
    batch: int | None = None,
    numerics: dict[str, Any] | None = None,
) -> str:
    """The cache key of one sample (32 hex).  ``adapter`` / ``mitigation`` may be objects with a
    ``fingerprint()`` or the fingerprint strings themselves; ``batch`` is the size of the batch
    the sample is generated in and ``numerics`` :func:`generation_numerics` (run_generation
    passes both)."""
    return stable_hash(
        {
            "adapter": _fingerprint_of(adapter),
            "request": request.key(),
            "mitigation": _fingerprint_of(mitigation),
            "reference": reference_hash or tensor_hash(reference),
            "sampler": SAMPLER_VERSION,
            "batch": batch,
            "numerics": numerics,
        },
        n=32,
    )


# temporary names of a write in progress besides memberbench.io's own
# (``.<name>.mbtmp-<pid>-<hex>.part``): run_generation's padding latents
# (``.<key>.mbpad-<pid>-<hex>-<k>.npz``) and older versions' (``.<name>.<pid>.<hex>.tmp``)
_TEMP_NAMES = (
    re.compile(r"^\..*\.mbpad-(\d+)-[0-9a-f]{8}-\d+\.npz$"),
    re.compile(r"^\..*\.(\d+)\.[0-9a-f]{8}\.tmp$"),
)


def remove_stale_tmp(folder: Path, now: float | None = None) -> int:
    """Remove the stale temporary files of killed writes in ``folder`` (not below it): those
    older than :data:`STALE_TMP_S`, or older than a minute whose writer is not running here."""
    return remove_stale_temps(
        folder, min_age_s=STALE_TMP_S, dead_writer_age_s=_DEAD_TMP_S, patterns=_TEMP_NAMES, now=now
    )


def _digest(header_wo_sum: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(json.dumps(header_wo_sum, sort_keys=True, default=str).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


class GenerationCache:
    """A directory of cached samples.  ``get`` returns None for missing or damaged entries."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self.writes = 0
        self.stale_tmp_removed = 0
        for d in [self.root, *self.root.glob("??"), self.root / "latents"]:
            if d.is_dir():
                self.stale_tmp_removed += remove_stale_tmp(d)

    def __repr__(self) -> str:
        return f"GenerationCache({str(self.root)!r})"

    key = staticmethod(sample_key)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def keys(self) -> Iterator[str]:
        for p in sorted(self.root.glob("??/*.npz")):
            yield p.stem

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    # ------------------------------------------------------------------------------------------
    def put(self, key: str, sample: Sample) -> Path:
        """Store ``sample`` under ``key`` atomically; returns the entry's path."""
        arrays: dict[str, np.ndarray] = {}
        if sample.image is not None:
            arrays["image"] = np.asarray(sample.image, dtype=np.uint8)
        if sample.final_latent is not None:
            arrays["final_latent"] = np.asarray(sample.final_latent, dtype=np.float32)
        for name, v in sample.trace.series.items():
            arrays[_SERIES_PREFIX + name] = np.asarray(v, dtype=np.float64)
        lp = sample.trace.latents_path
        latents_sha = None
        if lp:
            latents_sha = file_sha256(lp)  # raises if the file the entry points to is missing
        header = {
            "format": FORMAT_VERSION,
            "key": key,
            "request": sample.request.to_dict(),
            "scalars": dict(sample.trace.scalars),
            "latents_path": lp,
            "latents_sha256": latents_sha,
            "status": sample.status,
            "failed_step": sample.failed_step,
            "error": sample.error,
            "unet_evals": int(sample.unet_evals),
            "wall_time_s": float(sample.wall_time_s),
            "meta": sample.meta,
        }
        header = json.loads(json.dumps(header, default=str))  # what a read will give back
        header["sha256"] = _digest(header, arrays)
        blob = np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)
        path = self.path(key)
        with atomic_open(path, "wb") as f:  # temp beside it, fsync, os.replace; umask mode
            np.savez(f, __header__=blob, **arrays)
        self.writes += 1
        return path

    def get(self, key: str, *, need_latents: bool = False) -> Sample | None:
        """The cached sample, or None if absent or damaged (a damaged entry is deleted).

        An entry whose full-latents file no longer matches its recorded sha256 is damaged (the
        file is deleted too).  One whose latents file is gone is returned without a
        ``latents_path``, or counts as a miss with ``need_latents``.
        """
        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            sample, latents_sha = self._read(path, key)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
            sample, latents_sha = None, None
        if sample is not None and sample.trace.latents_path:
            lp = sample.trace.latents_path
            if not os.path.isfile(lp):
                if need_latents:
                    self.misses += 1
                    return None
                sample.trace.latents_path = None
            else:
                try:
                    ok = file_sha256(lp) == latents_sha
                except OSError:
                    ok = False
                if not ok:
                    with contextlib.suppress(OSError):
                        os.unlink(lp)
                    sample = None
        if sample is None:
            self.corrupt += 1
            self.misses += 1
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        self.hits += 1
        return sample

    def _read(self, path: Path, key: str) -> tuple[Sample | None, str | None]:
        """(the entry's sample, the sha256 of its latents file) or (None, None) if damaged."""
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(z["__header__"].tobytes().decode())
            arrays = {n: z[n] for n in z.files if n != "__header__"}
        digest = header.pop("sha256", None)
        if (
            header.get("key") != key
            or header.get("format") != FORMAT_VERSION
            or digest != _digest(header, arrays)
        ):
            return None, None
        series = {
            n[len(_SERIES_PREFIX) :]: np.asarray(a, dtype=np.float64)
            for n, a in arrays.items()
            if n.startswith(_SERIES_PREFIX)
        }
        trace = Trace(
            series=series,
            scalars={k: float(v) for k, v in header["scalars"].items()},
            latents_path=header.get("latents_path"),
        )
        return Sample(
            request=GenerationRequest(**header["request"]),
            image=arrays.get("image"),
            trace=trace,
            final_latent=arrays.get("final_latent"),
            status=header["status"],
            failed_step=header.get("failed_step"),
            error=header.get("error"),
            unet_evals=int(header.get("unet_evals", 0)),
            wall_time_s=float(header.get("wall_time_s", 0.0)),
            meta=dict(header.get("meta") or {}, cached=True),
        ), header.get("latents_sha256")

    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "corrupt": self.corrupt,
            "writes": self.writes,
            "stale_tmp_removed": self.stale_tmp_removed,
        }
