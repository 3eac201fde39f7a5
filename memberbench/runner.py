"""Run generation: mitigation plumbing, the cache, batching and sharding around the sampler.

:func:`run_generation` is what the pytest tasks, the mitigations and ``memberbench generate`` call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import uuid
from collections.abc import Sequence
from typing import Any

from memberbench.types import GenerationRequest, MemberbenchError, Sample


def resolve_mitigation(spec: Any) -> Any:
    """A mitigation object from a spec ``name:key=value,...``, or None for no mitigation.

    None, "", "none" and the ``none`` method itself all give None, so plain sampling shares cache
    entries whichever way it was asked for.  Objects are returned unchanged otherwise.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none")):
        return None
    if isinstance(spec, str):
        from memberbench.mitigations import build_mitigation

        spec = build_mitigation(spec)
    if getattr(spec, "name", None) == "none" and not list(spec.hooks()):
        return None
    return spec


def shard_indices(n: int, rank: int, world_size: int) -> range:
    """Contiguous, disjoint, near-equal slice ``rank`` of ``range(n)`` over ``world_size``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise MemberbenchError(f"bad shard: rank {rank} of world size {world_size}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def shard(requests: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """The requests process ``rank`` of ``world_size`` generates (disjoint; union = all)."""
    return [requests[i] for i in shard_indices(len(requests), rank, world_size)]


def shard_batches(
    plan: Sequence[Sequence[int]], rank: int, world_size: int, offset: int = 0
) -> list[list[int]]:
    """The batches of ``plan`` that process ``rank`` of ``world_size`` generates: batch ``b``
    goes to rank ``(b + offset) % world_size`` (disjoint; their union is the plan; ``offset``
    carries the turn on across calls).  Sharding batches, not requests, keeps each sample in the
    batch it has in one process, so the sample and its cache key do not depend on the number of
    processes."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise MemberbenchError(f"bad shard: rank {rank} of world size {world_size}")
    return [list(c) for b, c in enumerate(plan) if (b + offset) % world_size == rank]


def _progress(total: int, progress: Any, desc: str):
    """A tqdm bar (``progress`` True / False), or one that calls ``progress(done, total)``."""
    if callable(progress):
        return _CallbackBar(total, progress)
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not progress, desc=desc, unit="img", dynamic_ncols=True)


class _CallbackBar:
    """tqdm's ``update`` / ``close``, reported to a ``(done, total)`` callback."""

    def __init__(self, total: int, report: Any) -> None:
        self.total, self.report, self.done = total, report, 0

    def update(self, k: int) -> None:
        self.done += k
        self.report(self.done, self.total)

    def close(self) -> None:
        pass


