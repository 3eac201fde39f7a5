"""Prompt records, prompt sets, and loaders for the field's prompt files.

Every loader turns its source into rows, passes them through a Hugging Face ``datasets.Dataset``
and maps the rows to :class:`PromptRecord` objects, collected in a :class:`PromptSet`.

Sources understood (``format=`` overrides the guess from the extension):

============  ===============================================================================
``jsonl``     one JSON object per line (Wen et al.'s ``sdv1_500_memorized.jsonl``, the bundled
              sets); ``.json`` holding a list of objects is read too
``csv``       comma, semicolon or tab separated, with a header (NeMo's ``;``-separated files);
              the delimiter is sniffed from the header unless ``delimiter=`` is given
``parquet``   e.g. Webster's ground-truth parquets (``caption``, ``url``, ``overfit_type``)
``txt``       one prompt per line; blank lines are skipped and counted
``hf``        ``hf:owner/name`` or ``https://huggingface.co/datasets/owner/name`` via
              ``datasets.load_dataset`` (needs network or a cached copy)
============  ===============================================================================

Row numbers (in ``PromptSet.skipped``, error messages and default prompt ids) are the 1-based line
number for text formats (jsonl, txt, csv; in a csv file the header is line 1, so the first data
row is row 2, as a spreadsheet shows it) and the 1-based record index for parquet and hub data.

Local files never touch the network: they are parsed with the standard library (so one bad line
is skipped and counted instead of failing the whole file), and the rows go through
``datasets.Dataset.from_list`` (in memory, no cache files).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import socket
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from memberbench.types import MemberbenchError

CAPTION_COLUMNS = ("caption", "Caption", "prompt", "text", "TEXT")
GROUP_COLUMNS = ("group", "overfit_type", "type", "memorization_type", "verbatim_type")
URL_COLUMNS = ("url", "URL", "image_url")
ID_COLUMNS = ("prompt_id", "id")
IMAGE_COLUMNS = ("image", "image_path")
IMAGES_COLUMN = "images"  # a list of image paths: several training images of one prompt
FORMATS = ("jsonl", "csv", "parquet", "txt")
EXTENSIONS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".txt": "txt",
}
# Webster et al.'s verbatim labels: matching / retrieval / template verbatim, or none.
WEBSTER_MEMORIZED = {"MV": True, "RV": True, "TV": True, "N": False}
HUB_URL = "https://huggingface.co"


# --------------------------------------------------------------------------------------------
# records


def image_sha256(image: np.ndarray) -> str:
    """sha256 (hex) of an image's pixels, exactly as memberbench records it.

    The hashed bytes are ``np.ascontiguousarray(image, dtype=np.uint8).tobytes()`` for the
    ``H x W x 3`` RGB array, row-major (C order: row by row, pixel by pixel, R, G, B).  The shape
    itself is not hashed: it is that of the record's image.  This is the same function as
    ``memberbench.bundled.world.image_sha256``, so hashes written by the bundled-set builder
    verify here.  It is not the hash of a PNG file (PNG bytes depend on the encoder).
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise MemberbenchError(
            f"image must be a uint8 array of shape HxWx3, got {arr.dtype} {tuple(arr.shape)}"
        )
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


