"""The real task suite (tasks/) end to end on a tiny random pipeline, through the plugin.

Two prompts per set with 32x32 PNG training images, 2 seeds, 4 steps: every task runs, the
results file validates and holds each family's metrics; a regression check against that run
fails exactly the task test whose metric misses its tolerance.  (A prompt set without
training images making the tasks skip with the reason: tests/test_plugin.py.)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from test_fetch_images import Server
from test_plugin import _this_checkout, write_prompt_files  # noqa: F401 (autouse fixture)

from memberbench import cli
from memberbench.metrics.declare import matching  # imported before pytester's module snapshot
from memberbench.results import validate_file

pytest_plugins = ["pytester"]
TASKS = Path(__file__).resolve().parents[1] / "tasks"
STEPS = 4


@pytest.mark.slow
def test_task_suite_end_to_end(pytester, tiny_pipeline_dir):
    mem, non = write_prompt_files(pytester.path, n=2)
    common = [
        "-p",
        "no:cacheprovider",
        f"--model=bundled:path={tiny_pipeline_dir}",
        f"--prompts-memorized={mem}",
        f"--prompts-nonmemorized={non}",
        "--seeds=0-1",
        f"--steps={STEPS}",
        "--sweep=1",
        "--n-boot=10",
        "--m2-limit=1",
        "--m2-noises=1",
        f"--cache-dir={pytester.path / 'cache'}",
    ]
    out = pytester.path / "res" / "run.json"
    r = pytester.runpytest_subprocess(str(TASKS), *common, f"--results={out}", "-rs")
    outcomes = r.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, r.stdout.str()
    assert outcomes["passed"] >= 20
    errors, doc = validate_file(out)
    assert errors == []
    m = doc["metrics"]
    # every metric the real tasks record matches exactly one declaration, with its direction
    for name, entry in m.items():
        decls = matching(name)
        assert len(decls) == 1, (name, [d.name for d in decls])
        assert entry["higher_is_better"] == decls[0].higher_is_better, name
    for name in (
        "sscd_mean",
        "sscd_max",
        "mem_rate_0.75",
        "mem_rate_0.5",
        "sscd_mean.nonmem",
        "sscd_mean.dup=1",
        "mem_rate_0.5.dup=4",
        "sscd_ceiling",
        "k_pair_g",
        "m2_loss_ratio_gc.nonmem",
        "k_traj_g",
        "d1",
        "d2",
        "d1.ddim_ideal",
        "d2.early",
        "d1.nonmem",
        "corr_pearson.d1_sscd",
        "corr_spearman.wen_sscd",
        "corr_pearson.d1_sscd.pooled",
        "sscd_mean.g=1",
        "d1.g=1.nonmem",
        "detect_auc_set.wen.k1",
        f"detect_tpr1_set.nsupp.k{STEPS}",
        "detect_auc_set.d1.k1",
        "wen.k1",
        "seed_sscd",
        "latent_l2.nonmem",
        "collapse_early",
        "unet_evals_per_image",
        "wall_s_per_image",
    ):
        assert name in m, f"{name} missing; have {sorted(m)}"
        assert m[name]["test"].startswith("test_") or "tasks/" in m[name]["test"]
    assert m["unet_evals_per_image"]["value"] == 2 * STEPS  # plain CFG: 2 per step
    assert m["sscd_mean"]["n"] == 2 and m["sscd_mean"]["stderr"] is not None
    assert m["detect_auc_set.wen.k1"]["n"] == 4 and m["detect_auc_set.wen.k1"]["ci"] is not None
    assert m["d1"]["test"].endswith("test_deviation_d1_d2[memorized]")
    assert len(doc["series"]["decomposition.memorized"]["W0"]) == STEPS
    assert doc["series"]["roc_set.wen.k1"]["fpr"][0] == 0.0
    assert doc["sampling"]["seeds"] == [0, 1] and doc["sampling"]["steps"] == STEPS
    assert doc["run"]["status"] == "complete" and doc["run"]["images_generated"] >= 16
    rows = [json.loads(x) for x in out.with_name("run.prompts.jsonl").read_text().splitlines()]
    assert {(r["set"], r["prompt_id"]) for r in rows} == {
        ("memorized", "mem0"),
        ("memorized", "mem1"),
        ("nonmemorized", "non0"),
        ("nonmemorized", "non1"),
    }
    row = next(r for r in rows if r["prompt_id"] == "mem0")
    assert row["seeds"] == [0, 1] and len(row["metrics"]["sscd_per_seed"]) == 2
    assert row["metrics"]["d1"] == pytest.approx(m["d1"]["value"] * 2 - _other(rows, "d1"))
    # per-group detection: group "dup=1" is mem0 alone against both non-memorized prompts, so its
    # AUC is the Mann-Whitney count of non-memorized Wen magnitudes below mem0's (ties half)
    wen = {
        r["prompt_id"]: r["metrics"]["wen.k1" + (r["set"] != "memorized") * ".nonmem"] for r in rows
    }
    expected = np.mean(
        [(wen["mem0"] > wen[n]) + 0.5 * (wen["mem0"] == wen[n]) for n in ("non0", "non1")]
    )
    assert m["detect_auc.wen.k1.dup=1"]["value"] == pytest.approx(expected)
    assert m["detect_auc.wen.k1.dup=4"]["n"] == 3
    assert not any(k.startswith("detect_tpr1") and k.count(".") > 2 for k in m)
    assert doc["labels"]["rule"] == "rel>=0.5,ceiling>=0.3"  # the bundled card's (path= copy)
    r.stdout.fnmatch_lines(
        [
            "*memorized set memorized: 2 of 2 training images*",
            "*measured labels (rel>=0.5,ceiling>=0.3): memorized set * of * memorized*",
        ]
    )

    # Measured labels, checked by hand: a rule that splits the four prompts two and two by their
    # mean SSCD; the headline AUC is then the Mann-Whitney count over those labels.
    sscd = {
        r["prompt_id"]: r["metrics"]["sscd_mean" + (r["set"] != "memorized") * ".nonmem"]
        for r in rows
    }
    ranked = sorted(sscd.values())
    threshold = (ranked[1] + ranked[2]) / 2
    pos = [p for p, v in sscd.items() if v >= threshold]
    neg = [p for p in sscd if p not in pos]
    assert len(pos) == 2
    out3 = pytester.path / "res3.json"
    r = pytester.runpytest_subprocess(
        str(TASKS / "test_detection.py"),
        *common,
        f"--mem-rule=sscd>={threshold!r}",
        f"--results={out3}",
        "-k",
        "test_detection[wen]",
    )
    r.assert_outcomes(passed=1, deselected=18)  # 9 detectors x 2 + 1
    m3 = json.loads(out3.read_text())["metrics"]
    expected = np.mean([(wen[a] > wen[b]) + 0.5 * (wen[a] == wen[b]) for a in pos for b in neg])
    assert m3["detect_auc.wen.k1"]["value"] == pytest.approx(expected)
    assert m3["detect_auc.wen.k1"]["n"] == 4
    assert "measured memorized" in m3["detect_auc.wen.k1"]["description"]

    # Regression check against that run (same cache, so the same numbers): a required
    # improvement of SSCD on the memorized set cannot hold -> exactly that test fails.
    r = pytester.runpytest_subprocess(
        str(TASKS / "test_memorization.py"),
        *common,
        f"--results={pytester.path / 'res2.json'}",
        f"--mb-compare={out}",
        "--mb-compare-fail=sscd_mean:-50%,sscd_mean.nonmem:1%,sscd_ceiling:2se",
    )
    r.assert_outcomes(passed=3, failed=1)
    r.stdout.fnmatch_lines(
        [
            "*sscd_mean did not improve enough*",
            "*comparison with*run.json*",
            "*sscd_mean ↓*-50%*FAIL*",
            "*sscd_mean.nonmem ↓*1%*ok*",
            "*FAILED*test_memorization.py::test_sscd_memorized*",
        ]
    )


def _other(rows: list[dict], key: str) -> float:
    return next(r for r in rows if r["prompt_id"] == "mem1")["metrics"][key]


def test_cost_batch_spreads_over_the_prompt_set():
    """The cost task times prompts spread over each set, not the first few (on the bundled
    model those are all 1-copy canaries, which a prompt-dependent mitigation barely works on)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cost_task", TASKS / "test_cost.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    levels = [d for d in (1, 4, 16, 64, 256) for _ in range(3)]  # the bundled memorized set
    assert mod.spread(levels, 4) == [1, 4, 64, 256]
    assert mod.spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert mod.spread([7, 8], 4) == [7, 8]
    assert mod.spread([7, 8, 9], 1) == [7] and mod.spread([7], 0) == []


