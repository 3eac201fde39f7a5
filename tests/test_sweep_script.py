"""scripts/sweep_mitigations.py: its settings, its commands and what it refuses (no runs)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from memberbench.mitigations import build_mitigation
from memberbench.registry import parse_spec


@pytest.fixture(scope="module")
def sweep(load_script):
    return load_script("sweep_mitigations")


def test_every_method_has_three_distinct_settings(sweep):
    import memberbench.mitigations  # noqa: F401  (registers the built-in methods)
    from memberbench.registry import MITIGATIONS

    methods = set(sweep.SWEEPS) - {"none"}
    assert methods <= set(MITIGATIONS)
    for m in methods:
        fps = {build_mitigation(s).fingerprint() for s in sweep.SWEEPS[m]}
        assert len(fps) >= 3, m  # three really different settings, not aliases of one
        assert all(parse_spec(s)[0] == m for s in sweep.SWEEPS[m])


def test_dry_run_commands_are_paired_and_never_touch_main_rows(sweep, capsys, tmp_path):
    rc = sweep.main(["--dry-run", "--out", str(tmp_path), "--seeds", "0-1", "--", "--limit", "5"])
    assert rc == 0
    cmds = [shlex.split(line) for line in capsys.readouterr().out.splitlines() if line]
    assert len(cmds) == 1 + sum(len(v) for k, v in sweep.SWEEPS.items() if k != "none")
    outs = []
    for c in cmds:
        # the same seeds, steps, guidance and prompt limit in every run: paired rows
        assert c[c.index("--seeds") + 1] == "0-1" and c[c.index("--steps") + 1] == "50"
        assert c[c.index("--guidance") + 1] == "7.5" and c[-2:] == ["--limit", "5"]
        out = Path(c[c.index("--results") + 1])
        assert out.parent == tmp_path / "bundled" and out.name.startswith("sweep--")
        outs.append(out)
    assert len(set(outs)) == len(outs)
    assert tmp_path / "bundled" / "sweep--none.json" in outs
    assert not any(o.name == "none.json" for o in outs)


def test_bad_setting_is_refused_before_any_run(sweep):
    with pytest.raises(Exception, match="guidance-scale"):
        sweep.main(["--dry-run", "--only", "guidance-scale:scale=-3"])
    with pytest.raises(SystemExit, match="unknown method"):
        sweep.main(["--dry-run", "--methods", "no-such-method"])