@dataclass(frozen=True, eq=False)
class PromptRecord:
    """One prompt and what is known about it.

    ``image`` is the training image paired with the prompt (uint8 HxWx3, read-only) or None when
    it is not available (e.g. only a URL is known: URLs are never fetched).  ``image_available``
    is the explicit mask the metrics use and always equals ``image is not None``.
    ``image_sha256`` is :func:`image_sha256` of the image; it may be known (from the file) even
    when the image is not.  ``memorized`` is None when unknown.  ``group`` is a label to break
    results down by: a duplication level ("dup=64"), a verbatim type ("MV", "TM", "N"), or "".
    ``extra`` keeps every other column of the source row.

    Records compare by identity (they hold arrays); compare ``prompt_id`` / ``caption`` instead.
    """

    prompt_id: str
    caption: str
    image: np.ndarray | None = None
    image_available: bool | None = None  # derived from image when not given
    image_sha256: str | None = None
    memorized: bool | None = None
    duplicates: int | None = None
    group: str = ""
    source: str = ""
    url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # further training images of the same prompt (a template verbatim has several): SSCD is the
    # max over ``images``; the training latent and the VAE ceiling use the first
    more_images: tuple[np.ndarray, ...] = ()

    @property
    def images(self) -> tuple[np.ndarray, ...]:
        """Every training image of the prompt, ``image`` first (empty when it has none)."""
        return () if self.image is None else (self.image, *self.more_images)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt_id, str) or not self.prompt_id:
            raise MemberbenchError(f"prompt_id must be a non-empty string, got {self.prompt_id!r}")
        if not isinstance(self.caption, str):
            raise MemberbenchError(
                f"caption of {self.prompt_id!r} must be a string, got {type(self.caption).__name__}"
            )
        if self.image is not None:
            arr = np.asarray(self.image)
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                raise MemberbenchError(
                    f"image of {self.prompt_id!r} must be uint8 HxWx3, "
                    f"got {arr.dtype} {tuple(arr.shape)}"
                )
            if arr.flags.writeable:  # a private read-only copy: the record is frozen
                arr = arr.copy()
                arr.flags.writeable = False
            object.__setattr__(self, "image", arr)
            digest = image_sha256(arr)
            if self.image_sha256 is not None and self.image_sha256 != digest:
                raise MemberbenchError(
                    f"image of {self.prompt_id!r} does not match its image_sha256 "
                    f"(recorded {self.image_sha256}, pixels hash to {digest})"
                )
            object.__setattr__(self, "image_sha256", digest)
        available = self.image is not None
        if self.image_available is not None and bool(self.image_available) != available:
            raise MemberbenchError(
                f"image_available={self.image_available} for {self.prompt_id!r} but the image is "
                f"{'present' if available else 'missing'}"
            )
        object.__setattr__(self, "image_available", available)
        more = []
        for k, extra_image in enumerate(self.more_images):
            arr = np.asarray(extra_image)
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                raise MemberbenchError(
                    f"training image {k + 2} of {self.prompt_id!r} must be uint8 HxWx3, "
                    f"got {arr.dtype} {tuple(arr.shape)}"
                )
            arr = arr.copy()
            arr.flags.writeable = False
            more.append(arr)
        if more and not available:
            raise MemberbenchError(f"{self.prompt_id!r} has more_images but no first image")
        object.__setattr__(self, "more_images", tuple(more))
        if self.memorized is not None:
            object.__setattr__(self, "memorized", bool(self.memorized))
        if self.duplicates is not None:
            object.__setattr__(self, "duplicates", int(self.duplicates))
        object.__setattr__(self, "group", "" if self.group is None else str(self.group))


@dataclass(frozen=True, eq=False)
class PromptSet:
    """An ordered, named collection of prompt records.

    ``content_hash`` identifies the prompts and images: sha256 over, for each record in order,
    the UTF-8 bytes of ``json.dumps([caption, image_sha256], ensure_ascii=False)`` followed by a
    newline (``image_sha256`` is null when unknown).  Labels, ids and ``extra`` do not enter it.
    ``skipped`` lists the source rows that were not turned into records: ``(row, reason)``.
    """

    name: str
    records: tuple[PromptRecord, ...]
    source: str = ""
    skipped: tuple[tuple[int, str], ...] = ()
    content_hash: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "records", tuple(self.records))
        object.__setattr__(self, "skipped", tuple((int(r), str(m)) for r, m in self.skipped))
        h = hashlib.sha256()
        for rec in self.records:
            item = [rec.caption, rec.image_sha256]
            item += [image_sha256(im) for im in rec.more_images]  # only sets that have them
            h.update(json.dumps(item, ensure_ascii=False).encode())
            h.update(b"\n")
        object.__setattr__(self, "content_hash", h.hexdigest())

    # sequence protocol
    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[PromptRecord]:
        return iter(self.records)

    def __getitem__(self, i: int) -> PromptRecord:
        return self.records[i]

    def __repr__(self) -> str:
        return (
            f"PromptSet(name={self.name!r}, n={self.n}, n_with_image={self.n_with_image}, "
            f"n_skipped={self.n_skipped}, content_hash={self.content_hash[:12]}...)"
        )

    # counts
    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def n_with_image(self) -> int:
        return sum(1 for r in self.records if r.image_available)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    @property
    def skipped_reasons(self) -> dict[str, int]:
        """Skipped rows counted by kind of reason (the text before the first ':')."""
        return dict(Counter(reason.split(":", 1)[0] for _, reason in self.skipped))

    @property
    def counts(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "n_with_image": self.n_with_image,
            "n_skipped": self.n_skipped,
            "skipped_reasons": self.skipped_reasons,
        }

    @property
    def image_mask(self) -> np.ndarray:
        """Boolean array: which records have their training image."""
        return np.array([r.image_available for r in self.records], dtype=bool)

    def describe(self) -> dict[str, Any]:
        """What a results file records about the prompt set."""
        return {
            "name": self.name,
            "source": self.source,
            "content_hash": self.content_hash,
            **self.counts,
        }

    # views
    def captions(self) -> list[str]:
        return [r.caption for r in self.records]

    def prompt_ids(self) -> list[str]:
        return [r.prompt_id for r in self.records]

    def limit(self, n: int | None) -> PromptSet:
        """The first ``n`` records (all of them when n is None or larger than the set)."""
        if n is None:
            return self
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise MemberbenchError(f"limit must be a non-negative integer, got {n!r}")
        return replace(self, records=self.records[: int(n)])

    def with_images(self) -> PromptSet:
        """Only the records whose training image is available."""
        return replace(self, records=tuple(r for r in self.records if r.image_available))

    def filter(self, predicate: Any, name: str | None = None) -> PromptSet:
        return replace(
            self, name=name or self.name, records=tuple(r for r in self.records if predicate(r))
        )

    def to_dataset(self) -> Any:
        """The records as a ``datasets.Dataset`` (images as nested uint8 lists are left out)."""
        import datasets

        return datasets.Dataset.from_list(
            [
                {
                    "prompt_id": r.prompt_id,
                    "caption": r.caption,
                    "image_available": r.image_available,
                    "image_sha256": r.image_sha256,
                    "memorized": r.memorized,
                    "duplicates": r.duplicates,
                    "group": r.group,
                    "source": r.source,
                    "url": r.url,
                }
                for r in self.records
            ]
        )


