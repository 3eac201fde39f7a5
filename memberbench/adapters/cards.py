"""Model cards of the built-in models and their registration in ``memberbench.registry.MODELS``.

Each card names a Hugging Face repo, a pinned revision, the native resolution, the prediction
type and what is known about the training data.  Registered entries are :class:`CardFactory`
objects: callables ``factory(params: dict) -> Adapter`` (the same contract as out-of-tree
``memberbench.models`` entry points) that also carry their ``card``, so the card can be read
without loading any weights.

About the pinned revisions: they are commits of each repo seen in Hugging Face cache snapshot
paths of public code (``models--<org>--<name>/snapshots/<commit>``), not re-checked against the
Hub from here (no network).  Override with ``revision=`` in the model spec, e.g.
``--model sd-1.4:revision=main``.
"""

from __future__ import annotations

from typing import Any

from memberbench.adapters.base import Adapter, ModelCard
from memberbench.registry import MODELS
from memberbench.types import MemberbenchError

# Webster's SD 1 parquet labels its N rows non-memorized; they stay so (a set's rows keep their
# own labels), and NeMo's 500 non-memorized LAION prompts are the SD 1.x negatives.
SD1_SETS = {"memorized": "webster-sd1", "nonmemorized": "nemo-sd1-nonmemorized"}

SD_14 = ModelCard(
    name="sd-1.4",
    repo_id="CompVis/stable-diffusion-v1-4",
    revision="133a221b8aa7292a167afc5127cb63fb5005638b",
    resolution=512,
    prediction_type="epsilon",
    training_data=(
        "LAION-2B(en) and subsets: v1-1 at 256/512 px, v1-2 on LAION-aesthetics (>5.0), "
        "v1-4 fine-tuned 225k steps on laion-aesthetics v2 5+ with 10% text dropout. Known "
        "memorized prompts: Webster 2023 (SD1 set, 500), Wen et al. 2024 (500)."
    ),
    notes="The paper's main model (Pearson r about 0.92 between D and SSCD).",
    defaults={"guidance": 7.5, "steps": 50, "scheduler": "ddim"},
    prompt_sets=SD1_SETS,
)

SD_15 = ModelCard(
    name="sd-1.5",
    repo_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
    revision="451f4fe16113bff5a5d2269ed5ad43b0592e9a14",
    resolution=512,
    prediction_type="epsilon",
    training_data=(
        "Same data as SD 1.4 up to v1-2, then 595k steps on laion-aesthetics v2 5+ with 10% "
        "text dropout. Mirror of the removed runwayml/stable-diffusion-v1-5 (same commits)."
    ),
    defaults={"guidance": 7.5, "steps": 50, "scheduler": "ddim"},
    prompt_sets=SD1_SETS,
)

SD_21_BASE = ModelCard(
    name="sd-2.1-base",
    repo_id="stabilityai/stable-diffusion-2-1-base",
    revision="5ede9e4bf3e3fd1cb0ef2f7a3fff13ee514fdf06",
    resolution=512,
    prediction_type="epsilon",
    training_data=(
        "LAION-5B subsets filtered by the LAION NSFW classifier (punsafe 0.1) and aesthetics >= "
        "4.5; OpenCLIP ViT-H/14 text encoder; deduplication reduced verbatim memorization "
        "compared with SD 1.x (Webster 2023 SD2 set)."
    ),
    notes=(
        "The 512 px base model predicts epsilon; the 768 px stabilityai/stable-diffusion-2-1 "
        "predicts v (use it via path=/revision= with this adapter: v is converted to epsilon)."
    ),
    defaults={"guidance": 7.5, "steps": 50, "scheduler": "ddim"},
    # one parquet for both sides: its MV/RV/TV rows are the positives, its N rows the negatives
    prompt_sets={"memorized": "webster-sd2", "nonmemorized": "webster-sd2"},
)

REALISTIC_VISION = ModelCard(
    name="realistic-vision",
    repo_id="SG161222/Realistic_Vision_V5.1_noVAE",
    revision="1e9f017a7b1eaefb63a1900ea6c5953d2739fd21",
    resolution=512,
    prediction_type="epsilon",
    training_data=(
        "Community fine-tune of SD 1.5 on undisclosed photographic data; the paper reports a "
        "weaker link (Pearson r about 0.70); Webster 2023 ships a RealisticVision prompt set "
        "(made on an earlier Realistic Vision release)."
    ),
    notes=(
        "The 'noVAE' checkpoint is meant to be used with stabilityai/sd-vae-ft-mse, which the "
        "card loads by default (vae=...; revision of the VAE unpinned). Revision "
        "1e9f017a... is one observed commit of the repo; several exist."
    ),
    defaults={
        "guidance": 7.5,
        "steps": 50,
        "scheduler": "ddim",
        "vae": "stabilityai/sd-vae-ft-mse",
    },
    prompt_sets={
        "memorized": "webster-realistic-vision",
        "nonmemorized": "webster-realistic-vision",
    },
)

