"""Regression checks: tolerance grammar, direction, required improvements, run identity."""

from __future__ import annotations

import pytest

from memberbench import compare as C
from memberbench.types import MemberbenchError


def m(value, se=None, hib=False, **kw):
    return {"value": value, "stderr": se, "n": 10, "higher_is_better": hib, **kw}


@pytest.mark.parametrize(
    "text, amount, unit",
    [
        ("sscd_mean:10%", 10.0, "pct"),
        ("d1:0.5", 0.5, "abs"),
        ("clip_score:2se", 2.0, "se"),
        ("mem_rate_0.5:-50%", -50.0, "pct"),
        ("mem_rate_0.5.dup=64:-0.1", -0.1, "abs"),
        ("detect_auc.*:1e-2", 0.01, "abs"),
        ("x: 3 se", 3.0, "se"),
    ],
)
def test_parse(text, amount, unit):
    t = C.parse_tolerance(text)
    assert (t.amount, t.unit) == (amount, unit)
    assert t.pattern == text.rpartition(":")[0].strip()


@pytest.mark.parametrize("bad", ["sscd_mean", ":10%", "sscd_mean:", "a:ten", "a:10%%", "a:2sd"])
def test_parse_errors_say_what_is_allowed(bad):
    with pytest.raises(MemberbenchError, match="percentage"):
        C.parse_tolerance(bad)


@pytest.mark.parametrize("bad", ["a:1e999", "a:-1e999%", "a:1e400se"])
def test_infinite_tolerance_is_refused(bad):
    with pytest.raises(MemberbenchError, match="must be a finite number"):
        C.parse_tolerance(bad)


def test_lower_is_better_percentage():
    tol = C.parse_tolerance("sscd_mean:10%")
    assert C.compare_metric("sscd_mean", m(0.5), m(0.549), tol).status == "ok"
    c = C.compare_metric("sscd_mean", m(0.5), m(0.56), tol)
    assert c.failed and "regressed" in c.message and "lower is better" in c.message
    # an improvement always passes
    assert C.compare_metric("sscd_mean", m(0.5), m(0.1), tol).status == "ok"


def test_higher_is_better_absolute_and_se():
    tol = C.parse_tolerance("clip_score:0.5")
    assert C.compare_metric("clip_score", m(30, hib=True), m(29.6, hib=True), tol).status == "ok"
    assert C.compare_metric("clip_score", m(30, hib=True), m(29.4, hib=True), tol).failed
    tol = C.parse_tolerance("clip_score:2se")
    # se of the difference = sqrt(0.3^2 + 0.4^2) = 0.5 -> allowed drop 1.0
    base, ok, bad = m(30, 0.3, True), m(29.05, 0.4, True), m(28.9, 0.4, True)
    assert C.compare_metric("clip_score", base, ok, tol).status == "ok"
    assert C.compare_metric("clip_score", base, bad, tol).failed


def test_required_improvement():
    """'cut memorization by at least half': mem_rate_0.5:-50%."""
    tol = C.parse_tolerance("mem_rate_0.5:-50%")
    assert tol.required_improvement
    assert C.compare_metric("mem_rate_0.5", m(0.8), m(0.4), tol).status == "ok"
    c = C.compare_metric("mem_rate_0.5", m(0.8), m(0.45), tol)
    assert c.failed and "did not improve enough" in c.message
    # an unchanged value fails a required improvement
    assert C.compare_metric("mem_rate_0.5", m(0.8), m(0.8), tol).failed
    # higher-is-better: must rise by >= 2 absolute
    tol = C.parse_tolerance("clip_score:-2")
    assert C.compare_metric("clip_score", m(20, hib=True), m(22.5, hib=True), tol).status == "ok"
    assert C.compare_metric("clip_score", m(20, hib=True), m(21, hib=True), tol).failed


def test_neutral_metric_any_change_counts():
    tol = C.parse_tolerance("corr:0.1")
    assert C.compare_metric("corr", m(0.9, hib=None), m(0.85, hib=None), tol).status == "ok"
    assert C.compare_metric("corr", m(0.9, hib=None), m(1.05, hib=None), tol).failed
    c = C.compare_metric("corr", m(0.9, hib=None), m(0.95, hib=None), C.parse_tolerance("corr:-5%"))
    assert c.failed and "no better direction" in c.message


def test_undefined_values():
    tol = C.parse_tolerance("a:10%")
    c = C.compare_metric("a", m(0.5), m(None, reason="one class"), tol)
    assert c.failed and "became undefined (one class)" in c.message
    assert C.compare_metric("a", m(None, reason="x"), m(0.5), tol).status == "n/a"
    assert C.compare_metric("a", m(0.5), None, tol).status == "missing"
    assert C.compare_metric("a", None, m(0.5), tol).status == "new"
    assert C.compare_metric("a", m(0.5), m(0.9), None).status == "-"


def test_tolerance_lookup_exact_beats_glob_last_glob_wins():
    tols = C.parse_tolerances("*:2se,sscd_*:10%,sscd_mean:1%")
    assert C.tolerance_for("sscd_mean", tols).text == "sscd_mean:1%"
    assert C.tolerance_for("sscd_max", tols).text == "sscd_*:10%"
    assert C.tolerance_for("d1", tols).text == "*:2se"
    assert C.parse_tolerances("") == []


def test_unknown_pattern_lists_metrics():
    with pytest.raises(MemberbenchError, match=r"'sscd_maen'.*Did you mean 'sscd_mean'"):
        C.check_patterns(C.parse_tolerances("sscd_maen:10%"), ["sscd_mean", "d1"])
    C.check_patterns(C.parse_tolerances("sscd*:10%,d1:1"), ["sscd_mean", "d1"])


def test_identity_differences_spelled_out():
    base = {
        "model": {"name": "bundled", "fingerprint": "aaa"},
        "sampling": {"seeds": [0, 1, 2], "steps": 50, "guidance": 7.5, "scheduler": "ddim"},
        "prompt_sets": {"memorized": {"name": "m", "content_hash": "h"}},
    }
    cur = {
        "model": {"name": "bundled", "fingerprint": "bbb"},
        "sampling": {"seeds": [0, 1], "steps": 50, "guidance": 7.5, "scheduler": "ddim"},
        "prompt_sets": {"memorized": {"name": "m", "content_hash": "h2"}},
    }
    diffs = C.identity_differences(base, cur)
    assert "model fingerprint: baseline 'aaa', this run 'bbb'" in diffs
    assert "seeds: baseline [0, 1, 2], this run [0, 1]" in diffs
    assert any(d.startswith("memorized prompt set content hash") for d in diffs)
    assert len(diffs) == 3
    assert C.identity_differences(base, base) == []


def test_compare_runs_and_table():
    base = {"metrics": {"a": m(0.5, 0.01), "b": m(10, 1, True), "gone": m(1)}}
    cur = {"a": m(0.7, 0.01), "b": m(10.5, 1, True), "new": m(2)}
    comps = C.compare_runs(base, cur, C.parse_tolerances("a:10%,b:1se,gone:1"))
    status = {c.name: c.status for c in comps}
    assert status == {"a": "FAIL", "b": "ok", "gone": "missing", "new": "new"}
    table = C.format_table(comps)
    assert "a ↓" in table and "b ↑" in table and "+40.0%" in table
    assert "new" not in C.format_table(comps, only_checked=True)
