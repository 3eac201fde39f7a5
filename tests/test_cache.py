"""The generation cache and run_generation: keys, atomic entries, corruption, resume, sharding."""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pytest
import torch

import memberbench.cache as cache_mod
from memberbench.cache import GenerationCache, sample_key, tensor_hash
from memberbench.runner import run_generation, shard, shard_indices
from memberbench.sampling.hooks import StepHook
from memberbench.sampling.sampler import TracedSampler
from memberbench.types import GenerationRequest, MemberbenchError, Sample, Trace


def _sample(seed=0, status="ok"):
    rng = np.random.default_rng(seed)
    return Sample(
        request=GenerationRequest("a cat", seed=seed, steps=3),
        image=rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) if status == "ok" else None,
        trace=Trace(
            series={"timestep": np.array([3.0, 2.0, 1.0]), "w0": np.array([0.1, np.nan, 0.3])},
            scalars={"xT_norm2": 12.5, "dim": 64.0},
        ),
        final_latent=rng.standard_normal((1, 4, 4)).astype(np.float32) if status == "ok" else None,
        status=status,
        failed_step=None if status == "ok" else 1,
        error=None if status == "ok" else "non-finite",
        unet_evals=6,
        wall_time_s=0.25,
        meta={"scheduler": "DDIMScheduler", "note": [1, 2]},
    )


def _same(a: Sample, b: Sample) -> None:
    assert a.request == b.request and a.status == b.status and a.failed_step == b.failed_step
    for x, y in ((a.image, b.image), (a.final_latent, b.final_latent)):
        assert (x is None and y is None) or np.array_equal(x, y)
    assert set(a.trace.series) == set(b.trace.series)
    for k in a.trace.series:
        np.testing.assert_array_equal(a.trace[k], b.trace[k])
    assert a.trace.scalars == b.trace.scalars
    assert a.unet_evals == b.unet_evals


@pytest.mark.parametrize("status", ["ok", "failed"])
def test_roundtrip(tmp_path, status):
    c = GenerationCache(tmp_path)
    s = _sample(status=status)
    assert c.get("k" * 32) is None
    c.put("k" * 32, s)
    got = c.get("k" * 32)
    _same(s, got)
    assert got.meta["note"] == [1, 2] and got.meta["cached"] is True
    assert got.trace["w0"].dtype == np.float64
    assert len(c) == 1 and "k" * 32 in c and c.stats()["hits"] == 1
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".part"))]


