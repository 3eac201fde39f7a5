"""Metric and detector declarations (memberbench/metrics/declare.py): recorded names match
exactly one declaration, the leaderboard's tables come from the declarations (the committed
rows regenerate the committed README byte for byte), and a toy metric declared in this test
module reaches the leaderboard without any other file changing."""

from __future__ import annotations

import json
import re
import shutil
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from memberbench import leaderboard as L
from memberbench.metrics import declare as D
from memberbench.metrics.decomposition import noise_suppression
from memberbench.types import MemberbenchError, Trace

REPO = Path(__file__).resolve().parents[1]
BOARD = REPO / "leaderboard"
TASKS = REPO / "tasks"


def _committed_docs() -> list[dict]:
    """Every committed results file, as stored and as read (schema 1 names renamed)."""
    from memberbench.results import load_results

    paths = sorted((BOARD / "results").glob("*/*.json"))
    return [json.loads(p.read_text()) for p in paths] + [load_results(p) for p in paths]


def test_every_committed_metric_matches_exactly_one_declaration():
    """Every name in every committed results file (none.json: 395 of them since the detectors
    of issue 24; 169 before) has exactly one declaration, and the declared direction is the one
    the run recorded."""
    docs = _committed_docs()
    assert len(docs) >= 46
    names = {n: m for doc in docs for n, m in doc["metrics"].items()}
    assert len(json.loads((BOARD / "results/bundled/none.json").read_text())["metrics"]) >= 169
    for name, entry in names.items():
        hit = D.matching(name)
        assert [d.name for d in hit] != [], name
        assert len(hit) == 1, (name, [d.name for d in hit])
        assert hit[0].higher_is_better == entry["higher_is_better"], name


@pytest.mark.parametrize(
    "key, decl",
    [
        ("sscd_mean", "sscd_mean"),
        ("sscd_mean.g=7.5.nonmem", "sscd_mean"),
        ("sscd_mean.dup=256", "sscd_mean"),
        ("mem_rate_0.75.MV", "mem_rate_0.75"),
        ("d1.ddim_ideal.early.nonmem", "d1"),
        ("d1.paper.nonmem", "d1.paper"),
        ("detect_auc.wen_raw.k5.dup=16", "detect_auc"),
        ("detect_tpr1_wen_set.d1_paper.k50", "detect_tpr1_wen_set"),
        ("corr_spearman.d1_paper_sscd.pooled", "corr"),
        ("wen.k1.g=3.nonmem", "wen"),
        ("k_pair_u.nonmem", "k_pair_u"),
    ],
)
def test_qualified_names_find_their_declaration(key, decl):
    assert D.lookup(key).name == decl


@pytest.mark.parametrize(
    "key",
    ["sscd_mean2", "d1.late", "detect_auc.nosuch.k1", "detect_auc.wen.kx", "corr_kendall.d1_sscd"],
)
def test_undeclared_names_are_refused_with_the_fix(key):
    assert D.matching(key) == ()
    with pytest.raises(MemberbenchError, match="is not declared: declare it once with.*adding-a"):
        D.lookup(key)


def test_malformed_declarations_fail_when_declared():
    bad = dict(family="toy", higher_is_better=False, description="toy")
    with pytest.raises(MemberbenchError, match=r"unknown placeholder \{nope\}; use one of \{g\}"):
        D.declare("toy_x", keys=("toy_x.{nope}",), **bad)
    with pytest.raises(MemberbenchError, match=r"'\[' without '\]'"):
        D.declare("toy_x", keys=("toy_x[.nonmem",), **bad)
    with pytest.raises(MemberbenchError, match="section key 'toy_y' is not one of its keys"):
        D.declare("toy_x", sections=(D.Placement("overestimation", ("toy_y",)),), **bad)
    with pytest.raises(MemberbenchError, match="unknown leaderboard section 'misc'; known: detec"):
        D.declare("toy_x", sections=(D.Placement("misc", ("toy_x",)),), **bad)
    with pytest.raises(MemberbenchError, match="headline key 'toy_x.k1' is not one of its keys"):
        D.declare("toy_x", headline=(D.Headline("toy_x.k1", "X", 1),), **bad)
    with pytest.raises(MemberbenchError, match="higher_is_better must be True, False or None"):
        D.declare("toy_x", family="toy", higher_is_better="up", description="toy")
    with pytest.raises(MemberbenchError, match="declared twice"):
        D.declare("sscd_mean", **bad)  # declared in memberbench.metrics.sscd already
    assert D.find("toy_x") is None and D.lookup("sscd_mean").module == "memberbench.metrics.sscd"