# --------------------------------------------------------------------------------------------
# options shared by the loaders


@dataclass(frozen=True)
class _Options:
    name: str
    source: str
    caption_column: str | None = None
    group_column: str | None = None
    memorized: bool | None = None  # explicit: wins over everything
    default_memorized: bool | None = None  # from the file name
    limit: int | None = None
    strict: bool = False
    base_dir: Path | None = None  # relative image paths are resolved against it
    where: str = ""  # "file X" / "hub dataset X", for messages


class MalformedRowsWarning(UserWarning):
    """A local prompt file had malformed rows (bad JSON, no caption, ...): they were skipped.
    The message names the file and each row's line number and reason."""


class _Skips:
    def __init__(self, opts: _Options) -> None:
        self.opts = opts
        self.items: list[tuple[int, str]] = []
        self.unit = "line"  # what a row number counts: "line", "item" (JSON list), "record"

    def warn_malformed(self, shown: int = 5) -> None:
        """One warning (shown on the console; in pytest's warnings summary) naming the skipped
        rows that are malformed; blank lines are skipped silently."""
        bad = [(row, why) for row, why in self.items if why != "blank line"]
        if not bad:
            return
        listed = "; ".join(f"{self.unit} {row}: {why}" for row, why in bad[:shown])
        more = f"; and {len(bad) - shown} more" if len(bad) > shown else ""
        s = "" if len(bad) == 1 else "s"
        warnings.warn(
            MalformedRowsWarning(
                f"{self.opts.where}: skipped {len(bad)} malformed {self.unit}{s} -- {listed}"
                f"{more} (fix or delete them; strict=True makes the first one an error)"
            ),
            stacklevel=3,
        )

    def add(self, row: int, reason: str) -> None:
        if self.opts.strict:
            raise MemberbenchError(
                f"{self.opts.where}: row {row}: {reason} (strict=True; pass strict=False to skip "
                "and count bad rows instead)"
            )
        self.items.append((row, reason))


def _memorized_from_name(name: str) -> bool | None:
    """Guess a file's label from its name: '...unmemorized...' -> False, '...memorized...' -> True."""
    low = name.lower()
    if re.search(r"(un|non|not)[-_ ]?memori[sz]ed", low):
        return False
    if re.search(r"memori[sz]ed", low):
        return True
    return None


def _check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 0:
        raise MemberbenchError(f"limit must be a non-negative integer or None, got {limit!r}")
    return int(limit)


# --------------------------------------------------------------------------------------------
# parsing local files into (row, dict) pairs


def _decode_line(raw: bytes, row: int, skips: _Skips) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        skips.add(row, f"not UTF-8 text: byte {e.start}")
        return None


