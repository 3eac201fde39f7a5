"""Helpers for tests: tiny, seeded, randomly initialised Stable Diffusion pipelines on disk.

They have the bundled model's architecture and schedule (so every code path is the real one) but
random weights, and build in about a second, with no network.
"""

from __future__ import annotations

from pathlib import Path

import torch


def make_tiny_pipeline_dir(path: str | Path, seed: int = 0) -> Path:
    """Write a randomly initialised StableDiffusionPipeline directory to ``path``; return it."""
    from memberbench.bundled.train import (
        build_tokenizer,
        make_text_encoder,
        make_unet,
        make_vae,
        save_pipeline,
    )

    path = Path(path)
    tok_src = _tokenizer_dir(build_tokenizer)
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tok_src)
    torch.manual_seed(seed)
    vae, unet, text_encoder = make_vae(), make_unet(), make_text_encoder()
    for m in (vae, unet, text_encoder):
        m.eval()
    save_pipeline(path, vae, unet, text_encoder, tokenizer, tok_src)
    return path


def _tokenizer_dir(build) -> Path:
    """A folder holding SD 1.x's CLIP tokenizer files: the bundled model's own when shipped,
    else built once from open_clip's vocabulary into the user cache (building takes ~1 min)."""
    import os

    from memberbench.bundled import WEIGHTS_DIR

    shipped = WEIGHTS_DIR / "model" / "tokenizer"
    if (shipped / "vocab.json").is_file():
        return shipped
    cache = Path(os.environ.get("MEMBERBENCH_CACHE", Path.home() / ".cache" / "memberbench"))
    out = cache / "clip-tokenizer"
    if not (out / "tokenizer.json").is_file():
        tmp = cache / f"clip-tokenizer.tmp{os.getpid()}"
        tok = build(tmp)
        tok.save_pretrained(tmp)
        tmp.replace(out) if not out.exists() else None
    return out
