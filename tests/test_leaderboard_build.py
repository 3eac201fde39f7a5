"""The leaderboard builder: tables, figures, invalid submissions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image as mpimg
import pytest
from test_results_schema import make_doc

from memberbench import leaderboard as L
from memberbench.results import metric_entry, write_results


def _run(mitigation: str, sscd: float, clip: float, model: str = "bundled") -> dict:
    doc = make_doc(
        sscd_mean=metric_entry(sscd, higher_is_better=False, stderr=0.02, n=15, test="t::a"),
        **{
            "clip_score.nonmem": metric_entry(clip, higher_is_better=True, stderr=0.3, n=100),
            "detect_auc.wen.k1": metric_entry(
                0.93, higher_is_better=True, stderr=0.03, n=115, ci=(0.88, 0.97)
            ),
            "mem_rate_0.5.dup=64": metric_entry(0.8, higher_is_better=False, stderr=0.1, n=3),
            "d1": metric_entry(None, higher_is_better=False, reason="no traces"),
        },
    )
    doc["model"]["name"] = model
    doc["mitigation"] = {"spec": mitigation, "name": mitigation.split(":")[0], "fingerprint": "x"}
    steps = list(range(1, 6))
    doc["series"] = {
        "decomposition.memorized": {
            "steps": steps,
            "W0": [0.1, 0.3, 0.6, 0.8, 1.0],
            "WT": [0.9, 0.6, 0.3, 0.1, 0.0],
            "ref0_sqrt_abar": [0.1, 0.2, 0.4, 0.7, 1.0],
            "refT_sqrt_abar": [0.99, 0.9, 0.8, 0.6, 0.1],
            "n_prompts": 15,
        },
        "decomposition.nonmemorized": {
            "steps": steps,
            "W0": [0.05, 0.1, 0.3, 0.6, 0.9],
            "WT": [0.95, 0.9, 0.8, 0.5, 0.1],
            "n_prompts": 100,
        },
        "roc.wen.k1": {"fpr": [0, 0.1, 1], "tpr": [0, 0.9, 1], "auc": 0.93},
    }
    return doc


def test_build_tables_and_figures(tmp_path):
    root = tmp_path / "leaderboard"
    write_results(root / "results" / "bundled" / "none.json", _run("none", 0.61, 28.0))
    write_results(
        root / "results" / "bundled" / "guidance-scale-scale=3.json",
        _run("guidance-scale:scale=3", 0.35, 27.1),
    )
    (root / "results" / "bundled" / "broken.json").write_text(json.dumps({"schema": "nope"}))
    readme, errors, entries = L.build(root)
    assert [e.mitigation for e in entries] == ["none", "guidance-scale-scale=3"]
    assert len(errors) == 1 and "broken.json" in errors[0] and "not a memberbench" in errors[0]
    text = readme.read_text()
    assert "| mitigation " in text  # github table
    assert "SSCD ↓" in text and "CLIP non-mem ↑" in text
    assert "0.61 ± 0.02" in text and "28 ± 0.3" in text
    assert "n/a" in text  # null D1 with a reason
    assert "[`site/index.html`](site/index.html)" in text  # the link to the full leaderboard
    assert "## How to submit" in text and "memberbench validate" in text
    assert "## Files that failed validation" in text
    for fig in ("decomposition_bundled.png", "roc_bundled.png", "sscd_vs_clip.png"):
        p = root / "figures" / fig
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{fig}" in text


def test_detection_by_group_has_its_own_table(tmp_path):
    """The declared sections (the site's tables; the README keeps only the headline)."""
    root = tmp_path / "leaderboard"
    doc = _run("none", 0.61, 28.0)
    doc["metrics"]["detect_auc.wen.k1.dup=256"] = metric_entry(
        0.71, higher_is_better=True, stderr=0.1, n=43
    )
    doc["metrics"]["detect_auc.wen.k50.dup=256"] = metric_entry(
        0.52, higher_is_better=True, stderr=0.1, n=43
    )
    write_results(root / "results" / "bundled" / "none.json", doc)
    write_results(root / "results" / "bundled" / "older.json", _run("older", 0.6, 28.0))
    _, _, entries = L.build(root, figures=False)
    text = "\n".join(L.section_lines(entries))
    pooled = text.split("## Detection (prompts measured memorized vs not")[1].split("\n## ")[0]
    by_group = text.split("## Detection by group")[1].split("\n## ")[0]
    assert "detect_auc.wen.k1 ↑" in pooled and "dup=256" not in pooled
    assert "detect_auc.wen.k1.dup=256 ↑" in by_group and "0.71 ± 0.1 (43)" in by_group
    assert "k50" not in by_group  # only the headline detectors' windows get a column
    assert "| older " in pooled and "older" not in by_group  # a run without them: no empty row


def test_empty_leaderboard(tmp_path):
    (tmp_path / "results").mkdir()
    readme, errors, entries = L.build(tmp_path, figures=False)
    assert entries == [] and errors == []
    assert "_No results submitted yet._" in readme.read_text()


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("none", "none"),
        (
            "guidance-schedule:transition_t=800,before=-2",
            "guidance-schedule-transition_t=800-before=-2",
        ),
        ("bundled:path=/tmp/x", "bundled-path=-tmp-x"),
        ("../../etc", "etc"),
    ],
)
def test_slug(spec, expected):
    assert L.slug(spec) == expected


