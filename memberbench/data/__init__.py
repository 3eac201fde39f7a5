"""Prompt sets: records, loaders for the field's files, and the named (registered) sets.

``load_prompt_set(spec)`` is the entry point: ``spec`` is a registered name
(``bundled-memorized``, ``wen-sd1-memorized``, ...), a local file (.jsonl, .json, .csv, .tsv,
.parquet, .txt), ``hf:owner/name`` or a URL.  Importing this package does not import
``datasets``; the loaders do, when called.

By concern: ``records`` (PromptRecord, PromptSet, column names), ``options`` (loader options and
skipped-row reporting), ``parsers`` (jsonl / csv / txt), ``images`` (decoding training images),
``loaders`` (rows to records, files and datasets), ``hub`` (the Hugging Face hub), ``sets`` (the
registered sets), ``fetch`` (recovering training images); ``prompts`` re-exports the first six.
"""

from memberbench.data.hub import hub_reachable, load_hf_prompt_set
from memberbench.data.loaders import detect_format, load_prompt_file, prompt_set_from_dataset
from memberbench.data.records import CAPTION_COLUMNS, PromptRecord, PromptSet, image_sha256
from memberbench.data.sets import (
    BUNDLED_DIR,
    REMOTE_SETS,
    describe_sets,
    load_bundled,
    load_bundled_memorized,
    load_bundled_nonmemorized,
    load_prompt_set,
)

__all__ = [
    "BUNDLED_DIR",
    "CAPTION_COLUMNS",
    "REMOTE_SETS",
    "PromptRecord",
    "PromptSet",
    "describe_sets",
    "detect_format",
    "hub_reachable",
    "image_sha256",
    "load_bundled",
    "load_bundled_memorized",
    "load_bundled_nonmemorized",
    "load_hf_prompt_set",
    "load_prompt_file",
    "load_prompt_set",
    "prompt_set_from_dataset",
]