TOY_DECLARED = """
import numpy as np

from memberbench.metrics.declare import Headline, Placement, Record, metric


@metric(
    "toy_seed",
    keys=("toy_seed.p{k}[.nonmem]",),
    family="toy",
    higher_is_better=False,
    description="mean over seeds of (seed + 1) ** power",
    record=(Record("toy_seed.p1", (("power", 1),)), Record("toy_seed.p2", (("power", 2),),
            sides=("memorized",))),
    sections=(Placement("overestimation", ("toy_seed.p2",), rank=46),),
    headline=(Headline("toy_seed.p1", "toy seed", rank=57),),
)
def toy_seed(mb, side, power):
    return {p: float(np.mean([(g.seed + 1) ** power for g in gs]))
            for p, gs in mb.ok_gens(side).items()}


@metric("toy_never", family="toy", higher_is_better=True, description="never runs",
        record="toy_never", check=lambda mb: "toy_never needs a golden GPU")
def toy_never(mb, side):
    raise AssertionError("the generic task ran a metric whose check says it cannot run")
"""


@pytest.mark.slow
def test_a_declared_metric_reaches_results_and_leaderboard_with_no_task(
    pytester, tiny_pipeline_dir, monkeypatch
):
    """Issue 22: a metric declared with record= in an installed package's module (entry-point
    group memberbench.metrics), and nothing else, is recorded by the generic task
    tasks/test_declared.py on the tiny pipeline (its check's skip reason shown), and a
    leaderboard built from that run places it in its headline column (README) and its section
    (the site)."""
    from test_plugin import REPO

    from memberbench import leaderboard as L
    from memberbench.metrics import declare as D
    from memberbench.registry import DETECTORS, METRIC_MODULES

    site = pytester.path / "site"
    site.mkdir()
    (site / "mb_toy_declared.py").write_text(TOY_DECLARED)
    info = site / "mb_toy_declared-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mb-toy-declared\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[memberbench.metrics]\ntoy = mb_toy_declared\n")
    monkeypatch.setenv("PYTHONPATH", f"{REPO}:{site}")
    mem, non = write_prompt_files(pytester.path, n=2)
    out = pytester.path / "res" / "run.json"
    r = pytester.runpytest_subprocess(
        str(TASKS),
        "-p",
        "no:cacheprovider",
        f"--model=bundled:path={tiny_pipeline_dir}",
        f"--prompts-memorized={mem}",
        f"--prompts-nonmemorized={non}",
        "--seeds=0-1",
        f"--steps={STEPS}",
        "--sweep=none",
        f"--cache-dir={pytester.path / 'cache'}",
        f"--results={out}",
        "-k",
        "test_declared",
        "-rs",
    )
    # seed_sscd, latent_l2 (in-tree, record=) and toy_seed.p1 on both sets, toy_seed.p2 on one
    r.assert_outcomes(passed=7, skipped=2)
    r.stdout.fnmatch_lines(["*test_declared?toy_never-memorized?*toy_never needs a golden GPU*"])
    errors, doc = validate_file(out)
    assert errors == []
    m = doc["metrics"]
    for name, value in (("toy_seed.p1", 1.5), ("toy_seed.p1.nonmem", 1.5), ("toy_seed.p2", 2.5)):
        assert (m[name]["value"], m[name]["stderr"], m[name]["n"]) == (value, 0.0, 2), name
        assert m[name]["higher_is_better"] is False and m[name]["family"] == "toy"
    assert m["toy_seed.p1"]["test"].endswith(
        "test_declared.py::test_declared[toy_seed.p1-memorized]"
    )
    assert "toy_seed.p2.nonmem" not in m and not any(k.startswith("toy_never") for k in m)
    assert m["seed_sscd"]["family"] == "diversity" and m["latent_l2.nonmem"]["n"] == 2
    rows = [json.loads(x) for x in out.with_name("run.prompts.jsonl").read_text().splitlines()]
    assert {r["prompt_id"]: r["metrics"]["toy_seed.p1" + (r["set"] != "memorized") * ".nonmem"]
            for r in rows} == {"mem0": 1.5, "mem1": 1.5, "non0": 1.5, "non1": 1.5}  # fmt: skip

    # the leaderboard, in this process, reads the same installed declarations
    monkeypatch.syspath_prepend(str(site))
    for reg in (DETECTORS, METRIC_MODULES):
        monkeypatch.setattr(reg, "_loaded_entry_points", False)
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
    try:
        assert "toy" in D.load_entry_points()
        _, readme, errors, _ = L.add_runs([out], pytester.path / "board", figures=False)
        text = readme.read_text()
        from memberbench.site import build_site

        index = (build_site(pytester.path / "board")[0] / "index.html").read_text()
    finally:
        D.forget("toy_seed", kind="metric")
        D.forget("toy_never", kind="metric")
        sys.modules.pop("mb_toy_declared", None)
    assert errors == []
    # the README's table of this (non-standard: 4 steps, 2 seeds) setting: the headline columns,
    # and the only declared headline this run recorded is the toy's
    lines = text.split("### Setting 1: non-standard")[1].splitlines()
    head, _, row = [[c.strip() for c in x.split("|")] for x in lines if x.startswith("|")][:3]
    assert row[head.index("toy seed ↓")] == "1.5 ± 0"
    # the site's table of the section the declaration places toy_seed.p2 in
    sec = index.split('id="sec-overestimation-table"')[1].split("</table>")[0]
    head = re.findall(r"<th>(.*?)</th>", sec)
    row = re.findall(r"<td[^>]*>(.*?)</td>", sec.split('<tr data-run="bundled/none">')[1])
    assert head == ["run", "toy_seed.p2 ↓"] and row[1] == "2.5 ± 0", (head, row)


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "prompts"


