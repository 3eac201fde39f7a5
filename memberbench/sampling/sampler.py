"""The one traced sampling loop: CFG over any diffusers scheduler, with per-step scalar traces.

:class:`TracedSampler` reproduces ``StableDiffusionPipeline.__call__`` (one UNet call on the
concatenated ``[uncond, cond]`` batch, ``eps_u + g (eps_c - eps_u)``, ``scheduler.step``) over an
:class:`memberbench.adapters.base.Adapter`, and records at every step the scalar series named in
:mod:`memberbench.types` (float64, one value per sample and step), so a 50-step trace is a few
kilobytes.  Mitigations plug in through :class:`memberbench.sampling.hooks.StepHook`.

Conventions
-----------
* Initial noise: ``torch.randn(latent_shape, generator=torch.Generator("cpu").manual_seed(seed))``
  in fp32, per request, times ``scheduler.init_noise_sigma``; stochastic schedulers draw their
  step noise from the same per-request generator.  So a request gives the same image whatever
  batch, batch size or process it lands in.
* Latent states in traces (and in saved full latents) are in variance-preserving form
  ``sqrt(abar) x + sqrt(1 - abar) eps``: identical to the scheduler's latents for DDIM, DDPM, PNDM
  and DPM++; divided by ``sqrt(1 + sigma^2)`` for the Euler/Heun/LMS family.  ``x_T`` is state 0
  after the hooks' ``on_start``.
* The Tweedie estimate uses the scaled model input (the VP ``x_t``) and ``abar_t``.
* Guidance-distilled models sampled without true CFG (``adapter.has_unconditional`` False,
  FLUX): one conditional call per step, ``predict_velocity(x, t, cond, guidance=g)`` with g the
  request's guidance (after hooks) as the model's guidance input; the guided velocity is the
  conditional one and the unconditional series (``eps_u_*``, ``x0_u_*``, ``eps_diff_norm``,
  ``x0_diff_norm``) are NaN: there is no unconditional prediction to trace.
* Flow-matching models (``adapter.prediction == "flow"``, ``FlowMatch*`` schedulers): the adapter's
  ``predict_velocity`` gives ``v = eps - x0``; guidance is applied to v (as the SD3 pipeline
  does) and each branch is split into ``(eps_hat, x0_hat)`` by
  :meth:`memberbench.sampling.schedule.Schedule.split`.  States are traced as the scheduler holds
  them (``(1 - sigma) x0 + sigma eps``), ``abar_t``/``abar_next`` hold the VP-equivalent levels
  and the trace scalar ``flow_matching`` is 1.  Hooks that replace the CFG combination
  (``combine``) are refused for them; hooks that read the predictions (``observe``) get the
  velocities.
* Noise levels are exact for DDIM / DDPM / DPM++ and the sigma schedulers; for multi-stage
  schedulers (PNDM's repeated first timestep, Heun's two evaluations per step) each loop
  iteration is one "step" of the trace and ``abar_next`` is that of the next grid entry.
* A sample whose latent becomes NaN/inf gets ``status="failed"`` and ``failed_step`` = the index of
  the update that produced it (-1: the initial latent); the rest of the batch continues.
* Full latents (states 0..T, float32, VP form) go to ``record_latents_dir/<name>.npz`` (array
  ``latents``), one file per sample, only when ``record_latents_dir`` is set.
* Image-free decomposition: every trace (with or without a reference latent) holds
  ``latent_dot_final`` = <x_i, x_final> for the states i = 1..T and the scalars
  ``final_norm2`` = ||x_final||^2 and ``final_dot_xT`` = <x_final, x_T>, x_final being the
  trajectory's own last state (VP form, fp64).  x_final is only known after the last update,
  so the loop keeps the batch's states 1..T on the device in fp64 (B x T x d x 8 bytes, e.g.
  107 MB for 16 SD-1.x latents over 50 steps) and takes the dots at the end.  A failed
  sample has no final latent: its ``latent_dot_final`` is NaN throughout and both scalars NaN.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memberbench.sampling import schedulers as _sched
from memberbench.sampling import series as _series
from memberbench.sampling.hooks import SamplerState, StepHook, count_unet_evals
from memberbench.sampling.projection import decompose_batch
from memberbench.sampling.schedule import FLOW_SCALAR, Schedule
from memberbench.types import BRANCHES, GenerationRequest, MemberbenchError, Sample, Trace

# state.extra[HOOK_META_KEY] = {key: [one value per sample]}: copied into Sample.meta[key]
# (memberbench.mitigations.base.record_meta writes it)
HOOK_META_KEY = "meta"

# Bump whenever the sampler's numerics or trace contents change: it is part of the cache key.
SAMPLER_VERSION = "3"  # 2: latent_dot_final, final_norm2, final_dot_xT; 3: x0_diff_norm

# the per-step series, their kinds and which need a reference latent: memberbench/sampling/series.py
BASE_SERIES = _series.BASE_SERIES
REF_SERIES = _series.REF_SERIES


def _put(rec: torch.Tensor, packer: _series.Packer, kind: str, i: Any, vals: dict) -> None:
    """Write the (B,) values of one step's ``kind`` series into ``rec``, by name."""
    ks = packer.check(kind, vals)
    rows = [packer.col[k] for k in ks]
    rec[rows, i] = torch.stack([vals[k].to(rec.dtype) for k in ks])