SDXL_BASE = ModelCard(
    name="sdxl",
    repo_id="stabilityai/stable-diffusion-xl-base-1.0",
    revision="462165984030d82259a11f4367a4eed129e94a7b",
    resolution=1024,
    prediction_type="epsilon",
    training_data=(
        "Undisclosed web-scale image-text data (Podell et al. 2023, arXiv 2307.01952): "
        "multi-aspect training at about 1024^2 px, conditioned on original size and crop "
        "coordinates; two text encoders (CLIP ViT-L and OpenCLIP ViT-bigG). No published "
        "memorized-prompt set: name both prompt sets."
    ),
    notes=(
        "Base model only (no refiner). The unconditional input is zeros "
        "(force_zeros_for_empty_prompt), as in StableDiffusionXLPipeline's default."
    ),
    defaults={"guidance": 5.0, "steps": 50, "scheduler": "ddim"},
)

PIXART_NOTES = (
    " T5-XXL text encoder (about 4.8B parameters: the largest download); learned sigma (the "
    "transformer outputs epsilon and a variance; memberbench keeps the epsilon half, as "
    "diffusers' pipeline does); captions lower-cased, not cleaned (clean_caption=False)."
)

PIXART_ALPHA = ModelCard(
    name="pixart-alpha",
    repo_id="PixArt-alpha/PixArt-XL-2-1024-MS",
    revision="b89adadeccd9ead2adcb9fa2825d3fabec48d404",
    resolution=1024,
    prediction_type="epsilon",
    training_data=(
        "Chen et al. 2023 (arXiv 2310.00426): ImageNet-pretrained DiT, then SAM images with "
        "LLaVA-generated dense captions and a 14M-image internal high-aesthetic set (JourneyDB "
        "among them). No published memorized-prompt set: name both prompt sets."
    ),
    notes="Diffusion transformer (PixArt-alpha, 1024 px, 120 T5 tokens)." + PIXART_NOTES,
    defaults={"guidance": 4.5, "steps": 50, "scheduler": "ddim", "max_sequence_length": 120},
)

PIXART_SIGMA = ModelCard(
    name="pixart-sigma",
    repo_id="PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
    revision="e102b3591cc82e97071b8b4cb90d834d0c487207",
    resolution=1024,
    prediction_type="epsilon",
    training_data=(
        "Chen et al. 2024 (arXiv 2403.04692): PixArt-alpha weak-to-strong fine-tuned on about "
        "33M higher-quality images with longer captions, SDXL's VAE. No published "
        "memorized-prompt set: name both prompt sets."
    ),
    notes=(
        "Diffusion transformer (PixArt-sigma, 1024 px, 300 T5 tokens). Revision e102b359... "
        "is one observed commit of the repo." + PIXART_NOTES
    ),
    defaults={"guidance": 4.5, "steps": 50, "scheduler": "ddim", "max_sequence_length": 300},
)

CARDS: dict[str, ModelCard] = {
    c.name: c
    for c in (SD_14, SD_15, SD_21_BASE, REALISTIC_VISION, SDXL_BASE, PIXART_ALPHA, PIXART_SIGMA)
}

# the adapter class of each card that is not an SD-family UNet pipeline ("module:Class")
ADAPTERS: dict[str, str] = {
    "sdxl": "memberbench.adapters.sdxl:SDXLAdapter",
    "pixart-alpha": "memberbench.adapters.pixart:PixArtAdapter",
    "pixart-sigma": "memberbench.adapters.pixart:PixArtAdapter",
}
SD_ADAPTER = "memberbench.adapters.stable_diffusion:StableDiffusionAdapter"

SPEC_KEYS = ("path", "revision", "dtype", "device", "vae", "resolution")


def _check_keys(name: str, params: dict[str, Any]) -> None:
    unknown = sorted(set(params) - set(SPEC_KEYS))
    if unknown:
        raise MemberbenchError(
            f"model {name!r} has no parameter {unknown[0]!r}; allowed: {', '.join(SPEC_KEYS)} "
            f"(e.g. {name}:path=/local/dir,dtype=fp16)"
        )


