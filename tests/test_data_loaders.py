"""Prompt-set loading: the field's real files (read in place), malformed fixtures, bundled sets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from memberbench.data import (
    BUNDLED_DIR,
    PromptRecord,
    PromptSet,
    image_sha256,
    load_bundled_memorized,
    load_bundled_nonmemorized,
    load_hf_prompt_set,
    load_prompt_file,
    load_prompt_set,
    prompt_set_from_dataset,
)
from memberbench.registry import PROMPT_SETS
from memberbench.types import MemberbenchError

# The real prompt lists live beside the repository (../shared/prompts) and are never copied in.
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "prompts"
WEN = SHARED / "wen_sdv1_500_memorized.jsonl"
NEMO_MEM = SHARED / "nemo_memorized_laion_prompts.csv"
NEMO_UNMEM = SHARED / "nemo_unmemorized_laion_prompts.csv"
README_SHA256 = {
    WEN.name: "8eb16c6ff1c7195cddf26b3207bdc7c6a905a20162c6070d79fe60336a525c60",
    NEMO_MEM.name: "0b527a5965dc463e7a3e0d234ff7fd5489b1a76869c456dbb209dc753cb4af25",
    NEMO_UNMEM.name: "f453b418cc157864baacbf68d97447273feac41e8066b2ead6b307bf795988e1",
}


def _real(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} not present (the shared prompt files live outside the repo)")
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# the field's real files


@pytest.fixture(scope="module")
def wen() -> PromptSet:
    return load_prompt_set(str(_real(WEN)))


@pytest.fixture(scope="module")
def nemo_mem() -> PromptSet:
    return load_prompt_set(str(_real(NEMO_MEM)))


@pytest.fixture(scope="module")
def nemo_unmem() -> PromptSet:
    return load_prompt_set(str(_real(NEMO_UNMEM)))


@pytest.mark.parametrize("path", [WEN, NEMO_MEM, NEMO_UNMEM], ids=lambda p: p.name)
def test_real_files_are_the_documented_copies(path: Path) -> None:
    data = _real(path).read_bytes()
    assert hashlib.sha256(data).hexdigest() == README_SHA256[path.name]


def test_wen_jsonl(wen: PromptSet) -> None:
    assert (wen.n, wen.n_with_image, wen.n_skipped) == (500, 0, 0)
    first = wen[0]
    assert first.caption == "The No Limits Business Woman Podcast"
    assert first.url == "https://onlinecoach1.hipcast.com/albumart/1000_1618923228.jpg"
    assert first.extra == {"index": 1030727993}
    assert first.image is None and first.image_available is False and first.image_sha256 is None
    assert all(r.memorized is True for r in wen)
    assert all(r.url and r.url.startswith("http") for r in wen)
    assert len(set(wen.prompt_ids())) == 500
    assert first.prompt_id == "wen_sdv1_500_memorized:1"  # row = line number
    assert not wen.image_mask.any() and wen.image_mask.shape == (500,)
    assert wen.with_images().n == 0
    assert wen.source.startswith("file:") and wen.source.endswith("(jsonl)")


def test_nemo_memorized_csv(nemo_mem: PromptSet) -> None:
    assert (nemo_mem.n, nemo_mem.n_skipped) == (500, 0)
    groups = [r.group for r in nemo_mem]
    assert set(groups) == {"VM", "TM"}
    assert (groups.count("VM"), groups.count("TM")) == (112, 388)
    first = nemo_mem[0]
    assert first.caption == "The No Limits Business Woman Podcast"
    assert first.group == "VM"
    assert first.extra["mean_sscd"] == pytest.approx(0.8392826318740845)
    assert first.extra["max_sscd"] == pytest.approx(0.8467365503311157)
    assert first.extra["Index"] == 1030727993
    assert first.extra["row_id"] == 0  # pandas' unnamed index column
    sscd = [r.extra["mean_sscd"] for r in nemo_mem]
    assert all(isinstance(v, float) for v in sscd if v is not None)
    assert sum(v is None for v in sscd) == 13  # NeMo left 13 rows unmeasured (empty cells)
    assert all(r.memorized is True for r in nemo_mem)  # from the file name
    assert first.prompt_id == "nemo_memorized_laion_prompts:2"  # header is line 1


def test_nemo_unmemorized_csv(nemo_unmem: PromptSet) -> None:
    assert (nemo_unmem.n, nemo_unmem.n_skipped) == (500, 0)
    assert nemo_unmem[0].caption.startswith("Photo pour Japanese pagoda")
    assert all(r.memorized is False for r in nemo_unmem)
    assert all(r.group == "" for r in nemo_unmem)
    assert set(nemo_unmem[0].extra) == {"row_id", "Index"}


def test_nemo_quoted_captions_match_pandas(nemo_mem: PromptSet) -> None:
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(NEMO_MEM, sep=";")
    assert nemo_mem.captions() == list(df["Caption"])


def test_wen_and_nemo_memorized_are_the_same_prompts(wen: PromptSet, nemo_mem: PromptSet) -> None:
    # NeMo's memorized list is Wen et al.'s 500 prompts in the same order: one content hash.
    assert wen.captions() == nemo_mem.captions()
    assert wen.content_hash == nemo_mem.content_hash


def test_real_set_views_and_overrides(wen: PromptSet) -> None:
    again = load_prompt_set(str(WEN))
    assert again.content_hash == wen.content_hash and again.prompt_ids() == wen.prompt_ids()
    head = load_prompt_set(str(WEN), limit=5)
    assert head.n == 5 and head.captions() == wen.captions()[:5]
    assert head.content_hash == wen.limit(5).content_hash != wen.content_hash
    relabelled = load_prompt_set(str(_real(NEMO_UNMEM)), memorized=True)
    assert all(r.memorized is True for r in relabelled)
    assert wen.counts == {"n": 500, "n_with_image": 0, "n_skipped": 0, "skipped_reasons": {}}


# --------------------------------------------------------------------------------------------
# malformed and synthetic files


def test_bad_json_line_is_skipped_with_its_row(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "p.jsonl",
        '{"caption": "a zorblax quivering"}\n'
        '{"caption": "broken", \n'
        "\n"
        '["not", "an", "object"]\n'
        '{"caption": ""}\n'
        '{"caption": "   "}\n'
        '{"prompt": "no caption key here"}\n'
        '{"caption": null}\n'
        '{"caption": "last one", "url": "http://x/y.png"}\n',
    )
    ps = load_prompt_file(p)
    assert ps.captions() == ["a zorblax quivering", "last one"]
    rows = dict(ps.skipped)
    assert rows[2].startswith("bad JSON")
    assert rows[3] == "blank line"
    assert rows[4].startswith("not a JSON object")
    assert rows[5] == rows[6] == "empty caption"
    assert rows[7] == rows[8] == "missing caption"
    assert ps.n_skipped == 7
    assert ps.skipped_reasons == {
        "bad JSON": 1,
        "blank line": 1,
        "not a JSON object": 1,
        "empty caption": 2,
        "missing caption": 2,
    }
    assert [r for r, _ in ps.skipped] == sorted(r for r, _ in ps.skipped)
    assert ps[1].prompt_id == "p:9" and ps[1].url == "http://x/y.png"
    assert ps[0].memorized is None  # nothing says so


def test_strict_mode_names_the_row(tmp_path: Path) -> None:
    p = _write(tmp_path / "p.jsonl", '{"caption": "ok"}\n{"caption": "ok 2"}\n{oops\n')
    with pytest.raises(MemberbenchError, match=r"row 3: bad JSON"):
        load_prompt_file(p, strict=True)
    c = _write(tmp_path / "c.csv", "caption,url\nfine,http://a\n,http://b\n")
    with pytest.raises(MemberbenchError, match=r"c\.csv: row 3: empty caption"):
        load_prompt_file(c, strict=True)
    assert load_prompt_file(c).n == 1  # not strict: skipped and counted


def test_missing_caption_column_names_found_columns(tmp_path: Path) -> None:
    p = _write(tmp_path / "p.csv", "prompt_text;image_link\nhello;http://a\n")
    with pytest.raises(MemberbenchError) as err:
        load_prompt_file(p)
    msg = str(err.value)
    assert "prompt_text" in msg and "image_link" in msg and "caption_column=" in msg
    ps = load_prompt_file(p, caption_column="prompt_text")
    assert ps.captions() == ["hello"] and ps[0].extra == {"image_link": "http://a"}
    with pytest.raises(MemberbenchError, match=r"caption_column='nope'.*prompt_text"):
        load_prompt_file(p, caption_column="nope")
    j = _write(tmp_path / "p.jsonl", '{"txt": "a"}\n{"txt": "b"}\n')
    with pytest.raises(MemberbenchError, match=r"found columns \['txt'\]"):
        load_prompt_file(j)


def test_caption_column_candidates(tmp_path: Path) -> None:
    for col in ("caption", "Caption", "prompt", "text", "TEXT"):
        p = _write(tmp_path / f"{col}.jsonl", json.dumps({col: "x", "other": 1}) + "\n")
        assert load_prompt_file(p).captions() == ["x"]


def test_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "prompts.jsonl"
    with pytest.raises(MemberbenchError, match="prompt file not found: .*nowhere"):
        load_prompt_set(str(missing))
    odd = _write(tmp_path / "prompts.lst", "one\ntwo\n")
    with pytest.raises(MemberbenchError, match=r"'\.lst'.*format="):
        load_prompt_file(odd)
    assert load_prompt_file(odd, format="txt").captions() == ["one", "two"]
    with pytest.raises(MemberbenchError, match="unknown format"):
        load_prompt_file(odd, format="xml")


def test_text_file_blank_lines_counted(tmp_path: Path) -> None:
    p = _write(tmp_path / "list.txt", "\ufeffa red blorp\n\n   \nquux the flarn\r\nthird\n")
    ps = load_prompt_file(p)
    assert ps.captions() == ["a red blorp", "quux the flarn", "third"]
    assert ps.skipped == ((2, "blank line"), (3, "blank line"))
    assert [r.prompt_id for r in ps] == ["list:1", "list:4", "list:5"]


def test_csv_delimiters_and_bad_rows(tmp_path: Path) -> None:
    comma = _write(tmp_path / "a.csv", 'caption,url\n"a, b and c",http://x\nplain,\n')
    ps = load_prompt_file(comma)
    assert ps.captions() == ["a, b and c", "plain"] and ps[1].url is None
    semi = _write(tmp_path / "b.csv", "Caption;type;score\nx, y;VM;0.5\nshort;TM\nz;TM;1e-3\n")
    ps = load_prompt_file(semi)
    assert ps.captions() == ["x, y", "z"] and [r.group for r in ps] == ["VM", "TM"]
    assert ps.skipped[0][0] == 3 and "wrong number of fields" in ps.skipped[0][1]
    assert ps[1].extra["score"] == pytest.approx(1e-3)
    numeric_caption = _write(tmp_path / "c.csv", "caption;n\n1984;7\n")
    assert load_prompt_file(numeric_caption)[0].caption == "1984"  # captions stay text
    tsv = _write(tmp_path / "d.tsv", "prompt\tgroup\nfoo\tdup=4\n")
    assert load_prompt_file(tsv)[0].group == "dup=4"


def test_jsonl_odd_but_valid_content(tmp_path: Path) -> None:
    rows = [
        {"caption": "line\u2028separator inside", "index": 1},
        {"caption": 42, "index": "abc"},  # mixed column types; numeric caption
        {"caption": "Ünïcödé 文字 and unknownwords xyzzy", "index": None, "extra": [1, 2]},
    ]
    p = tmp_path / "odd.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in rows).encode())
    ps = load_prompt_file(p)
    assert ps.captions() == [rows[0]["caption"], "42", rows[2]["caption"]]
    assert [r.extra["index"] for r in ps] == ["1", "abc", None]
    as_list = _write(tmp_path / "list.json", json.dumps(rows[:1]))
    assert load_prompt_file(as_list).captions() == [rows[0]["caption"]]


def test_webster_style_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "caption": ["Living in the Light with Ann Graham Lotz", "", "a plain prompt", "t"],
            "url": ["http://a/1.jpg", "http://a/2.jpg", "http://a/3.jpg", None],
            "overfit_type": ["MV", "RV", "N", "TV"],
            "index": [11, 12, 13, 14],
        }
    )
    p = tmp_path / "sdv1_bb_edge_groundtruth.parquet"
    pq.write_table(table, p)
    ps = load_prompt_file(p)
    assert ps.captions() == ["Living in the Light with Ann Graham Lotz", "a plain prompt", "t"]
    assert [r.group for r in ps] == ["MV", "N", "TV"]
    assert [r.memorized for r in ps] == [True, False, True]
    assert ps.skipped == ((2, "empty caption"),)
    assert ps[0].url == "http://a/1.jpg" and ps[0].extra == {"index": 11}
    assert load_prompt_set(str(p), memorized=False)[0].memorized is False


def test_images_in_a_prompt_file(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")
    img = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(img).save(tmp_path / "imgs" / "a.png")
    rows = [
        {"caption": "with image", "image": "imgs/a.png", "image_sha256": image_sha256(img)},
        {"caption": "image gone", "image": "imgs/missing.png"},
        {"caption": "remote", "image": "https://example.com/x.png"},
    ]
    p = _write(tmp_path / "i.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    ps = load_prompt_file(p)
    assert ps.n == 3 and ps.n_with_image == 1
    np.testing.assert_array_equal(ps[0].image, img)
    assert "image file not found" in ps[1].extra["image_error"]
    assert ps[2].url == "https://example.com/x.png" and not ps[2].image_available
    assert list(ps.image_mask) == [True, False, False]
    assert ps.with_images().captions() == ["with image"]
    with pytest.raises(MemberbenchError, match="row 2: image file not found"):
        load_prompt_file(p, strict=True)


# --------------------------------------------------------------------------------------------
# records and sets


def test_record_validation_and_hashes() -> None:
    img = np.zeros((4, 5, 3), dtype=np.uint8)
    rec = PromptRecord(prompt_id="p1", caption="c", image=img)
    assert rec.image_available is True and rec.image_sha256 == image_sha256(img)
    assert rec.image_sha256 == hashlib.sha256(img.tobytes()).hexdigest()
    assert not rec.image.flags.writeable and img.flags.writeable  # private read-only copy
    with pytest.raises(AttributeError):
        rec.caption = "x"  # type: ignore[misc]
    with pytest.raises(MemberbenchError, match="uint8 HxWx3"):
        PromptRecord(prompt_id="p", caption="c", image=np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(MemberbenchError, match="does not match its image_sha256"):
        PromptRecord(prompt_id="p", caption="c", image=img, image_sha256="0" * 64)
    with pytest.raises(MemberbenchError, match="image_available"):
        PromptRecord(prompt_id="p", caption="c", image_available=True)
    with pytest.raises(MemberbenchError, match="prompt_id"):
        PromptRecord(prompt_id="", caption="c")
    try:
        from memberbench.bundled.world import image_sha256 as world_sha256
    except Exception:  # noqa: BLE001 - the bundled world module is another developer's file
        return
    assert world_sha256(img) == rec.image_sha256


def test_prompt_set_hash_and_views() -> None:
    a = PromptRecord(prompt_id="a", caption="one")
    b = PromptRecord(prompt_id="b", caption="two", image=np.ones((2, 2, 3), np.uint8))
    ps = PromptSet(name="s", records=(a, b))
    expected = hashlib.sha256()
    for cap, sha in (("one", None), ("two", b.image_sha256)):
        expected.update(json.dumps([cap, sha], ensure_ascii=False).encode() + b"\n")
    assert ps.content_hash == expected.hexdigest()
    assert PromptSet(name="other name", records=(a, b)).content_hash == ps.content_hash
    assert PromptSet(name="s", records=(b, a)).content_hash != ps.content_hash
    assert ps.limit(1).captions() == ["one"] and ps.limit(10).n == 2 and ps.limit(0).n == 0
    assert ps.with_images().prompt_ids() == ["b"]
    assert ps.describe()["n_with_image"] == 1
    with pytest.raises(MemberbenchError, match="limit"):
        ps.limit(-1)


def test_prompt_set_from_a_dataset() -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(
        [{"TEXT": "hello", "label": 1}, {"TEXT": None, "label": 2}, {"TEXT": "x", "label": 3}]
    )
    ps = prompt_set_from_dataset(ds, name="laion-bit", limit=5)
    assert ps.captions() == ["hello", "x"] and ps.skipped == ((2, "missing caption"),)
    assert ps.to_dataset().num_rows == 2


# --------------------------------------------------------------------------------------------
# names, the hub, the bundled sets


def test_registered_names_and_unknown_name() -> None:
    for name in ("bundled-memorized", "bundled-nonmemorized", "wen-sd1-memorized", "webster-sd1"):
        assert name in PROMPT_SETS
    with pytest.raises(MemberbenchError, match="Did you mean 'bundled-memorized'"):
        load_prompt_set("bundled-memorised")
    with pytest.raises(MemberbenchError, match="does not take option"):
        load_prompt_set("bundled-memorized", caption_column="x")


def _offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    import memberbench.data.hub as prompts

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False, raising=False)
    monkeypatch.setattr(prompts, "hub_reachable", lambda *a, **k: False)


@pytest.mark.parametrize(
    "spec",
    [
        "hf:fraisdufour/templates-verbs",
        "https://huggingface.co/datasets/fraisdufour/templates-verbs",
        "webster-sd1",
        "wen-sd1-memorized",
    ],
)
def test_hub_unreachable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    _offline_hub(monkeypatch)
    with pytest.raises(MemberbenchError, match="unreachable") as err:
        load_prompt_set(spec)
    assert "local path" in str(err.value)


def test_hub_dataset_through_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    import memberbench.data.hub as prompts

    calls = []

    def fake_load_dataset(repo, **kw):  # noqa: ANN001, ANN003, ANN202
        calls.append((repo, kw))
        return datasets.Dataset.from_list(
            [{"caption": "c1", "overfit_type": "MV"}, {"caption": "c2", "overfit_type": "N"}]
        )

    monkeypatch.setattr(prompts, "hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ps = load_hf_prompt_set("hf:owner/name", split="train", limit=1)
    assert calls[0][0] == "owner/name" and calls[0][1]["split"] == "train"
    assert ps.captions() == ["c1"] and ps[0].memorized is True and ps[0].group == "MV"
    assert ps.source.startswith("hf:owner/name")

    def failing(repo, **kw):  # noqa: ANN001, ANN003, ANN202
        raise ConnectionError("Couldn't reach 'owner/name' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(MemberbenchError, match="unreachable.*local path"):
        load_prompt_set("hf:owner/name")
    with pytest.raises(MemberbenchError, match="hf:owner/name"):
        load_prompt_set("hf:justone")


def _write_bundled_fixture(root: Path) -> dict[str, np.ndarray]:
    """A tiny bundled directory in the exact format of memberbench/data/bundled/."""
    from PIL import Image

    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    images = {}
    mem, non = [], []
    for i, dup in enumerate((1, 64, 256)):
        img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        rel = f"images/canary_{i:03d}.png"
        Image.fromarray(img).save(root / rel)
        images[rel] = img
        mem.append(
            {
                "prompt_id": f"canary-{i:03d}",
                "caption": f"a vintor kazumor {i}",
                "image": rel,
                "image_sha256": image_sha256(img),
                "duplicates": dup,
                "group": f"dup={dup}",
                "memorized": True,
                "canary_kind": "grating",
                "nearest_train_index": 100 + i,
                "nearest_rms": 0.0,
            }
        )
    for i in range(2):
        img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        rel = f"images/heldout_{i:03d}.png"
        Image.fromarray(img).save(root / rel)
        images[rel] = img
        non.append(
            {
                "prompt_id": f"heldout-{i:03d}",
                "caption": "a red circle in the center on a gray background",
                "image": rel,
                "image_sha256": image_sha256(img),
                "duplicates": 0,
                "group": "held-out",
                "memorized": False,
                "attributes": ["red", "circle", "in the center", "gray"],
                "nearest_train_index": 7,
                "nearest_rms": 12.5,
            }
        )
    for name, rows in (("memorized.jsonl", mem), ("nonmemorized.jsonl", non)):
        _write(root / name, "".join(json.dumps(r) + "\n" for r in rows))
    return images


def test_bundled_loader_on_fixture(tmp_path: Path) -> None:
    images = _write_bundled_fixture(tmp_path)
    mem = load_bundled_memorized(tmp_path)
    assert mem.name == "bundled-memorized" and (mem.n, mem.n_with_image) == (3, 3)
    assert mem.prompt_ids() == ["canary-000", "canary-001", "canary-002"]
    assert [r.group for r in mem] == ["dup=1", "dup=64", "dup=256"]
    assert [r.duplicates for r in mem] == [1, 64, 256]
    assert all(r.memorized is True for r in mem)
    np.testing.assert_array_equal(mem[1].image, images["images/canary_001.png"])
    assert mem[0].extra == {"canary_kind": "grating", "nearest_train_index": 100, "nearest_rms": 0}
    non = load_bundled_nonmemorized(tmp_path, limit=1)
    assert non.n == 1 and non[0].memorized is False
    assert non[0].extra["attributes"] == ["red", "circle", "in the center", "gray"]
    assert non[0].duplicates == 0
    assert load_bundled_memorized(tmp_path).content_hash == mem.content_hash


def test_bundled_loader_detects_tampering(tmp_path: Path) -> None:
    from PIL import Image

    _write_bundled_fixture(tmp_path)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "images" / "canary_001.png")
    with pytest.raises(MemberbenchError, match=r"canary_001\.png does not match its image_sha256"):
        load_bundled_memorized(tmp_path)
    (tmp_path / "images" / "heldout_000.png").unlink()
    with pytest.raises(MemberbenchError, match=r"heldout_000\.png"):
        load_bundled_nonmemorized(tmp_path)
    with pytest.raises(MemberbenchError, match="bundled prompt set file not found: .*elsewhere"):
        load_bundled_memorized(tmp_path / "elsewhere")


def test_bundled_names_resolve() -> None:
    if not (BUNDLED_DIR / "memorized.jsonl").is_file():
        with pytest.raises(MemberbenchError, match="bundled prompt set file not found"):
            load_prompt_set("bundled-memorized")
        return
    mem = load_prompt_set("bundled-memorized")
    non = load_prompt_set("bundled-nonmemorized")
    assert mem.n > 0 and mem.n_with_image == mem.n and all(r.memorized for r in mem)
    assert non.n > 0 and not any(r.memorized for r in non)
    assert not set(mem.captions()) & set(non.captions())
