"""The cache never reuses anything wrong, and says what it did (issue 23 items 1, 2, 5, 10).

* identity: one flipped byte in any file of a local model copy, or its UNet mostly zeroed, gives
  a new fingerprint (the old one hashed ~4,096 sampled values per tensor and missed both); the
  file hashes are memoised, so a second load reads nothing;
* batch size: a sample's last bits depend on the size of the batch it was computed in, so that
  size is in the key: a batch-1 run on a batch-4 cache regenerates, and reports batch 1;
* latents: a damaged full-latents file makes its entry corrupt, so it is regenerated; stale
  temporary files of a killed write are removed when the cache is opened;
* stats: hits / misses / corrupt entries and real generations, in the results and the summary.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_plugin import HEAVY, _this_checkout, write_prompt_files  # noqa: F401 (fixture)

from memberbench.adapters import load_adapter
from memberbench.cache import GenerationCache, sample_key
from memberbench.runner import run_generation
from memberbench.sampling.sampler import TracedSampler
from memberbench.types import GenerationRequest

pytest_plugins = ["pytester"]

# The in-process plugin run imports heavy modules: import them at collection, before any
# pytester sys.modules snapshot of this session (torch, datasets and friends cannot be imported
# twice in one process), whatever test modules run before this one.
for _name in HEAVY:
    importlib.import_module(_name)


@pytest.fixture(autouse=True)
def _own_sidecar(tmp_path, monkeypatch):
    """File-hash memo of this test only (its sidecar in tmp, the in-process memo cleared)."""
    monkeypatch.setenv("MEMBERBENCH_CACHE", str(tmp_path / "mbcache"))
    try:
        from memberbench.adapters import identity
    except ImportError:  # the code before the fix: nothing to isolate
        yield
        return
    identity.clear_memo()
    yield
    identity.clear_memo()


@pytest.fixture
def model_copy(tiny_pipeline_dir, tmp_path):
    """A private copy of the tiny pipeline folder, free to damage."""
    return shutil.copytree(tiny_pipeline_dir, tmp_path / "model")


def _load(path):
    return load_adapter(f"bundled:path={path}", device="cpu", dtype="fp32")


def _tensor_offsets(path):
    """{name: (dtype, shape, absolute byte offset of its data)} of a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], 8 + n + v["data_offsets"][0]) for k, v in header.items()}


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------------
# item 1: the fingerprint sees every byte


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder"])
def test_one_flipped_weight_byte_changes_the_fingerprint(model_copy, component):
    """Element 1 of the component's largest tensor: never among the old strided sample."""
    before = _load(model_copy).fingerprint()
    (weights,) = (model_copy / component).glob("*.safetensors")
    offsets = _tensor_offsets(weights)
    name = max(offsets, key=lambda k: int(np.prod(offsets[k][1])))
    dtype, shape, start = offsets[name]
    assert dtype == "F32" and np.prod(shape) >= 2 * 4096  # so element 1 is not sampled
    _flip_byte(weights, start + 4)  # lowest mantissa byte of element 1
    after = _load(model_copy)
    value = getattr(after.pipe, component).state_dict()[name].reshape(-1)[1]
    assert after.fingerprint() != before, f"{component}.{name}[1] = {value} changed unseen"


def test_a_flipped_byte_outside_the_weights_changes_the_fingerprint(model_copy):
    """The tokenizer's merge rules: not a tensor at all, hashed as a file."""
    before = _load(model_copy).fingerprint()
    merges = model_copy / "tokenizer" / "merges.txt"
    data = bytearray(merges.read_bytes())
    i = data.rstrip().rfind(b" ") + 1  # first letter of the last rule's second part
    data[i] = ord("q") if data[i] != ord("q") else ord("z")
    merges.write_bytes(bytes(data))
    assert _load(model_copy).fingerprint() != before


