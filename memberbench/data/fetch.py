"""Recover the training images behind a prompt set's URLs (``memberbench fetch-images``).

:func:`fetch_images` reads a prompt set (a registered name or a prompt file with a url column,
through :func:`memberbench.data.load_prompt_set`), fetches each row's image and writes::

    DIR/images/<file>        the original bytes of each recovered image, extension of its format
    DIR/manifest.jsonl       one line per image: where it came from, its file and hashes, or why not
    DIR/prompts.jsonl        every input row, with ``image`` / ``image_sha256`` on recovered rows,
                             loadable by ``memberbench.data.load_prompt_file``

Sources, tried in this order until one gives an image (``sources=`` picks a subset / order):

``url``           the row's own URL over HTTP(S) with ``requests`` (redirects followed)
``local-dir``     a folder of images named ``<index>.<ext>``, ``<prompt_id>.<ext>`` (or its safe
                  file-name form), ``<sha1(url)>.<ext>`` or ``<sha256(url)>.<ext>`` (hex of the
                  UTF-8 URL); only the folder itself is searched, not its subfolders
``hf-dataset``    a Hugging Face ``datasets`` dataset (``load_from_disk`` for a local path, else
                  ``load_dataset``) with an image column, keyed by url or index
``url-template``  a mirror, e.g. ``https://web.archive.org/web/2023id_/{url}``; placeholders
                  ``{url}`` (as is), ``{url_quoted}`` (percent-encoded), ``{index}``,
                  ``{prompt_id}`` (percent-encoded)

Whatever the source, the bytes must decode as an image: the format is sniffed from the magic
bytes (never the Content-Type), then ``PIL.Image.verify()`` and a full ``load()`` must pass.  HTML
error pages, empty bodies, bodies shorter than their Content-Length and undecodable files are
failures with a clear error and are never saved.

Resumability: every image is written to a temp file in ``DIR/images`` and ``os.replace``d into
place, then its manifest line is appended with flush + fsync; a run killed at any point loses no
finished image and leaves no half file under a final name.  At start stale temp files are removed,
a truncated last manifest line is dropped, and manifest rows whose file is missing or whose bytes
no longer match the recorded sha256 are fetched again.  A file that changed on disk is not
deleted: it is moved to ``DIR/images/changed/`` and reported.  When a refetch returns other bytes
than a previous run recorded (the upstream image changed), the new image is kept and its manifest
row carries ``previous_sha256``; the run reports it.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import json
import math
import os
import re
import string
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np

from memberbench.data.records import URL_COLUMNS, PromptRecord, PromptSet, image_sha256
from memberbench.io import atomic_write_bytes, file_sha256, remove_stale_temps
from memberbench.types import MemberbenchError

SOURCES = ("url", "local-dir", "hf-dataset", "url-template")
TEMPLATE_FIELDS = ("url", "url_quoted", "index", "prompt_id")
TEMP_PREFIX = ".fetch-"
IMAGES_DIR = "images"
CHANGED_DIR = "changed"
MANIFEST = "manifest.jsonl"
PROMPTS = "prompts.jsonl"
# PIL format -> file extension.  Only formats with unambiguous magic bytes are accepted.
FORMAT_EXTENSIONS = {
    "PNG": "png",
    "JPEG": "jpg",
    "MPO": "jpg",
    "GIF": "gif",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tif",
    "AVIF": "avif",
}
REASONS = {
    "no_url": "no url",
    "timeout": "timeout",
    "connection": "connection error",
    "invalid-url": "invalid url",
    "redirects": "too many redirects",
    "html": "HTML page instead of an image",
    "empty": "empty body",
    "truncated": "truncated download",
    "not-image": "not an image",
    "bad-image": "corrupt or truncated image",
    "too-large": "too large",
    "not-found": "not in the extra sources",
    "write-error": "could not be written",
    "error": "unexpected error",
}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("memberbench")
    except Exception:  # noqa: BLE001 - not installed: a source checkout
        return "0"


def user_agent() -> str:
    import requests

    return (
        f"memberbench/{_version()} (memorization benchmark; recovering the training images "
        f"of published prompt sets) python-requests/{requests.__version__}"
    )


class FetchFailure(Exception):
    """One source did not give an image: ``reason`` is a short code (see REASONS)."""

    def __init__(
        self, reason: str, message: str, *, retry: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry = retry
        self.retry_after = retry_after
        self.attempts = 0


# --------------------------------------------------------------------------------------------
# content sniffing


@dataclass(frozen=True)
class DecodedImage:
    data: bytes  # the original bytes, saved as they are
    format: str  # PIL's format name
    ext: str
    width: int
    height: int
    pixel_sha256: str  # memberbench's image_sha256 of the decoded RGB pixels


def _magic_format(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM") and len(data) > 26:
        return "BMP"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "AVIF"
    return None


def _looks_like_html(data: bytes) -> bool:
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<!--")) or (
        head.startswith(b"<") and b"<html" in head
    )


def _to_rgb(im: Any) -> np.ndarray:
    # Exactly what memberbench.data.prompts does when it reads the saved file back, so the pixel
    # hash written to prompts.jsonl verifies on load.
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def sniff_image(data: bytes, content_type: str | None = None) -> DecodedImage:
    """Decode ``data`` as an image (format from the magic bytes) or raise FetchFailure."""
    from PIL import Image

    ct = f" (Content-Type {content_type})" if content_type else ""
    if not data:
        raise FetchFailure("empty", f"empty body: 0 bytes{ct}")
    if _looks_like_html(data):
        raise FetchFailure("html", f"not an image: an HTML page of {len(data)} bytes{ct}")
    if data[:256].lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith((b"<?xml", b"<svg")):
        raise FetchFailure(
            "not-image", f"not a raster image: an SVG/XML document of {len(data)} bytes{ct}"
        )
    fmt = _magic_format(data)
    Image.init()
    if fmt is None or fmt not in Image.OPEN:
        raise FetchFailure(
            "not-image", f"not an image: {len(data)} bytes starting {data[:12]!r}{ct}"
        )
    allowed = [f for f in FORMAT_EXTENSIONS if f in Image.OPEN]
    try:
        with Image.open(io.BytesIO(data), formats=allowed) as im:
            im.verify()
        with Image.open(io.BytesIO(data), formats=allowed) as im:
            im.load()
            real = im.format or fmt
            rgb = _to_rgb(im)
    except Image.DecompressionBombError as e:
        raise FetchFailure("too-large", f"{fmt} image too large to decode safely: {e}") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for broken files
        raise FetchFailure(
            "bad-image", f"truncated or corrupt {fmt} image ({len(data)} bytes): {e}"
        ) from None
    h, w = rgb.shape[:2]
    return DecodedImage(
        data=data,
        format=real,
        ext=FORMAT_EXTENSIONS.get(real, real.lower()),
        width=int(w),
        height=int(h),
        pixel_sha256=image_sha256(rgb),
    )


# --------------------------------------------------------------------------------------------
# HTTP


class TokenBucket:
    """A global request rate: ``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        self.rate = float(rate)
        self.burst = max(1.0, float(burst))
        self._tokens = self.burst
        self._t = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
            self._t = now
            self._tokens -= 1.0  # a reservation: negative means queued
            delay = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
        if delay > 0:
            time.sleep(delay)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None  # an HTTP date: use the normal backoff


