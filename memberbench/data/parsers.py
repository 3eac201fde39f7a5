"""The standard-library parsers of local prompt files (jsonl, csv, txt): one bad line is
skipped and counted, not fatal."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from memberbench.data.options import (
    _Skips,
)
from memberbench.data.records import (
    CAPTION_COLUMNS,
    _find_column,
)
from memberbench.types import MemberbenchError

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