def test_add_run_copies_and_relinks_per_prompt(tmp_path):
    from memberbench.results import load_per_prompt, validate_file

    rows = [{"set": "memorized", "prompt_id": "p1", "metrics": {"sscd_mean": 0.7}}]
    src = write_results(
        tmp_path / "anywhere" / "my-run.json", _run("guidance-scale:scale=3", 0.3, 27), rows
    )
    dst = L.add_run(src, tmp_path / "lb")
    assert dst == tmp_path / "lb" / "results" / "bundled" / "guidance-scale-scale=3.json"
    errors, doc = validate_file(dst)
    assert errors == [] and doc["per_prompt"]["path"] == "guidance-scale-scale=3.prompts.jsonl"
    assert load_per_prompt(dst, doc) == rows
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(L.ResultsError, match="not added"):
        L.add_run(bad, tmp_path / "lb")


def test_tradeoff_figure_panels_and_labels(tmp_path):
    """The trade-off figure adds a panel for the most duplicated group when runs report one, and
    labels points by their setting (the colour names the method)."""
    root = tmp_path / "leaderboard"
    a = _run("initial-noise:target=0.3,lr=0.02", 0.3, 27.0)
    a["metrics"]["sscd_mean.dup=64"] = metric_entry(0.5, higher_is_better=False, stderr=0.1, n=3)
    a["metrics"]["sscd_mean.dup=256"] = metric_entry(0.6, higher_is_better=False, stderr=0.1, n=3)
    a["metrics"]["sscd_mean.dup=bad"] = metric_entry(0.1, higher_is_better=False, stderr=0.1, n=3)
    write_results(root / "results" / "bundled" / "sweep--initial-noise-target=0.3-lr=0.02.json", a)
    write_results(root / "results" / "bundled" / "none.json", _run("none", 0.61, 28.0))
    _, errors, entries = L.build(root, figures=False)
    assert not errors
    assert L._most_duplicated_sscd_key(entries) == "sscd_mean.dup=256"
    by_name = {e.mitigation: e for e in entries}
    assert L.tradeoff_label(by_name["sweep--initial-noise-target=0.3-lr=0.02"]) == (
        "target=0.3-lr=0.02"
    )
    assert L.tradeoff_label(by_name["none"]) == "none"
    # only the run with the group enters its panel; both enter the whole-set panel
    assert [e.mitigation for e, _, _ in L.tradeoff_points(entries, "sscd_mean.dup=256")] == [
        "sweep--initial-noise-target=0.3-lr=0.02"
    ]
    assert len(L.tradeoff_points(entries, "sscd_mean")) == 2
    out = L.plot_sscd_vs_clip(entries, tmp_path / "f.png")
    h, w = mpimg.imread(out).shape[:2]
    single = L.plot_sscd_vs_clip([by_name["none"]], tmp_path / "g.png")
    h1, w1 = mpimg.imread(single).shape[:2]
    assert w > w1 + 0.9 * h1  # a second panel (one panel is 7.5 x 6 in) beside the first
    assert L._most_duplicated_sscd_key([by_name["none"]]) is None


# --------------------------------------------------------------------------------------------
# the summary README (issue 25.2): settings, baselines, headline, verdicts, detection


REPO = Path(__file__).resolve().parents[1]
BOARD = REPO / "leaderboard"


