"""Utility: CLIP score of the generated images with their prompts, on memorized and
non-memorized prompts (what a mitigation must keep while it removes memorization).

``100 * max(cos(image, text), 0)`` per image (torchmetrics' definition), mean over seeds per
prompt, mean over prompts.  The bundled model is scored with the bundled CLIP scorer (trained on
the bundled world); other models with open_clip ViT-L-14/openai from the local cache (``--clip``,
``--clip-pretrained``).  Skipped, with the reason, when no CLIP weights are available.
"""

from __future__ import annotations

import numpy as np
import pytest

from memberbench.benchrun import SIDES, SUFFIX
from memberbench.metrics.clip_score import clip_score_from_embeddings
from memberbench.metrics.stats import mean_stat

pytestmark = pytest.mark.memberbench


@pytest.mark.parametrize("side", SIDES)
def test_clip_score(mb, record_metric, side):
    scorer = mb.clip_scorer()  # Skip with the reason when unavailable
    recs = mb.records(side)
    gens = mb.ok_gens(side)
    owners, img_emb = [], []
    images, img_owners = [], []
    for pid, gs in gens.items():
        for g in gs:
            if g.image is not None:
                images.append(g.image)
                img_owners.append(pid)
            elif g.clip_emb is not None:
                img_emb.append(g.clip_emb)
                owners.append(pid)
    if images:
        img_emb.extend(list(scorer.embed_images(images)))
        owners.extend(img_owners)
    if not img_emb:
        pytest.skip(f"no {side} images to score")
    pids = sorted(set(owners))
    text_emb = dict(zip(pids, scorer.embed_texts([recs[p].caption for p in pids])))
    scores = clip_score_from_embeddings(np.stack(img_emb), np.stack([text_emb[p] for p in owners]))
    per: dict[str, list[float]] = {}
    for p, s in zip(owners, scores):
        per.setdefault(p, []).append(float(s))
    vals = {p: float(np.mean(v)) for p, v in per.items()}
    record_metric(
        f"clip_score{SUFFIX[side]}",
        mean_stat(list(vals.values()), "clip_score"),
        per_prompt=vals,
        prompt_set=side,
    )