def _settings_key(r: GenerationRequest) -> tuple:
    """Requests that can share one batch: same grid, scheduler, eta and size."""
    return (r.steps, r.scheduler, float(r.eta), r.height, r.width)


def batch_plan(requests: Sequence[GenerationRequest], batch_size: int) -> list[list[int]]:
    """Indices of ``requests`` grouped into batches of compatible settings, in first-seen order."""
    if batch_size < 1:
        raise MemberbenchError(f"batch_size must be a positive integer, got {batch_size!r}")
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(_settings_key(r), []).append(i)
    plan = []
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            plan.append(idx[s : s + batch_size])
    return plan


def initial_noise(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Generator]:
    """The fp32 CPU standard-normal noise of a seed (unscaled) and its advanced generator."""
    g = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32), g


def _latent_shape(adapter: Any, r: GenerationRequest) -> tuple[int, int, int]:
    if r.height is None and r.width is None:
        return tuple(adapter.latent_shape)
    fn = getattr(adapter, "latent_shape_for", None)
    if fn is None:
        raise MemberbenchError(
            f"model {adapter.name!r} supports only its native resolution; leave height/width unset"
        )
    return tuple(fn(r.height, r.width))


def _jsonable(v: Any) -> Any:
    if torch.is_tensor(v):
        v = v.detach().cpu()
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    from memberbench.io import atomic_open

    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