def _std(doc: dict) -> dict:
    """The quick profile's settings: 4 seeds, 50 steps, no prompt limit."""
    doc["sampling"]["seeds"] = [0, 1, 2, 3]
    doc["run"]["profile"] = "quick"
    return doc


def _flat(text: str) -> str:
    """Prose with its line breaks (the README wraps at 100 columns) as spaces."""
    return " ".join(text.split())


def _tables(section: str) -> list[list[list[str]]]:
    """The GitHub tables of a piece of markdown, as rows of cells (header first)."""
    tables, cur = [], []
    for line in section.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                cur.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif cur:
            tables.append(cur)
            cur = []
    return tables


def test_display_key_writes_the_whole_trajectory_as_kT():
    assert L.display_key("detect_auc.d1.k50", 50) == "detect_auc.d1.kT"
    assert L.display_key("detect_auc.d1.k20", 20) == "detect_auc.d1.kT"
    assert L.display_key("detect_auc.d1.k20.dup=4", 20) == "detect_auc.d1.kT.dup=4"
    assert L.display_key("detect_auc.d1.k2", 20) == "detect_auc.d1.k2"  # not a prefix match
    assert L.display_key("detect_auc.d1.k5", 20) == "detect_auc.d1.k5"
    assert L.display_key("sscd_mean.dup=20", 20) == "sscd_mean.dup=20"  # only windows
    assert L.display_key("detect_auc.d1.k50", None) == "detect_auc.d1.k50"


def test_committed_summary_is_short_and_its_headline_columns_are_never_empty():
    text = (BOARD / "README.md").read_text()
    lines = text.splitlines()
    # a summary: a frame per model and a line or two per run (the sweep's table and verdicts),
    # every other table on the site (it was 2,292 lines of up to 559 for 23 runs of one model)
    runs = list((BOARD / "results").glob("*/*.json"))
    models = {p.parent.name for p in runs}
    assert len(lines) < 120 * len(models) + 3 * len(runs), (len(lines), len(models), len(runs))
    assert max(map(len, lines)) < 300
    assert "[`site/index.html`](site/index.html)" in text
    model = text.split("## Model `bundled`")[1].split("### Detection")[0]
    tables = _tables(model)
    metric_tables = [t for t in tables if t[0][1].startswith("SSCD")]
    assert len(metric_tables) == 2  # the headline setting and the sweep's setting
    for t in metric_tables:
        header, rows = t[0], t[1:]
        assert len(header) - 1 <= 10  # the mitigation, then at most 10 metrics
        for j, title in enumerate(header[1:], 1):
            assert any(r[j] for r in rows), f"column {title} is empty in every row"
        assert not any(h.startswith(("mem@0.75", "s/img")) for h in header)
    # mem@0.75 is 0 in every committed run: named once, not a column
    assert "the same in every run of this model: mem@0.75 = 0" in _flat(model)
    headline = text.split("### Headline (setting 1)")[1].split("###")[0]
    assert "Baseline: `none`." in _flat(headline) and "nonmemorized (40)" in _flat(headline)
    rows = _tables(headline)[0][1:]
    assert [r[0] for r in rows] == ["`none`"]  # the 20-prompt sweep rows are not in it
    sweep = text.split("### Setting 2: non-standard (not in the headline)")[1].split("###")[0]
    assert "nonmemorized prompts limited to 20" in _flat(sweep)
    assert "Baseline: `sweep--none`." in _flat(sweep) and "nonmemorized (20)" in _flat(sweep)
    assert all(r[0].endswith("†") for r in _tables(sweep)[0][1:])