@pytest.mark.slow
def test_image_free_run_on_wens_prompt_list(pytester, tiny_pipeline_dir):
    """Wen et al.'s 500 memorized prompts come with URLs only: the image-free tasks run (Wen's
    magnitude, the noise-suppression score, set-label detection, diversity, cost), the tasks
    that need training images are skipped, and the summary names each with its reason and the
    image coverage of each set."""
    wen = SHARED / "wen_sdv1_500_memorized.jsonl"
    if not wen.is_file():
        pytest.skip(f"{wen} not present (the shared prompt files live outside the repo)")
    _, non = write_prompt_files(pytester.path, n=2)
    out = pytester.path / "wen.json"
    r = pytester.runpytest_subprocess(
        str(TASKS),
        "-p",
        "no:cacheprovider",
        f"--model=bundled:path={tiny_pipeline_dir}",
        f"--prompts-memorized={wen}",
        f"--prompts-nonmemorized={non}",
        "--limit=memorized=3",
        "--seeds=0-1",
        f"--steps={STEPS}",
        "--sweep=none",
        "--n-boot=10",
        f"--cache-dir={pytester.path / 'cache'}",
        f"--results={out}",
    )
    outcomes = r.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, r.stdout.str()
    r.stdout.fnmatch_lines(
        [
            "*memorized set wen_sdv1_500_memorized: 0 of 3 training images*",
            "*nonmemorized set nonmemorized: 2 of 2 training images*",
            "skipped tasks (*",
            # the two tiny negatives are the only measured prompts: one class, no ROC
            "*test_detection.py::test_detection?wen?: measured labels are all*",
            "*test_detection.py::test_detection_set_labels?d1?: the memorized prompt set*has "
            "no training images*",
            "*test_memorization.py::test_sscd_memorized: the memorized prompt set*has no "
            "training images*",
        ]
    )
    doc = json.loads(out.read_text())
    m = doc["metrics"]
    for name in ("wen.k1", "detect_auc_set.wen.k1", "detect_auc_set.nsupp.k1", "seed_sscd"):
        assert name in m, f"{name} missing; have {sorted(m)}"
    assert "sscd_mean" not in m and "detect_auc.wen.k1" not in m
    assert m["detect_auc_set.wen.k1"]["n"] == 5
    skipped = {s["test"].split("::")[-1] for s in doc["run"]["skipped"]}
    assert {
        "test_sscd_memorized",
        "test_detection[wen]",
        "test_correlation_with_sscd_m7",
    } <= skipped
    assert doc["prompt_sets"]["memorized"]["n_with_image"] == 0