def test_key_covers_everything_that_determines_output(monkeypatch):
    r = GenerationRequest("a cat", seed=1, steps=5, prompt_id="p1")
    base = sample_key("fpA", r)
    variants = [
        sample_key("fpB", r),
        sample_key("fpA", GenerationRequest("a cat", seed=2, steps=5)),
        sample_key("fpA", GenerationRequest("a cat", seed=1, steps=6)),
        sample_key("fpA", GenerationRequest("a cat", seed=1, steps=5, guidance=2.0)),
        sample_key("fpA", GenerationRequest("a cat", seed=1, steps=5, scheduler="euler")),
        sample_key("fpA", GenerationRequest("a cat", seed=1, steps=5, negative_prompt="x")),
        sample_key("fpA", r, "mitigation-fp"),
        sample_key("fpA", r, None, torch.zeros(4)),
    ]
    assert len({base, *variants}) == len(variants) + 1
    # prompt_id is a label, not an input
    assert sample_key("fpA", GenerationRequest("a cat", seed=1, steps=5, prompt_id="zz")) == base
    assert tensor_hash(torch.ones(3)) == tensor_hash(np.ones(3, dtype=np.float64))
    monkeypatch.setattr(cache_mod, "SAMPLER_VERSION", "999")
    assert sample_key("fpA", r) != base


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_damaged_entry_is_a_miss(tmp_path, damage):
    c = GenerationCache(tmp_path)
    p = c.put("d" * 32, _sample())
    data = bytearray(p.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":  # inside the stored arrays: zip CRC or our sha256 catches it
        data[len(data) // 3] ^= 0xFF
    elif damage == "garbage":
        data = bytearray(b"not a zip file at all")
    else:
        data = bytearray()
    p.write_bytes(bytes(data))
    assert c.get("d" * 32) is None
    assert c.stats()["corrupt"] == 1 and not p.exists()


def test_tampered_content_fails_checksum(tmp_path):
    """A well-formed entry whose arrays were changed (not just damaged) is rejected too."""
    c = GenerationCache(tmp_path)
    p = c.put("e" * 32, _sample())
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["image"] = arrays["image"].copy()
    arrays["image"][0, 0, 0] ^= 1
    with open(p, "wb") as f:
        np.savez(f, **arrays)
    assert c.get("e" * 32) is None


def _writer(root: str, n: int, seed: int) -> None:
    c = GenerationCache(root)
    for i in range(n):
        c.put(f"{i % 3:032d}", _sample(seed=i % 3))


def test_concurrent_writers_and_readers(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), 30, k)) for k in range(3)]
    for p in procs:
        p.start()
    c = GenerationCache(tmp_path)
    seen = 0
    while any(p.is_alive() for p in procs):
        for i in range(3):
            s = c.get(f"{i:032d}")
            if s is not None:
                _same(s, _sample(seed=i))
                seen += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert c.stats()["corrupt"] == 0
    assert sorted(c.keys()) == [f"{i:032d}" for i in range(3)]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".part"))]


# ------------------------------------------------------------------------------------------
# run_generation


def _reqs(n=4, steps=3):
    return [
        GenerationRequest(f"prompt {i % 2}", seed=i, steps=steps, prompt_id=f"p{i}")
        for i in range(n)
    ]


class _Spy:
    """Counts the requests the sampler actually generates."""

    def __init__(self, monkeypatch):
        self.n = 0
        orig = TracedSampler.sample

        def sample(sampler, requests, references=None, **kw):
            self.n += len(requests)
            return orig(sampler, requests, references, **kw)

        monkeypatch.setattr(TracedSampler, "sample", sample)


def test_cold_warm_resume(tiny_adapter, tmp_path, monkeypatch):
    spy = _Spy(monkeypatch)
    reqs = _reqs()
    cold = run_generation(tiny_adapter, reqs, cache=tmp_path, batch_size=3, progress=False)
    assert spy.n == 4 and [s.request for s in cold] == reqs
    warm = run_generation(tiny_adapter, reqs, cache=tmp_path, batch_size=3, progress=False)
    assert spy.n == 4  # a warm rerun only reads
    for a, b in zip(cold, warm):
        _same(a, b)
        assert a.meta["cache_key"] == b.meta["cache_key"]
    # an interrupted run: two entries missing, one damaged -> only those three are redone, the
    # first batch (planned size 3, entry 2 still cached) padded to 3 rows: 3 + 1 sampled rows
    c = GenerationCache(tmp_path)
    keys = [s.meta["cache_key"] for s in cold]
    c.path(keys[0]).unlink()
    c.path(keys[3]).unlink()
    c.path(keys[1]).write_bytes(b"partial")
    stats = {}
    again = run_generation(tiny_adapter, reqs, cache=c, batch_size=3, progress=False, stats=stats)
    assert spy.n == 8
    assert (stats["generated"], stats["padding"], stats["cached"]) == (3, 1, 1)
    assert c.stats()["corrupt"] == 1 and c.stats()["hits"] == 1 and c.stats()["misses"] == 3
    for a, b in zip(cold, again):  # same batch sizes -> the same bits as the cold run
        np.testing.assert_array_equal(a.final_latent, b.final_latent)
        assert b.meta["batch_size"] == a.meta["batch_size"]
    assert [s.meta["batch_size"] for s in again] == [3, 3, 3, 1]
    # prompt_id comes from the caller even on a hit
    relabeled = [GenerationRequest(r.prompt, r.seed, r.steps, prompt_id="new") for r in reqs]
    got = run_generation(tiny_adapter, relabeled, cache=c, batch_size=3, progress=False)
    assert spy.n == 8 and all(s.request.prompt_id == "new" for s in got)