def test_committed_verdicts_agree_with_memberbench_compare(capsys):
    """Each verdict of the sweep's table, one per mechanism's level, is the exit status of
    `memberbench compare` run on the two files with the tolerance the README names; the levels
    are the ones the setting's own guidance-free row tells apart (dup=64 loses a third of its
    SSCD without guidance, dup=256 none)."""
    from memberbench import cli

    text = (BOARD / "README.md").read_text()
    sweep = text.split("### Setting 2")[1].split("###")[0]
    specs = re.findall(r'--fail\s+"([^"]+)"', sweep)
    assert specs == [
        "sscd_mean.dup=64:-50%,clip_score.nonmem:2se",
        "sscd_mean.dup=256:-50%,clip_score.nonmem:2se",
    ]
    verdict_table = next(t for t in _tables(sweep) if t[0][-1].startswith("verdict"))
    rows = len(list((BOARD / "results" / "bundled").glob("sweep--*.json"))) - 1  # less the baseline
    assert len(verdict_table) - 1 == rows == 35
    base = BOARD / "results" / "bundled" / "sweep--none.json"
    passes = [0, 0]
    for row in verdict_table[1:]:
        run = BOARD / "results" / "bundled" / (row[0].strip("`") + ".json")
        for j, spec in enumerate(specs):
            rc = cli.main(["compare", str(base), str(run), "--fail", spec, "--only-checked"])
            capsys.readouterr()
            assert (rc == 0) == (row[-2 + j] == "**pass**"), (row, spec)
            passes[j] += rc == 0
    assert f"**{passes[0]} of {rows} pass**" in _flat(sweep)
    assert f"**{passes[1]} of {rows} pass**" in _flat(sweep)
    # guidance-driven level: initial-noise at targets 0.15 and 0.3 (2.1-2.3x the cost) and
    # overestimation-steer at 0.35; the other level: steer at 0.35 and 0.45
    assert passes == [3, 2]


def test_baselines_one_per_setting_and_verdicts_by_hand(tmp_path):
    """Two settings of one model (40 vs 20 non-memorized prompts): each row is compared with its
    own setting's baseline; the verdicts follow the tolerance rule worked by hand."""
    root = tmp_path / "lb"

    def run(spec: str, sscd256: float, clip: float, limited: bool) -> dict:
        doc = _std(_run(spec, 0.5, clip))
        doc["metrics"]["sscd_mean.dup=256"] = metric_entry(
            sscd256, higher_is_better=False, stderr=0.05, n=4
        )
        doc["metrics"]["clip_score.nonmem"] = metric_entry(
            clip, higher_is_better=True, stderr=1.0, n=20
        )
        if limited:
            doc["prompt_sets"]["nonmemorized"].update(n=20, limit=20)
        return doc

    bundled = root / "results" / "bundled"
    write_results(bundled / "none.json", run("none", 0.9, 60.0, False))
    write_results(bundled / "sweep--none.json", run("none", 0.6, 66.0, True))
    # SSCD 0.6 -> 0.2 (-67%, at least -50%: ok); CLIP 66 -> 65 (worse by 1 <= 2 sqrt(2): ok)
    write_results(bundled / "sweep--a.json", run("a:x=1", 0.2, 65.0, True))
    # SSCD 0.6 -> 0.45 (-25%: FAIL); CLIP 66 -> 61 (worse by 5 > 2.83: FAIL)
    write_results(bundled / "sweep--b.json", run("b:x=1", 0.45, 61.0, True))
    text = L.build(root, figures=False)[0].read_text()
    head = text.split("### Headline (setting 1)")[1].split("###")[0]
    assert "Baseline: `none`." in _flat(head) and [r[0] for r in _tables(head)[0][1:]] == ["`none`"]
    other = text.split("### Setting 2: non-standard")[1].split("###")[0]
    assert "Baseline: `sweep--none`." in _flat(other)
    assert "nonmemorized prompts limited to 20" in _flat(other)
    verdict = {r[0]: r for r in next(t for t in _tables(other) if t[0][-1] == "verdict")[1:]}
    assert sorted(verdict) == ["`sweep--a`", "`sweep--b`"]
    assert verdict["`sweep--a`"][1] == "0.6 → 0.2 (-67%) ok"
    assert verdict["`sweep--a`"][2] == "66 → 65 (-2%) ok" and verdict["`sweep--a`"][3] == "**pass**"
    assert "FAIL" in verdict["`sweep--b`"][1] and "FAIL" in verdict["`sweep--b`"][2]
    assert "**1 of 2 pass**" in _flat(other)