def _split_lines(data: bytes) -> list[bytes]:
    """Split on \\n only (str.splitlines would also split on U+2028 inside a JSON string)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


def _parse_jsonl(path: Path, skips: _Skips) -> list[tuple[int, dict[str, Any]]]:
    data = path.read_bytes()
    stripped = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"["):  # a .json file holding one list of objects
        skips.unit = "item"
        try:
            items = json.loads(stripped.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MemberbenchError(f"file {path}: not a valid JSON list ({e})") from None
        rows = []
        for i, obj in enumerate(items, start=1):
            if isinstance(obj, dict):
                rows.append((i, obj))
            else:
                skips.add(i, f"not a JSON object: got {type(obj).__name__}")
        return rows
    rows = []
    for row, raw in enumerate(_split_lines(data), start=1):
        line = _decode_line(raw, row, skips)
        if line is None:
            continue
        if not line.strip():
            skips.add(row, "blank line")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            skips.add(row, f"bad JSON: {e.msg} (column {e.colno})")
            continue
        if not isinstance(obj, dict):
            skips.add(row, f"not a JSON object: got {type(obj).__name__}")
            continue
        rows.append((row, obj))
    return rows


def _sniff_delimiter(header: str) -> str:
    best, best_n = ",", 1
    for delim in (",", ";", "\t", "|"):
        n = len(next(csv.reader([header], delimiter=delim), []))
        if n > best_n:
            best, best_n = delim, n
    return best


_INT_RE = re.compile(r"[-+]?\d+")


def _cell(value: str) -> Any:
    """A csv cell as int / float when it reads as one, else the string ('' -> None)."""
    if value == "":
        return None
    s = value.strip()
    if _INT_RE.fullmatch(s):
        return int(s)
    try:
        f = float(s)
    except ValueError:
        return value
    return f if math.isfinite(f) or s.lower() in ("nan", "inf", "-inf") else value


def _parse_csv(
    path: Path, skips: _Skips, delimiter: str | None, caption_column: str | None
) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raw = path.read_bytes()
        line = raw[: e.start].count(b"\n") + 1
        raise MemberbenchError(f"file {path}: not UTF-8 text (line {line})") from None
    first = text.split("\n", 1)[0].rstrip("\r")
    if not first.strip():
        raise MemberbenchError(f"file {path}: empty csv file or blank header line")
    delim = delimiter or ("\t" if path.suffix.lower() == ".tsv" else _sniff_delimiter(first))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    header = next(reader)
    columns = []
    for i, col in enumerate(header):
        col = col.strip()
        if not col:  # pandas' unnamed index column, as in NeMo's files
            col = "row_id" if i == 0 else f"column_{i}"
        columns.append(col)
    cap = caption_column if caption_column in columns else _find_column(columns, CAPTION_COLUMNS)
    rows = []
    start = reader.line_num + 1
    for fields in reader:
        row = start
        start = reader.line_num + 1
        if not fields or all(not f.strip() for f in fields):
            skips.add(row, "blank line")
            continue
        if len(fields) != len(columns):
            skips.add(
                row,
                f"wrong number of fields: expected {len(columns)} separated by {delim!r}, "
                f"got {len(fields)}",
            )
            continue
        rows.append(
            (row, {c: (v if c == cap else _cell(v)) for c, v in zip(columns, fields, strict=True)})
        )
    return columns, rows


def _parse_txt(path: Path, skips: _Skips) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for row, raw in enumerate(_split_lines(path.read_bytes()), start=1):
        line = _decode_line(raw, row, skips)
        if line is None:
            continue
        if not line.strip():
            skips.add(row, "blank line")
            continue
        rows.append((row, {"caption": line}))
    return rows


# --------------------------------------------------------------------------------------------
# rows -> datasets.Dataset -> records


def _find_column(columns: Sequence[str], candidates: Sequence[str]) -> str | None:
    for c in candidates:
        if c in columns:
            return c
    folded = {c.casefold(): c for c in columns}
    for c in candidates:
        if c.casefold() in folded:
            return folded[c.casefold()]
    return None


def _resolve_caption_column(columns: Sequence[str], wanted: str | None, where: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise MemberbenchError(
                f"{where}: caption_column={wanted!r} is not a column; found columns {list(columns)}"
            )
        return wanted
    col = _find_column(columns, CAPTION_COLUMNS)
    if col is None:
        raise MemberbenchError(
            f"{where}: no caption column (looked for {', '.join(CAPTION_COLUMNS)}); found "
            f"columns {list(columns)}. Pass caption_column='<name>' to say which one holds "
            "the prompts."
        )
    return col


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    return type(v).__name__


def _unify_types(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Make each column's values one Arrow type: columns of mixed kinds become strings."""
    kinds: dict[str, set[str]] = {}
    for r in rows:
        for k, v in r.items():
            if v is not None:
                kinds.setdefault(k, set()).add(_kind(v))
    mixed = [k for k, ks in kinds.items() if len(ks) > 1]
    if not mixed:
        return rows
    out = []
    for r in rows:
        r = dict(r)
        for k in mixed:
            v = r.get(k)
            if v is not None and not isinstance(v, str):
                r[k] = json.dumps(v) if isinstance(v, dict | list) else str(v)
        out.append(r)
    return out