def test_zeroing_most_unet_weights_changes_the_fingerprint(model_copy):
    """Zero every UNet value except those the old fingerprint sampled (value 0 and every
    numel // 4096-th): most of the UNet is gone, the old fingerprint could not tell."""
    from safetensors.torch import load_file, save_file

    before = _load(model_copy).fingerprint()
    (weights,) = (model_copy / "unet").glob("*.safetensors")
    sd = load_file(weights)
    zeroed = total = 0
    for k, v in sd.items():
        flat = v.reshape(-1).clone()
        step = max(1, flat.numel() // 4096)
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[::step] = True
        zeroed += int((~keep).sum())
        total += flat.numel()
        flat[~keep] = 0
        sd[k] = flat.reshape(v.shape).contiguous()
    save_file(sd, weights, metadata={"format": "pt"})
    assert zeroed / total > 0.78
    assert _load(model_copy).fingerprint() != before


def test_file_hashes_are_memoised(model_copy, monkeypatch):
    """The first load hashes every file once; later loads (also in a new process, through the
    sidecar) read none; a rewritten file is hashed again, alone."""
    from memberbench.adapters import identity

    reads = []
    orig = identity.hash_file
    monkeypatch.setattr(identity, "hash_file", lambda p: reads.append(str(p)) or orig(p))
    fp = _load(model_copy).fingerprint()
    n_files = len(identity.model_files(model_copy))
    assert len(reads) == n_files >= 10
    assert _load(model_copy).fingerprint() == fp and len(reads) == n_files
    identity.clear_memo()  # what a new process starts with: only the sidecar
    assert identity.sidecar_path().is_file()
    assert _load(model_copy).fingerprint() == fp and len(reads) == n_files
    cfg = model_copy / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text() + " ")  # same content to the scheduler, another file
    assert _load(model_copy).fingerprint() != fp
    assert reads[n_files:] == [os.path.realpath(cfg)]


def test_in_memory_pipeline_hashes_every_tensor_byte(tiny_adapter):
    from memberbench.adapters.stable_diffusion import StableDiffusionAdapter

    ad = StableDiffusionAdapter(tiny_adapter.pipe, tiny_adapter.card, device="cpu")
    fp = ad.fingerprint()
    assert "every byte of every" in ad.describe()["fingerprint_covers"]
    w = dict(ad.pipe.unet.named_parameters())["up_blocks.0.resnets.0.conv1.weight"]
    with torch.no_grad():
        w.view(-1)[1] += 1e-3  # not among the old strided sample (numel 165888, step 40)
        ad._fingerprint = None
        assert ad.fingerprint() != fp
        w.view(-1)[1] -= 1e-3


# ------------------------------------------------------------------------------------------
# item 2: the batch size a sample was computed in


def _reqs(n=4, steps=2):
    return [GenerationRequest(f"prompt {i % 2}", seed=i, steps=steps) for i in range(n)]


class _Spy:
    def __init__(self, monkeypatch):
        self.n = 0
        orig = TracedSampler.sample

        def sample(sampler, requests, references=None, **kw):
            self.n += len(requests)
            return orig(sampler, requests, references, **kw)

        monkeypatch.setattr(TracedSampler, "sample", sample)


def test_rows_of_a_batch_do_not_depend_on_their_neighbours(tiny_adapter):
    """What padding relies on: within one batch size, a row's bits are its own."""
    a = _reqs(4)
    b = [a[0], *[GenerationRequest(f"other {i}", seed=50 + i, steps=2) for i in range(3)]]
    sa = TracedSampler(tiny_adapter, batch_size=4).sample(a)[0]
    sb = TracedSampler(tiny_adapter, batch_size=4).sample(b[::-1])[3]
    np.testing.assert_array_equal(sa.final_latent, sb.final_latent)