class CardFactory:
    """``factory(params) -> StableDiffusionAdapter`` for one built-in card."""

    def __init__(self, card: ModelCard, adapter: str = SD_ADAPTER) -> None:
        self.card = card
        self.adapter = adapter  # "module:Class" of the adapter (loaded on first use)

    def __repr__(self) -> str:
        return f"CardFactory({self.card.name!r})"

    def __call__(self, params: dict[str, Any] | None = None) -> Adapter:
        from memberbench.devices import parse_device, parse_dtype

        params = dict(params or {})
        _check_keys(self.card.name, params)
        # bad values fail here, before any weights are read
        params["dtype"] = parse_dtype(params.get("dtype"))
        params["device"] = parse_device(params.get("device"))
        card = self.card
        if params.get("resolution") not in (None, ""):
            card = with_changes(card, resolution=parse_resolution(card.name, params["resolution"]))
        return self.load(card, params)

    def load(self, card: ModelCard, params: dict[str, Any]) -> Adapter:
        """Load the weights for already-checked ``params``; cards of other worlds override it."""
        cls = load_class(self.adapter)
        path = params.get("path") or None
        revision = params.get("revision") or card.revision
        vae = params.get("vae", card.defaults.get("vae"))
        if isinstance(vae, str) and vae.lower() in ("", "none", "model"):
            vae = None
        if path:
            # a local copy: the hub revision says nothing about it; describe() records the
            # full-byte sha256 of its files instead
            card = with_changes(
                card,
                revision="local",
                notes=(card.notes + f" Loaded from local path {path}.").strip(),
            )
            return cls.from_pretrained(
                path, card, device=params.get("device"), dtype=params.get("dtype"), vae=vae
            )
        if revision != card.revision:
            card = with_changes(card, revision=revision)
        return cls.from_pretrained(
            card.repo_id,
            card,
            revision=revision,
            device=params.get("device"),
            dtype=params.get("dtype"),
            vae=vae,
        )


def load_class(entry: str) -> type:
    """The class of a ``"module:Class"`` entry."""
    import importlib

    mod, _, name = entry.partition(":")
    return getattr(importlib.import_module(mod), name)


def parse_resolution(model: str, raw: Any) -> int:
    """``resolution=`` of a model spec: a positive multiple of 8 pixels, else one line."""
    try:
        f = float(raw)
        ok = f.is_integer() and f >= 8 and int(f) % 8 == 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise MemberbenchError(
            f"model {model!r}: resolution={raw!r} is not valid; give the image side in pixels, "
            "a positive multiple of 8 (e.g. resolution=1024)"
        )
    return int(float(raw))


def with_changes(card: ModelCard, **changes: Any) -> ModelCard:
    """A copy of ``card`` with some fields replaced."""
    from dataclasses import replace

    return replace(card, **changes)


# The bundled model is an application on top of the library: its card and loader live in
# memberbench/bundled/card.py and are registered here by name only, imported on first use.
BUNDLED_ENTRY = "memberbench.bundled.card:FACTORY"
BUNDLED_FLOW_ENTRY = "memberbench.bundled.card:FLOW_FACTORY"  # the flow-matching transformer
LOCAL_ENTRY = "memberbench.adapters.local:FACTORY"


def register_builtin_cards() -> None:
    if "bundled" not in MODELS:
        MODELS.register("bundled", BUNDLED_ENTRY)
    if "bundled-flow" not in MODELS:
        MODELS.register("bundled-flow", BUNDLED_FLOW_ENTRY)
    for name, card in CARDS.items():
        if name not in MODELS:
            MODELS.register(name, CardFactory(card, ADAPTERS.get(name, SD_ADAPTER)))
    from memberbench.adapters import flux, sd3

    for name, factory in sd3.factories().items():  # flow-matching SD 3 / 3.5 (adapters/sd3.py)
        if name not in MODELS:
            MODELS.register(name, factory)
    for name, factory in flux.factories().items():  # guidance-distilled FLUX.1 (adapters/flux.py)
        if name not in MODELS:
            MODELS.register(name, factory)
    if "diffusers" not in MODELS:  # any local diffusers folder (memberbench/adapters/local.py)
        MODELS.register("diffusers", LOCAL_ENTRY)


register_builtin_cards()