def _caption_of(value: Any) -> tuple[str | None, str | None]:
    """(caption, None) or (None, reason)."""
    if value is None:
        return None, "missing caption"
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None, f"caption is not text: got {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):
        return None, "missing caption"
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        return None, "empty caption"
    return text, None


def _to_uint8_rgb(img: Any) -> np.ndarray:
    from PIL import Image

    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise MemberbenchError(f"unsupported image array {arr.dtype} {tuple(arr.shape)}")
    return np.ascontiguousarray(arr[..., :3])


def _load_image(value: Any, opts: _Options) -> tuple[np.ndarray | None, str | None, str | None]:
    """(image, file it came from, problem).  URLs are never fetched."""
    from PIL import Image, UnidentifiedImageError

    if value is None:
        return None, None, None
    if isinstance(value, dict):  # datasets' Image feature, undecoded: {"bytes", "path"}
        if value.get("bytes"):
            try:
                with Image.open(io.BytesIO(value["bytes"])) as im:
                    return _to_uint8_rgb(im), value.get("path"), None
            except (UnidentifiedImageError, OSError) as e:
                return None, value.get("path"), f"unreadable image bytes ({e})"
        value = value.get("path")
        if value is None:
            return None, None, None
    if isinstance(value, str):
        if not value.strip():
            return None, None, None
        if re.match(r"^[a-z][a-z0-9+.-]*://", value, re.I):
            return None, value, None  # a URL: not fetched
        p = Path(value)
        if not p.is_absolute() and opts.base_dir is not None:
            p = opts.base_dir / p
        if not p.is_file():
            return None, str(p), f"image file not found: {p}"
        try:
            with Image.open(p) as im:
                return _to_uint8_rgb(im), str(p), None
        except (UnidentifiedImageError, OSError) as e:
            return None, str(p), f"unreadable image file {p} ({e})"
    return _to_uint8_rgb(value), None, None


