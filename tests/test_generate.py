"""``memberbench generate`` (memberbench.generate.main): outputs, the cache, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from memberbench.config import BY_FIELD
from memberbench.generate import SHARED_FLAGS, build_parser, main
from memberbench.types import Trace


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_generate_writes_images_and_traces(tiny_pipeline_dir, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = [
        "--prompt", "a red circle", "--prompt", "zorblat quennix", "--seeds", "0-1",
        "--steps", "3", "--guidance", "5", "--model", f"bundled:path={tiny_pipeline_dir}",
        "--device", "cpu", "--out", out, "--cache-dir", cache, "--batch-size", "3",
        "--no-progress",
    ]  # fmt: skip
    rc, _, err = _run(capsys, *argv)
    assert rc == 0, err
    # what the cache did: a cold run generates all 4 (batches of 3 and 1, no padding)
    assert "4 of 4 images generated, 0 from the cache (0 hits, 4 misses, 0 corrupt" in err
    gen = json.loads((out / "run.json").read_text())["generation"]
    assert (gen["generated"], gen["from_cache"], gen["cache"]["hits"]) == (4, 0, 0)
    stems = ["p0000-s0", "p0000-s1", "p0001-s0", "p0001-s1"]
    for stem in stems:
        img = np.asarray(Image.open(out / f"{stem}.png"))
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        rec = json.loads((out / f"{stem}.json").read_text())
        assert rec["status"] == "ok" and rec["unet_evals"] == 6 and rec["image"] == f"{stem}.png"
        assert rec["request"]["guidance"] == 5.0 and rec["request"]["steps"] == 3
        tr = Trace.from_dict(rec["trace"])
        assert tr.num_steps == 3 and np.isfinite(tr["eps_diff_norm"]).all()
    run = json.loads((out / "run.json").read_text())
    assert run["samples"] == stems and run["world_size"] == 1
    assert run["model"]["card"]["name"] == "bundled" and run["mitigation"] == "none"
    entries = sorted(cache.rglob("*.npz"))
    assert len(entries) == 4
    # a rerun reads the cache (entries untouched) and rewrites identical images
    mtimes = [p.stat().st_mtime_ns for p in entries]
    first = np.asarray(Image.open(out / "p0000-s0.png"))
    rc, _, err = _run(capsys, *argv)
    assert rc == 0 and "0 of 4 images generated, 4 from the cache (4 hits, 0 misses" in err
    gen = json.loads((out / "run.json").read_text())["generation"]
    assert (gen["generated"], gen["from_cache"], gen["cache"]["hits"]) == (0, 4, 4)
    assert [p.stat().st_mtime_ns for p in entries] == mtimes
    assert np.array_equal(first, np.asarray(Image.open(out / "p0000-s0.png")))


def test_prompts_file(tiny_pipeline_dir, tmp_path, capsys):
    txt = tmp_path / "p.txt"
    txt.write_text("a red circle\n\n  blue square  \n")
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"caption": "from jsonl"}\n\n{"prompt": "second"}\n')
    for f, want in ((txt, ["a red circle", "blue square"]), (jl, ["from jsonl", "second"])):
        out = tmp_path / f.suffix[1:]
        rc, _, err = _run(
            capsys, "--prompts-file", f, "--steps", "1", "--model",
            f"bundled:path={tiny_pipeline_dir}", "--out", out, "--no-cache", "--no-progress",
            "--no-images",
        )  # fmt: skip
        assert rc == 0, err
        assert json.loads((out / "run.json").read_text())["prompts"] == want
        assert not list(out.glob("*.png"))


@pytest.mark.parametrize(
    ("argv", "param", "allowed"),
    [
        # the benchmark's declared options (memberbench.config.OPTIONS) speak for themselves
        (["--steps", "0"], "--steps must be >= 1", "got 0"),
        (["--steps", "-3"], "--steps must be >= 1", "got -3"),
        (["--steps", "2.5"], "--steps must be an integer", "got '2.5'"),
        (["--guidance", "abc"], "--guidance must be a number", "e.g. 7.5"),
        (["--guidance", "nan"], "--guidance must be finite", "'nan'"),
        (["--guidance", "-1"], "--guidance must be >= 0", "'-1'"),
        (["--prompt", ""], "--prompt number 2 is empty", "give a caption"),
        (["--seeds", "5-x"], "--seeds '5-x' not understood", "a range '0-9'"),
        (["--seed", "-1"], "--seed '-1' not understood", "a list '0,3,7'"),
        (["--seed", str(2**63)], "--seed", "[0, 2**63-1]"),
        (["--seeds", "1,2,1"], "--seeds '1,2,1'", "lists a seed twice"),
        (["--scheduler", "fast"], "--scheduler", "ddim, ddpm, pndm, euler"),
        (["--eta", "2"], "--eta", "[0.0, 1.0]"),
        (["--batch-size", "0"], "--batch-size must be >= 1", "got 0"),
        (["--dtype", "fp7"], "--dtype 'fp7'", "fp32, fp16, bf16"),
        (["--model", ""], "--model is empty", "model spec"),
        ([], "--prompt", "--prompts-file"),
        (["--prompts-file", "/nonexistent.txt"], "--prompts-file", "no such file"),
        (["--model", "sd-14"], "sd-1.4", "Known models"),
        (["--model", "bundled:dtype=fp7"], "dtype", "fp32, fp16, bf16"),
        (["--mitigation", "no-such-method"], "no-such-method", "Known mitigations"),
        (["--bogus"], "--bogus", "unrecognized"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, argv, param, allowed):
    if argv and argv[0] in ("--prompts-file",) or not argv:
        full = argv + ["--out", tmp_path]
    else:
        full = ["--prompt", "x", *argv, "--out", tmp_path]
    rc, out, err = _run(capsys, *full)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("memberbench generate: error:")
    assert param in lines[0] and allowed in lines[0], lines[0]
    assert "Traceback" not in err


def test_seeds_are_the_benchmarks_syntax():
    def seeds(*argv):
        return build_parser().parse_args(list(argv)).seeds

    assert seeds() is None  # run() makes it seed 0
    assert seeds("--seeds", "7") == [7]
    assert seeds("--seeds", "0-3") == [0, 1, 2, 3]
    assert seeds("--seeds", "5, 1,2-3") == [5, 1, 2, 3]
    assert seeds("--seeds", "n=3") == [0, 1, 2]
    assert seeds("--seeds", str(2**63 - 1)) == [2**63 - 1]
    assert build_parser().parse_args(["--seed", "0-1"]).seed == [0, 1]


def test_shared_options_come_from_the_declarations():
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    for field_name, flag in SHARED_FLAGS.items():
        opt, action = BY_FIELD[field_name], actions[field_name]
        assert action.option_strings == [flag]
        assert action.metavar == opt.metavar
        assert action.help.startswith(opt.help.replace("%", "%%"))
    defaults = parser.parse_args([])
    assert (defaults.model, defaults.mitigation, defaults.steps) == ("bundled", "none", 50)
    assert (defaults.guidance, defaults.scheduler, defaults.batch_size) == (7.5, "ddim", 16)
    assert (defaults.device, defaults.dtype, defaults.cache_dir) == (None, None, None)
    off = parser.parse_args(["--cache-dir", "none"])  # as in the benchmark: no cache
    assert off.no_cache is True and off.cache_dir is None
    assert parser.parse_args(["--cache-dir", "c"]).no_cache is False


def _one_line(capsys, *argv):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("memberbench generate: error:"), lines[0]
    return lines[0]


def test_bad_files_and_folders_are_one_line_and_write_nothing(tmp_path, capsys):
    png = tmp_path / "prompts.txt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    out = tmp_path / "out"
    line = _one_line(capsys, "--prompts-file", png, "--out", out)
    assert f"--prompts-file '{png}' is not UTF-8 text (line 1)" in line
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"a prompt\n\x00\x00\x00\n")
    line = _one_line(capsys, "--prompts-file", nul, "--out", out)
    assert f"--prompts-file '{nul}' is binary (a NUL byte on line 2)" in line
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "fine"}\n{"caption": "  "}\n')
    line = _one_line(capsys, "--prompts-file", jl, "--out", out)
    assert f"line 2 of {jl} has an empty caption" in line
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = _one_line(capsys, "--prompt", "x", "--out", afile)
    assert f"--out '{afile}' is a file: pass a folder" in line
    line = _one_line(capsys, "--prompt", "x", "--out", afile / "sub")
    assert f"--out '{afile / 'sub'}' is inside '{afile}', which is a file" in line
    line = _one_line(capsys, "--prompt", "x", "--out", out, "--cache-dir", afile)
    assert f"--cache-dir '{afile}' is a file, not a folder: pass a folder" in line
    assert not out.exists()


def test_steps_above_the_training_timesteps(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "out"
    line = _one_line(
        capsys, "--prompt", "x", "--steps", "1001", "--model", f"bundled:path={tiny_pipeline_dir}",
        "--out", out, "--no-cache", "--no-progress",
    )  # fmt: skip
    assert "--steps 1001 is more than the 1000 timesteps this model was trained with" in line
    assert not out.exists()
