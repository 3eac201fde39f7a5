"""The bundled model card's description of its training data agrees with the world it was built
from.  Every results file records ``training_data``, so a number in it that drifts from the world
(it once said 3 canaries per level after the world went to 4) is written into every run.

The expectations come from the shipped prompt set (``memberbench/data/bundled/memorized.jsonl``,
written from the world when the weights were built) and from the training code's own default,
not from the card."""

from __future__ import annotations

import inspect
import json
import re
from collections import Counter
from pathlib import Path

import memberbench.bundled.world as world
from memberbench.bundled.card import BUNDLED

SHIPPED = Path(world.__file__).resolve().parents[1] / "data" / "bundled" / "memorized.jsonl"


def _canaries() -> list[dict]:
    return [json.loads(line) for line in SHIPPED.read_text().splitlines() if line.strip()]


def test_card_counts_the_canaries_of_the_shipped_world():
    text = BUNDLED.training_data
    rows = _canaries()
    per_level = Counter(r["duplicates"] for r in rows)
    n_per_level = set(per_level.values())
    assert len(n_per_level) == 1, per_level  # every level has the same number of canaries
    (n,) = n_per_level
    m = re.search(r"\((\d+) canaries per level", text)
    assert m, text
    assert int(m.group(1)) == n == world.CANARIES_PER_LEVEL
    m = re.search(r"plus (\d+) canary images", text)
    assert m and int(m.group(1)) == len(rows), text
    m = re.search(r"duplicated ([\d / ]+) times", text)
    assert m, text
    levels = tuple(int(d) for d in m.group(1).split(" / "))
    assert levels == tuple(sorted(per_level)) == world.DUPLICATION_LEVELS


def test_card_names_each_kind_once_per_level_and_the_decoys():
    text = BUNDLED.training_data
    rows = _canaries()
    for dup in world.DUPLICATION_LEVELS:
        kinds = sorted(r["canary_kind"] for r in rows if r["duplicates"] == dup)
        assert kinds == sorted(world.CANARY_KINDS), (dup, kinds)
    assert "one of each kind: " + ", ".join(world.CANARY_KINDS) in text
    m = re.search(r"also captions (\d+) ordinary shape images", text)
    assert m and int(m.group(1)) == world.DECOYS_PER_CANARY, text


def test_card_caption_dropout_is_the_training_default():
    from memberbench.bundled.train import train_unet

    dropout = inspect.signature(train_unet).parameters["caption_dropout"].default
    m = re.search(r"(\d+)% caption dropout", BUNDLED.training_data)
    assert m and int(m.group(1)) == round(100 * dropout), BUNDLED.training_data


def test_card_text_follows_the_world_constants():
    """The text is derived from the constants, not a copy of them: a world with other numbers
    gives another text."""
    import types

    from memberbench.bundled.card import training_data_text

    other = types.SimpleNamespace(
        DUPLICATION_LEVELS=(2, 8),
        CANARIES_PER_LEVEL=3,
        CANARY_KINDS=("a", "b", "c"),
        DECOYS_PER_CANARY=7,
    )
    text = training_data_text(other)
    assert "plus 6 canary images" in text
    assert "duplicated 2 / 8 times (3 canaries per level, one of each kind: a, b, c)" in text
    assert "also captions 7 ordinary shape images" in text
    assert training_data_text(world) == BUNDLED.training_data
