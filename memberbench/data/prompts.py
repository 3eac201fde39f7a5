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

from memberbench.data.hub import (  # noqa: F401
    _HUB_DATASET_URL,
    HUB_URL,
    _env_true,
    _hub_endpoint,
    _unreachable,
    hub_offline,
    hub_reachable,
    load_hf_prompt_set,
    parse_hub_spec,
)
from memberbench.data.images import (  # noqa: F401
    _load_image,
    _to_uint8_rgb,
)
from memberbench.data.loaders import (  # noqa: F401
    _caption_of,
    _dataset_rows,
    _kind,
    _records_from_rows,
    _resolve_caption_column,
    _rows_through_dataset,
    _unify_types,
    detect_format,
    load_prompt_file,
    prompt_set_from_dataset,
)
from memberbench.data.options import (  # noqa: F401
    MalformedRowsWarning,
    _check_limit,
    _memorized_from_name,
    _Options,
    _Skips,
)
from memberbench.data.parsers import (  # noqa: F401
    _INT_RE,
    _cell,
    _decode_line,
    _parse_csv,
    _parse_jsonl,
    _parse_txt,
    _sniff_delimiter,
    _split_lines,
)

# The prompt layer, split by concern; this module re-exports it (its public and private names)
# so that `memberbench.data.prompts.X` keeps working.
from memberbench.data.records import (  # noqa: F401
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