@pytest.mark.slow
def test_fetch_images_then_run_scores_every_recovered_row(pytester, tiny_pipeline_dir):
    """`memberbench fetch-images` against a local server, then the tasks on its output: SSCD
    (the best match over a row's several images) and D1 on exactly the recovered rows, and the
    coverage line says how many were recovered."""
    server = Server()
    try:
        rows = [
            {"prompt_id": "png", "caption": "a good png", "url": server.url("/good.png")},
            {"prompt_id": "jpg", "caption": "a good jpeg", "url": server.url("/good.jpg")},
            {"prompt_id": "gone", "caption": "a dead link", "url": server.url("/nope.png")},
            {
                "prompt_id": "two",
                "caption": "a template verbatim",
                "url": [server.url("/good2.png"), server.url("/good.jpg")],
            },
        ]
        src = pytester.path / "set.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        fetched = pytester.path / "fetched"
        args = ["--timeout", "2", "--retries", "0", "--rate", "0", "--workers", "2"]
        assert cli.main(["fetch-images", str(src), "--out", str(fetched), *args]) == 0
    finally:
        server.close()
    _, non = write_prompt_files(pytester.path, n=2)
    out = pytester.path / "fetched.json"
    r = pytester.runpytest_subprocess(
        str(TASKS),
        "-p",
        "no:cacheprovider",
        f"--model=bundled:path={tiny_pipeline_dir}",
        f"--prompts-memorized={fetched / 'prompts.jsonl'}",
        f"--prompts-nonmemorized={non}",
        "--labels=side",
        "--seeds=0-1",
        f"--steps={STEPS}",
        "--sweep=none",
        "--n-boot=10",
        "--m2-limit=1",
        "--m2-noises=1",
        f"--cache-dir={pytester.path / 'cache'}",
        f"--results={out}",
        "-k",
        "memorization or deviation",
    )
    outcomes = r.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, r.stdout.str()
    r.stdout.fnmatch_lines(["*memorized set prompts: 3 of 4 training images*"])
    per = {
        x["prompt_id"]: x["metrics"]
        for x in map(json.loads, out.with_name("fetched.prompts.jsonl").read_text().splitlines())
        if x["set"] == "memorized"
    }
    scored = {p for p, m in per.items() if "sscd_mean" in m and "d1" in m}
    assert scored == {"png", "jpg", "two"}
    assert "sscd_mean" not in per.get("gone", {})
    doc = json.loads(out.read_text())
    assert doc["prompt_sets"]["memorized"]["n_with_image"] == 3