def _records_from_rows(
    rows: Iterable[tuple[int, dict[str, Any]]],
    columns: Sequence[str],
    opts: _Options,
    skips: _Skips,
) -> PromptSet:
    cap = _resolve_caption_column(columns, opts.caption_column, opts.where)
    if opts.group_column is not None and opts.group_column not in columns:
        raise MemberbenchError(
            f"{opts.where}: group_column={opts.group_column!r} is not a column; found columns "
            f"{list(columns)}"
        )
    grp = opts.group_column or _find_column(columns, GROUP_COLUMNS)
    url_col = _find_column(columns, URL_COLUMNS)
    id_col = _find_column(columns, ID_COLUMNS)
    img_col = _find_column(columns, IMAGE_COLUMNS)
    imgs_col = IMAGES_COLUMN if IMAGES_COLUMN in columns else None
    used = {c for c in (cap, grp, url_col, id_col, img_col, imgs_col) if c}
    used |= {"image_sha256", "memorized", "duplicates", "image_available"}

    stem = opts.name
    records: list[PromptRecord] = []
    seen_ids: set[str] = set()
    for row, r in rows:
        if opts.limit is not None and len(records) >= opts.limit:
            break
        caption, reason = _caption_of(r.get(cap))
        if reason is not None:
            skips.add(row, reason)
            continue
        pid = r.get(id_col) if id_col else None
        pid = f"{stem}:{row}" if pid is None or str(pid) == "" else str(pid)
        if pid in seen_ids:
            skips.add(row, f"duplicate prompt_id: {pid!r}")
            continue
        group = r.get(grp) if grp else None
        group = "" if group is None else str(group).strip()
        url = r.get(url_col) if url_col else None
        url = str(url) if url not in (None, "") else None

        image, image_file, problem = _load_image(r.get(img_col), opts) if img_col else (None,) * 3
        extra = {k: v for k, v in r.items() if k not in used}
        if image is None and image_file and "://" in image_file:
            url = url or image_file
        more: list[np.ndarray] = []
        listed = r.get(imgs_col) if imgs_col else None
        if isinstance(listed, str) and listed.strip().startswith("["):
            try:
                listed = json.loads(listed)
            except json.JSONDecodeError:
                listed = None
        if isinstance(listed, list | tuple) and listed:
            first_file = image_file
            for value in listed:
                im, f, prob = _load_image(value, opts)
                if im is None:
                    problem = problem or prob
                    continue
                if image is None:
                    image, image_file = im, f
                elif f != first_file:
                    more.append(im)
        if problem is not None:
            if opts.strict:
                skips.add(row, problem)
            extra["image_error"] = problem
        sha = r.get("image_sha256") or None
        if image is not None and sha is not None and image_sha256(image) != sha:
            raise MemberbenchError(
                f"{opts.where}: row {row}: image {image_file or '(inline)'} does not match its "
                f"image_sha256 (recorded {sha}, pixels hash to {image_sha256(image)}); the file "
                "was changed or belongs to another record"
            )

        if opts.memorized is not None:
            memorized = opts.memorized
        elif isinstance(r.get("memorized"), bool):
            memorized = r["memorized"]
        elif group.upper() in WEBSTER_MEMORIZED and grp in ("overfit_type", "verbatim_type"):
            memorized = WEBSTER_MEMORIZED[group.upper()]
        else:
            memorized = opts.default_memorized
        dup = r.get("duplicates")
        if isinstance(dup, bool) or not isinstance(dup, int | float) or not math.isfinite(dup):
            dup = None
        records.append(
            PromptRecord(
                prompt_id=pid,
                caption=caption,
                image=image,
                image_sha256=sha,
                memorized=memorized,
                duplicates=None if dup is None else int(dup),
                group=group,
                source=opts.name,
                url=url,
                extra=extra,
                more_images=tuple(more),
            )
        )
        seen_ids.add(pid)
    return PromptSet(
        name=opts.name, records=tuple(records), source=opts.source, skipped=tuple(skips.items)
    )


def _dataset_rows(ds: Any, row_numbers: Sequence[int] | None = None) -> Iterator[tuple[int, dict]]:
    for i, r in enumerate(ds):
        yield (row_numbers[i] if row_numbers is not None else i + 1), r


def _rows_through_dataset(
    rows: list[tuple[int, dict[str, Any]]], columns: Sequence[str]
) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """Pass parsed rows through ``datasets.Dataset.from_list`` (in memory, no cache files)."""
    import datasets

    if not rows:
        return list(columns), iter(())
    # every row gets every column, in one order, so from_list sees a fixed schema
    dicts = [{c: d.get(c) for c in columns} for _, d in rows]
    ds = datasets.Dataset.from_list(_unify_types(dicts))
    return list(ds.column_names), _dataset_rows(ds, [n for n, _ in rows])


# --------------------------------------------------------------------------------------------
# public loaders


def detect_format(path: str | Path) -> str:
    """The loader format for a file name: jsonl, csv, parquet or txt."""
    suffix = Path(urlsplit(str(path)).path).suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    raise MemberbenchError(
        f"cannot tell the format of {str(path)!r} from its extension {suffix or '(none)'!r}: "
        f"known extensions are {', '.join(sorted(EXTENSIONS))}. Pass format= one of "
        f"{', '.join(FORMATS)}."
    )