def test_record_declarations_are_checked_when_declared():
    """record= (the generic task's opt-in): names that are the metric's keys, sides that are
    prompt sets, a compute function; two declarations recording one name is an error."""
    bad = dict(family="toy", higher_is_better=False, description="toy")

    def fn(mb, side, k=1):
        return {}

    with pytest.raises(MemberbenchError, match="record= needs a compute function"):
        D.declare("toy_r", record="toy_r", **bad)
    with pytest.raises(MemberbenchError, match=r"recorded name 'toy_r\.k1' is not one of its k"):
        D.declare("toy_r", record="toy_r.k1", compute=fn, **bad)
    with pytest.raises(MemberbenchError, match="sides must be 'memorized' and/or 'nonmem"):
        D.declare("toy_r", record=D.Record("toy_r", sides=("both",)), compute=fn, **bad)
    with pytest.raises(MemberbenchError, match="record= takes recorded names, Records or"):
        D.declare("toy_r", record=[3], compute=fn, **bad)
    assert D.find("toy_r") is None
    try:
        d = D.declare("toy_r", keys=("toy_r.k{k}[.nonmem]",), record={"toy_r.k5": {"k": 5}},
                      compute=fn, **bad)  # fmt: skip
        assert d.records == (D.Record("toy_r.k5", (("k", 5),)),)
        assert [d.records[0].name(s) for s in d.records[0].sides] == ["toy_r.k5", "toy_r.k5.nonmem"]
        assert D.get_record("toy_r.k5") == (d, d.records[0])
        D.declare("toy_r2", keys=("toy_r.k5[.nonmem]",), record="toy_r.k5", compute=fn, **bad)
        with pytest.raises(MemberbenchError, match=r"'toy_r\.k5' asked for by two declarations"):
            D.recorded()
    finally:
        D.forget("toy_r", kind="metric")
        D.forget("toy_r2", kind="metric")
    with pytest.raises(MemberbenchError, match="no declaration records 'toy_r.k5'"):
        D.get_record("toy_r.k5")
    assert [r.key for _, r in D.recorded()] == ["seed_sscd", "latent_l2"]  # the in-tree ones


def test_overlapping_declarations_are_reported():
    try:
        D.declare(
            "toy_overlap",
            keys=("sscd_max.nonmem",),
            family="t",
            higher_is_better=False,
            description="overlaps sscd_max",
        )
        with pytest.raises(MemberbenchError, match=r"matches several declarations \(sscd_max, "):
            D.lookup("sscd_max.nonmem")
        assert D.find("sscd_max.nonmem") is None
    finally:
        D.forget("toy_overlap")
    assert D.lookup("sscd_max.nonmem").name == "sscd_max"


def test_detectors_are_declared_with_their_compute():
    names = [d.name for d in D.detectors()]
    assert sorted(names) == [
        "anisotropy",
        "d1",
        "d1_paper",
        "d1_rt",
        "nsupp",
        "sharpness",
        "webster",
        "wen",
        "wen_raw",
    ]
    assert D.get_detector("d1").needs_training_image
    assert not D.get_detector("nsupp").needs_training_image
    with pytest.raises(
        MemberbenchError, match="unknown detector 'nope'; declared: anisotropy, d1, d1_paper"
    ):
        D.get_detector("nope")


def test_noise_suppression_by_hand():
    """-sum_{i<=k} (<x_i, x_T>/||x_T||^2 - sqrt(1 - abar_i)) on numbers chosen by hand."""
    t = Trace(
        series={"latent_dot_xT": [8.0, 4.0, 2.0], "abar_next": [0.36, 0.64, 0.84]},
        scalars={"xT_norm2": 10.0},
    )
    # shares 0.8, 0.4, 0.2 against sqrt(1 - abar) = 0.8, 0.6, 0.4
    assert noise_suppression(t, 1) == pytest.approx(0.0)
    assert noise_suppression(t, 2) == pytest.approx(0.2)
    assert noise_suppression(t, 3) == pytest.approx(0.4)
    with pytest.raises(MemberbenchError, match="xT_norm2"):
        noise_suppression(Trace(series={"latent_dot_xT": [1.0], "abar_next": [0.5]}), 1)