def test_a_short_run_added_is_marked_out_of_the_headline_with_the_same_column_names(tmp_path):
    """`--add` of a 2-prompt, 20-step run: its own setting, marked, its k20 window shown under
    the name of the whole-trajectory window (no new column)."""
    from memberbench import cli

    root = tmp_path / "lb"
    full = _std(_run("none", 0.6, 28.0))
    full["metrics"]["detect_auc.d1.k50"] = metric_entry(
        0.9, higher_is_better=True, stderr=0.05, n=60
    )
    write_results(root / "results" / "bundled" / "none.json", full)
    short = _std(_run("guidance-scale:scale=3", 0.3, 27.0))
    short["sampling"]["steps"] = 20
    short["prompt_sets"]["memorized"].update(n=2, limit=2)
    short["metrics"]["detect_auc.d1.k20"] = metric_entry(
        0.75, higher_is_better=True, stderr=0.2, n=4
    )
    src = write_results(tmp_path / "short.json", short)
    assert cli.main(["leaderboard", "--root", str(root), "--no-figures", "--add", str(src)]) == 0
    text = (root / "README.md").read_text()
    assert "k20" not in text
    head = text.split("### Headline (setting 1)")[1].split("###")[0]
    assert [r[0] for r in _tables(head)[0][1:]] == ["`none`"]
    other = text.split("### Setting 2: non-standard (not in the headline)")[1].split("###")[0]
    assert "memorized prompts limited to 2" in _flat(other)
    assert "20 steps (profile quick: 50)" in _flat(other)
    table = _tables(other)[0]
    assert table[1][0] == "`guidance-scale-scale=3` †"
    assert table[1][table[0].index("AUC D1 ↑")] == "0.75 ± 0.2"
    assert "AUC D1 ↑" in _tables(head)[0][0]  # the same title in both settings' tables


def test_detection_table_rows_come_from_the_declared_detectors(tmp_path):
    root = tmp_path / "lb"
    doc = _std(_run("none", 0.6, 28.0))
    doc["model"]["device"] = "cuda:0"
    doc["environment"]["device_name"] = "NVIDIA H100 80GB HBM3"
    m = doc["metrics"]
    m["detect_tpr1.wen.k1"] = metric_entry(0.4, higher_is_better=True, n=115, ci=(0.2, 0.6))
    m["detect_unet_evals.wen.k1"] = metric_entry(8.0, higher_is_better=False, n=115)
    m["detect_grad_passes.wen.k1"] = metric_entry(0.0, higher_is_better=False, n=115)
    m["detect_s_per_prompt.wen.k1"] = metric_entry(0.0123, higher_is_better=False, n=115)
    m["detect_auc.sharpness.k1"] = metric_entry(0.8, higher_is_better=True, n=115, ci=(0.6, 0.9))
    m["detect_grad_passes.sharpness.k1"] = metric_entry(16.0, higher_is_better=False, n=115)
    m["detect_auc.wen.k50"] = metric_entry(0.97, higher_is_better=True, n=115)
    write_results(root / "results" / "bundled" / "none.json", doc)
    text = L.build(root, figures=False)[0].read_text()
    det = text.split("### Detection: `bundled` (run `none`)")[1].split("<details>")[0]
    assert "cuda:0 (NVIDIA H100 80GB HBM3)" in _flat(det)
    header, *rows = _tables(det)[0]
    assert len(header) <= 10
    by = {(r[0], r[1]): dict(zip(header, r)) for r in rows}
    assert list(by) == [("`sharpness`", "k1"), ("`wen`", "k1"), ("`wen`", "kT (all 50)")]
    wen = by[("`wen`", "k1")]
    assert (wen["AUC ↑"], wen["AUC 95% CI"], wen["TPR@1%FPR ↑"], wen["TPR 95% CI"]) == (
        "0.93",
        "[0.88, 0.97]",
        "0.4",
        "[0.2, 0.6]",
    )
    assert (wen["UNet evals"], wen["grad passes"], wen["s/prompt"]) == ("8", "0", "0.0123")
    assert wen["needs image"] == "no" and by[("`sharpness`", "k1")]["grad passes"] == "16"


def test_detector_by_model_matrix_with_two_models(tmp_path):
    root = tmp_path / "lb"
    for model, auc in (("bundled", 0.93), ("sd-1.4", 0.61)):
        doc = _std(_run("none", 0.6, 28.0, model=model))
        doc["metrics"]["detect_auc.wen.k1"]["value"] = auc
        write_results(root / "results" / model / "none.json", doc)
    text = L.build(root, figures=False)[0].read_text()
    assert "### Detection: `bundled`" in text and "### Detection: `sd-1.4`" in text
    header, row = _tables(text.split("## Detection across models")[1])[0]
    assert header == ["detector", "k", "`bundled` (run `none`)", "`sd-1.4` (run `none`)"]
    assert row == ["`wen`", "k1", "0.93 [0.88, 0.97]", "0.61 [0.88, 0.97]"]


