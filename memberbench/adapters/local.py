"""``--model diffusers:path=DIR``: any local diffusers pipeline folder of a known architecture.

The pipeline class is read from ``DIR/model_index.json`` (``_class_name``) and mapped to an
adapter through :data:`PIPELINES`; an unknown class, a folder without ``model_index.json`` or a
folder missing a component the adapter needs is one line naming what was looked for.  The card
of such a model is built from the folder: ``repo_id`` is the folder, ``revision`` is ``"local"``
(the adapter's ``describe()`` records the full-byte sha256 of every weight file as
``weights_sha256``), the resolution is the denoiser's ``sample_size`` times the VAE's scale
factor unless ``resolution=`` overrides it, and the prediction type is the shipped scheduler's.

Keys: ``path`` (required), ``resolution``, ``dtype``, ``device``, ``vae``; for a FLUX folder also
``true_cfg`` and ``guidance_embed`` (:mod:`memberbench.adapters.flux`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memberbench.adapters.base import Adapter, ModelCard
from memberbench.adapters.cards import load_class, parse_resolution
from memberbench.types import MemberbenchError

# diffusers pipeline class -> the adapter that implements it ("module:Class")
PIPELINES: dict[str, str] = {
    "StableDiffusionPipeline": "memberbench.adapters.stable_diffusion:StableDiffusionAdapter",
    "StableDiffusionXLPipeline": "memberbench.adapters.sdxl:SDXLAdapter",
    "PixArtAlphaPipeline": "memberbench.adapters.pixart:PixArtAdapter",
    "PixArtSigmaPipeline": "memberbench.adapters.pixart:PixArtAdapter",
    "StableDiffusion3Pipeline": "memberbench.adapters.sd3:SD3Adapter",
    "FluxPipeline": "memberbench.adapters.flux:FluxAdapter",
}

KEYS = ("path", "resolution", "dtype", "device", "vae", "true_cfg", "guidance_embed")
# keys only some adapters take (the adapter class lists them in EXTRA_KEYS)
ADAPTER_KEYS = ("true_cfg", "guidance_embed")


def read_model_index(path: str | Path) -> dict[str, Any]:
    """``model_index.json`` of a pipeline folder, or one line saying what is wrong."""
    root = Path(str(path)).expanduser()
    if not root.is_dir():
        raise MemberbenchError(
            f"--model diffusers:path={path}: no such folder; point path= at a diffusers pipeline "
            "folder (the one holding model_index.json)"
        )
    f = root / "model_index.json"
    if not f.is_file():
        raise MemberbenchError(
            f"{root} is not a diffusers pipeline folder (no model_index.json); point path= at "
            "the folder written by save_pretrained (model_index.json, unet/ or transformer/, vae/, "
            "text_encoder/, tokenizer/, scheduler/)"
        )
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MemberbenchError(f"cannot read {f}: {e}") from None
    if not isinstance(doc, dict):
        raise MemberbenchError(f"{f} is not a JSON object")
    return doc


def adapter_class(pipeline_class: str, where: str) -> type:
    """The adapter class of a diffusers pipeline class name (unknown: one line, the known)."""
    if pipeline_class not in PIPELINES:
        raise MemberbenchError(
            f"{where}: pipeline class {pipeline_class!r} (model_index.json _class_name) is not "
            f"one memberbench knows; known: {', '.join(sorted(PIPELINES))}"
        )
    return load_class(PIPELINES[pipeline_class])


def check_components(root: Path, index: dict[str, Any], needed: tuple[str, ...]) -> None:
    """Every component the adapter needs is listed in model_index.json and has its folder."""
    for comp in needed:
        entry = index.get(comp)
        listed = isinstance(entry, list) and len(entry) == 2 and entry[1] is not None
        if not listed or not (root / comp).is_dir():
            what = f" ({entry[0]} {entry[1]})" if listed else ""
            raise MemberbenchError(
                f"pipeline folder {root} has no component {comp!r}{what}: "
                f"{'model_index.json does not list it' if not listed else f'no {comp}/ folder'}; "
                f"a {index.get('_class_name')} folder needs {', '.join(needed)} "
                "(save the whole pipeline with save_pretrained)"
            )


class LocalFolderFactory:
    """``factory(params) -> Adapter`` for ``--model diffusers:path=DIR``."""

    card = None  # the card comes from the folder (see the module docstring)

    def __repr__(self) -> str:
        return "LocalFolderFactory()"

    def __call__(self, params: dict[str, Any] | None = None) -> Adapter:
        from memberbench.devices import parse_device, parse_dtype

        params = dict(params or {})
        unknown = sorted(set(params) - set(KEYS))
        if unknown:
            raise MemberbenchError(
                f"model 'diffusers' has no parameter {unknown[0]!r}; allowed: {', '.join(KEYS)} "
                "(e.g. diffusers:path=/local/dir,resolution=512)"
            )
        path = params.get("path")
        if not path:
            raise MemberbenchError(
                "model 'diffusers' needs path=: --model diffusers:path=/a/pipeline/folder"
            )
        dtype = parse_dtype(params.get("dtype"))
        device = parse_device(params.get("device"))
        res = params.get("resolution")
        resolution = parse_resolution("diffusers", res) if res not in (None, "") else None
        root = Path(str(path)).expanduser()
        index = read_model_index(root)
        cls_name = str(index.get("_class_name"))
        cls = adapter_class(cls_name, str(root))
        check_components(root, index, tuple(cls.COMPONENTS))
        vae = params.get("vae") or None
        extra = _adapter_params(cls, cls_name, params)
        adapter = cls.from_pretrained(root, None, device=device, dtype=dtype, vae=vae, **extra)
        native = adapter.card.resolution  # from the denoiser's sample_size
        adapter.card = ModelCard(
            name="diffusers",
            repo_id=str(root),
            revision="local",
            resolution=resolution or native,
            prediction_type=adapter.prediction_type,
            guidance_distilled=bool(getattr(adapter.card, "guidance_distilled", False)),
            notes=(
                f"Local {cls_name} folder {root} (adapter {cls.__name__}, native resolution "
                f"{native} px); weights identified by weights_sha256."
            ),
        )
        return adapter


def _adapter_params(cls: type, cls_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The adapter-specific keys of the spec (``true_cfg=``, ``guidance_embed=``: FLUX only)."""
    given = [k for k in ADAPTER_KEYS if params.get(k) not in (None, "")]
    if not given:
        return {}
    if cls_name != "FluxPipeline":
        raise MemberbenchError(
            f"model 'diffusers': {given[0]}= applies to FLUX folders only; this folder holds a "
            f"{cls_name} (leave {given[0]}= out)"
        )
    from memberbench.adapters.flux import parse_guidance_embed, parse_true_cfg

    return {
        "true_cfg": parse_true_cfg("diffusers", params.get("true_cfg")),
        "guidance_embed": parse_guidance_embed("diffusers", params.get("guidance_embed")),
    }


FACTORY = LocalFolderFactory()