def test_headline_order_and_places():
    board = [(h.key, h.title) for h in D.headlines("leaderboard")]
    assert board[:5] == [
        ("sscd_mean", "SSCD"),
        ("mem_rate_0.5", "mem@0.5"),
        ("mem_rate_0.75", "mem@0.75"),
        ("d1", "D1"),
        ("d2", "D2"),
    ]
    assert board[-2:] == [("unet_evals_per_image", "UNet evals/img"), ("wall_s_per_image", "s/img")]
    summary = [h.key for h in D.headlines("summary")]
    assert "sscd_mean.nonmem" in summary and "sscd_mean.nonmem" not in dict(board)
    assert "detect_auc.d1.k50" in dict(board) and "detect_auc.d1.k50" not in summary


def _strip_figures(text: str) -> str:
    """The README without its "## Figures" section (built here without drawing them)."""
    if "## Figures\n" not in text:
        return text
    head, rest = text.split("## Figures\n", 1)
    return head + rest[rest.index("\n## ") + 1 :]


def test_committed_leaderboard_regenerates_byte_identically(tmp_path):
    """The committed rows, built by the declarations, give the committed README exactly."""
    shutil.copytree(BOARD / "results", tmp_path / "results")
    readme, errors, entries = L.build(tmp_path, figures=False)
    assert errors == [] and len(entries) >= 23
    assert readme.read_text() == _strip_figures((BOARD / "README.md").read_text())


def test_a_toy_metric_reaches_the_leaderboard_from_its_declaration(tmp_path):
    """Declared here (its own file), recorded in a run: it gets a headline column at its rank
    and a column in the section it names, with its direction; nothing else changes."""
    src = BOARD / "results" / "bundled" / "none.json"
    before_dir = tmp_path / "before"
    (before_dir / "results" / "bundled").mkdir(parents=True)
    doc = json.loads(src.read_text())
    doc.pop("per_prompt", None)
    doc["metrics"]["toy_sharpness"] = {
        "value": 0.125,
        "stderr": 0.5,
        "n": 7,
        "higher_is_better": True,
        "family": "toy",
        "test": "tests/test_toy.py::test_toy",
    }
    (before_dir / "results" / "bundled" / "none.json").write_text(json.dumps(doc))

    def build() -> str:
        """The README (headline) and the declared sections (the site's tables)."""
        _, _, entries = L.build(before_dir, figures=False)
        readme = (before_dir / "README.md").read_text()
        return readme + "\n" + "\n".join(L.section_lines(entries))

    readme_before = build()
    assert "toy_sharpness" not in readme_before  # undeclared: in no table
    assert "sharp ↑" not in readme_before
    try:
        D.declare(
            "toy_sharpness",
            keys=("toy_sharpness",),
            family="toy",
            higher_is_better=True,
            description="a toy metric",
            sections=(D.Placement("overestimation", ("toy_sharpness",), rank=15),),
            headline=(D.Headline("toy_sharpness", "sharp", rank=45),),
        )
        text = build()
    finally:
        D.forget("toy_sharpness")
    headline = text.split("### Headline")[1].split("###")[0].splitlines()
    header = next(r for r in headline if r.startswith("| mitigation"))
    assert header.index("D1 ↓") < header.index("sharp ↑") < header.index("D2 ↓")
    none_row = next(r for r in headline if r.startswith("| `none` "))
    assert "0.125 ± 0.5" in none_row
    over = text.split("## Overestimation and the schedule decomposition")[1].split("## ")[0]
    over_header = over.strip().splitlines()[0]
    assert over_header.index("k_pair_g.nonmem") < over_header.index("toy_sharpness ↑")
    assert over_header.index("toy_sharpness ↑") < over_header.index("k_traj_g ↓")
    # forgotten again, the metric leaves both tables: the declaration alone put it there
    assert build() == readme_before


def test_section_order_kinds():
    keys = ["sscd_mean.dup=256", "sscd_mean.dup=16", "mem_rate_0.5.dup=4", "d1.g=10", "d1.g=3"]
    assert D.section_columns("duplication", keys) == [
        "mem_rate_0.5.dup=4",
        "sscd_mean.dup=16",
        "sscd_mean.dup=256",
    ]
    assert D.section_columns("guidance_sweep", keys) == ["d1.g=3", "d1.g=10"]
    over = ["corr_pearson.d1_sscd.pooled", "d2", "k_pair_g", "d1.early", "corr_spearman.d1_sscd"]
    assert D.section_columns("overestimation", over + ["d1.g=3", "nope"]) == [
        "k_pair_g",
        "d1.early",
        "d2",
        "corr_spearman.d1_sscd",
        "corr_pearson.d1_sscd.pooled",
    ]
    det = [
        "detect_tpr1.wen.k1",
        "detect_auc.wen.k5",
        "detect_auc.wen.k1.dup=4",
        "detect_tpr1_wen.wen.k1",
    ]
    assert D.section_columns("detection", det) == ["detect_auc.wen.k5", "detect_tpr1.wen.k1"]
    assert D.section_columns("detection_by_group", det) == ["detect_auc.wen.k1.dup=4"]
    assert [s.id for s in D.sections()] == [
        "detection",
        "detection_by_group",
        "overestimation",
        "duplication",
        "guidance_sweep",
        "robustness",
    ]


