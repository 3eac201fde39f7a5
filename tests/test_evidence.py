"""`memberbench evidence`'s summary table, from a hand-made run (no generation)."""

from __future__ import annotations

import json

import pytest

from memberbench.bundled import evidence


def _prompt(group, sscd_mean, sscd_max, ceiling, wen=1.0, kind=""):
    return {
        "prompt_id": group,
        "group": group,
        "kind": kind,
        "sscd_mean": sscd_mean,
        "sscd_max": sscd_max,
        "rate_0.5": 0.5 if sscd_max >= 0.5 else 0.0,
        "rate_0.75": 0.0,
        "ceiling": ceiling,
        "latent_cos": 0.5,
        "d1": -1.0,
        "d2": 0.0,
        "wen_1": wen,
        "wen_5": wen,
        "n": 10,
    }


RUN = {
    "settings": {"steps": 50, "seeds": 10},
    "guidance": {
        "7.5": {
            "wall_s": 12.0,
            "n_failed": 0,
            "per_prompt": [
                _prompt("dup=256", 0.30, 0.60, 0.60, wen=0.5, kind="grating"),
                _prompt("dup=256", 0.20, 0.40, 0.40, wen=0.7, kind="colour field"),
                _prompt("dup=64", 0.24, 0.30, 0.40, wen=0.7, kind="grating"),
                _prompt("held-out", 0.10, 0.20, 0.40, wen=2.0),
                _prompt("held-out", 0.14, 0.22, 0.30, wen=1.0),
            ],
        }
    },
}


def test_summary_reports_mean_and_best_of_seeds_against_the_ceiling():
    text = evidence.summarise(RUN)
    row = next(line for line in text.splitlines() if line.startswith("| canaries dup=256"))
    # means over the two prompts: SSCD 0.25, best 0.50, ceiling 0.50 -> ratios 0.50 and 1.00
    assert (
        row
        == "| canaries dup=256 | 2 | 0.250 | 0.25 | 0.500 | 0.50 | 0.500 | 1.00 | 0.500 | -1.00 | 0.600 |"
    )
    held = next(line for line in text.splitlines() if line.startswith("| held-out"))
    assert "| 2 | 0.120 | 0.00 | 0.350 | 0.34 | 0.210 | 0.60 |" in held
    # every canary scores above every held-out prompt on SSCD (AUC 1); Wen: 0.5, 0.7 vs 2.0, 1.0
    auc = next(line for line in text.splitlines() if line.startswith("AUC"))
    assert "SSCD 1.000" in auc and "SSCD best of seeds 1.000" in auc
    assert "Wen step 1 0.000" in auc
    # per kind, over both duplication levels: gratings (0.30 + 0.24) / 2 = 0.27 against a ceiling
    # of (0.60 + 0.40) / 2 = 0.50
    lines = text.splitlines()
    assert "| grating | 2 | 0.270 | 0.500 | 0.54 | 0.500 |" in lines
    assert "| colour field | 1 | 0.200 | 0.400 | 0.50 | 0.500 |" in lines


def test_runs_saved_without_kinds_have_no_kind_table():
    run = json.loads(json.dumps(RUN))
    for p in run["guidance"]["7.5"]["per_prompt"]:
        del p["kind"]
    text = evidence.summarise(run)
    assert "by kind" not in text and "| canaries dup=256 | 2 |" in text


def test_from_json_summarises_a_saved_run_and_refuses_other_files(tmp_path, capsys):
    saved = tmp_path / "ev.json"
    saved.write_text(json.dumps(RUN))
    assert evidence.main(["--from-json", str(saved)]) == 0
    assert "| canaries dup=256 | 2 |" in capsys.readouterr().out
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}))
    assert evidence.main(["--from-json", str(other)]) == 2
    err = capsys.readouterr().err
    assert "is not an evidence file" in err and "memberbench evidence --out" in err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert evidence.main(["--from-json", str(broken)]) == 2
    assert "is not JSON" in capsys.readouterr().err
    assert evidence.main(["--from-json", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_step1_oracle_command_refuses_bad_arguments_before_loading_anything(tmp_path, capsys):
    from memberbench.bundled import oracle
    from memberbench.bundled.world import DECOYS_PER_CANARY, NUM_HELD_OUT

    for argv, msg in (
        (["--decoys", "300"], f"--decoys must lie in 0..{DECOYS_PER_CANARY}"),
        (["--held-out", "0"], f"--held-out must lie in 1..{NUM_HELD_OUT}"),
        (["--steps", "0"], "--steps must be at least 1"),
    ):
        with pytest.raises(SystemExit) as e:
            oracle.main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err
    assert oracle.main(["--evidence", str(tmp_path / "none.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
