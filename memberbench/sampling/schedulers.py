"""Scheduler names, construction from a model's training schedule, and noise-level bookkeeping.

memberbench drives every scheduler only through diffusers' public API (``set_timesteps``,
``timesteps``, ``scale_model_input``, ``step``).  Adapters always return epsilon predictions, so
every scheduler made here is configured with ``prediction_type="epsilon"``.

Noise levels: for the traces we need ``abar`` (alphas_cumprod) of the timestep each UNet call is
evaluated at and of the state each update produces.  DDIM-like schedulers (DDIM, DDPM, PNDM) work
on the variance-preserving (VP) latent ``x_t = sqrt(abar) x + sqrt(1 - abar) eps`` and index
``alphas_cumprod`` by integer timestep.  Sigma schedulers (Euler, Heun, LMS, DPM++) carry
``sigmas`` with ``abar = 1 / (1 + sigma^2)``; the "VE" ones among them (``init_noise_sigma > 1``)
keep the latent as ``x + sigma eps`` and the trace rescales it to VP form by ``1/sqrt(1+sigma^2)``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from memberbench.types import MemberbenchError

# short name -> (diffusers class name, config overrides)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
}
DEFAULT_SCHEDULER = "ddim"

# keys of a scheduler config that describe the training noise schedule (kept from the model)
_SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "steps_offset",
    "set_alpha_to_one",
    "clip_sample",
    "timestep_spacing",
    "rescale_betas_zero_snr",
)


def allowed_names() -> str:
    return (
        ", ".join(SCHEDULERS)
        + " or a diffusers scheduler class name (e.g. UniPCMultistepScheduler)"
    )


def _scheduler_class(cls_name: str):
    import diffusers

    cls = getattr(diffusers, cls_name, None)
    if cls is None or not isinstance(cls, type) or not hasattr(cls, "set_timesteps"):
        return None
    if not hasattr(cls, "step"):
        return None
    return cls


def resolve_scheduler_name(name: str) -> tuple[str, dict[str, Any]]:
    """Short name or class name -> (diffusers class name, overrides).  Raises a one-line
    MemberbenchError listing the allowed names for anything else."""
    if not isinstance(name, str) or not name.strip():
        raise MemberbenchError(f"scheduler must be one of {allowed_names()}; got {name!r}")
    key = name.strip()
    if key.lower() in SCHEDULERS:
        return SCHEDULERS[key.lower()]
    if key.endswith("Scheduler") and key.isidentifier() and _scheduler_class(key) is not None:
        for cls_name, overrides in SCHEDULERS.values():  # same defaults as its short name
            if cls_name == key:
                return key, overrides
        return key, {}
    raise MemberbenchError(f"unknown scheduler {name!r}; allowed: {allowed_names()}")


def check_scheduler_name(name: str) -> str:
    """Validate a scheduler name without building anything; returns it unchanged."""
    resolve_scheduler_name(name)
    return name


def make_scheduler(base_config: dict[str, Any], name: str = DEFAULT_SCHEDULER):
    """A fresh diffusers scheduler ``name`` with the training schedule of ``base_config``.

    Only keys the class accepts are passed (no "config attributes ... will be ignored" warnings);
    ``prediction_type`` is always ``epsilon`` because adapters predict epsilon.
    """
    cls_name, overrides = resolve_scheduler_name(name)
    cls = _scheduler_class(cls_name)
    if cls is None:  # pragma: no cover - SCHEDULERS only names real classes
        raise MemberbenchError(f"diffusers has no scheduler class {cls_name!r}")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    cfg = {k: v for k, v in base_config.items() if not k.startswith("_") and k in accepted}
    if base_config.get("_class_name") != cls_name:
        # another class: keep the training schedule only, not the other sampler's options
        cfg = {k: v for k, v in cfg.items() if k in _SCHEDULE_KEYS}
    cfg.update({k: v for k, v in overrides.items() if k in accepted})
    if "prediction_type" in accepted:
        cfg["prediction_type"] = "epsilon"
    return cls(**cfg)


def step_kwargs(scheduler, eta: float, generators: list[torch.Generator] | None) -> dict[str, Any]:
    """The extra ``scheduler.step`` arguments the pipeline passes (eta, generator) where accepted."""
    params = set(inspect.signature(scheduler.step).parameters)
    kw: dict[str, Any] = {}
    if "eta" in params:
        kw["eta"] = eta
    if "generator" in params and generators is not None:
        kw["generator"] = generators
    return kw


def is_sigma_scheduler(scheduler) -> bool:
    sig = getattr(scheduler, "sigmas", None)
    return torch.is_tensor(sig) and sig.numel() >= len(scheduler.timesteps)


def is_ve_scheduler(scheduler) -> bool:
    """True for schedulers that keep the latent as ``x + sigma eps`` (Euler, Heun, LMS, ...)."""
    return is_sigma_scheduler(scheduler) and float(scheduler.init_noise_sigma) > 1.0 + 1e-6


def noise_levels(scheduler) -> tuple[torch.Tensor, torch.Tensor]:
    """``(abar_t, abar_next)`` as float64 tensors of length ``len(scheduler.timesteps)``.

    ``abar_t[i]``: noise level the UNet sees at update i; ``abar_next[i]``: noise level of the
    state update i produces (the next timestep's; ``final_alpha_cumprod`` -- or 1 where the
    scheduler ends at sigma 0 -- for the last update).
    """
    ts = scheduler.timesteps
    n = len(ts)
    if is_sigma_scheduler(scheduler):
        sig = scheduler.sigmas.detach().to("cpu", torch.float64)
        ab = 1.0 / (1.0 + sig**2)
        return ab[:n].clone(), ab[1 : n + 1].clone()
    ac = scheduler.alphas_cumprod.detach().to("cpu", torch.float64)
    final = getattr(scheduler, "final_alpha_cumprod", None)
    final = float(final) if final is not None else 1.0
    idx = [int(round(float(t))) for t in ts]
    abar_t = ac[idx]
    nxt = []
    num_inf = getattr(scheduler, "num_inference_steps", None) or n
    stride = scheduler.config.num_train_timesteps // num_inf
    ddim_like = type(scheduler).__name__ in ("DDIMScheduler", "DDIMInverseScheduler")
    for i, t in enumerate(idx):
        if ddim_like:  # exactly DDIM's prev_timestep rule
            prev = t - stride
        else:
            prev = idx[i + 1] if i + 1 < n else -1
        nxt.append(float(ac[prev]) if prev >= 0 else final)
    return abar_t, torch.tensor(nxt, dtype=torch.float64)


def vp_scales(scheduler) -> tuple[float, torch.Tensor]:
    """Factors that turn the scheduler's latents into VP form: ``(state0, states 1..T)``."""
    n = len(scheduler.timesteps)
    if not is_ve_scheduler(scheduler):
        return 1.0, torch.ones(n, dtype=torch.float64)
    sig = scheduler.sigmas.detach().to("cpu", torch.float64)
    s = 1.0 / torch.sqrt(1.0 + sig**2)
    return float(s[0]), s[1 : n + 1].clone()