class HttpClient:
    """requests with one Session per thread, a shared rate limit and retries with backoff."""

    def __init__(
        self,
        *,
        timeout: float,
        retries: int,
        rate: float,
        backoff: float = 1.0,
        max_bytes: int = 64 << 20,
        max_redirects: int = 10,
    ) -> None:
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_bytes = int(max_bytes)
        self.max_redirects = int(max_redirects)
        self.bucket = TokenBucket(rate)
        self.user_agent = user_agent()
        self._local = threading.local()
        self._sessions: list[Any] = []
        self._lock = threading.Lock()

    def _session(self) -> Any:
        s = getattr(self._local, "session", None)
        if s is None:
            import requests

            s = requests.Session()
            s.headers["User-Agent"] = self.user_agent
            s.headers["Accept"] = "image/*,*/*;q=0.5"
            s.max_redirects = self.max_redirects
            self._local.session = s
            with self._lock:
                self._sessions.append(s)
        return s

    def close(self) -> None:
        with self._lock:
            for s in self._sessions:
                s.close()
            self._sessions.clear()

    def get_image(self, url: str) -> tuple[DecodedImage, str, int]:
        """(image, final URL after redirects, attempts) or FetchFailure (with .attempts)."""
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchFailure("invalid-url", f"not an http(s) URL: {url[:200]!r}")
        for attempt in range(self.retries + 1):
            self.bucket.acquire()
            attempts = attempt + 1
            try:
                data, final, ctype = self._get_once(url)
                return sniff_image(data, ctype), final, attempts
            except FetchFailure as f:
                f.attempts = attempts
                if not f.retry or attempt == self.retries:
                    if f.retry and attempts > 1:
                        f.message = f"{f.message} (after {attempts} attempts)"
                    raise
                delay = self.backoff * (2**attempt)
                if f.retry_after is not None:
                    delay = max(delay, min(f.retry_after, 60.0))
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _get_once(self, url: str) -> tuple[bytes, str, str | None]:
        import requests

        t = self.timeout
        try:
            with self._session().get(url, timeout=(t, t), stream=True, allow_redirects=True) as r:
                ctype = r.headers.get("Content-Type")
                if r.status_code != 200:
                    code = r.status_code
                    raise FetchFailure(
                        "http-5xx" if code >= 500 else f"http-{code}",
                        f"HTTP {code} {r.reason or ''}".rstrip(),
                        retry=code >= 500 or code in (408, 429),
                        retry_after=_retry_after(r.headers.get("Retry-After")),
                    )
                declared = r.headers.get("Content-Length")
                declared_n = int(declared) if declared and declared.strip().isdigit() else None
                encoded = r.headers.get("Content-Encoding", "identity").strip().lower()
                if declared_n is not None and declared_n > self.max_bytes:
                    raise FetchFailure(
                        "too-large", f"{declared_n} bytes (Content-Length) > {self.max_bytes}"
                    )
                buf = bytearray()
                deadline = time.monotonic() + 5 * t
                for chunk in r.iter_content(1 << 16):
                    buf += chunk
                    if len(buf) > self.max_bytes:
                        raise FetchFailure("too-large", f"more than {self.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise FetchFailure(
                            "timeout", f"download took longer than {5 * t:g} s", retry=True
                        )
                identity = encoded in ("", "identity")
                if declared_n is not None and identity and len(buf) != declared_n:
                    raise FetchFailure(
                        "truncated",
                        f"truncated: got {len(buf)} of {declared_n} bytes (Content-Length)",
                        retry=True,
                    )
                return bytes(buf), r.url, ctype
        except FetchFailure:
            raise
        except requests.exceptions.Timeout:
            raise FetchFailure("timeout", f"timed out after {t:g} s", retry=True) from None
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError):
            raise FetchFailure(
                "truncated",
                "truncated: the connection closed before the whole body arrived "
                "(shorter than its Content-Length)",
                retry=True,
            ) from None
        except requests.exceptions.TooManyRedirects:
            raise FetchFailure("redirects", f"more than {self.max_redirects} redirects") from None
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
        ) as e:
            raise FetchFailure("invalid-url", f"invalid URL: {e}") from None
        except requests.exceptions.ConnectionError as e:
            if "timed out" in str(e).lower():
                raise FetchFailure("timeout", f"timed out after {t:g} s", retry=True) from None
            raise FetchFailure("connection", f"connection error: {_short(e)}", retry=True) from None
        except requests.exceptions.RequestException as e:
            raise FetchFailure("connection", f"request failed: {_short(e)}", retry=True) from None


