"""Rows to records, and the loaders of local prompt files and in-memory datasets."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from memberbench.data.images import (
    _load_image,
)
from memberbench.data.options import (
    _check_limit,
    _memorized_from_name,
    _Options,
    _Skips,
)
from memberbench.data.parsers import (
    _parse_csv,
    _parse_jsonl,
    _parse_txt,
)
from memberbench.data.records import (
    CAPTION_COLUMNS,
    EXTENSIONS,
    FORMATS,
    GROUP_COLUMNS,
    ID_COLUMNS,
    IMAGE_COLUMNS,
    IMAGES_COLUMN,
    URL_COLUMNS,
    WEBSTER_MEMORIZED,
    PromptRecord,
    PromptSet,
    _find_column,
    image_sha256,
)
from memberbench.types import MemberbenchError

# --------------------------------------------------------------------------------------------
# rows -> datasets.Dataset -> records


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
