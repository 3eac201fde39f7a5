"""benchmarks/bench_detectors.py: the GPU mode refuses without CUDA in one line; the CPU mode
measures every declared detector, with the cost model worked out by hand."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "bench_detectors", REPO / "benchmarks" / "bench_detectors.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sd15_mode_refuses_without_cuda_in_one_line(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _bench().main(["--sd15"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1
    assert "--sd15" in out.err and "CUDA" in out.err and "drop --sd15" in out.err


@pytest.mark.slow
def test_cpu_mode_measures_every_declared_detector(tmp_path):
    from memberbench.metrics.declare import detectors

    b = _bench()
    import argparse

    res = b.measure(argparse.Namespace(prompts=1, seeds="0", steps=2, sd15=False))
    assert res["prompts"] == 2 and res["generation_unet_evals_per_prompt"] == 2 * 2 * 1
    names = {r["detector"] for r in res["rows"]}
    assert names == {d.name for d in detectors()}
    gen = res["generation_s_per_prompt"]
    by = {(r["detector"], r["k"]): r for r in res["rows"]}
    # a trace reader costs its read-out plus its share of the generation's UNet evaluations:
    # Wen at k1 reads 2 of the generation's 4 evaluations, at k2 (all steps) all of them
    assert by[("wen", 1)]["s_per_prompt"] == pytest.approx(by[("wen", 1)]["readout_s"] + gen / 2)
    assert by[("wen", 2)]["ratio"] == pytest.approx(1 + by[("wen", 2)]["readout_s"] / gen)
    # an own-call detector costs what it measured, nothing of the generation
    sh = by[("sharpness", 1)]
    assert sh["own_calls"] and sh["s_per_prompt"] == sh["readout_s"] > 0
    assert (sh["unet_evals"], sh["grad_passes"]) == (4, 4)
    text = b.table(res)
    assert "| sharpness  | k1 " in text and "x generation" in text