def _short(e: BaseException, n: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= n else text[: n - 3] + "..."


# --------------------------------------------------------------------------------------------
# items (one per URL of a row) and the extra sources


@dataclass
class _Item:
    row: int  # 0-based position in the prompt set
    k: int  # position of the URL in the row's URL list
    n_urls: int
    record: PromptRecord
    url: str | None
    index: Any
    stem: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.record.prompt_id, self.k)


def safe_stem(prompt_id: str) -> str:
    """A file-name stem for a prompt id: its safe form plus 10 hex of sha1(prompt_id)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", prompt_id).strip("._-")[:80] or "row"
    return f"{safe}-{hashlib.sha1(prompt_id.encode('utf-8')).hexdigest()[:10]}"


def parse_urls(value: Any) -> list[str]:
    """The URLs of a url cell: a string, a list, or a JSON / Python list written as a string."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        items = list(value)
    else:
        text = str(value).strip()
        if not text or text.lower() in ("nan", "none", "null"):
            return []
        if text.startswith("[") and text.endswith("]"):
            try:
                items = json.loads(text)
            except json.JSONDecodeError:
                try:
                    items = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    items = [text]
            if not isinstance(items, list):
                items = [text]
        else:
            items = [text]
    out = []
    for u in items:
        if u is None:
            continue
        if isinstance(u, float) and not math.isfinite(u):
            continue
        s = str(u).strip()
        if s:
            out.append(s)
    return out


def _row_index(rec: PromptRecord) -> tuple[str | None, Any]:
    """(extra key, value) of the row's index column (index / Index ...), or (None, None)."""
    for k, v in rec.extra.items():
        if k.casefold() == "index" and v is not None:
            return k, v
    return None, None


