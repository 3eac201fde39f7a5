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


# --- the second bundled model: the flow-matching transformer (``--model bundled-flow``) ----------

BUNDLED_FLOW = ModelCard(
    name="bundled-flow",
    repo_id="bundled",
    revision=None,
    resolution=WORLD_SIZE,
    prediction_type="flow",
    training_data=training_data_text(_world).replace(
        "SD 1.x training schedule, v-prediction like SD 2.x",
        "rectified flow like SD 3 (x_t = (1 - sigma) x0 + sigma eps, target eps - x0, "
        "logit-normal sigma)",
    ),
    notes=(
        "family flow: a tiny SD3Transformer2DModel (MMDiT, 4 joint blocks, width 128, 2x2 "
        "patches of the 4x16x16 latents) and two tiny CLIPTextModelWithProjection encoders "
        "(no T5), trained with rectified flow over the bundled UNet model's VAE by `memberbench "
        "train-bundled --family flow`; sampled with FlowMatchEulerDiscreteScheduler (shift 1). "
        "A StableDiffusion3Pipeline directory, called with max_sequence_length=0; verified "
        "against its own MANIFEST.sha256 on every load (a path= override skips the manifest)."
    ),
    defaults={
        "guidance": 7.5,
        "steps": 50,
        "scheduler": "FlowMatchEulerDiscreteScheduler",
        "max_sequence_length": 0,
    },
    prompt_sets={"memorized": "bundled-memorized", "nonmemorized": "bundled-nonmemorized"},
)


class BundledFlowFactory(CardFactory):
    """The bundled flow-matching transformer: ``weights/flow/``, checked against its own
    manifest on every load."""

    def load(self, card: ModelCard, params: dict[str, Any]) -> Adapter:
        from memberbench.adapters.sd3 import SD3Adapter

        if params.get("vae"):
            raise MemberbenchError(f"model {card.name!r} takes no vae= (its VAE is its own)")
        path = params.get("path") or None
        if path:
            card = with_changes(
                card, notes=card.notes + f" Loaded from {path} (manifest not checked)."
            )
            src = path
        else:
            root = _bundled.WEIGHTS_DIR / _bundled.FLOW_SUBDIR  # read at call time: tests move it
            if not (root / "model").is_dir():
                raise MemberbenchError(
                    f"the bundled flow model is not in {root / 'model'}: the package installation "
                    "is incomplete or the weights were not built yet. Reinstall memberbench, "
                    "rebuild them with `memberbench train-bundled --family flow --out DIR`, or "
                    "point at a copy with --model bundled-flow:path=/dir/with/model_index.json"
                )
            digest = _bundled.verify_manifest(root, subdir="model")
            card = with_changes(card, revision=f"manifest-sha256:{digest[:16]}")
            src = str(root / "model")
        return SD3Adapter(
            load_flow_pipeline(src, params.get("dtype")),
            card,
            device=params.get("device"),
            dtype=params.get("dtype"),
            source=str(src),
        )


def load_flow_pipeline(path: Any, dtype: Any = None) -> Any:
    """``StableDiffusion3Pipeline.from_pretrained(path, text_encoder_3=None, tokenizer_3=None)``:
    the model has no T5 encoder, and diffusers loads a pipeline without one only when told so
    (as its docs drop SD3's T5)."""
    from diffusers import StableDiffusion3Pipeline

    from memberbench.devices import parse_dtype

    try:
        return StableDiffusion3Pipeline.from_pretrained(
            path, text_encoder_3=None, tokenizer_3=None, torch_dtype=parse_dtype(dtype)
        )
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise MemberbenchError(
            f"{path}: not a StableDiffusion3Pipeline folder of the bundled flow model ({first})"
        ) from None


FLOW_FACTORY = BundledFlowFactory(BUNDLED_FLOW)
