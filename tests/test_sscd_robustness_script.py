"""scripts/sscd_robustness.py: the perturbation's exact cosine, the unperturbed case on the tiny
random pipeline (a share of exactly 1) and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memberbench.types import MemberbenchError


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("sscd_robustness")


@pytest.mark.parametrize("smooth", [1, 2])
@pytest.mark.parametrize("cos", [0.97, 0.9, 0.5])
def test_perturbation_has_the_asked_cosine(script, smooth, cos):
    z0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)) + 0.5
    z = script.perturb(z0, cos, smooth, seed=3)
    got = torch.nn.functional.cosine_similarity(z.flatten(1), z0.flatten(1)).numpy()
    np.testing.assert_allclose(got, cos, atol=1e-5)
    assert not torch.allclose(z, z0)
    # smoothed noise has no energy left at the Nyquist frequency of a 2 x 2 block checkerboard
    e = (z - z0)[0, 0].numpy()
    checker = (-1.0) ** np.add.outer(np.arange(8), np.arange(8))
    ratio = abs((e * checker).sum()) / np.linalg.norm(e)
    assert (ratio < 0.2) if smooth == 2 else True


def test_unperturbed_copy_keeps_the_whole_ceiling(script, tiny_pipeline_dir, capsys):
    args = script.parse_args(
        [f"--model=bundled:path={tiny_pipeline_dir}", "--n=2", "--cos=1,0.9", "--texture=0.4"]
    )
    rows = script.measure(args)
    kinds = [r["kind"] for r in rows]
    assert kinds == ["colour field", "grating", "blurred shapes", "noise texture"]
    for r in rows:
        assert r["white 1"] == pytest.approx(1.0, abs=1e-6)
        assert r["smooth 1"] == pytest.approx(1.0, abs=1e-6)
        assert r["white 0.9"] != pytest.approx(1.0, abs=1e-3)
    assert script.main([f"--model=bundled:path={tiny_pipeline_dir}", "--n=1", "--cos=1"]) == 0
    out = capsys.readouterr().out
    assert "| colour field | 0 |" in out and "| colour field | 0.4 |" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cos=1.5"], "--cos takes comma-separated numbers in [0.05, 1.0]"),
        (["--cos=a"], "--cos takes"),
        (["--texture=-1"], "--texture takes"),
        (["--n=0"], "--n must be a positive integer"),
    ],
)
def test_refusals(script, argv, message, capsys):
    with pytest.raises(MemberbenchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        script.measure(script.parse_args(["--model=bundled:path=/nonexistent", *argv]))
    assert script.main(["--model=bundled:path=/nonexistent", *argv]) == 2
    assert message in capsys.readouterr().err