def _norm_key(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
        if v.is_integer():
            return str(int(v))
    if isinstance(v, np.integer):
        return str(int(v))
    s = str(v).strip()
    return s or None


def _url_digests(url: str) -> list[str]:
    b = url.encode("utf-8")
    return [hashlib.sha1(b).hexdigest(), hashlib.sha256(b).hexdigest()]


class LocalDirSource:
    name = "local-dir"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise MemberbenchError(f"--local-dir {folder}: no such folder")
        self.by_stem: dict[str, Path] = {}
        for p in sorted(self.folder.iterdir()):
            if p.is_file() and not p.name.startswith("."):
                self.by_stem.setdefault(p.stem, p)

    def names(self, item: _Item) -> list[str]:
        names = []
        if item.k == 0:
            idx = _norm_key(item.index)
            if idx is not None:
                names.append(idx)
            names += [item.record.prompt_id, safe_stem(item.record.prompt_id)]
        if item.url:
            names += _url_digests(item.url)
        return names

    def get(self, item: _Item) -> tuple[DecodedImage, str]:
        names = self.names(item)
        for n in names:
            p = self.by_stem.get(n)
            if p is not None:
                try:
                    return sniff_image(p.read_bytes()), str(p)
                except FetchFailure as f:
                    raise FetchFailure(f.reason, f"{p}: {f.message}") from None
        raise FetchFailure("not-found", f"no file named {' / '.join(names) or '(no key)'}.*")


class HFDatasetSource:
    name = "hf-dataset"

    def __init__(
        self, spec: str, *, key: str = "url", image_column: str | None = None, split: str = "train"
    ) -> None:
        if key not in ("url", "index"):
            raise MemberbenchError(f"--hf-key must be url or index, got {key!r}")
        import datasets

        self.spec, self.key = spec, key
        path = Path(spec).expanduser()
        try:
            if path.exists():
                ds = datasets.load_from_disk(str(path))
            else:
                ds = datasets.load_dataset(spec, split=split)
        except Exception as e:  # noqa: BLE001 - one clear line for any loading failure
            raise MemberbenchError(
                f"--hf-dataset {spec}: cannot load it ({type(e).__name__}: {_short(e)}); pass a "
                "folder written by Dataset.save_to_disk or a hub dataset name"
            ) from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise MemberbenchError(
                    f"--hf-dataset {spec}: no split {split!r}; it has {sorted(ds)} (--hf-split)"
                )
            ds = ds[split]
        columns = list(ds.column_names)
        wanted = URL_COLUMNS if key == "url" else ("index", "Index", "key", "laion_index")
        folded = {c.casefold(): c for c in columns}
        self.key_column = next(
            (folded[w.casefold()] for w in wanted if w.casefold() in folded), None
        )
        if self.key_column is None:
            raise MemberbenchError(
                f"--hf-dataset {spec}: no {key} column to key images by (looked for "
                f"{', '.join(wanted)}); found columns {columns}"
            )
        if image_column is None:
            feats = ds.features
            image_column = next(
                (c for c in columns if isinstance(feats[c], datasets.Image)), None
            ) or next(
                (folded[c] for c in ("image", "jpg", "png", "webp", "img") if c in folded), None
            )
            if image_column is None:
                raise MemberbenchError(
                    f"--hf-dataset {spec}: no image column found in {columns}; pass "
                    "--hf-image-column"
                )
        elif image_column not in columns:
            raise MemberbenchError(
                f"--hf-dataset {spec}: --hf-image-column {image_column!r} is not a column; "
                f"found columns {columns}"
            )
        if isinstance(ds.features[image_column], datasets.Image):
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        self.image_column = image_column
        self.ds = ds
        self.rows: dict[str, int] = {}
        for i, v in enumerate(ds[self.key_column]):
            k = _norm_key(v)
            if k is not None:
                self.rows.setdefault(k, i)
        self._lock = threading.Lock()

    def get(self, item: _Item) -> tuple[DecodedImage, str]:
        k = _norm_key(item.url if self.key == "url" else (item.index if item.k == 0 else None))
        if k is None or k not in self.rows:
            raise FetchFailure("not-found", f"no row with {self.key_column} = {k!r}")
        i = self.rows[k]
        with self._lock:
            value = self.ds[i][self.image_column]
        data: bytes | None = None
        if isinstance(value, dict):
            data = value.get("bytes")
            if not data and value.get("path"):
                p = Path(value["path"])
                data = p.read_bytes() if p.is_file() else None
        elif isinstance(value, bytes | bytearray):
            data = bytes(value)
        elif value is not None and hasattr(value, "save"):  # a decoded PIL image
            buf = io.BytesIO()
            value.save(buf, format="PNG")
            data = buf.getvalue()
        if data is None:
            raise FetchFailure("not-found", f"row {i}: column {self.image_column!r} holds no image")
        try:
            return sniff_image(data), f"{self.spec}[{i}]"
        except FetchFailure as f:
            raise FetchFailure(f.reason, f"row {i}: {f.message}") from None


class UrlTemplateSource:
    name = "url-template"

    def __init__(self, template: str, client: HttpClient) -> None:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as e:
            raise MemberbenchError(f"--url-template {template!r}: {e}") from None
        bad = [f for f in fields if f not in TEMPLATE_FIELDS]
        if bad or not fields:
            raise MemberbenchError(
                f"--url-template {template!r}: "
                + (f"unknown placeholder {{{bad[0]}}}" if bad else "no placeholder")
                + "; use {url}, {url_quoted}, {index} or {prompt_id}"
            )
        self.template = template
        self.fields = set(fields)
        self.client = client

    def url_for(self, item: _Item) -> str | None:
        index = _norm_key(item.index) if item.k == 0 else None
        if ("url" in self.fields or "url_quoted" in self.fields) and not item.url:
            return None
        if "index" in self.fields and index is None:
            return None
        if "prompt_id" in self.fields and item.k != 0 and not self.fields & {"url", "url_quoted"}:
            return None
        return self.template.format(
            url=item.url or "",
            url_quoted=quote(item.url or "", safe=""),
            index=index or "",
            prompt_id=quote(item.record.prompt_id, safe=""),
        )

    def get(self, item: _Item) -> tuple[DecodedImage, str, int]:
        url = self.url_for(item)
        if url is None:
            raise FetchFailure("not-found", "the template needs a value this row lacks")
        image, final, attempts = self.client.get_image(url)
        return image, final, attempts


# --------------------------------------------------------------------------------------------
# files


def _fsync_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`memberbench.io.atomic_write_bytes`)."""
    atomic_write_bytes(path, data, mkdir=False)


_sha256_file = file_sha256


def _remove_stale_temps(out: Path) -> int:
    n = 0
    for folder in (out, out / IMAGES_DIR):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(TEMP_PREFIX) and p.name.endswith(".part") and p.is_file():
                p.unlink()  # left by an older memberbench
                n += 1
        n += remove_stale_temps(folder, min_age_s=0)  # the caller holds the folder's lock
    return n


def _read_manifest(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(entries in file order, unreadable lines).  Repairs a truncated last line in place."""
    if not path.is_file():
        return [], 0
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        try:
            ok = isinstance(json.loads(tail.decode("utf-8")), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            ok = False
        with open(path, "r+b") as f:
            if ok:  # a whole line that lost only its newline
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
                data += b"\n"
            else:  # killed mid-write: drop the partial line
                f.truncate(cut)
                data = data[:cut]
            f.flush()
            os.fsync(f.fileno())
    entries, bad = [], 0
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            bad += 1
            continue
        if isinstance(obj, dict) and isinstance(obj.get("prompt_id"), str):
            entries.append(obj)
        else:
            bad += 1
    return entries, bad


def _entry_key(e: dict[str, Any]) -> tuple[str, int]:
    k = e.get("url_index", 0)
    return (e["prompt_id"], int(k) if isinstance(k, int) else 0)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class FetchReport:
    """What a run did.  ``n_recovered`` of ``n_images`` items (one per URL, or per URL-less row)."""

    out: Path
    n_rows: int = 0
    n_images: int = 0
    n_recovered: int = 0
    n_rows_with_image: int = 0
    already_done: int = 0
    fetched: int = 0
    by_source: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    removed_temp: int = 0
    bad_manifest_lines: int = 0
    missing_files: list[str] = field(default_factory=list)
    changed_on_disk: list[str] = field(default_factory=list)  # moved to images/changed/
    upstream_changed: list[str] = field(default_factory=list)  # prompt ids
    skipped_rows: int = 0
    interrupted: bool = False

    def summary_lines(self) -> list[str]:
        lines = [f"{self.n_recovered} of {self.n_images} images recovered"]
        if self.n_rows != self.n_images:
            lines.append(f"  {self.n_rows_with_image} of {self.n_rows} rows have an image")
        parts = [f"{self.already_done} already done"] if self.already_done else []
        parts += [f"{n} from {s}" for s, n in self.by_source.most_common()]
        if parts:
            lines.append("  recovered: " + ", ".join(parts))
        if self.failures:
            lines.append(
                "  not recovered: "
                + ", ".join(f"{n} {_reason_text(r)}" for r, n in self.failures.most_common())
            )
        if self.removed_temp:
            lines.append(f"  removed {self.removed_temp} stale temp file(s) of an interrupted run")
        if self.bad_manifest_lines:
            lines.append(f"  ignored {self.bad_manifest_lines} unreadable manifest line(s)")
        if self.missing_files:
            lines.append(f"  {len(self.missing_files)} recorded file(s) were missing: refetched")
        if self.changed_on_disk:
            lines.append(
                f"  {len(self.changed_on_disk)} file(s) no longer matched their recorded sha256: "
                f"kept in {IMAGES_DIR}/{CHANGED_DIR}/ and refetched"
            )
        if self.upstream_changed:
            lines.append(
                f"  {len(self.upstream_changed)} image(s) differ from the bytes a previous run "
                "recorded (manifest field previous_sha256): "
                + ", ".join(self.upstream_changed[:5])
                + (" ..." if len(self.upstream_changed) > 5 else "")
            )
        if self.skipped_rows:
            lines.append(f"  {self.skipped_rows} source row(s) skipped by the loader (no caption)")
        lines.append(f"  wrote {self.out / PROMPTS} and {self.out / MANIFEST}")
        return lines


def _reason_text(reason: str) -> str:
    if reason.startswith("http-"):
        return "HTTP " + reason[5:]
    return REASONS.get(reason, reason)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise MemberbenchError(f"--out {out}: exists and is not a folder; pass a folder")
    try:
        (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=out / IMAGES_DIR)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise MemberbenchError(
            f"--out {out}: cannot write there ({e.strerror or e}); pass a folder you can write to"
        ) from None


@contextlib.contextmanager
def _lock(out: Path) -> Any:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(out / ".fetch.lock", "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise MemberbenchError(
                f"--out {out}: another fetch-images run is writing there; wait for it or pass "
                "another folder"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _source_columns(source: str, ps: PromptSet) -> list[str]:
    """The columns of a prompt file (its header / keys), or what the records show."""
    p = Path(source).expanduser()
    try:
        if p.is_file():
            suffix = p.suffix.lower()
            if suffix == ".parquet":
                import pyarrow.parquet as pq

                return list(pq.read_schema(p).names)
            if suffix in (".csv", ".tsv"):
                import csv

                first = p.read_text(encoding="utf-8-sig").split("\n", 1)[0].rstrip("\r")
                delim = max(",;\t|", key=lambda d: len(first.split(d)))
                return [c.strip() for c in next(csv.reader([first], delimiter=delim))]
            if suffix in (".jsonl", ".json", ".ndjson"):
                keys: dict[str, None] = {}
                for line in p.read_text(encoding="utf-8").splitlines()[:1000]:
                    with contextlib.suppress(json.JSONDecodeError):
                        obj = json.loads(line)
                        if isinstance(obj, dict):
                            keys.update(dict.fromkeys(obj))
                if keys:
                    return list(keys)
    except (OSError, UnicodeDecodeError, ValueError, ImportError):
        pass
    cols: dict[str, None] = {"caption": None}
    for r in ps.records[:1000]:
        if r.group:
            cols["group"] = None
        cols.update(dict.fromkeys(r.extra))
    return list(cols)


def _items_of(ps: PromptSet) -> list[_Item]:
    items = []
    for row, rec in enumerate(ps.records):
        urls = parse_urls(rec.url)
        _, index = _row_index(rec)
        stem = safe_stem(rec.prompt_id)
        if not urls:
            items.append(_Item(row, 0, 0, rec, None, index, stem))
        for k, u in enumerate(urls):
            s = stem if len(urls) == 1 else f"{stem}.u{k}"
            items.append(_Item(row, k, len(urls), rec, u, index, s))
    return items


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Runner:
    def __init__(
        self,
        out: Path,
        sources: list[Any],
        client: HttpClient,
        use_url: bool,
    ) -> None:
        self.out = out
        self.images = out / IMAGES_DIR
        self.sources = sources
        self.client = client
        self.use_url = use_url

    def process(self, item: _Item, previous: dict[str, Any] | None) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "prompt_id": item.record.prompt_id,
            "url_index": item.k,
            "url": item.url,
            "status": "failed",
            "source": None,
            "fetched_from": None,
            "file": None,
            "sha256": None,
            "bytes": None,
            "image_sha256": None,
            "format": None,
            "width": None,
            "height": None,
            "error": None,
            "reason": None,
            "attempts": 0,
        }
        errors: list[str] = []
        first_reason: str | None = None
        got: tuple[DecodedImage, str, str] | None = None
        attempts = 0
        if item.url and self.use_url:
            try:
                image, final, n = self.client.get_image(item.url)
                attempts += n
                got = (image, "url", final)
            except FetchFailure as f:
                attempts += f.attempts
                first_reason = f.reason
                errors.append(f.message)
        for src in self.sources if got is None else ():
            try:
                if isinstance(src, UrlTemplateSource):
                    image, where, n = src.get(item)
                    attempts += n
                else:
                    image, where = src.get(item)
                got = (image, src.name, where)
                break
            except FetchFailure as f:
                attempts += f.attempts
                first_reason = first_reason or f.reason
                errors.append(f"{src.name}: {f.message}")
        entry["attempts"] = attempts
        entry["time"] = _now()
        if got is None:
            if not item.url:
                entry["status"] = "no_url"
                entry["reason"] = "no_url"
                errors.insert(0, "the row has no url")
            else:
                entry["reason"] = first_reason or "not-found"
                if not self.use_url and not self.sources:
                    errors.append("no source to try")
            entry["error"] = "; ".join(errors)
            return entry
        image, source, where = got
        name = f"{item.stem}.{image.ext}"
        try:
            _fsync_write(self.images / name, image.data)
        except OSError as e:
            entry["reason"] = "write-error"
            entry["error"] = f"cannot write {IMAGES_DIR}/{name}: {e}"
            return entry
        sha = hashlib.sha256(image.data).hexdigest()
        entry.update(
            status="ok",
            source=source,
            fetched_from=where,
            file=f"{IMAGES_DIR}/{name}",
            sha256=sha,
            bytes=len(image.data),
            image_sha256=image.pixel_sha256,
            format=image.format,
            width=image.width,
            height=image.height,
            error=None,
            reason=None,
        )
        if previous and previous.get("sha256") and previous["sha256"] != sha:
            entry["previous_sha256"] = previous["sha256"]
        if errors:
            entry["tried"] = errors  # what failed before this source gave the image
        return entry


def fetch_images(
    source: str,
    out: str | Path,
    *,
    limit: int | None = None,
    workers: int = 8,
    timeout: float = 20.0,
    retries: int = 2,
    rate: float = 10.0,
    backoff: float = 1.0,
    local_dir: str | Path | None = None,
    hf_dataset: str | None = None,
    hf_key: str = "url",
    hf_image_column: str | None = None,
    hf_split: str = "train",
    url_template: str | None = None,
    sources: Sequence[str] | None = None,
    set_file: str | Path | None = None,
    skip_failed: bool = False,
    max_bytes: int = 64 << 20,
    progress: Callable[[str], None] | None = None,
) -> FetchReport:
    """Fetch the images of prompt set ``source`` into folder ``out``; see the module docstring.

    Returns a :class:`FetchReport`; user mistakes (unknown set, no url column, unwritable
    ``out``, bad options) raise MemberbenchError before anything is written.
    """
    from memberbench.data.sets import PINNED_HASHES, load_prompt_set

    _check_options(workers, timeout, retries, rate, backoff, limit)
    if sources is None:
        wanted = list(SOURCES)
        explicit = False
    else:
        wanted = [s.strip() for s in sources if s.strip()]
        explicit = True
        unknown = [s for s in wanted if s not in SOURCES]
        if unknown or not wanted:
            raise MemberbenchError(
                f"--sources: unknown source {unknown[0]!r}" if unknown else "--sources is empty"
            ) from None
    configured = {
        "local-dir": local_dir is not None,
        "hf-dataset": hf_dataset is not None,
        "url-template": url_template is not None,
    }
    for s in wanted:
        if explicit and s != "url" and not configured[s]:
            raise MemberbenchError(f"--sources {s} needs --{s} (not given)")

    options: dict[str, Any] = {}
    if set_file is not None:
        if source not in PINNED_HASHES:
            raise MemberbenchError(
                f"--set-file is for the registered remote sets ({', '.join(PINNED_HASHES)}); "
                f"{source!r} is not one: pass the file itself as SOURCE"
            )
        options["path"] = set_file
    ps = load_prompt_set(source, limit=limit, **options)
    items = _items_of(ps)
    use_url = "url" in wanted
    keyless = (
        ("local-dir" in wanted and local_dir is not None)
        or ("hf-dataset" in wanted and hf_dataset is not None and hf_key == "index")
        or (
            "url-template" in wanted
            and url_template is not None
            and not re.search(r"\{url(_quoted)?\}", url_template)
        )
    )
    if ps.n and not any(it.url for it in items) and not keyless:
        cols = _source_columns(source, ps)
        raise MemberbenchError(
            f"{source}: no row has a URL (looked for a column named {', '.join(URL_COLUMNS)}); "
            f"found columns {', '.join(cols)}. Name the column holding the image URLs 'url', or "
            "give --local-dir, --hf-dataset with --hf-key index, or an --url-template with "
            "{index} / {prompt_id}"
        )

    out = Path(out).expanduser()
    client = HttpClient(
        timeout=timeout, retries=retries, rate=rate, backoff=backoff, max_bytes=max_bytes
    )
    extra_sources: list[Any] = []
    for s in wanted:
        if s == "local-dir" and local_dir is not None:
            extra_sources.append(LocalDirSource(local_dir))
        elif s == "hf-dataset" and hf_dataset is not None:
            extra_sources.append(
                HFDatasetSource(
                    hf_dataset, key=hf_key, image_column=hf_image_column, split=hf_split
                )
            )
        elif s == "url-template" and url_template is not None:
            extra_sources.append(UrlTemplateSource(url_template, client))

    _check_out(out)  # after every check of the input: a user mistake writes nothing
    report = FetchReport(out=out, n_rows=ps.n, n_images=len(items), skipped_rows=ps.n_skipped)
    with _lock(out):
        try:
            return _run(
                ps,
                items,
                out,
                report,
                extra_sources,
                client,
                use_url,
                skip_failed,
                workers,
                progress,
            )
        finally:
            client.close()


def _check_options(
    workers: int, timeout: float, retries: int, rate: float, backoff: float, limit: int | None
) -> None:
    checks = [
        (isinstance(workers, int) and workers >= 1, f"--workers must be >= 1, got {workers!r}"),
        (timeout > 0, f"--timeout must be > 0 seconds, got {timeout!r}"),
        (isinstance(retries, int) and retries >= 0, f"--retries must be >= 0, got {retries!r}"),
        (rate >= 0, f"--rate must be >= 0 requests/s (0: no limit), got {rate!r}"),
        (backoff >= 0, f"--backoff must be >= 0 seconds, got {backoff!r}"),
        (limit is None or limit >= 0, f"--limit must be >= 0, got {limit!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise MemberbenchError(message)


def _run(
    ps: PromptSet,
    items: list[_Item],
    out: Path,
    report: FetchReport,
    extra_sources: list[Any],
    client: HttpClient,
    use_url: bool,
    skip_failed: bool,
    workers: int,
    progress: Callable[[str], None] | None,
) -> FetchReport:
    images = out / IMAGES_DIR
    manifest_path = out / MANIFEST
    report.removed_temp = _remove_stale_temps(out)
    old_entries, report.bad_manifest_lines = _read_manifest(manifest_path)
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for e in old_entries:
        last[_entry_key(e)] = e

    final: dict[tuple[str, int], dict[str, Any]] = {}
    todo: list[_Item] = []
    previous: dict[tuple[str, int], dict[str, Any]] = {}
    for it in items:
        e = last.get(it.key)
        if e is None or e.get("url") != it.url:
            todo.append(it)
            continue
        if e.get("status") == "ok":
            path = out / str(e.get("file") or "")
            if not e.get("file") or not path.is_file():
                report.missing_files.append(str(e.get("file")))
                previous[it.key] = e
                todo.append(it)
                continue
            if _sha256_file(path) != e.get("sha256"):
                moved = _move_aside(path, images / CHANGED_DIR)
                report.changed_on_disk.append(str(moved.relative_to(out)))
                previous[it.key] = e
                todo.append(it)
                continue
            final[it.key] = e
            report.already_done += 1
        elif e.get("status") == "failed" and skip_failed:
            final[it.key] = e
        else:
            todo.append(it)

    runner = _Runner(out, extra_sources, client, use_url)
    total = len(todo)
    step = max(1, total // 10)
    done = 0
    with open(manifest_path, "a", encoding="utf-8") as mf:

        def record(entry: dict[str, Any]) -> None:
            mf.write(json.dumps(entry, ensure_ascii=False) + "\n")
            mf.flush()
            os.fsync(mf.fileno())

        workers = max(1, min(workers, total or 1))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch-images")
        pending: dict[Any, _Item] = {}
        queue = iter(todo)
        try:
            # at most 2x workers items in flight, so an interrupt leaves little queued work
            for it in _take(queue, 2 * workers):
                pending[pool.submit(_safe_process, runner, it, previous.get(it.key))] = it
            while pending:
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in finished:
                    it = pending.pop(fut)
                    entry = fut.result()  # BaseException (interrupt) propagates from here
                    record(entry)
                    final[it.key] = entry
                    if entry["status"] == "ok":
                        report.fetched += 1
                        report.by_source[entry["source"]] += 1
                        if "previous_sha256" in entry:
                            report.upstream_changed.append(it.record.prompt_id)
                    done += 1
                    if progress is not None and (done % step == 0 or done == total):
                        ok = sum(1 for e in final.values() if e.get("status") == "ok")
                        progress(f"fetch-images: {done}/{total} fetched this run, {ok} recovered")
                    for nxt in _take(queue, 1):
                        pending[pool.submit(_safe_process, runner, nxt, previous.get(nxt.key))] = (
                            nxt
                        )
        except BaseException:
            report.interrupted = True
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            if report.interrupted:
                # what finished is in the manifest; leave a consistent prompts.jsonl too
                with contextlib.suppress(Exception):
                    _write_outputs(ps, items, final, last, out, report)
        pool.shutdown(wait=True)
    _write_outputs(ps, items, final, last, out, report)
    return report


def _take(it: Iterable[_Item], n: int) -> list[_Item]:
    out = []
    for x in it:
        out.append(x)
        if len(out) >= n:
            break
    return out


def _safe_process(runner: _Runner, item: _Item, previous: dict[str, Any] | None) -> dict[str, Any]:
    try:
        return runner.process(item, previous)
    except Exception as e:  # noqa: BLE001 - one bad row must not stop the rest of the set
        return {
            "prompt_id": item.record.prompt_id,
            "url_index": item.k,
            "url": item.url,
            "status": "failed",
            "source": None,
            "file": None,
            "sha256": None,
            "bytes": None,
            "error": f"unexpected error: {type(e).__name__}: {_short(e)}",
            "reason": "error",
            "attempts": 0,
            "time": _now(),
        }


def _move_aside(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    digest = _sha256_file(path)[:12]
    target = folder / f"{path.stem}.{digest}{path.suffix}"
    os.replace(path, target)
    return target


def _write_outputs(
    ps: PromptSet,
    items: list[_Item],
    final: dict[tuple[str, int], dict[str, Any]],
    last: dict[tuple[str, int], dict[str, Any]],
    out: Path,
    report: FetchReport,
) -> None:
    """The compacted manifest and prompts.jsonl, each written atomically."""
    current = [final[it.key] for it in items if it.key in final]
    keys = {it.key for it in items}
    others = [e for k, e in last.items() if k not in keys]  # rows beyond --limit, other sets
    _fsync_write(
        out / MANIFEST,
        "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in current + others).encode(),
    )
    by_row: dict[int, list[_Item]] = {}
    for it in items:
        by_row.setdefault(it.row, []).append(it)
    lines = []
    report.n_recovered = 0
    report.n_rows_with_image = 0
    report.failures = Counter()
    for row, rec in enumerate(ps.records):
        its = by_row.get(row, [])
        entries = [final.get(it.key) for it in its]
        ok = [e for e in entries if e and e.get("status") == "ok"]
        report.n_recovered += len(ok)
        for e in entries:
            if not e:
                report.failures["error"] += 1
            elif e.get("status") != "ok":
                report.failures[str(e.get("reason") or e.get("status"))] += 1
        if ok:
            report.n_rows_with_image += 1
        lines.append(json.dumps(_prompt_row(rec, its, entries, ok), ensure_ascii=False) + "\n")
    _fsync_write(out / PROMPTS, "".join(lines).encode())


_OWN = (
    "prompt_id",
    "caption",
    "url",
    "urls",
    "group",
    "memorized",
    "duplicates",
    "index",
    "image",
    "images",
    "image_sha256",
    "image_source",
    "fetch_status",
    "fetch_error",
    "image_error",
)


def _prompt_row(
    rec: PromptRecord,
    its: list[_Item],
    entries: list[dict[str, Any] | None],
    ok: list[dict[str, Any]],
) -> dict[str, Any]:
    urls = [it.url for it in its if it.url]
    index_key, index = _row_index(rec)
    row: dict[str, Any] = {
        "prompt_id": rec.prompt_id,
        "caption": rec.caption,
        "url": urls[0] if urls else None,
    }
    if len(urls) > 1:
        row["urls"] = urls
    row.update(group=rec.group, memorized=rec.memorized, duplicates=rec.duplicates)
    if index_key is not None:
        row["index"] = _jsonable(index)
    for k, v in rec.extra.items():
        if k not in _OWN and k != index_key:
            row[k] = _jsonable(v)
    if ok:
        row["image"] = ok[0]["file"]
        if len(its) > 1:
            row["images"] = [e["file"] for e in ok]
        row["image_sha256"] = ok[0]["image_sha256"]
        row["image_source"] = ok[0]["source"]
        row["fetch_status"] = "ok"
    else:
        row["image"] = None
        first = next((e for e in entries if e), None)
        row["fetch_status"] = first.get("status", "failed") if first else "failed"
        row["fetch_error"] = first.get("error") if first else "not processed"
    return row