def _board_with(root: Path, extra: dict[str, dict]) -> Path:
    """A leaderboard folder holding the bundled none.json with ``extra`` metrics added."""
    doc = json.loads((BOARD / "results" / "bundled" / "none.json").read_text())
    doc.pop("per_prompt", None)
    doc["metrics"].update(extra)
    (root / "results" / "bundled").mkdir(parents=True)
    (root / "results" / "bundled" / "none.json").write_text(json.dumps(doc))
    return root


def test_the_worked_example_of_adding_a_metric_runs(tmp_path, monkeypatch):
    """docs/adding-a-metric.md's two blocks: the module declares the metric with record=, its
    test passes, the generic task tasks/test_declared.py (collected after the declaration)
    records both sets' means (stand-in mb / record_metric), and the leaderboard puts the result
    where the declaration says."""
    import importlib.util

    text = (REPO / "docs" / "adding-a-metric.md").read_text()
    blocks = dict(re.findall(r"<!-- example: (\w+) -->\n```python\n(.*?)```", text, re.S))
    assert sorted(blocks) == ["module", "test"]
    mod = types.ModuleType("memberbench.metrics.nsupp_mean")
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    try:
        exec(compile(blocks["module"], "adding-a-metric.md (module)", "exec"), mod.__dict__)
        assert D.lookup("nsupp.k1.nonmem").higher_is_better is False
        assert D.find("nsupp.k2.memorized") is None
        test_ns: dict = {}
        exec(compile(blocks["test"], "adding-a-metric.md (test)", "exec"), test_ns)
        test_ns["test_nsupp_mean_by_hand"]()
        spec = importlib.util.spec_from_file_location("declared_task", TASKS / "test_declared.py")
        task = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(task)
        cases = [tuple(c.values) for c in task.CASES]
        assert ("nsupp.k1", "memorized") in cases and ("nsupp.k1", "nonmemorized") in cases
        shares = {"memorized": {"p1": [6.0, 7.0], "p2": [8.0]}, "nonmemorized": {"q1": [9.0]}}

        def per_prompt(name, side, fn):
            return {p: fn([test_ns["trace"](x) for x in xs]) for p, xs in shares[side].items()}

        mb = SimpleNamespace(config=SimpleNamespace(steps=50), per_prompt=per_prompt)
        recorded: dict = {}
        for side in ("memorized", "nonmemorized"):
            task.test_declared(
                mb, lambda n, v, **kw: recorded.update({n: (v, kw)}), "nsupp.k1", side
            )
        assert sorted(recorded) == ["nsupp.k1", "nsupp.k1.nonmem"]
        mem = recorded["nsupp.k1"][0]  # prompts 0.15 and 0 (see the doc's test)
        assert (mem.value, mem.stderr, mem.n) == pytest.approx((0.075, 0.075, 2))
        assert recorded["nsupp.k1.nonmem"][0].value == pytest.approx(-0.1)  # -(0.9 - 0.8)
        assert recorded["nsupp.k1"][1]["per_prompt"] == pytest.approx({"p1": 0.15, "p2": 0.0})
        assert recorded["nsupp.k1"][1]["family"] == "overestimation"
        assert recorded["nsupp.k1.nonmem"][1]["prompt_set"] == "nonmemorized"
        entry = {"value": 0.075, "stderr": 0.075, "n": 2, "higher_is_better": False}
        root = _board_with(tmp_path, {"nsupp.k1": entry, "nsupp.k1.nonmem": entry})
        _, _, entries = L.build(root, figures=False)
        text = (root / "README.md").read_text() + "\n".join(L.section_lines(entries))
    finally:
        D.forget("nsupp", kind="metric")  # the doc's metric, not the detector nsupp
    assert D.get_detector("nsupp").name == "nsupp"  # the detector of the same name survives
    header = next(
        r for r in text.split("### Headline")[1].splitlines() if r.startswith("| mitigation")
    )
    # (the committed run is of schema 1: no measured-label AUC, so CLIP follows)
    assert header.index("D2 ↓") < header.index("nsupp@1 ↓") < header.index("CLIP mem ↑")
    over = text.split("## Overestimation and the schedule decomposition")[1].strip()
    over_header = over.splitlines()[0]
    assert over_header.index("d2.nonmem ↓") < over_header.index("| nsupp.k1 ↓")
    assert over_header.index("nsupp.k1.nonmem ↓") < over_header.index("corr_pearson.d1_sscd")