def test_batch1_run_on_batch4_cache_regenerates_and_reports_batch1(
    tiny_adapter, tmp_path, monkeypatch
):
    spy = _Spy(monkeypatch)
    reqs = _reqs(4)
    b4 = run_generation(tiny_adapter, reqs, cache=tmp_path / "c", batch_size=4, progress=False)
    assert spy.n == 4 and {s.meta["batch_size"] for s in b4} == {4}
    b1 = run_generation(tiny_adapter, reqs, cache=tmp_path / "c", batch_size=1, progress=False)
    assert spy.n == 8, "a batch-1 run reused samples computed in batches of 4"
    assert not any(s.meta.get("cached") for s in b1)
    assert {s.meta["batch_size"] for s in b1} == {1}
    cold1 = run_generation(tiny_adapter, reqs, cache=tmp_path / "c1", batch_size=1, progress=False)
    for x, y in zip(b1, cold1):
        np.testing.assert_array_equal(x.final_latent, y.final_latent)
    # and each batch size now finds its own entries
    again = run_generation(tiny_adapter, reqs, cache=tmp_path / "c", batch_size=4, progress=False)
    assert spy.n == 12 and all(s.meta.get("cached") for s in again)
    for x, y in zip(b4, again):
        np.testing.assert_array_equal(x.final_latent, y.final_latent)


def test_numerics_enter_the_key():
    from memberbench.cache import generation_numerics

    r = GenerationRequest("a cat", seed=1, steps=5)
    n1 = generation_numerics(None)
    assert n1["device"] == "cpu" and n1["threads"] == torch.get_num_threads()
    assert n1["torch"] == torch.__version__
    keys = {
        sample_key("fp", r, batch=1, numerics=n1),
        sample_key("fp", r, batch=16, numerics=n1),
        sample_key("fp", r, batch=1, numerics=dict(n1, threads=n1["threads"] + 1)),
        sample_key("fp", r, batch=1, numerics=dict(n1, torch="0.0")),
    }
    assert len(keys) == 4


# ------------------------------------------------------------------------------------------
# item 5: every file an entry points to is covered; stale temporary files


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_damaged_latents_file_is_regenerated(tiny_adapter, tmp_path, monkeypatch, damage):
    spy = _Spy(monkeypatch)
    reqs, lat = _reqs(2), tmp_path / "lat"
    kw = dict(cache=tmp_path / "c", record_latents_dir=lat, batch_size=1, progress=False)
    first = run_generation(tiny_adapter, reqs, **kw)
    path = first[1].trace.latents_path
    good = np.load(path)["latents"]
    if damage == "truncated":
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
    else:  # a well-formed file with other numbers in it
        np.savez(path, latents=good * 0.5)
    c = GenerationCache(tmp_path / "c")
    again = run_generation(tiny_adapter, reqs, **dict(kw, cache=c))
    assert spy.n == 3 and c.stats()["corrupt"] == 1 and c.stats()["hits"] == 1
    assert again[0].meta.get("cached") and not again[1].meta.get("cached")
    np.testing.assert_array_equal(np.load(again[1].trace.latents_path)["latents"], good)
    # a third run finds both intact
    third = run_generation(tiny_adapter, reqs, **kw)
    assert spy.n == 3 and all(s.meta.get("cached") for s in third)


def test_missing_latents_file_is_never_handed_out(tiny_adapter, tmp_path):
    reqs, lat = _reqs(1), tmp_path / "lat"
    kw = dict(cache=tmp_path / "c", batch_size=1, progress=False)
    (s,) = run_generation(tiny_adapter, reqs, record_latents_dir=lat, **kw)
    os.remove(s.trace.latents_path)
    (t,) = run_generation(tiny_adapter, reqs, **kw)  # latents not needed: a hit without them
    assert t.meta.get("cached") and t.trace.latents_path is None


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporary_files_are_removed_on_open(tmp_path):
    from memberbench.io import temp_path

    c = GenerationCache(tmp_path)
    c.put("ab" + "0" * 30, _tiny_sample())
    (tmp_path / "latents").mkdir()
    old = time.time() - 3600
    dead = _dead_pid()
    entry, lat = tmp_path / "ab" / ("ab" + "1" * 30 + ".npz"), tmp_path / "latents" / "x.npz"
    stale = [
        temp_path(entry),  # ours, an hour old
        Path(str(temp_path(entry)).replace(f"-{os.getpid()}-", f"-{dead}-")),  # writer gone
        Path(str(temp_path(lat)).replace(f"-{os.getpid()}-", f"-{dead}-")),
        tmp_path / "latents" / f".{'d' * 32}.mbpad-{dead}-0123abcd-0.npz",  # padding latents
        tmp_path / "ab" / f".{'ab' + '2' * 30}.{dead}.0123abcd.tmp",  # an older version's
    ]
    live = temp_path(tmp_path / "ab" / ("ab" + "3" * 30 + ".npz"))  # being written right now
    recent = time.time() - 120
    for i, p in enumerate(stale):
        p.write_bytes(b"partial")
        os.utime(p, (old, old) if i == 0 else (recent, recent))
    live.write_bytes(b"partial")
    c2 = GenerationCache(tmp_path)
    assert [p.exists() for p in stale] == [False] * len(stale) and live.exists()
    assert c2.stats()["stale_tmp_removed"] == len(stale) and len(c2) == 1


