"""Options shared by the prompt-file loaders, and how they count and report skipped rows."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memberbench.types import MemberbenchError

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
