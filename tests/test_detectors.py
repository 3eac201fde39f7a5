"""Detectors are declared things (memberbench/metrics/declare.py ``@detector``): their cost,
direction, windows and skip checks; out-of-tree detectors through the entry-point group
``memberbench.detectors``; the detection task (tasks/test_detection.py) scores every declared
detector, records its cost, skips one that cannot run with its reason and leaves out a prompt
whose score is NaN.  The detectors' own formulas: tests/test_detectors_formulas.py."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from test_plugin import _this_checkout, write_prompt_files  # noqa: F401 (autouse fixture)

from memberbench.metrics import declare as D
from memberbench.registry import DETECTORS
from memberbench.types import MemberbenchError

pytest_plugins = ["pytester"]
TASKS = Path(__file__).resolve().parents[1] / "tasks"
REPO = Path(__file__).resolve().parents[1]

# an out-of-tree package: one module declaring three detectors, exposed through an entry point
TOY_MODULE = textwrap.dedent(
    """
    from memberbench.metrics.declare import detector


    @detector(
        "toy_len",
        description="caption length (a toy out-of-tree detector; shorter = memorized)",
        higher_is_memorized=False,
        windows=(1,),
        unet_evals=0,
    )
    def toy_len(mb, side, k):
        # mem1 fails for this detector: NaN
        return {
            pid: float("nan") if pid == "mem1" else float(len(rec.caption))
            for pid, rec in mb.records(side).items()
        }


    @detector(
        "toy_never",
        description="a toy detector that cannot run here",
        check=lambda mb: "toy_never: this model has no toy head (a test's reason)",
    )
    def toy_never(mb, side, k):
        raise AssertionError("a skipped detector is never computed")


    @detector(
        "toy_own",
        description="a toy detector with its own model calls",
        windows=(0, 2),
        unet_evals=lambda k, steps: 4 + k,
        grad_passes=3,
        own_calls=True,
    )
    def toy_own(mb, side, k):
        return {pid: float(i) for i, pid in enumerate(mb.records(side))}
    """
)


def _toy_distribution(root: Path) -> Path:
    """A directory that, on sys.path, holds the module and an installed-looking distribution
    whose entry point names it (what ``pip install`` of an out-of-tree package leaves)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "mb_toy_detectors.py").write_text(TOY_MODULE)
    info = root / "mb_toy_detectors-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mb-toy-detectors\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[memberbench.detectors]\ntoys = mb_toy_detectors\n")
    return root


# --------------------------------------------------------------------------------------------
# the declaration


def test_builtin_detectors_declare_direction_windows_and_cost():
    wen = D.get_detector("wen")
    assert wen.higher_is_memorized and wen.windows is None and not wen.own_calls
    # the run's windows clipped to its steps; the cost of reading the first k steps of CFG
    assert wen.windows_for(4, (1, 5, 50)) == [1, 4]
    assert wen.windows_for(50, (1, 5, 50)) == [1, 5, 50]
    assert wen.cost(5, 3, 50) == (2 * 5 * 3, 0)
    # D1 with the paper's final-latent basis needs the whole generation whatever k
    assert D.get_detector("d1_paper").cost(1, 2, 50) == (2 * 50 * 2, 0)
    assert D.get_detector("d1").needs_training_image


def test_declaration_checks_its_arguments():
    for bad, match in (
        ({"windows": (-1,)}, "windows must be non-negative integers"),
        ({"windows": ()}, "windows must be non-negative integers"),
        ({"unet_evals": -2}, "unet_evals must be a number >= 0"),
        ({"grad_passes": "many"}, "grad_passes must be a number >= 0"),
        ({"higher_is_memorized": "yes"}, "higher_is_memorized must be True or False"),
    ):
        with pytest.raises(MemberbenchError, match=match):
            D.detector("toy_bad", description="x", **bad)
    assert "toy_bad" not in [d.name for d in D.detectors()]


def test_skip_reasons_fp16_gradients_and_missing_unconditional_branch():
    import torch

    @D.detector("toy_grad", description="x", needs_gradients=True)
    def toy_grad(mb, side, k):
        return {}

    try:

        class Adapter:
            dtype = torch.float16

        class Run:
            adapter = Adapter()

        det = D.get_detector("toy_grad")
        assert "runs in float16; run with --dtype fp32" in det.skip_reason(Run())
        Adapter.dtype = torch.float32
        assert det.skip_reason(Run()) is None
        Adapter.has_unconditional = False
        assert "needs the model's unconditional branch" in det.skip_reason(Run())
    finally:
        D.forget("toy_grad")


def test_entry_point_detectors_are_declared(tmp_path, monkeypatch):
    root = _toy_distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(DETECTORS, "_loaded_entry_points", False)
    monkeypatch.setattr(DETECTORS, "_entries", dict(DETECTORS._entries))  # restored after
    try:
        assert "toys" in D.load_entry_points()
        names = {d.name for d in D.detectors()}
        assert {"toy_len", "toy_never", "toy_own"} <= names
        own = D.get_detector("toy_own")
        assert own.own_calls and own.windows_for(50, (1, 5, 50)) == [0, 2]
        assert own.cost(2, 3, 50) == ((4 + 2) * 3, 3 * 3)
        # their names are recorded names' {score} now
        assert D.find("detect_auc_set.toy_len.k1").name == "detect_auc_set"
    finally:
        for n in ("toy_len", "toy_never", "toy_own"):
            D.forget(n)
        sys.modules.pop("mb_toy_detectors", None)


