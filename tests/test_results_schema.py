"""The results schema: writer, reader, validator (pure JSON, no model needed)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from memberbench import results as R
from memberbench.types import MemberbenchError


def make_doc(**metrics: dict) -> dict:
    """A minimal valid results document (what the plugin writes, trimmed)."""
    m = metrics or {
        "sscd_mean": R.metric_entry(0.6, higher_is_better=False, stderr=0.05, n=15, test="t::a"),
        "clip_score.nonmem": R.metric_entry(
            28.0, higher_is_better=True, stderr=0.4, n=100, ci=(27.2, 28.8), test="t::b"
        ),
    }
    return {
        "schema": R.SCHEMA,
        "schema_version": R.SCHEMA_VERSION,
        "run": {
            "id": "abc",
            "started": "2025-01-01T00:00:00+00:00",
            "finished": "2025-01-01T00:01:00+00:00",
            "status": "complete",
        },
        "model": {
            "spec": "bundled",
            "name": "bundled",
            "card": {"repo_id": "bundled"},
            "fingerprint": "f00",
            "revision": None,
            "scheduler_config": {"beta_start": 0.00085},
        },
        "sampling": {"scheduler": "ddim", "steps": 50, "guidance": 7.5, "seeds": [0, 1]},
        "mitigation": {"spec": "none", "name": "none", "fingerprint": "0"},
        "prompt_sets": {
            "memorized": {"name": "m", "content_hash": "h1", "n": 15},
            "nonmemorized": {"name": "n", "content_hash": "h2", "n": 100},
        },
        "sscd": {"recipe": "skew_320", "model_sha256": "s", "model": "sscd"},
        "clip": None,
        "environment": {"python": "3.11"},
        "metrics": m,
        "series": {"decomposition.memorized": {"W0": [0.1, 0.2]}},
    }


def test_write_then_validate_roundtrip(tmp_path):
    rows = [{"set": "memorized", "prompt_id": "p1", "metrics": {"sscd_mean": 0.7}}]
    path = R.write_results(tmp_path / "sub" / "run.json", make_doc(), rows)
    assert path.is_file()
    jl = tmp_path / "sub" / "run.prompts.jsonl"
    assert jl.is_file()
    errors, doc = R.validate_file(path)
    assert errors == []
    assert doc["per_prompt"] == {
        "path": "run.prompts.jsonl",
        "sha256": doc["per_prompt"]["sha256"],
        "rows": 1,
    }
    assert R.load_per_prompt(path, doc)[0]["prompt_id"] == "p1"
    # no temporary files left behind
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["run.json", "run.prompts.jsonl"]


def test_nan_is_written_as_null_with_reason(tmp_path):
    doc = make_doc(auc=R.metric_entry(float("nan"), higher_is_better=True, reason="one class"))
    path = R.write_results(tmp_path / "r.json", doc)
    text = path.read_text()
    assert "NaN" not in text
    m = json.loads(text)["metrics"]["auc"]
    assert m["value"] is None and m["reason"] == "one class"


def test_invalid_document_is_not_written(tmp_path):
    doc = make_doc()
    del doc["model"]
    with pytest.raises(R.ResultsError, match="model"):
        R.write_results(tmp_path / "r.json", doc)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("metrics"), "missing top-level keys: metrics"),
        (lambda d: d["metrics"]["sscd_mean"].update(value="0.6"), "value must be number or null"),
        (lambda d: d["metrics"]["sscd_mean"].update(stderr=-1), "stderr must be >= 0"),
        (lambda d: d["metrics"]["sscd_mean"].update(n=1.5), "n must be a non-negative integer"),
        (lambda d: d["metrics"]["sscd_mean"].update(higher_is_better="yes"), "higher_is_better"),
        (lambda d: d["metrics"]["sscd_mean"].update(value=None, reason=""), "no reason says why"),
        (lambda d: d["metrics"]["sscd_mean"].update(ci=[1]), "ci must be null or"),
        (lambda d: d["metrics"].update({"bad name": d["metrics"]["sscd_mean"]}), "metric name"),
        (lambda d: d["sampling"].update(seeds=[]), "sampling.seeds"),
        (lambda d: d["sampling"].update(seeds=[-1]), "sampling.seeds"),
        (lambda d: d["model"].update(fingerprint=3), "model.fingerprint must be string"),
        (lambda d: d.update(prompt_sets={}), "prompt_sets must be a non-empty object"),
        (lambda d: d["sscd"].pop("model_sha256"), "sscd.model_sha256 is missing"),
        (lambda d: d.update(series=[]), "series must be an object"),
    ],
)
def test_validate_names_the_problem(tmp_path, mutate, message):
    doc = make_doc()
    mutate(doc)
    errors = R.validate(doc)
    assert any(message in e for e in errors), errors


def _write_raw(tmp_path: Path, doc: object) -> Path:
    p = tmp_path / "raw.json"
    p.write_text(json.dumps(doc))
    return p


def test_validate_file_rejects_non_json_and_nan(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    errors, doc = R.validate_file(p)
    assert doc is None and "not valid JSON" in errors[0]
    d = make_doc()
    text = json.dumps(d).replace('"value": 0.6', '"value": NaN')
    p.write_text(text)
    errors, _ = R.validate_file(p)
    assert "NaN" in errors[0]


def test_validate_file_other_schema_and_versions(tmp_path):
    d = make_doc()
    d["schema"] = "something.else"
    errors, _ = R.validate_file(_write_raw(tmp_path, d))
    assert "not a memberbench results file" in errors[0]
    d = make_doc()
    d["schema_version"] = R.SCHEMA_VERSION + 1
    errors, _ = R.validate_file(_write_raw(tmp_path, d))
    assert f"schema_version {R.SCHEMA_VERSION + 1} is newer" in errors[0]
    d = make_doc()
    d["schema_version"] = 0
    errors, _ = R.validate_file(_write_raw(tmp_path, d))
    assert "schema_version 0 is no longer supported" in errors[0]
    assert "reads versions 1" in errors[0]


def test_older_version_is_upgraded_by_a_migration(tmp_path, monkeypatch):
    """The migration hook: an older version with a registered migration is read (upgraded in
    memory); a version without one is refused naming it (previous test)."""

    def from_0(doc: dict) -> dict:
        doc = dict(doc)
        doc["schema_version"] = 1  # then version 1's own migration to 2 applies
        doc["metrics"] = {k: dict(v, n=v.get("count", 0)) for k, v in doc["metrics"].items()}
        return doc

    monkeypatch.setitem(R.MIGRATIONS, 0, from_0)
    d = make_doc()
    d["schema_version"] = 0
    for m in d["metrics"].values():
        m["count"] = m.pop("n")
    path = _write_raw(tmp_path, d)
    errors, doc = R.validate_file(path)
    assert errors == []
    assert doc["schema_version"] == 2 and doc["metrics"]["sscd_mean"]["n"] == 15
    assert R.load_results(path)["schema_version"] == 2


def test_version_1_headlines_move_to_their_variant_names(tmp_path):
    """Version 1 recorded set-label detection and pooled correlation under the names that are
    now the measured-label and memorized-set headlines: reading it renames, values unchanged."""
    d = make_doc()
    d["schema_version"] = 1
    m = dict(d["metrics"]["sscd_mean"])
    d["metrics"].update(
        {
            "detect_auc.wen.k1": dict(m, value=0.3),
            "detect_tpr1.d1.k5": dict(m, value=0.1),
            "detect_auc.wen.k1.dup=64": dict(m, value=0.9),
            "corr_pearson.d1_sscd": dict(m, value=0.5),
        }
    )
    d["series"] = {"roc.wen.k1": {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]}, "m2.memorized": {}}
    doc = R.upgrade(d)
    assert doc["schema_version"] == 2
    got = {k: v["value"] for k, v in doc["metrics"].items() if k not in make_doc()["metrics"]}
    assert (
        got
        == {
            "detect_auc_set.wen.k1": 0.3,
            "detect_tpr1_set.d1.k5": 0.1,
            "detect_auc.wen.k1.dup=64": 0.9,  # per-group AUCs always were set-label: kept
            "corr_pearson.d1_sscd.pooled": 0.5,
        }
        or got
    )
    assert set(doc["series"]) == {"roc_set.wen.k1", "m2.memorized"}


def test_per_prompt_file_is_checked(tmp_path):
    path = R.write_results(tmp_path / "r.json", make_doc(), [{"prompt_id": "a", "metrics": {}}])
    jl = R.per_prompt_path(path)
    jl.write_text(jl.read_text() + '{"prompt_id": "b"}\n')
    errors, _ = R.validate_file(path)
    assert any("sha256 does not match" in e for e in errors)
    assert any("2 rows, but per_prompt.rows says 1" in e for e in errors)


def test_per_prompt_path_must_be_a_plain_name(tmp_path):
    doc = make_doc()
    doc["per_prompt"] = {"path": "../../etc/passwd", "sha256": "x", "rows": 0}
    assert any("plain file name" in e for e in R.validate(doc))


def test_validation_never_executes_content(tmp_path, monkeypatch):
    """Strings that look like code or paths are just strings to the validator."""
    doc = make_doc()
    doc["model"]["spec"] = "__import__('os').system('touch /tmp/pwned')"
    doc["environment"] = {"x": "$(rm -rf /)"}
    errors, _ = R.validate_file(_write_raw(tmp_path, doc))
    assert errors == []


def test_too_deep_or_too_large_is_refused(tmp_path, monkeypatch):
    deep: dict = {}
    cur = deep
    for _ in range(40):
        cur["a"] = {}
        cur = cur["a"]
    doc = make_doc()
    doc["environment"] = deep
    assert R.validate(doc) == ["nesting deeper than 32 levels"]
    monkeypatch.setattr(R, "MAX_FILE_BYTES", 10)
    errors, _ = R.validate_file(_write_raw(tmp_path, make_doc()))
    assert "larger than the 10 byte limit" in errors[0]


def test_load_results_raises_with_the_file_named(tmp_path):
    d = make_doc()
    d["metrics"]["sscd_mean"]["n"] = -2
    p = _write_raw(tmp_path, d)
    with pytest.raises(MemberbenchError, match=r"raw\.json.*n must be a non-negative"):
        R.load_results(p)


def test_to_jsonable_handles_numpy_and_nan():
    np = pytest.importorskip("numpy")
    out = R.to_jsonable({"a": np.float32(1.5), "b": np.array([1.0, np.nan]), "c": (1, 2)})
    assert out == {"a": 1.5, "b": [1.0, None], "c": [1, 2]}
    assert copy.deepcopy(out) == out