def test_references_enter_the_key_and_trace(tiny_adapter, tmp_path):
    reqs = _reqs(2, steps=2)
    x = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(5))
    plain = run_generation(tiny_adapter, reqs, cache=tmp_path, progress=False)
    traced = run_generation(
        tiny_adapter, reqs, references=[x, None], cache=tmp_path, progress=False
    )
    assert plain[0].meta["cache_key"] != traced[0].meta["cache_key"]
    assert plain[1].meta["cache_key"] == traced[1].meta["cache_key"]
    assert "w0" in traced[0].trace.series and "w0" not in traced[1].trace.series
    with pytest.raises(MemberbenchError, match="references"):
        run_generation(tiny_adapter, reqs, references=[x], progress=False)


def test_record_latents_dir_with_cache(tiny_adapter, tmp_path):
    reqs = _reqs(2, steps=2)
    lat = tmp_path / "lat"
    a = run_generation(
        tiny_adapter, reqs, cache=tmp_path / "c", record_latents_dir=lat, progress=False
    )
    paths = [s.trace.latents_path for s in a]
    assert all(os.path.isfile(p) for p in paths)
    assert np.load(paths[0])["latents"].shape == (3, 4, 16, 16)
    os.remove(paths[1])  # latents gone -> that entry is regenerated
    b = run_generation(
        tiny_adapter, reqs, cache=tmp_path / "c", record_latents_dir=lat, progress=False
    )
    assert os.path.isfile(b[1].trace.latents_path) and b[0].meta.get("cached")
    assert not b[1].meta.get("cached")


class _Halve(StepHook):
    def guidance(self, state, i, t, g):
        return g / 2


class _Mitigation:
    """Duck-typed mitigation (the contract of memberbench.mitigations.base.Mitigation)."""

    name = "test-halve"

    def __init__(self):
        self.calls = []

    def fingerprint(self):
        return "halve-v1"

    def check_compatible(self, adapter):
        self.calls.append("check")

    def transform_requests(self, requests):
        self.calls.append("transform")
        return [
            GenerationRequest(r.prompt + " !", r.seed, r.steps, prompt_id=r.prompt_id)
            for r in requests
        ]

    def wrap_adapter(self, adapter):
        self.calls.append("wrap")
        return adapter

    def hooks(self):
        self.calls.append("hooks")
        return [_Halve()]


def test_mitigation_plumbing(tiny_adapter, tmp_path):
    reqs = _reqs(2, steps=2)
    m = _Mitigation()
    out = run_generation(tiny_adapter, reqs, mitigation=m, cache=tmp_path, progress=False)
    assert m.calls == ["check", "transform", "wrap", "hooks"]
    assert [s.request for s in out] == reqs
    assert out[0].meta["sampled_request"]["prompt"] == "prompt 0 !"
    np.testing.assert_allclose(out[0].trace["guidance"], 3.75)
    base = run_generation(tiny_adapter, reqs, cache=tmp_path, progress=False)
    assert base[0].meta["cache_key"] != out[0].meta["cache_key"]
    # "none" (string or the built-in method) shares the plain entries
    again = run_generation(tiny_adapter, reqs, mitigation="none", cache=tmp_path, progress=False)
    assert again[0].meta["cache_key"] == base[0].meta["cache_key"] and again[0].meta["cached"]


def test_shard():
    items = list(range(10))
    parts = [shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert shard([], 0, 2) == [] and list(shard_indices(1, 1, 2)) == []
    for bad in ((0, 0), (2, 2), (-1, 2)):
        with pytest.raises(MemberbenchError):
            shard(items, *bad)