def test_moved_compute_functions_by_hand():
    """The per-prompt formulas that moved out of the tasks, on a stand-in mb."""
    import numpy as np

    from memberbench.metrics.diversity import latent_l2, seed_sscd
    from memberbench.metrics.overestimation import k_pair, m2_loss_ratio_gc
    from memberbench.metrics.sscd import sscd_rel_mean

    pair = SimpleNamespace(
        k={"g": np.array([[1.0, 3.0]]), "c": np.array([[0.5, 0.5]])},
        loss={"g": np.array([[2.0, 4.0], [9.0, 9.0]]), "c": np.array([[1.0, 2.0], [1.0, 1.0]])},
    )
    e1, e2 = np.array([1.0, 0.0]), np.array([0.6, 0.8])
    gens = [
        SimpleNamespace(sscd_emb=e1, final_latent=np.zeros((2, 2))),
        SimpleNamespace(sscd_emb=e2, final_latent=np.full((2, 2), 1.5)),
        SimpleNamespace(sscd_emb=None, final_latent=None),
    ]
    mb = SimpleNamespace(
        memo=lambda key, compute: {  # the session's memoized products
            ("m2", "memorized"): {"p": pair},
            ("sscd", "memorized", None, None): SimpleNamespace(
                per_prompt={"p": {"mean": 0.3}, "q": {"mean": 0.2}}
            ),
            ("ceiling", "memorized"): {"p": 0.6, "q": 0.0},
        }[key],
        ok_gens=lambda side: {"p": gens, "lonely": gens[:1]},
    )
    assert k_pair(mb, "memorized", "g") == {"p": 2.0}
    assert k_pair(mb, "memorized", "c") == {"p": 0.5}
    assert m2_loss_ratio_gc(mb, "memorized") == {"p": pytest.approx(3.0 / 1.5)}  # first timestep
    assert sscd_rel_mean(mb) == {"p": pytest.approx(0.5)}  # q: zero ceiling, left out
    assert seed_sscd(mb, "memorized") == {"p": pytest.approx(0.6)}  # cos(e1, e2)
    assert latent_l2(mb, "memorized") == {"p": pytest.approx(3.0)}  # ||1.5 * ones(4)||


TOY_METRICS = """
from memberbench.metrics.declare import metric


@metric(
    "toy_ep_score",
    keys=("toy_ep_score[.nonmem]",),
    family="toy",
    higher_is_better=False,
    description="a metric declared by an installed out-of-tree package",
)
def toy_ep_score(mb, side):
    return {}
"""


def test_out_of_tree_metrics_are_declared_through_their_entry_point(tmp_path, monkeypatch):
    """The entry-point group memberbench.metrics names modules that declare metrics (the
    same contract as memberbench.detectors); one that declares nothing is one clear error."""
    from memberbench.registry import DETECTORS, METRIC_MODULES

    root = tmp_path / "site"
    root.mkdir()
    (root / "mb_toy_metrics.py").write_text(TOY_METRICS)
    (root / "mb_nothing.py").write_text("X = 1\n")
    for dist, body in (("toy", "toys = mb_toy_metrics"), ("nothing", "nothing = mb_nothing")):
        info = root / f"mb_{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: mb-{dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[memberbench.metrics]\n{body}\n")
    monkeypatch.syspath_prepend(str(root))
    for reg in (DETECTORS, METRIC_MODULES):
        monkeypatch.setattr(reg, "_loaded_entry_points", False)
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
    try:
        with pytest.raises(MemberbenchError, match=r"metric entry point 'nothing' \(group "
                           r"memberbench\.metrics\) declares no metric"):  # fmt: skip
            D.load_entry_points()
        METRIC_MODULES._entries.pop("nothing")  # the user uninstalls the broken package
        assert "toys" in D.load_entry_points()
        # the installed module's metric is declared: its names are recorded names
        assert D.lookup("toy_ep_score.nonmem").higher_is_better is False
        assert D.find("toy_ep_score.k1") is None
    finally:
        D.forget("toy_ep_score", kind="metric")
        sys.modules.pop("mb_toy_metrics", None)
        sys.modules.pop("mb_nothing", None)
