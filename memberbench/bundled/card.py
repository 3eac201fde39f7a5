"""The bundled model's card and loader, registered in ``MODELS`` as ``bundled``.

The generic cards (``memberbench/adapters/cards.py``) name this module only as a lazy registry
entry (``"memberbench.bundled.card:FACTORY"``), so the library's lower layers never import the
bundled world: it is an application of them, like any out-of-tree model.
"""

from __future__ import annotations

from typing import Any

import memberbench.bundled as _bundled
import memberbench.bundled.world as _world
from memberbench.adapters.base import Adapter, ModelCard
from memberbench.adapters.cards import CardFactory, with_changes
from memberbench.bundled.world import SIZE as WORLD_SIZE
from memberbench.types import MemberbenchError


def training_data_text(world: Any) -> str:
    """The card's ``training_data``, read off a world module's constants (every results file
    records it, so its numbers must follow the world rather than repeat it)."""
    levels = world.DUPLICATION_LEVELS
    return (
        "memberbench's synthetic world (memberbench/bundled/world.py): coloured shapes on "
        "backgrounds, captioned half with and half without the background, plus "
        f"{len(levels) * world.CANARIES_PER_LEVEL} canary images with invented-word captions, "
        f"duplicated {' / '.join(str(d) for d in levels)} times "
        f"({world.CANARIES_PER_LEVEL} canaries per level, one of each kind: "
        f"{', '.join(world.CANARY_KINDS)}) so memorization severity spans a range; each "
        f"canary caption also captions {world.DECOYS_PER_CANARY} ordinary shape images, so "
        "memorization depends on guidance; 10% caption dropout; SD 1.x training schedule, "
        "v-prediction like SD 2.x (recipe.json has the details)"
    )


BUNDLED = ModelCard(
    name="bundled",
    repo_id="bundled",
    revision=None,
    resolution=WORLD_SIZE,
    prediction_type="v_prediction",
    training_data=training_data_text(_world),
    notes=(
        f"Trained on CPU by `memberbench train-bundled`; {WORLD_SIZE}x{WORLD_SIZE} RGB, f=4 VAE, "
        "4x16x16 latents; verified "
        "against MANIFEST.sha256 on every load (a path= override skips the manifest)."
    ),
    defaults={"guidance": 7.5, "steps": 50, "scheduler": "ddim"},
    prompt_sets={"memorized": "bundled-memorized", "nonmemorized": "bundled-nonmemorized"},
)


class BundledFactory(CardFactory):
    """The bundled card: shipped weights, checked against their manifest on every load."""

    def load(self, card: ModelCard, params: dict[str, Any]) -> Adapter:
        from memberbench.adapters.stable_diffusion import StableDiffusionAdapter

        path = params.get("path") or None
        if path:
            card = with_changes(
                card, notes=card.notes + f" Loaded from {path} (manifest not checked)."
            )
            src = path
        else:
            model_dir = _bundled.WEIGHTS_DIR / "model"  # read at call time: tests move it
            if not model_dir.is_dir():
                raise MemberbenchError(
                    f"the bundled model is not in {model_dir}: the package installation is "
                    "incomplete or the weights were not built yet. Reinstall memberbench, rebuild "
                    "them with `memberbench train-bundled`, or point at a copy with "
                    "--model bundled:path=/dir/with/model_index.json"
                )
            digest = _bundled.verify_manifest(_bundled.WEIGHTS_DIR, subdir="model")
            card = with_changes(card, revision=f"manifest-sha256:{digest[:16]}")
            src = str(model_dir)
        return StableDiffusionAdapter.from_pretrained(
            src, card, device=params.get("device"), dtype=params.get("dtype")
        )


FACTORY = BundledFactory(BUNDLED)
