"""scripts/latent_error_split.py on the tiny random pipeline: the split's closed-form cases and
its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from memberbench.types import MemberbenchError


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("latent_error_split")


def _args(script, pipe_dir, tmp_path, *extra):
    return script.parse_args(
        [
            f"--model=bundled:path={pipe_dir}",
            "--min-dup=256",
            "--seeds=0-1",
            "--steps=2",
            f"--cache-dir={tmp_path / 'cache'}",
            *extra,
        ]
    )


def test_split_closed_form_cases(script, tiny_pipeline_dir, tmp_path):
    # pool 1: the "coarse" part is the whole error, so z0 + coarse is the generation itself and
    # z0 + fine is the training latent (the ceiling)
    rows = script.measure(_args(script, tiny_pipeline_dir, tmp_path, "--pool=1"))
    assert list(rows) == [256]
    r = rows[256]
    assert len(r["gen"]) == 8  # 4 canaries with 256 copies x 2 seeds
    # (z0 + (z - z0) rounds differently from z in float32, which flips the odd uint8 pixel)
    # (one of the textured canaries moves by 0.0035 that way)
    np.testing.assert_allclose(r["z0+coarse"], r["gen"], atol=5e-3)
    np.testing.assert_allclose(r["z0+fine"], r["ceiling"], atol=5e-3)
    assert np.ptp(r["gen"]) > 0.02  # the tolerance is far below the spread it checks
    np.testing.assert_allclose(r["fine share"], 0.0, atol=1e-6)
    assert all(-1.0 <= c <= 1.0 for c in r["latent cos"])
    n_copies = sum(c > 0.5 for c in r["latent cos"])
    assert len(r["gen (copies)"]) == n_copies
    # pool = latent side: the coarse part is the per-channel mean of the error, and fine share
    # is the norm of the mean-free error over the whole error's
    rows = script.measure(_args(script, tiny_pipeline_dir, tmp_path, "--pool=16"))
    share = rows[256]["fine share"]
    assert all(0.0 < s <= 1.0 for s in share)
    assert rows[256]["gen"] == r["gen"]  # same cached generations


def test_refusals(script, tiny_pipeline_dir, tmp_path, capsys):
    with pytest.raises(MemberbenchError, match="does not divide the latent size"):
        script.measure(_args(script, tiny_pipeline_dir, tmp_path, "--pool=3"))
    with pytest.raises(MemberbenchError, match="lower --min-dup"):
        script.measure(_args(script, tiny_pipeline_dir, tmp_path, "--min-dup=1000"))
    rc = script.main([f"--model=bundled:path={tiny_pipeline_dir}", "--seeds=9-3"])
    assert rc == 2 and "--seeds '9-3' not understood" in capsys.readouterr().err