def run_generation(
    adapter: Any,
    requests: Sequence[GenerationRequest],
    *,
    references: Sequence[Any] | None = None,
    mitigation: Any = None,
    cache: Any = None,
    batch_size: int = 16,
    record_latents_dir: str | os.PathLike | None = None,
    progress: Any = True,
    stats: dict[str, Any] | None = None,
    shard: tuple[int, ...] | None = None,
) -> list[Sample]:
    """Generate ``requests`` (through ``mitigation`` and ``cache`` when given), in order.

    * ``mitigation``: a Mitigation object or spec string; its ``check_compatible(adapter)`` runs
      first, then ``transform_requests`` (must keep the count and order), ``wrap_adapter`` and
      ``hooks()`` feed the one traced sampler.
    * ``cache``: a :class:`memberbench.cache.GenerationCache` or a directory path; only missing
      samples are generated, and each batch is stored as soon as it is done (an interrupted run
      resumes where it stopped).  With ``record_latents_dir``, an entry whose latents file is
      gone counts as missing (one whose latents file is damaged is corrupt, see the cache).
    * ``batch_size``: requests are planned into batches of this size (per sampler settings,
      the last one smaller) over *all* requests; the planned size of a request's batch is in
      its cache key, and a batch partly found in the cache is generated padded to that size,
      so a sample is bit-identical whichever part of it came from the cache.
    * ``stats``: a dict to add counts to: ``generated`` (requests really sampled),
      ``padding`` (throw-away rows computed to keep batch sizes), ``cached``, ``batch_sizes``
      ({batch size that produced a sample: count}) and ``numerics``.
    * ``references``: per request, the training latent to trace against (or None).
    * ``progress``: a tqdm bar (True) or none (False), or a callable ``progress(done, total)``
      called with the requests done so far (cache hits first, then after each batch).
    * ``shard``: ``(rank, world_size)`` or ``(rank, world_size, offset)``: generate (or read)
      only this process's share of the planned *batches* (:func:`shard_batches`), so that every
      sample keeps the batch size, and so the cache key, a single process gives it; the samples
      of the other shares are not returned (``stats["indices"]`` lists the indices of the ones
      returned, ``stats["batches"]`` counts the planned batches of every call).

    Returned samples carry the caller's request (``sample.request``); the request actually
    sampled after the mitigation's transform is in ``sample.meta["sampled_request"]`` when it
    differs.
    """
    from memberbench.cache import GenerationCache, generation_numerics, sample_key, tensor_hash
    from memberbench.sampling.sampler import TracedSampler, batch_plan

    requests = list(requests)
    n = len(requests)
    if references is not None and len(references) != n:
        raise MemberbenchError(
            f"got {len(references)} references for {n} requests; pass one per request"
        )
    mitigation = resolve_mitigation(mitigation)
    if cache is not None and not isinstance(cache, GenerationCache):
        cache = GenerationCache(cache)

    sampled = requests
    gen_adapter = adapter
    hooks: list[Any] = []
    if mitigation is not None:
        mitigation.check_compatible(adapter)
        sampled = list(mitigation.transform_requests(list(requests)))
        if len(sampled) != n:
            raise MemberbenchError(
                f"mitigation {getattr(mitigation, 'name', mitigation)!r} returned {len(sampled)} "
                f"requests for {n}; transform_requests must keep one per request, in order"
            )
        gen_adapter = mitigation.wrap_adapter(adapter)
        hooks = list(mitigation.hooks())

    # Batches are planned over all requests, before the cache is asked: a sample's last bits
    # depend on the size of the batch it is computed in (not on its neighbours), so that size is
    # part of its key, and a batch with some entries cached is topped up to its planned size.
    plan = batch_plan(sampled, batch_size)
    if stats is not None:
        stats["batches"] = stats.get("batches", 0) + len(plan)
    if shard is not None:
        plan = shard_batches(plan, *shard)
    mine = sorted(i for chunk in plan for i in chunk)
    planned = [0] * n
    for chunk in plan:
        for i in chunk:
            planned[i] = len(chunk)
    numerics = generation_numerics(adapter)
    ref_hashes = [tensor_hash(r) for r in references] if references is not None else ["none"] * n
    keys = [
        sample_key(
            adapter,
            sampled[i],
            mitigation,
            reference_hash=ref_hashes[i],
            batch=planned[i],
            numerics=numerics,
        )
        if planned[i]
        else ""
        for i in range(n)
    ]

    out: list[Sample | None] = [None] * n
    need_latents = record_latents_dir is not None
    for i in mine:
        if cache is not None:
            out[i] = cache.get(keys[i], need_latents=need_latents)
    todo = [i for i in mine if out[i] is None]

    if todo:
        sampler = TracedSampler(
            gen_adapter,
            hooks=hooks,
            record_latents_dir=record_latents_dir,
            batch_size=batch_size,
        )
        bar = _progress(len(mine), progress, "generate")
        bar.update(len(mine) - len(todo))
        for chunk in plan:
            idx = [i for i in chunk if out[i] is None]
            if not idx:
                continue
            # pad with copies of the first missing request up to the planned batch size
            pad = len(chunk) - len(idx)
            rows = idx + [idx[0]] * pad
            refs = [references[i] for i in rows] if references is not None else None
            tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"  # stale ones: see cache._TEMP_NAMES
            names = [keys[i] for i in idx] + [
                f".{keys[idx[0]]}.mbpad-{tag}-{k}" for k in range(pad)
            ]
            new = sampler.sample([sampled[i] for i in rows], refs, latent_names=names)
            for s in new[len(idx) :]:  # the padding's outputs are thrown away
                if s.trace.latents_path:
                    with contextlib.suppress(OSError):
                        os.unlink(s.trace.latents_path)
            for i, s in zip(idx, new):
                s.meta["cache_key"] = keys[i]
                if cache is not None:
                    cache.put(keys[i], s)
                out[i] = s
            if stats is not None:
                stats["generated"] = stats.get("generated", 0) + len(idx)
                stats["padding"] = stats.get("padding", 0) + pad
            bar.update(len(idx))
        bar.close()
    if stats is not None:
        stats["cached"] = stats.get("cached", 0) + (len(mine) - len(todo))
        if shard is not None:
            stats["indices"] = mine
        sizes = stats.setdefault("batch_sizes", {})
        for s in (out[i] for i in mine):
            b = str((s.meta or {}).get("batch_size"))  # type: ignore[union-attr]
            sizes[b] = sizes.get(b, 0) + 1
        stats["numerics"] = numerics

    result: list[Sample] = []
    for i in mine:
        s = out[i]
        assert s is not None
        meta = dict(s.meta, cache_key=keys[i])
        if sampled[i] != requests[i]:
            meta["sampled_request"] = sampled[i].to_dict()
        # the caller's request (prompt_id is not part of the key, so a cached entry may differ)
        s = dataclasses.replace(s, request=requests[i], meta=meta)
        result.append(s)
    return result