def test_an_entry_point_that_declares_nothing_or_fails_is_one_clear_error(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    (root / "mb_empty.py").write_text("X = 1\n")
    (root / "mb_broken.py").write_text("raise ImportError('no module named toyhead')\n")
    for name, target in (("empty", "mb_empty"), ("broken", "mb_broken")):
        info = root / f"mb_{name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: mb-{name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[memberbench.detectors]\n{name} = {target}\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(DETECTORS, "_loaded_entry_points", False)
    monkeypatch.setattr(DETECTORS, "_entries", {})
    try:
        with pytest.raises(MemberbenchError) as e:
            D.load_entry_points()
        msg = str(e.value)
        assert "detector entry point" in msg and "(group memberbench.detectors)" in msg
        assert ("declares no detector" in msg) or ("failed to load: ImportError" in msg)
    finally:
        sys.modules.pop("mb_empty", None)
        sys.modules.pop("mb_broken", None)


# --------------------------------------------------------------------------------------------
# the detection task scores every declared detector


@pytest.mark.slow
def test_detection_task_scores_out_of_tree_detectors(pytester, tiny_pipeline_dir, monkeypatch):
    site = _toy_distribution(pytester.path / "site")
    monkeypatch.setenv("PYTHONPATH", f"{REPO}:{site}")
    mem, non = write_prompt_files(pytester.path, n=2)
    out = pytester.path / "run.json"
    r = pytester.runpytest_subprocess(
        str(TASKS / "test_detection.py"),
        "-p",
        "no:cacheprovider",
        f"--model=bundled:path={tiny_pipeline_dir}",
        f"--prompts-memorized={mem}",
        f"--prompts-nonmemorized={non}",
        "--seeds=0-1",
        "--steps=4",
        "--n-boot=10",
        f"--cache-dir={pytester.path / 'cache'}",
        f"--results={out}",
        "-rs",
        "-k",
        "set_labels",
    )
    outcomes = r.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, r.stdout.str()
    # the skipped one says why
    r.stdout.fnmatch_lines(["*SKIPPED*toy_never: this model has no toy head (a test's reason)*"])
    m = json.loads(out.read_text())["metrics"]
    # toy_len: lower = memorized, mem1 NaN -> mem0 (26 characters) against non0, non1 (29):
    # negated scores put the one positive above both negatives: AUC 1 by hand
    auc = m["detect_auc_set.toy_len.k1"]
    assert auc["value"] == 1.0 and auc["n"] == 3
    assert "1 prompt(s) failed for this detector (NaN score, left out: mem1)" in auc["description"]
    assert m["detect_unet_evals.toy_len.k1"]["value"] == 0
    # toy_own at its own windows (0 and 2), its cost over the run's 2 seeds
    assert m["detect_unet_evals.toy_own.k0"]["value"] == 4 * 2
    assert m["detect_unet_evals.toy_own.k2"]["value"] == (4 + 2) * 2
    assert m["detect_grad_passes.toy_own.k2"]["value"] == 3 * 2
    assert "detect_auc_set.toy_own.k5" not in m
    # a built-in one: Wen's magnitude reads 2 CFG evaluations per step and seed
    assert m["detect_unet_evals.wen.k1"]["value"] == 2 * 1 * 2
    assert m["detect_unet_evals.wen.k4"]["value"] == 2 * 4 * 2
    assert not any("toy_never" in k for k in m)
    # the field's detectors, each at its own windows with its cost over the 2 seeds
    assert m["detect_unet_evals.d1_paper.k1"]["value"] == 2 * 4 * 2  # the whole generation
    assert m["detect_unet_evals.d1_rt.k1"]["value"] == 2 * 1 * 2
    assert "detect_auc_set.d1_rt.k4" in m
    assert "detect_auc_set.webster.k1" in m and "detect_auc_set.webster.k4" not in m
    assert m["detect_auc_set.anisotropy.k0"]["n"] == 4
    assert m["detect_unet_evals.anisotropy.k0"]["value"] == 4 * 2
    assert m["detect_grad_passes.anisotropy.k0"]["value"] == 0
    assert m["detect_auc_set.sharpness.k1"]["n"] == 4
    assert m["detect_unet_evals.sharpness.k1"]["value"] == 4 * 2
    assert m["detect_grad_passes.sharpness.k1"]["value"] == 4 * 2
    assert "own model calls" in m["detect_unet_evals.sharpness.k1"]["description"]
    # seconds per prompt, measured on the run's device, for every detector and window scored
    scored = [k.split(".", 1)[1] for k in m if k.startswith("detect_auc_set.")]
    for sk in scored:
        t = m[f"detect_s_per_prompt.{sk}"]
        assert t["value"] >= 0 and t["unit"] == "s" and t["note"] == "device cpu", sk
    # an own-call detector runs the UNet: slower than reading a trace the run already holds
    assert m["detect_s_per_prompt.sharpness.k1"]["value"] > m["detect_s_per_prompt.wen.k1"]["value"]