def _tiny_sample():
    from memberbench.types import Sample, Trace

    return Sample(
        request=GenerationRequest("a cat", seed=0, steps=3),
        image=np.zeros((4, 4, 3), dtype=np.uint8),
        trace=Trace(series={"timestep": np.array([3.0, 2.0, 1.0])}, scalars={"dim": 1.0}),
        final_latent=np.zeros((1, 2, 2), dtype=np.float32),
    )


# ------------------------------------------------------------------------------------------
# items 2 and 10 through the plugin: the results and the summary say what the cache did

TASK = textwrap.dedent(
    """
    from memberbench.metrics.declare import declare

    declare("cache_toy_n", family="task", higher_is_better=None, description="samples seen")

    def test_generate(mb, record_metric):
        gens = mb.samples("memorized")
        record_metric("cache_toy_n", float(sum(len(v) for v in gens.values())), n=1)
    """
)


@pytest.fixture
def _forget_toy_metric():
    """The in-process runs declare TASK's toy metric in this process: forget it after."""
    yield
    from memberbench.metrics.declare import forget

    forget("cache_toy_n")


def test_results_and_summary_say_what_the_cache_did(
    pytester, tiny_pipeline_dir, _forget_toy_metric
):
    mem, non = write_prompt_files(pytester.path)
    pytester.makepyfile(test_gen_task=TASK)
    cache, res = pytester.path / "cache", pytester.path / "res"

    def run(batch, name):
        r = pytester.runpytest_inprocess(
            "-p",
            "no:cacheprovider",
            f"--model=bundled:path={tiny_pipeline_dir}",
            f"--prompts-memorized={mem}",
            f"--prompts-nonmemorized={non}",
            "--seeds=0-1",
            "--steps=2",
            f"--mb-batch-size={batch}",
            f"--cache-dir={cache}",
            f"--results={res / name}",
        )
        r.assert_outcomes(passed=1)
        return json.loads((res / name).read_text()), r.stdout.str()

    cold, out = run(2, "cold.json")
    g = cold["run"]["generation"]
    assert cold["run"]["images_generated"] == 2 == g["images_generated"]
    assert g["cache"]["misses"] == 2 and g["cache"]["hits"] == 0
    assert g["batch_sizes"] == {"2": 2} and g["numerics"]["device"] == "cpu"
    assert "generation cache: 0 hits, 2 misses (0 corrupt entries regenerated); 2 of 2" in out
    b1, out = run(1, "b1.json")  # a batch-1 run on the batch-2 cache: regenerates, says batch 1
    assert b1["run"]["images_generated"] == 2 and b1["run"]["generation"]["cache"]["hits"] == 0
    assert b1["run"]["generation"]["batch_sizes"] == {"1": 2} and b1["sampling"]["batch_size"] == 1
    warm, out = run(2, "warm.json")
    assert warm["run"]["images_generated"] == 0  # it counted requests before
    assert warm["run"]["generation"]["cache"]["hits"] == 2
    assert warm["run"]["generation"]["batch_sizes"] == {"2": 2}
    assert "generation cache: 2 hits, 0 misses (0 corrupt entries regenerated); 0 of 2" in out