def load_prompt_file(
    path: str | Path,
    *,
    format: str | None = None,
    caption_column: str | None = None,
    group_column: str | None = None,
    memorized: bool | None = None,
    limit: int | None = None,
    strict: bool = False,
    delimiter: str | None = None,
    name: str | None = None,
    source: str | None = None,
) -> PromptSet:
    """Load a local prompt file (jsonl/json, csv/tsv, parquet, txt) into a :class:`PromptSet`.

    ``memorized``: label for every record; by default taken from a ``memorized`` column, else
    from Webster's ``overfit_type`` (MV/RV/TV -> True, N -> False), else from the file name
    ('...unmemorized...' / '...nonmemorized...' -> False, '...memorized...' -> True), else None.
    ``limit`` keeps the first ``limit`` records (images are read only for those); the whole
    file is still checked, so ``skipped`` and ``strict`` see every bad row.
    Bad rows (bad JSON, empty or missing caption, wrong field count) are skipped and listed in
    ``PromptSet.skipped``; ``strict=True`` turns the first one into an error naming its row.
    Columns: the caption from ``caption_column`` or the first of :data:`CAPTION_COLUMNS`;
    ``group`` from ``group_column`` or the first of :data:`GROUP_COLUMNS`; ``url``, ``prompt_id``
    (default ``"<file stem>:<row>"``), ``duplicates``, ``memorized``, ``image_sha256`` by name;
    every other column goes to ``extra``.  Image columns (``image`` / ``image_path``: a file
    path relative to the prompt file) are read with PIL; a pixel hash that does not match the
    ``image_sha256`` column is always an error; a missing image file leaves the record without
    image (``extra["image_error"]`` says why) unless ``strict``.  URLs are never fetched.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise MemberbenchError(f"prompt file not found: {p}")
    if not p.is_file():
        raise MemberbenchError(f"not a file: {p} (pass the path of a prompt file)")
    fmt = (format or detect_format(p)).lower()
    fmt = {"json": "jsonl", "ndjson": "jsonl", "tsv": "csv", "text": "txt"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise MemberbenchError(f"unknown format {format!r}: use one of {', '.join(FORMATS)}")
    opts = _Options(
        name=name or p.stem,
        source=source or f"file:{p.resolve()} ({fmt})",
        caption_column=caption_column,
        group_column=group_column,
        memorized=memorized,
        default_memorized=_memorized_from_name(p.name),
        limit=_check_limit(limit),
        strict=strict,
        base_dir=p.resolve().parent,
        where=f"file {p}",
    )
    skips = _Skips(opts)
    if fmt == "parquet":
        import datasets
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except (pa.ArrowException, OSError) as e:
            raise MemberbenchError(f"file {p}: not a readable parquet file ({e})") from None
        ds = datasets.Dataset(table)
        skips.unit = "record"
        out = _records_from_rows(_dataset_rows(ds), ds.column_names, opts, skips)
        skips.warn_malformed()
        return out
    if fmt == "csv":
        columns, rows = _parse_csv(p, skips, delimiter, caption_column)
    elif fmt == "jsonl":
        rows = _parse_jsonl(p, skips)
        columns = None
    else:
        rows = _parse_txt(p, skips)
        columns = ["caption"]
        if caption_column not in (None, "caption"):
            opts = replace(opts, caption_column=None)
    if columns is None:
        keys: dict[str, None] = {}
        for _, d in rows:
            for k in d:
                keys.setdefault(k, None)
        columns = list(keys)
    cap = _resolve_caption_column(columns, opts.caption_column, opts.where)
    good = []
    for row, d in rows:  # captions are checked before Arrow sees them (one type: str)
        caption, reason = _caption_of(d.get(cap))
        if reason is not None:
            skips.add(row, reason)
            continue
        good.append((row, {**d, cap: caption}))
    skips.items.sort(key=lambda item: item[0])
    columns, it = _rows_through_dataset(good, columns)
    out = _records_from_rows(it, columns, opts, skips)
    skips.warn_malformed()
    return out


def prompt_set_from_dataset(
    dataset: Any,
    *,
    name: str,
    source: str = "",
    caption_column: str | None = None,
    group_column: str | None = None,
    memorized: bool | None = None,
    limit: int | None = None,
    strict: bool = False,
    base_dir: str | Path | None = None,
) -> PromptSet:
    """Map a ``datasets.Dataset`` (or any iterable of dict rows with ``column_names``) to records.

    Rows are read lazily, so with ``limit`` a large dataset is read only up to the first
    ``limit`` records; ``skipped`` then covers the rows read.
    """
    columns = list(getattr(dataset, "column_names", None) or [])
    opts = _Options(
        name=name,
        source=source or name,
        caption_column=caption_column,
        group_column=group_column,
        memorized=memorized,
        default_memorized=_memorized_from_name(name),
        limit=_check_limit(limit),
        strict=strict,
        base_dir=Path(base_dir) if base_dir is not None else None,
        where=f"dataset {name}",
    )
    return _records_from_rows(_dataset_rows(dataset), columns, opts, _Skips(opts))


# --------------------------------------------------------------------------------------------
# the Hugging Face hub and remote files


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """True when the user asked the Hugging Face libraries to stay offline."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE"):
        return True
    try:
        import datasets

        return bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))
    except ImportError:  # pragma: no cover
        return False