class TracedSampler:
    """Sample requests with classifier-free guidance and record per-step traces.

    ``hooks``: :class:`StepHook` objects, called in order (see :mod:`memberbench.sampling.hooks`;
    for ``combine`` the first hook returning a tensor decides).  ``dtype``: dtype of the latents
    in the loop (default: the adapter's); the UNet input is cast to the UNet's dtype.
    The loop runs under ``torch.no_grad()``: hooks that need gradients use ``torch.enable_grad()``.
    """

    def __init__(
        self,
        adapter: Any,
        *,
        hooks: Sequence[StepHook] = (),
        record_latents_dir: str | os.PathLike | None = None,
        batch_size: int = 16,
        dtype: Any = None,
    ) -> None:
        self.adapter = adapter
        self.hooks = list(hooks)
        self.record_latents_dir = Path(record_latents_dir) if record_latents_dir else None
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise MemberbenchError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        if dtype is None:
            self.dtype = getattr(adapter, "dtype", torch.float32)
        else:
            from memberbench.devices import parse_dtype

            self.dtype = parse_dtype(dtype)

    # ------------------------------------------------------------------------------------------
    def sample(
        self,
        requests: Sequence[GenerationRequest],
        references: Sequence[torch.Tensor | np.ndarray | None] | None = None,
        *,
        latent_names: Sequence[str] | None = None,
    ) -> list[Sample]:
        """Generate every request; returns one :class:`Sample` per request, in order.

        ``references``: per request, the training latent x (C, h, w) or None; with it the trace
        holds the series that need x.  ``latent_names``: file stems for the full latents
        (default ``<request key>-<adapter fingerprint[:8]>``).
        """
        requests = list(requests)
        n = len(requests)
        if references is not None and len(references) != n:
            raise MemberbenchError(
                f"got {len(references)} references for {n} requests; pass one per request "
                "(None where there is no training image)"
            )
        if latent_names is not None and len(latent_names) != n:
            raise MemberbenchError(f"got {len(latent_names)} latent names for {n} requests")
        out: list[Sample | None] = [None] * n
        for idx in batch_plan(requests, self.batch_size):
            reqs = [requests[i] for i in idx]
            refs = [references[i] for i in idx] if references is not None else [None] * len(idx)
            names = [latent_names[i] for i in idx] if latent_names is not None else None
            for i, s in zip(idx, self._sample_batch(reqs, refs, names)):
                out[i] = s
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _sample_batch(
        self,
        reqs: list[GenerationRequest],
        refs: list[Any],
        names: list[str] | None,
    ) -> list[Sample]:
        t_start = time.perf_counter()
        adapter = self.adapter
        dev = torch.device(getattr(adapter, "device", "cpu"))
        dt = self.dtype
        B = len(reqs)
        r0 = reqs[0]
        shape = _latent_shape(adapter, r0)
        d = int(np.prod(shape))

        sched = adapter.make_scheduler(r0.scheduler)
        sched.set_timesteps(r0.steps, device=dev)
        timesteps = sched.timesteps
        T = len(timesteps)
        schedule = Schedule.from_scheduler(sched)
        flow = schedule.family == "flow"
        prediction = getattr(adapter, "prediction", "epsilon")
        # a guidance-distilled model sampled without true CFG (FLUX): no unconditional branch
        distilled = not getattr(adapter, "has_unconditional", True)
        if distilled and prediction != "flow":
            raise MemberbenchError(
                f"model {adapter.name!r} has no unconditional branch; the traced sampler runs "
                "single-branch sampling for flow-matching (velocity) models only"
            )
        if (prediction == "flow") != flow:
            raise MemberbenchError(
                f"model {adapter.name!r} predicts {prediction!r} but scheduler "
                f"{type(sched).__name__} is {'' if flow else 'not '}a flow-matching one; use "
                "the model's own scheduler"
            )
        abar_t, abar_next = (torch.from_numpy(v) for v in schedule.abar_equivalent())
        # flow-matching states are kept as the scheduler holds them: x = (1 - sigma) x0 + sigma eps
        vp0, vp_next = (
            (1.0, torch.ones(T, dtype=torch.float64)) if flow else _sched.vp_scales(sched)
        )

        # --- initial noise, per request -----------------------------------------------------
        noises, gens = [], []
        for r in reqs:
            z, g = initial_noise(r.seed, shape)
            noises.append(z)
            gens.append(g)
        kw = _sched.step_kwargs(sched, float(r0.eta), gens)
        latents = torch.stack(noises).to(dev, dt) * getattr(sched, "init_noise_sigma", 1.0)

        # --- text embeddings ------------------------------------------------------------------
        texts = list(dict.fromkeys([r.prompt for r in reqs] + [r.negative_prompt for r in reqs]))
        emb_all = adapter.encode_prompts(texts)
        pos = {s: k for k, s in enumerate(texts)}
        cond = emb_all[[pos[r.prompt] for r in reqs]]
        uncond = emb_all[[pos[r.negative_prompt] for r in reqs]]

        state = SamplerState(
            requests=reqs,
            adapter=adapter,
            scheduler=sched,
            timesteps=timesteps,
            latents=latents,
            cond_embeds=cond,
            uncond_embeds=uncond,
            guidance=torch.tensor([r.guidance for r in reqs], dtype=torch.float32, device=dev),
            unet_evals=torch.zeros(B, dtype=torch.long),
        )
        for h in self.hooks:
            h.on_start(state)
        latents = state.latents

        # --- reference latents ----------------------------------------------------------------
        has_ref = np.array([r is not None for r in refs], dtype=bool)
        X = None
        if has_ref.any():
            rows = []
            for r, ref in zip(reqs, refs):
                if ref is None:
                    rows.append(torch.zeros(d, dtype=torch.float64))
                    continue
                tr = torch.as_tensor(np.asarray(ref) if not torch.is_tensor(ref) else ref)
                if tr.numel() != d:
                    raise MemberbenchError(
                        f"reference latent for prompt {r.prompt[:40]!r} has shape "
                        f"{tuple(tr.shape)}; the model's latents are {shape}"
                    )
                rows.append(tr.detach().to("cpu", torch.float64).reshape(d))
            X = torch.stack(rows).to(dev)

        # --- trace buffers ----------------------------------------------------------------------
        packer = _series.Packer(with_reference=X is not None)
        col = packer.col
        rec = torch.full((len(packer.names), T, B), float("nan"), dtype=torch.float64, device=dev)
        _put(
            rec,
            packer,
            "schedule",
            slice(None),
            {
                "timestep": torch.as_tensor(
                    [float(t) for t in timesteps], dtype=torch.float64, device=dev
                )[:, None].expand(T, B),
                "abar_t": abar_t.to(dev, torch.float64)[:, None].expand(T, B),
                "abar_next": abar_next.to(dev, torch.float64)[:, None].expand(T, B),
            },
        )

        xT = (latents.to(torch.float64) * vp0).reshape(B, d)
        # states 1..T of the batch (VP form, fp64), for the dots with the final state
        states = torch.zeros((B, T, d), dtype=torch.float64, device=dev)

        alive = torch.isfinite(xT).all(1)
        failed_step = [None if bool(a) else -1 for a in alive.tolist()]
        if not bool(alive.all()):
            latents = torch.where(alive.view(-1, 1, 1, 1), latents, torch.zeros_like(latents))
            xT = torch.where(alive.view(-1, 1), xT, torch.zeros_like(xT))

        basis = torch.stack([xT] if X is None else [xT, X], 2)  # (B, d, 1|2): columns x_T (, x)
        x_norm2 = (X * X).sum(1) if X is not None else None
        unet_dtype = getattr(getattr(adapter, "unet", None), "dtype", dt)
        for i, t in enumerate(timesteps):
            state.step = i
            if distilled:  # one conditional call; g is the model's guidance input, not CFG's
                g = state.guidance
                for h in self.hooks:
                    g = h.guidance(state, i, t, g)
                g = torch.as_tensor(g, device=dev, dtype=torch.float32)
                if g.ndim == 0:
                    g = g.expand(B)
                inp = latents
                if hasattr(sched, "scale_model_input"):
                    inp = sched.scale_model_input(inp, t)
                v_c = adapter.predict_velocity(inp.to(unet_dtype), t, state.cond_embeds, guidance=g)
                v_u = torch.full_like(v_c, float("nan"))  # no unconditional branch exists
                eps = v_c
                count_unet_evals(state, alive.to(torch.long))
            else:
                emb = torch.cat([state.uncond_embeds, state.cond_embeds])
                inp = torch.cat([latents] * 2)
                if hasattr(sched, "scale_model_input"):
                    inp = sched.scale_model_input(inp, t)
                if flow:  # velocity v = eps - x0, guided in v as the pipelines do
                    out = adapter.predict_velocity(inp.to(unet_dtype), t, emb)
                    v_u, v_c = out.chunk(2)
                    eps_u, _ = schedule.split(latents, v_u.to(latents.dtype), i, "flow")
                    eps_c, _ = schedule.split(latents, v_c.to(latents.dtype), i, "flow")
                    eps = out
                else:
                    eps = adapter.predict_noise(inp.to(unet_dtype), t, emb)
                    eps_u, eps_c = eps.chunk(2)
                count_unet_evals(state, 2 * alive.to(torch.long))
                for h in self.hooks:  # the model's own predictions: velocity for flow models
                    h.observe(state, i, t, *((v_u, v_c) if flow else (eps_u, eps_c)))

                g = state.guidance
                for h in self.hooks:
                    g = h.guidance(state, i, t, g)
                g = torch.as_tensor(g, device=eps.device, dtype=torch.float32)
                if g.ndim == 0:
                    g = g.expand(B)
            eps_g = None
            for h in self.hooks if not distilled else ():
                eps_g = h.combine(state, i, t, eps_u, eps_c, g)
                if eps_g is not None:
                    break
            if eps_g is not None and flow:
                raise MemberbenchError(
                    f"{type(h).__name__} combines epsilon predictions; it does not support "
                    f"flow-matching models such as {adapter.name!r}"
                )
            gv = g.to(eps.dtype).view(-1, *([1] * (eps.ndim - 1)))
            if distilled:
                v_g = v_c
            elif flow:
                v_g = v_u + gv * (v_c - v_u)
                eps_g, _ = schedule.split(latents, v_g.to(latents.dtype), i, "flow")
            elif eps_g is None:
                eps_g = eps_u + gv * (eps_c - eps_u)

            # per-step scalars of the predictions (fp64), one batched product for all dots
            if flow:  # from the velocities, without dividing by a = 1 - sigma (0 at sigma = 1)
                xin = latents.to(torch.float64).reshape(B, 1, d)
                P = torch.stack([v_u, v_c, v_g], 1).to(torch.float64).reshape(B, 3, d)
                E, X0 = schedule.split(xin, P, i, "flow")
            else:
                xin = inp[:B].to(torch.float64).reshape(B, 1, d)
                E = torch.stack([eps_u, eps_c, eps_g], 1).to(torch.float64).reshape(B, 3, d)
                E, X0 = schedule.split(xin, E, i)
            V = torch.cat([E, X0], 1)  # eps_b, x0_hat_b
            dots = torch.bmm(V, basis)  # (B, 6, 1 or 2): <., x_T> (and <., x>)
            sq = V.pow(2).sum(2)  # (B, 6)
            pv = {
                "guidance": g.to(torch.float64),
                "eps_diff_norm": (E[:, 1] - E[:, 0]).norm(dim=1),
                "x0_diff_norm": (X0[:, 1] - X0[:, 0]).norm(dim=1),
            }
            for j, br in enumerate(BRANCHES):
                pv[f"eps_{br}_norm"] = sq[:, j].sqrt()
                pv[f"eps_{br}_dot_xT"] = dots[:, j, 0]
                pv[f"x0_{br}_norm"] = sq[:, 3 + j].sqrt()
            if X is not None:  # ||x - x0_hat||^2 = ||x0_hat||^2 - 2 <x0_hat, x> + ||x||^2
                err = (sq[:, 3:] - 2.0 * dots[:, 3:, 1] + x_norm2[:, None]).clamp_min(0.0)
                for j, br in enumerate(BRANCHES):
                    pv[f"eps_{br}_dot_x"] = dots[:, j, 1]
                    pv[f"x0_{br}_dot_x"] = dots[:, 3 + j, 1]
                    pv[f"x0_{br}_err"] = err[:, j]
            _put(rec, packer, "prediction", i, pv)

            model_out = v_g if flow else eps_g
            latents = sched.step(model_out.to(latents.dtype), t, latents, **kw, return_dict=False)[
                0
            ]
            state.latents = latents
            for h in self.hooks:
                h.after_step(state, i, t)
            latents = state.latents

            # state i+1 (the output of update i), VP form
            L = latents.to(torch.float64).reshape(B, d) * float(vp_next[i])
            fin = torch.isfinite(L).all(1)
            newly = alive & ~fin
            if bool(newly.any()):
                for b in torch.nonzero(newly).flatten().tolist():
                    failed_step[b] = i
                alive = alive & fin
                keep = alive.view(-1, 1, 1, 1)
                latents = torch.where(keep, latents, torch.zeros_like(latents))
                state.latents = latents
                L = torch.where(alive.view(-1, 1), L, torch.zeros_like(L))
            ldots = torch.bmm(L[:, None, :], basis)[:, 0]  # (B, 1 or 2)
            sv = {"latent_norm": L.pow(2).sum(1).sqrt(), "latent_dot_xT": ldots[:, 0]}
            if X is not None:
                w0, wT, rr = decompose_batch(L, X, xT)
                sv.update(
                    latent_dot_x=ldots[:, 1], w0=w0.to(dev), wT=wT.to(dev), resid_rms=rr.to(dev)
                )
            _put(rec, packer, "state", i, sv)
            states[:, i] = L

        # --- the final-latent basis: <x_i, x_final>, ||x_final||^2, <x_final, x_T> ------------
        x_fin = states[:, -1]
        final_dots = torch.bmm(states, x_fin[:, :, None])[:, :, 0].T  # (T, B)
        _put(rec, packer, "final", slice(None), {"latent_dot_final": final_dots})
        scal_fin2 = (x_fin * x_fin).sum(1).cpu().numpy()
        scal_finxT = (x_fin * xT).sum(1).cpu().numpy()
        full = None
        if self.record_latents_dir is not None:
            full = np.empty((B, T + 1, *shape), dtype=np.float32)
            full[:, 0] = xT.reshape(B, *shape).float().cpu().numpy()
            full[:, 1:] = states.reshape(B, T, *shape).float().cpu().numpy()
        del states, x_fin

        # --- outputs ----------------------------------------------------------------------------
        ok = [fs is None for fs in failed_step]
        ok_idx = [b for b in range(B) if ok[b]]
        images = adapter.decode(latents[ok_idx]) if ok_idx else None
        final = latents.to(torch.float32).cpu().numpy()
        rec_np = rec.cpu().numpy()
        scal_xT = (xT * xT).sum(1).cpu().numpy()
        if X is not None:
            scal_x = (X * X).sum(1).cpu().numpy()
            scal_xxT = (X * xT).sum(1).cpu().numpy()
        wall = (time.perf_counter() - t_start) / B
        evals = (
            state.unet_evals.detach().cpu().tolist() if state.unet_evals is not None else [0] * B
        )
        hook_meta = state.extra.get(HOOK_META_KEY) or {}
        samples = []
        img_pos = {b: k for k, b in enumerate(ok_idx)}
        for b, r in enumerate(reqs):
            series_names = BASE_SERIES if not has_ref[b] else packer.names
            series = {k: rec_np[col[k], :, b].copy() for k in series_names}
            scalars = {
                "xT_norm2": float(scal_xT[b]),
                "final_norm2": float(scal_fin2[b]),
                "final_dot_xT": float(scal_finxT[b]),
                "dim": float(d),
            }
            if flow:
                scalars[FLOW_SCALAR] = 1.0
            if has_ref[b]:
                scalars["x_norm2"] = float(scal_x[b])
                scalars["x_dot_xT"] = float(scal_xxT[b])
            fs = failed_step[b]
            if fs is not None:  # nothing from the failure on is meaningful
                scalars["final_norm2"] = scalars["final_dot_xT"] = float("nan")
                for k in series:
                    cut = _series.masked_from(_series.BY_NAME[k].kind, fs)
                    if cut is not None:
                        series[k][cut] = np.nan
            trace = Trace(series=series, scalars=scalars)
            if full is not None:
                self.record_latents_dir.mkdir(parents=True, exist_ok=True)
                stem = names[b] if names else f"{r.key()}-{adapter.fingerprint()[:8]}"
                path = self.record_latents_dir / f"{stem}.npz"
                _atomic_savez(path, latents=full[b])
                trace.latents_path = str(path)
            samples.append(
                Sample(
                    request=r,
                    image=images[img_pos[b]] if ok[b] else None,
                    trace=trace,
                    final_latent=final[b] if ok[b] else None,
                    status="ok" if ok[b] else "failed",
                    failed_step=fs,
                    error=None
                    if ok[b]
                    else (
                        f"non-finite latent after update {fs} of {T}"
                        if fs >= 0
                        else "non-finite initial latent"
                    ),
                    unet_evals=int(evals[b]),
                    wall_time_s=wall,
                    meta={
                        "scheduler": type(sched).__name__,
                        "num_updates": T,
                        "sampler_version": SAMPLER_VERSION,
                        "batch_size": B,
                        "hooks": [type(h).__name__ for h in self.hooks],
                        **{k: _jsonable(v[b]) for k, v in hook_meta.items()},
                    },
                )
            )
        return samples
