"""Model adapters: the contract (base.py), the SD-family adapter, built-in cards, and loading.

``load_adapter("sd-1.4:path=/models/sd14,dtype=fp16")`` resolves a model spec
``name:key=value,...`` through :data:`memberbench.registry.MODELS` (built-in cards and the
``memberbench.models`` entry-point group) and returns a ready :class:`Adapter`.

Keys of the built-in cards: ``path`` (a local pipeline folder), ``revision``, ``dtype``
(fp32/fp16/bf16), ``device`` (cpu, cuda, cuda:N, mps), ``vae`` (a VAE repo or folder that
replaces the pipeline's).  Out-of-tree entries are either a factory ``build(params) -> Adapter``
or an :class:`Adapter` subclass (built with ``cls.from_params(params)`` if it has one, else
``cls(**params)``); they receive the spec's parameters as strings, plus ``device`` / ``dtype``
when the caller passed them.
"""

from __future__ import annotations

from typing import Any

from memberbench.adapters.base import Adapter, ModelCard, tensor_fingerprint
from memberbench.registry import MODELS, parse_spec
from memberbench.types import MemberbenchError

__all__ = [
    "Adapter",
    "ModelCard",
    "tensor_fingerprint",
    "load_adapter",
    "model_card",
    "check_model_spec",
    "StableDiffusionAdapter",
]

DEFAULT_MODEL = "bundled"


def _ensure_builtin() -> None:
    import memberbench.adapters.cards  # noqa: F401  (registers the built-in cards)


def check_model_spec(spec: str) -> str:
    """The model name of ``spec`` if it is registered; else the "did you mean" error. Loads
    nothing."""
    _ensure_builtin()
    name, _ = parse_spec(spec or DEFAULT_MODEL)
    if name not in MODELS:
        raise MODELS.unknown(name)
    return name


def model_card(spec: str) -> ModelCard | None:
    """The card of a model spec without loading weights (None for out-of-tree factories)."""
    _ensure_builtin()
    name, _ = parse_spec(spec)
    obj = MODELS.get(name)
    return getattr(obj, "card", None)


def load_adapter(spec: str = DEFAULT_MODEL, *, device: Any = None, dtype: Any = None) -> Adapter:
    """Build the adapter named by ``spec`` (``name`` or ``name:key=value,...``).

    ``device`` / ``dtype`` arguments override the spec's ``device=`` / ``dtype=`` keys.
    """
    _ensure_builtin()
    name, params = parse_spec(spec or DEFAULT_MODEL)
    obj = MODELS.get(name)  # unknown names: "did you mean ..." + the known ones
    p: dict[str, Any] = dict(params)
    if device is not None:
        p["device"] = device
    if dtype is not None:
        p["dtype"] = dtype
    if isinstance(obj, type) and issubclass(obj, Adapter):
        build = getattr(obj, "from_params", None)
        adapter = build(p) if callable(build) else obj(**p)
    elif callable(obj):
        adapter = obj(p)
    else:
        raise MemberbenchError(
            f"model {name!r} is registered as {obj!r}, which is neither a factory "
            "build(params) -> Adapter nor an Adapter subclass"
        )
    if not isinstance(adapter, Adapter):
        raise MemberbenchError(
            f"model {name!r}: its factory returned {type(adapter).__name__}, not an Adapter"
        )
    return adapter


def __getattr__(name: str) -> Any:  # lazy: importing the package does not import diffusers
    if name == "StableDiffusionAdapter":
        from memberbench.adapters.stable_diffusion import StableDiffusionAdapter

        return StableDiffusionAdapter
    raise AttributeError(name)