def hub_reachable(url: str = HUB_URL, timeout: float = 3.0) -> bool:
    """A quick TCP check of ``url``'s host (``datasets`` itself retries for ~20 s).

    Behind an HTTP(S) proxy the check is skipped (True): the proxy decides.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", HUB_URL).rstrip("/")


def _unreachable(what: str, url: str, offline: bool, cause: str = "") -> MemberbenchError:
    why = (
        "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and no cached copy was found"
        if offline
        else f"{urlsplit(url).hostname or url} is unreachable from this machine"
    )
    return MemberbenchError(
        f"cannot load {what}: {why}{f' ({cause})' if cause else ''}. Download the file on a "
        "machine with network and pass its local path instead, e.g. "
        "load_prompt_set('/data/prompts/sdv1_500_memorized.jsonl') or "
        "--prompts /data/prompts/webster_sd1.parquet (formats: .jsonl, .json, .csv, .tsv, "
        ".parquet, .txt)."
    )


_HUB_DATASET_URL = re.compile(r"^https?://(?:www\.)?huggingface\.co/datasets/([^/]+/[^/?#]+)/?")


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """``("repo", None)`` for a hub dataset, ``(None, url)`` for a remote file; else error."""
    if spec.startswith("hf:"):
        repo = spec[3:].strip().strip("/")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise MemberbenchError(f"bad hub dataset {spec!r}: expected 'hf:owner/name'")
        return repo, None
    m = _HUB_DATASET_URL.match(spec)
    if m and "/resolve/" not in spec and "/blob/" not in spec:
        return m.group(1), None
    if spec.startswith(("http://", "https://")):
        return "", spec.replace("/blob/", "/resolve/", 1) if m else spec
    raise MemberbenchError(f"{spec!r} is neither 'hf:owner/name' nor an http(s) URL")


def load_hf_prompt_set(
    spec: str,
    *,
    split: str = "train",
    config: str | None = None,
    revision: str | None = None,
    data_files: Any = None,
    format: str | None = None,
    caption_column: str | None = None,
    group_column: str | None = None,
    memorized: bool | None = None,
    limit: int | None = None,
    strict: bool = False,
    delimiter: str | None = None,
    name: str | None = None,
) -> PromptSet:
    """Load a prompt set from the Hugging Face hub or a remote file (needs network).

    ``spec``: ``hf:owner/name`` or ``https://huggingface.co/datasets/owner/name`` (through
    ``datasets.load_dataset``), or the URL of a single file (downloaded into the ``datasets``
    cache, then read like a local file).  Without network this raises a MemberbenchError saying
    so and how to pass a local file instead.
    """
    repo, url = parse_hub_spec(spec)
    offline = hub_offline()
    target = url or _hub_endpoint()
    if not offline and not hub_reachable(target):
        raise _unreachable(repr(spec), target, offline=False)
    import datasets

    if url:
        try:
            local = datasets.DownloadManager().download(url)
        except Exception as e:  # noqa: BLE001 - any download failure becomes one clear message
            if isinstance(e, ConnectionError | TimeoutError) or offline:
                raise _unreachable(repr(spec), url, offline, type(e).__name__) from None
            raise MemberbenchError(f"cannot download {url}: {type(e).__name__}: {e}") from None
        fname = Path(urlsplit(url).path).name
        return load_prompt_file(
            local,
            format=format or detect_format(fname),
            caption_column=caption_column,
            group_column=group_column,
            memorized=_memorized_from_name(fname) if memorized is None else memorized,
            limit=limit,
            strict=strict,
            delimiter=delimiter,
            name=name or Path(fname).stem,
            source=f"url:{url}",
        )
    try:
        ds = datasets.load_dataset(
            repo, name=config, split=split, revision=revision, data_files=data_files
        )
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
        text = f"{type(e).__name__}: {e}"
        if offline or isinstance(e, ConnectionError) or "Couldn't reach" in str(e):
            raise _unreachable(f"hub dataset {repo!r}", target, offline, text[:200]) from None
        raise MemberbenchError(
            f"cannot load hub dataset {repo!r} (split {split!r}): {text}"
        ) from None
    return prompt_set_from_dataset(
        ds,
        name=name or repo.split("/")[-1],
        source=f"hf:{repo}@{revision or 'main'}[{config or 'default'}/{split}]",
        caption_column=caption_column,
        group_column=group_column,
        memorized=memorized,
        limit=limit,
        strict=strict,
    )