def test_roc_legends_lie_outside_the_axes():
    """No legend box overlaps an axes: every curve stays visible."""
    entries, _ = L.collect(BOARD / "results")
    none = next(e for e in entries if e.mitigation == "none")
    fig = L.roc_figure(none)
    try:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        axes = fig.axes
        assert len(axes) == 3  # one step or less, 5 steps, the whole trajectory
        boxes = [ax.get_window_extent(r) for ax in axes]
        for ax in axes:
            leg = ax.get_legend().get_window_extent(r)
            assert not any(leg.overlaps(b) for b in boxes)
        n_curves = sum(len(ax.get_lines()) - 1 for ax in axes)  # minus the chance diagonal
        assert n_curves == sum(1 for k in none.doc["series"] if k.startswith("roc."))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_tradeoff_figure_shows_both_utility_scenarios(tmp_path):
    """MemBench's two-scenario utility: a row of panels with CLIP score on the non-memorized
    (general) prompts, a row with CLIP score on the memorized prompts; each panel's points sit at
    the runs' own values of that scenario's metric."""
    root = tmp_path / "leaderboard"
    runs = {"none": (0.61, 28.0, 30.5), "guidance-scale:scale=2": (0.4, 26.0, 24.0)}
    for spec, (sscd, clip_non, clip_mem) in runs.items():
        doc = _run(spec, sscd, clip_non)
        doc["metrics"]["clip_score"] = metric_entry(
            clip_mem, higher_is_better=True, stderr=0.4, n=15
        )
        write_results(root / "results" / "bundled" / f"{L.slug(spec)}.json", doc)
    _, errors, entries = L.build(root, figures=False)
    assert not errors
    fig = L.tradeoff_figure(entries)
    try:
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert len(axes) == 2  # one SSCD column (no groups) x two scenarios
        by_label = {ax.get_xlabel(): ax for ax in axes}
        non = next(ax for lbl, ax in by_label.items() if "(clip_score.nonmem)" in lbl)
        mem = next(ax for lbl, ax in by_label.items() if "(clip_score)" in lbl)
        assert "non-memorized" in non.get_xlabel() and "memorized prompts" in mem.get_xlabel()

        def xs(ax):
            return sorted(float(c.lines[0].get_xdata()[0]) for c in ax.containers)

        assert xs(non) == [26.0, 28.0]
        assert xs(mem) == [24.0, 30.5]
        # a run without CLIP on the memorized prompts drops out of that row only
        only = L.tradeoff_points(entries, "sscd_mean", "clip_score")
        assert len(only) == 2 and {c["value"] for _, c, _ in only} == {24.0, 30.5}
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    # no run reports the memorized-prompt CLIP score: the figure has the general row alone
    bare = [e for e in entries]
    for e in bare:
        e.metrics.pop("clip_score")
    fig = L.tradeoff_figure(bare)
    try:
        assert [ax.get_xlabel() for ax in fig.axes if ax.get_visible()] == [
            "CLIP score on non-memorized (general) prompts (clip_score.nonmem) ↑"
        ]
    finally:
        plt.close(fig)


def test_tradeoff_labels_do_not_overlap_even_for_coinciding_points(tmp_path):
    """The committed sweep has two settings of prompt-embedding with equal scores: their numbers
    are placed apart, every number is listed beside the axes."""
    entries, _ = L.collect(BOARD / "results")
    sweep = [e for e in entries if e.mitigation.startswith("sweep--")]
    fig = L.tradeoff_figure(sweep)
    try:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        for ax in fig.axes:
            texts = [t for t in ax.texts if t.get_text().isdigit()]
            assert len(texts) == len(L.tradeoff_points(sweep, "sscd_mean")) or len(texts) > 0
            boxes = [t.get_window_extent(r) for t in texts]
            for i, a in enumerate(boxes):
                for b in boxes[i + 1 :]:
                    assert not a.overlaps(b), "two point numbers overlap"
        key = fig.texts[-1].get_text().splitlines()
        assert len(key) == len(sweep) and key[0].split()[0] == "1"
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_build_is_deterministic(tmp_path):
    """Two builds of the same rows give the same README and the same figure bytes."""
    import shutil

    outs = []
    for name in ("a", "b"):
        shutil.copytree(BOARD / "results", tmp_path / name / "results")
        L.build(tmp_path / name)
        outs.append(
            {
                p.relative_to(tmp_path / name).as_posix(): p.read_bytes()
                for p in sorted((tmp_path / name).rglob("*"))
                if p.is_file() and "results" not in p.parts
            }
        )
    assert outs[0] == outs[1] and "figures/sscd_vs_clip.png" in outs[0]


