"""The leaderboard builder: tables, figures, invalid submissions."""

from __future__ import annotations

import json

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
    assert "| model   | mitigation" in text  # github table
    assert "SSCD ↓" in text and "CLIP non-mem ↑" in text
    assert "0.61 ± 0.02 (15)" in text and "28 ± 0.3 (100)" in text
    assert "n/a" in text  # null D1 with a reason
    assert "mem_rate_0.5.dup=64" in text
    assert "[0.88, 0.97]" in text  # CI in the per-run details
    assert "## How to submit" in text and "memberbench validate" in text
    assert "## Files that failed validation" in text
    for fig in ("decomposition_bundled.png", "roc_bundled.png", "sscd_vs_clip.png"):
        p = root / "figures" / fig
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{fig}" in text


def test_detection_by_group_has_its_own_table(tmp_path):
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
    readme, _, _ = L.build(root, figures=False)
    text = readme.read_text()
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
    assert w > 2 * h  # two panels side by side (one panel is 7.5 x 6 in)
    single = L.plot_sscd_vs_clip([by_name["none"]], tmp_path / "g.png")
    h1, w1 = mpimg.imread(single).shape[:2]
    assert w1 < 1.5 * h1
    assert L._most_duplicated_sscd_key([by_name["none"]]) is None
