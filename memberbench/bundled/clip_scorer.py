"""The bundled utility scorer: a tiny open_clip model trained on the bundled world.

CLIP score needs CLIP weights, which cannot be downloaded here; so the recipe trains a small
open_clip model (a custom config registered through ``open_clip.add_model_config`` and created by
open_clip's own factory) contrastively on the world's image-caption pairs.  The CLIP-score code
path (:class:`memberbench.metrics.clip_score.ClipScorer`) then runs unchanged on the bundled model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from memberbench.bundled import WEIGHTS_DIR, verify_manifest
from memberbench.bundled.world import World

MODEL_NAME = "memberbench-tiny-clip"
CONFIG_FILE = f"{MODEL_NAME}.json"
WEIGHTS_FILE = "open_clip_model.pt"
CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}


def _register(config_dir: Path) -> None:
    import open_clip

    open_clip.add_model_config(config_dir / CONFIG_FILE)


def _normalise(images: np.ndarray) -> torch.Tensor:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


CANARY_VIEWS = 16


def train_clip(
    world: World,
    out: Path,
    steps: int = 1500,
    batch: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Train the tiny open_clip scorer contrastively on ``world`` and save it into ``out``."""
    import open_clip

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(CONFIG, indent=2))
    _register(out)
    torch.manual_seed(seed + 10)
    model = open_clip.create_model(MODEL_NAME)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    images = _normalise(np.stack([it.image for it in world.train]))
    captions = [it.caption for it in world.train]
    tokens = tokenizer(captions)
    # each canary is one image under its own caption among ~5,000 shape images: drawn
    # ``CANARY_VIEWS`` times as often, so that the scorer knows every canary caption (whatever its
    # duplication count in the diffusion model's data) and CLIP score means the same on both sets
    pool = np.array(
        list(range(len(world.train)))
        + [i for i, it in enumerate(world.train) if it.kind == "canary"] * (CANARY_VIEWS - 1)
    )
    rng = np.random.default_rng(seed + 11)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    model.train()
    bar = tqdm(range(steps), desc="clip", disable=not progress)
    for _ in bar:
        b = pool[rng.choice(len(pool), size=batch, replace=False)]
        img = images[b]
        # light augmentation: brightness jitter and one-pixel shifts
        img = img * torch.empty(batch, 1, 1, 1).uniform_(0.9, 1.1)
        img = torch.roll(
            img, shifts=(int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), dims=(2, 3)
        )
        fi, ft, scale = model(img, tokens[b])
        logits = scale * fi @ ft.t()
        # captions repeat (several renders per caption): every matching caption is a positive
        same = torch.tensor([[captions[i] == captions[j] for j in b] for i in b], dtype=torch.float)
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (
            torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
            + torch.sum(-target * F.log_softmax(logits.t(), 1), 1).mean()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, out / WEIGHTS_FILE)
    return out


def load_bundled_clip(root: str | Path | None = None, verify: bool = True):
    """Load the shipped scorer: returns ``(model, preprocess, tokenizer, describe_dict)``."""
    import open_clip

    root = Path(root) if root is not None else WEIGHTS_DIR
    digest = verify_manifest(root, subdir="clip") if verify else None
    clip_dir = root / "clip"
    _register(clip_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(
        MODEL_NAME, pretrained=str(clip_dir / WEIGHTS_FILE)
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    describe = {
        "model_name": MODEL_NAME,
        "pretrained": "memberbench-bundled",
        "weights_sha256": _sha(clip_dir / WEIGHTS_FILE),
        "manifest_sha256": digest,
    }
    return model, preprocess, tokenizer, describe


def _sha(path: Path) -> str:
    from memberbench.bundled import file_sha256

    return file_sha256(path)