# --------------------------------------------------------------------------------------------
# bad input (issue 25): `--add` of a bad file changes nothing; older schemas migrated or refused


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def built(tmp_path):
    root = tmp_path / "lb"
    write_results(root / "results" / "bundled" / "none.json", _std(_run("none", 0.6, 28.0)))
    L.build(root)  # with its figures, as the command does
    return root


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: d.pop("metrics"), "does not validate"),
        (lambda d: d["metrics"]["sscd_mean"].update(value="0.3"), "does not validate"),
        (lambda d: d.update(schema_version=3), "schema_version 3 is newer"),
        (lambda d: d.update(schema_version=0), "schema_version 0 is no longer supported"),
    ],
)
def test_add_of_a_file_that_fails_changes_nothing(tmp_path, built, capsys, breakage, message):
    from memberbench import cli

    doc = _std(_run("guidance-scale:scale=3", 0.3, 27.0))
    breakage(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    before = _tree(built)
    assert cli.main(["leaderboard", "--root", str(built), "--add", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not added, nothing was written" in err and message in err
    assert _tree(built) == before


def test_add_of_a_version_1_file_migrates_it(tmp_path, built, capsys):
    """A schema-1 file is upgraded on the way in: the row written is version 2, its set-label
    detection under the variant's name (results.MIGRATIONS)."""
    from memberbench import cli
    from memberbench.results import SCHEMA_VERSION

    doc = _std(_run("guidance-scale:scale=3", 0.3, 27.0))
    doc["schema_version"] = 1
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    assert cli.main(["leaderboard", "--root", str(built), "--add", str(old)]) == 0
    capsys.readouterr()
    added = json.loads((built / "results" / "bundled" / "guidance-scale-scale=3.json").read_text())
    assert added["schema_version"] == SCHEMA_VERSION == 2
    assert (
        "detect_auc_set.wen.k1" in added["metrics"] and "detect_auc.wen.k1" not in added["metrics"]
    )
    assert added["metrics"]["detect_auc_set.wen.k1"]["value"] == 0.93


def test_levels_are_told_apart_by_the_settings_guidance_free_run(tmp_path):
    """dup=64 loses 40% of its SSCD without guidance (guidance-driven), dup=256 5% (memorized
    without guidance), dup=1 is below half the peak (not memorized): two checks, two verdicts."""
    root = tmp_path / "lb"
    bundled = root / "results" / "bundled"

    def run(spec: str, s1: float, s64: float, s256: float, clip: float, cfg=None) -> dict:
        doc = _std(_run(spec, 0.5, clip))
        for k, v in (("1", s1), ("64", s64), ("256", s256)):
            doc["metrics"][f"sscd_mean.dup={k}"] = metric_entry(
                v, higher_is_better=False, stderr=0.01, n=4
            )
        doc["metrics"]["clip_score.nonmem"] = metric_entry(
            clip, higher_is_better=True, stderr=1.0, n=20
        )
        if cfg is not None:
            doc["mitigation"]["config"] = cfg
        return doc

    write_results(bundled / "none.json", run("none", 0.2, 0.5, 0.6, 66.0))
    write_results(
        bundled / "g1.json",
        run("guidance-scale:scale=1.0", 0.1, 0.3, 0.57, 66.0, {"scale": 1.0}),
    )
    # halves dup=64 only: passes the guidance-driven check, fails the other
    write_results(bundled / "a.json", run("a:x=1", 0.2, 0.2, 0.5, 65.0))
    text = L.build(root, figures=False)[0].read_text()
    assert '"sscd_mean.dup=64:-50%,clip_score.nonmem:2se"' in _flat(text)
    assert '"sscd_mean.dup=256:-50%,clip_score.nonmem:2se"' in _flat(text)
    table = next(t for t in _tables(text) if t[0][-1].startswith("verdict"))
    rows = {r[0]: r for r in table[1:]}
    assert rows["`a`"][-2:] == ["**pass**", "fail"]
    assert rows["`g1`"][-2:] == ["fail", "fail"]  # -40% is not -50%
