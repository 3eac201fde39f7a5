"""The cost model (memberbench.cost): its counts against a closed form, docs/cost-model.md
against its output, the wall-time formula, the command's bad input.  (Its counts against a real
run of the suite: tests/test_ranks.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from memberbench import cost
from memberbench.data import load_prompt_set

DOC = Path(__file__).resolve().parents[1] / "docs" / "cost-model.md"


def _totals(rows):
    return {r.task.split(" (")[0]: (r.generations, r.unet_evals) for r in rows}


def test_paper_profile_on_sd14_by_hand():
    # 500 + 500 prompts, 10 seeds, 50 steps: 100 UNet evaluations per image; the sweep's five
    # scales other than 7.5 on every prompt and seed; M2: 1000 prompts x 10 t x (u, c) x 4
    got = _totals(cost.suite_cost("paper", "sd-1.4"))
    assert got == {
        "main generations": (10_000, 1_000_000),
        "guidance sweep": (50_000, 5_000_000),
        "robustness": (15_000, 1_500_000),  # 3 scales x 500 memorized x 10 seeds
        "cost": (8, 800),
        "overestimation: M2 training-pair loss": (0, 80_000),
    }
    fewer = _totals(cost.suite_cost("paper", "sd-1.4", images=(436, 500)))
    assert fewer["overestimation: M2 training-pair loss"] == (0, 936 * 10 * 2 * 4)


def test_quick_profile_on_the_bundled_sets_by_hand():
    n_mem = len(load_prompt_set("bundled-memorized"))
    n_non = len(load_prompt_set("bundled-nonmemorized"))
    got = _totals(cost.suite_cost("quick", "bundled"))
    # quick: seeds 0-3, sweep 1,3,7.5 on 2 seeds (7.5 shared), 20 non-memorized; M2 on 30 x 2
    assert got["main generations"] == ((n_mem + n_non) * 4, (n_mem + n_non) * 4 * 100)
    sweep = 2 * (n_mem + min(n_non, 20)) * 2
    assert got["guidance sweep"] == (sweep, sweep * 100)
    assert got["robustness"] == (n_mem * 2, n_mem * 2 * 100)  # the quick profile: 1 scale, 2 seeds
    m2 = (min(n_mem, 30) + min(n_non, 30)) * 10 * 2 * 2
    assert got["overestimation: M2 training-pair loss"] == (0, m2)
    # a sweep scale equal to the main guidance with seeds it does not hold is generated
    other = _totals(cost.suite_cost("quick", "bundled", sweep="7.5", sweep_seeds="0", seeds="0"))
    assert other["guidance sweep"] == (0, 0)  # sweep seeds = all = the main seeds: shared


def test_wall_time_formula():
    rows = cost.suite_cost("paper", "sd-1.4")
    # (shared / N + the cost task's 8 + M2's 80,000 evaluations / 100 per image) / ips; shared:
    # main 10,000 + sweep 50,000 + robustness 15,000
    assert cost.wall_time_s(rows, 2.0, 1, 50) == pytest.approx((75_000 + 8 + 800) / 2)
    assert cost.wall_time_s(rows, 2.0, 8, 50) == pytest.approx((9_375 + 8 + 800) / 2)


def test_the_doc_holds_the_commands_output():
    text = DOC.read_text()
    m = re.search(r"do not edit -->\n(.*?)\n<!-- end of generated part -->", text, re.S)
    assert m, "docs/cost-model.md lost its generated part"
    assert m.group(1) == cost.doc_block(), "regenerate: memberbench cost --markdown"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--profile", "bogus"], "unknown --profile 'bogus'; allowed: quick, paper"),
        (["--images-per-s", "0"], "--images-per-s must be > 0"),
        (["--images-per-s", "1", "--gpus", "0"], "--gpus: give device counts like 1,8"),
        (["--prompts", "5"], "argument --prompts: give two counts M,N, got '5'"),
        (["--model", "sd-9"], "unknown model 'sd-9'"),
    ],
)
def test_bad_input_is_one_line(argv, message, capsys):
    assert cost.main(argv) == 2
    out = capsys.readouterr()
    assert out.out == "" and message in out.err and out.err.count("\n") == 1


def test_projection_lines(capsys):
    assert cost.main(["--images-per-s", "2", "--gpus", "1,8"]) == 0
    out = capsys.readouterr().out
    assert (
        "projected on 1 device(s) at 2 images/s each: 10 h 31 min" in out
    )  # 37,904 s = 10 h 31 min 44 s
    assert (
        "projected on 8 device(s) at 2 images/s each: 1 h 24 min" in out
    )  # 5,091.5 s = 1 h 24 min 52 s
