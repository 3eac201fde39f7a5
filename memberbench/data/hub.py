"""Prompt sets on the Hugging Face hub: offline detection, reachability and loading."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from memberbench.data.loaders import (
    detect_format,
    load_prompt_file,
    prompt_set_from_dataset,
)
from memberbench.data.options import (
    _memorized_from_name,
)
from memberbench.data.records import (
    PromptSet,
)
from memberbench.types import MemberbenchError

HUB_URL = "https://huggingface.co"


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
