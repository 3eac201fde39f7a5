"""Prompt records and prompt sets: what every loader produces, and the column names it reads."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

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


def _find_column(columns: Sequence[str], candidates: Sequence[str]) -> str | None:
    for c in candidates:
        if c in columns:
            return c
    folded = {c.casefold(): c for c in columns}
    for c in candidates:
        if c.casefold() in folded:
            return folded[c.casefold()]
    return None
