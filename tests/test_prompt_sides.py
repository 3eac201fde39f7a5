"""Which prompts a run uses, and how each is labelled.

* A model card names its default prompt sets; a real model never falls back to the bundled ones.
* Each prompt keeps its set's own label (Webster's ``N`` rows are non-memorized on whichever side
  they are passed), unless ``--labels side``.
* A prompt can have several training images (template verbatims): SSCD takes the best match.
* Memorization is measured: the run's rule (``sscd>=T`` / ``rel>=T``) applied to each prompt's
  generations, checked here on hand-made SSCD summaries.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from memberbench.benchrun import BenchRun, make_config, parse_mem_rule
from memberbench.data import PromptRecord, PromptSet, load_prompt_file
from memberbench.metrics import sscd as S
from memberbench.metrics.sscd import aggregate_prompts, sscd_max_over_refs
from memberbench.types import MemberbenchError


def _run(**opts) -> BenchRun:
    return BenchRun(make_config(opts))


# --------------------------------------------------------------------------------------------
# default sets per model card


@pytest.mark.parametrize(
    ("model", "memorized", "nonmemorized"),
    [
        ("bundled", "bundled-memorized", "bundled-nonmemorized"),
        ("sd-1.4", "webster-sd1", "nemo-sd1-nonmemorized"),
        ("sd-1.5:dtype=fp16", "webster-sd1", "nemo-sd1-nonmemorized"),
        ("sd-2.1-base", "webster-sd2", "webster-sd2"),
        ("realistic-vision", "webster-realistic-vision", "webster-realistic-vision"),
    ],
)
def test_card_names_the_default_sets(model, memorized, nonmemorized):
    run = _run(model=model)
    assert run.prompt_spec("memorized") == memorized
    assert run.prompt_spec("nonmemorized") == nonmemorized
    assert run._adapter is None  # read from the card: no weights loaded


def test_given_sets_win_over_the_card():
    run = _run(model="sd-1.4", prompts_memorized="/data/mine.jsonl")
    assert run.prompt_spec("memorized") == "/data/mine.jsonl"
    assert run.prompt_spec("nonmemorized") == "nemo-sd1-nonmemorized"


def test_real_model_offline_never_falls_back_to_the_bundled_sets(monkeypatch):
    import memberbench.data.hub as prompts

    monkeypatch.setattr(prompts, "hub_reachable", lambda *a, **k: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(MemberbenchError) as e:
        _run(model="sd-1.4").prompt_set("memorized")
    assert "webster" in str(e.value).lower() or "sdv1" in str(e.value)
    assert "bundled" not in str(e.value).split("never")[0].lower()


def test_model_without_card_sets_must_name_both(monkeypatch):
    from memberbench.adapters import _ensure_builtin
    from memberbench.registry import MODELS

    _ensure_builtin()
    monkeypatch.setitem(MODELS._entries, "my-model", lambda params: None)
    run = _run(model="my-model")
    with pytest.raises(MemberbenchError, match="--prompts-memorized SET"):
        run.prompt_spec("memorized")
    assert _run(model="my-model", prompts_nonmemorized="x.txt").prompt_spec("nonmemorized")


# --------------------------------------------------------------------------------------------
# each prompt keeps its set's label


def _webster_parquet(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "caption": ["matching one", "template two", "none three", "none four"],
            "url": [f"http://127.0.0.1:1/{i}.jpg" for i in range(4)],
            "overfit_type": ["MV", "TV", "N", "N"],
        }
    )
    pq.write_table(table, path)
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def webster(tmp_path):
    return _webster_parquet(tmp_path / "sdv1_groundtruth.parquet")


@pytest.fixture
def plain_negatives(tmp_path):
    return _jsonl(
        tmp_path / "negatives.jsonl",
        [{"prompt_id": f"neg{i}", "caption": f"an ordinary photo {i}"} for i in range(2)],
    )


def test_webster_n_rows_stay_non_memorized(webster, plain_negatives):
    run = _run(prompts_memorized=str(webster), prompts_nonmemorized=str(plain_negatives))
    mem, non = run.prompt_set("memorized"), run.prompt_set("nonmemorized")
    assert mem.captions() == ["matching one", "template two"]
    assert non.captions() == [
        "an ordinary photo 0",
        "an ordinary photo 1",
        "none three",
        "none four",
    ]
    assert all(r.memorized is True for r in mem) and all(r.memorized is False for r in non)
    d = run.describe_prompt_sets()
    assert d["nonmemorized"]["from_other_side"] == 2 and d["memorized"]["from_other_side"] == 0
    assert d["memorized"]["spec"] == str(webster) and d["memorized"]["labels"] == "own"


def test_labels_side_takes_the_sides_as_given(webster, plain_negatives):
    run = _run(
        prompts_memorized=str(webster), prompts_nonmemorized=str(plain_negatives), labels="side"
    )
    assert len(run.prompt_set("memorized")) == 4 and len(run.prompt_set("nonmemorized")) == 2
    assert all(r.memorized for r in run.prompt_set("memorized"))


def test_one_set_on_both_sides_is_split_by_its_labels(webster):
    run = _run(prompts_memorized=str(webster), prompts_nonmemorized=str(webster))
    assert run.prompt_set("memorized").captions() == ["matching one", "template two"]
    assert run.prompt_set("nonmemorized").captions() == ["none three", "none four"]
    limited = _run(prompts_memorized=str(webster), prompts_nonmemorized=str(webster), limit="1")
    assert limited.prompt_set("memorized").captions() == ["matching one"]
    assert limited.prompt_set("nonmemorized").captions() == ["none three"]


def test_a_set_labelled_all_one_way_leaves_the_other_side_empty(plain_negatives, tmp_path):
    only_n = _jsonl(tmp_path / "x.jsonl", [{"caption": "c", "memorized": False}])
    run = _run(prompts_memorized=str(only_n), prompts_nonmemorized=str(plain_negatives))
    with pytest.raises(MemberbenchError, match="no memorized prompts.*--labels side"):
        run.prompt_set("memorized")


def test_colliding_ids_after_relabelling_are_named(tmp_path):
    a = _jsonl(
        tmp_path / "a.jsonl",
        [
            {"prompt_id": "p1", "caption": "x", "memorized": False},
            {"prompt_id": "p2", "caption": "z"},
        ],
    )
    b = _jsonl(tmp_path / "b.jsonl", [{"prompt_id": "p1", "caption": "y"}])
    run = _run(prompts_memorized=str(a), prompts_nonmemorized=str(b))
    with pytest.raises(MemberbenchError, match="'p1' occurs twice on the nonmemorized side"):
        run.prompt_set("nonmemorized")


def test_bad_labels_option():
    with pytest.raises(MemberbenchError, match="unknown --labels 'mine'.*own.*side"):
        make_config({"labels": "mine"})


# --------------------------------------------------------------------------------------------
# several training images per prompt


def _png(path: Path, value: int) -> np.ndarray:
    from PIL import Image

    img = np.full((8, 8, 3), value, dtype=np.uint8)
    img[0, 0] = (value + 7) % 256
    Image.fromarray(img).save(path)
    return img


def test_images_column_gives_every_training_image(tmp_path):
    a, b = _png(tmp_path / "a.png", 10), _png(tmp_path / "b.png", 200)
    p = _jsonl(
        tmp_path / "tv.jsonl",
        [
            {
                "prompt_id": "tv",
                "caption": "template",
                "image": "a.png",
                "images": ["a.png", "b.png"],
            },
            {"prompt_id": "only-list", "caption": "listed", "images": ["b.png", "missing.png"]},
            {"prompt_id": "one", "caption": "single", "image": "a.png"},
        ],
    )
    ps = load_prompt_file(p)
    tv, listed, one = ps.records
    assert len(tv.images) == 2 and np.array_equal(tv.images[0], a)
    assert np.array_equal(tv.images[1], b)
    assert len(listed.images) == 1 and np.array_equal(listed.image, b)
    assert "missing.png" in listed.extra["image_error"]
    assert len(one.images) == 1 and one.more_images == ()
    # the content hash covers the extra images, and is unchanged for single-image sets
    single = PromptSet("s", (one,))
    h = __import__("hashlib").sha256()
    h.update(json.dumps(["single", one.image_sha256]).encode() + b"\n")
    assert single.content_hash == h.hexdigest()
    assert (
        PromptSet("t", (tv,)).content_hash
        != PromptSet("t", (PromptRecord("tv", "template", image=a),)).content_hash
    )


def test_sscd_is_the_best_match_over_training_images():
    gen = np.array([[1.0, 0.0], [0.0, 2.0]])
    refs = np.array([[1.0, 1.0], [0.0, -1.0]])
    # cosines: gen0 . (r0, r1) = (0.7071, 0); gen1 . (r0, r1) = (0.7071, -1)
    np.testing.assert_allclose(sscd_max_over_refs(gen, refs), [2**-0.5, 2**-0.5])
    np.testing.assert_allclose(sscd_max_over_refs(gen, refs[1:]), [0.0, -1.0])


# --------------------------------------------------------------------------------------------
# measured memorization labels


@pytest.mark.parametrize(
    ("rule", "parsed"),
    [
        ("auto", None),
        ("sscd>=0.75", ("sscd", 0.75, 0.0)),
        ("rel >= 0.5", ("rel", 0.5, 0.0)),
        ("rel>=0.5,ceiling>=0.3", ("rel", 0.5, 0.3)),
    ],
)
def test_parse_mem_rule(rule, parsed):
    assert parse_mem_rule(rule) == parsed


@pytest.mark.parametrize(
    "rule",
    ["sscd>0.5", "rel>=", "mean>=0.5", "sscd>=x", "sscd>=nan", "rel>=0.5,floor>=1", "rel>=1,"],
)
def test_bad_mem_rule(rule):
    with pytest.raises(MemberbenchError, match="--mem-rule"):
        make_config({"mem_rule": rule})


def _labelled_run(monkeypatch, bundled: bool, rule: str = "auto") -> BenchRun:
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    run = _run(mem_rule=rule)
    sets = {
        "memorized": PromptSet(
            "m",
            tuple(PromptRecord(p, p, image=img) for p in ("a", "b", "c", "no-image-x")[:3])
            + (PromptRecord("x", "x"),),
        ),
        "nonmemorized": PromptSet("n", (PromptRecord("n1", "n1", image=img),)),
    }
    scores = {
        "memorized": {"a": [0.4, 0.4], "b": [0.1, 0.3], "c": [0.9, 0.7], "x": None},
        "nonmemorized": {"n1": [0.2, 0.2]},
    }
    ceilings = {"memorized": {"a": 0.6, "b": 0.6, "c": 0.9}, "nonmemorized": {"n1": 0.25}}
    run._memo.update({("prompts", s): ps for s, ps in sets.items()})
    monkeypatch.setattr(BenchRun, "is_bundled", property(lambda self: bundled))
    monkeypatch.setattr(S, "sscd_summary", lambda mb, side: aggregate_prompts(scores[side]))
    monkeypatch.setattr(S, "sscd_ceiling", lambda mb, side: ceilings[side])
    return run


def test_measured_labels_real_model_use_the_papers_threshold(monkeypatch):
    run = _labelled_run(monkeypatch, bundled=False)
    assert run.mem_rule()["rule"] == "sscd>=0.75"
    # means: a 0.4, b 0.2, c 0.8, n1 0.2; x has no image, so no label
    assert run.measured_labels() == {
        "memorized": {"a": False, "b": False, "c": True},
        "nonmemorized": {"n1": False},
    }
    d = run.describe_labels()
    assert d["by_set"]["memorized"] == {"n_labelled": 3, "n_memorized": 1, "n_prompts": 4}


def test_measured_labels_bundled_model_use_the_vae_ceiling(monkeypatch):
    run = _labelled_run(monkeypatch, bundled=True)
    assert (
        run.mem_rule()["rule"] == "rel>=0.5,ceiling>=0.3" and run.mem_rule()["min_ceiling"] == 0.3
    )
    # mean / ceiling: a 0.667, b 0.333, c 0.889; n1's ceiling 0.25 is below 0.3: unlabelled
    assert run.measured_labels() == {
        "memorized": {"a": True, "b": False, "c": True},
        "nonmemorized": {},
    }


def test_ceiling_floor_with_an_absolute_rule(monkeypatch):
    run = _labelled_run(monkeypatch, bundled=False, rule="sscd>=0.3,ceiling>=0.6")
    # a (0.4, ceiling 0.6) kept and memorized, b (0.2) kept, c (0.8) kept, n1 (ceiling 0.25) not
    assert run.measured_labels() == {
        "memorized": {"a": True, "b": False, "c": True},
        "nonmemorized": {},
    }


def test_measured_labels_explicit_rule(monkeypatch):
    run = _labelled_run(monkeypatch, bundled=True, rule="sscd>=0.2")
    assert run.mem_rule()["why"] == "given with --mem-rule"
    assert run.measured_labels()["memorized"] == {"a": True, "b": True, "c": True}
    assert run.measured_labels()["nonmemorized"] == {"n1": True}


def test_sscd_recipe_names_are_the_declared_ones():
    """The option parser repeats the recipe names so that it imports nothing heavy."""
    from memberbench.benchrun import SSCD_RECIPES
    from memberbench.metrics.sscd import RECIPES

    assert tuple(RECIPES) == SSCD_RECIPES
    assert make_config({"sscd_recipe": "wen"}).sscd_recipe == "wen"
    with pytest.raises(MemberbenchError, match="unknown --sscd-recipe 'wenn'.*skew_320"):
        make_config({"sscd_recipe": "wenn"})
