"""The static leaderboard site (memberbench/site.py): the generated HTML, and the pages in a real
headless browser (Debian's chromium + chromedriver through selenium; skipped when absent)."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from test_results_schema import make_doc

from memberbench import site as S
from memberbench.errors import MemberbenchError
from memberbench.metrics.declare import headlines
from memberbench.results import metric_entry, write_results

REPO = Path(__file__).resolve().parents[1]
EVIL = "<script>alert(\"x\")</script> & 'q' </td>"
PNG_1PX = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"
    b"\x90wS\xde\x00\x00\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe\x92\xef"
    b"\x00\x00\x00\x00IEND\xaeB`\x82"
)


# --------------------------------------------------------------------------------------------
# a small leaderboard


def _doc(mitigation: str, sscd: float | None, clip: float, seeds=(0, 1)) -> dict:
    doc = make_doc(
        sscd_mean=metric_entry(sscd, higher_is_better=False, stderr=0.02, n=15, test="t::a"),
        **{
            "clip_score.nonmem": metric_entry(clip, higher_is_better=True, stderr=1e-07, n=100),
            "detect_auc.wen.k1": metric_entry(
                0.7000000000000001, higher_is_better=True, stderr=0.03, n=115, ci=(0.88, 0.97)
            ),
            "mem_rate_0.5.dup=64": metric_entry(0.8, higher_is_better=False, stderr=0.1, n=3),
            "d1": metric_entry(None, higher_is_better=False, reason="no traces"),
        },
    )
    if mitigation == "none":  # as on the bundled model: only the baseline runs detection
        doc["metrics"]["detect_auc.d1.k50"] = metric_entry(
            0.5, higher_is_better=True, stderr=0.01, n=115, ci=(0.4, 0.6)
        )
    else:
        del doc["metrics"]["detect_auc.wen.k1"]
    doc["mitigation"] = {
        "spec": mitigation,
        "name": mitigation.split(":")[0],
        "fingerprint": "x",
        "citation": EVIL,
    }
    doc["sampling"]["seeds"] = list(seeds)
    doc["run"]["command"] = ["pytest", EVIL]
    return doc


ROWS = [
    {
        "set": "memorized",
        "prompt_id": "p1",
        "caption": EVIL,
        "group": "dup=64",
        "seeds": [0, 1],
        "image": "p1.png",
        "metrics": {"sscd_mean": 0.30000000000000004, "sscd_per_seed": [0.1, 0.5]},
    },
    {
        "set": "memorized",
        "prompt_id": "p2",
        "caption": "a red circle",
        "group": "dup=1",
        "seeds": [0, 1],
        "metrics": {"sscd_mean": 0.12345678901234568, "sscd_per_seed": [0.2, 0.04]},
    },
    {
        "set": "nonmemorized",
        "prompt_id": "n1",
        "caption": "a blue square",
        "group": "",
        "seeds": [0, 1],
        "metrics": {"sscd_mean.nonmem": 1.5e-05, "clip_score.nonmem": 27.25},
    },
]

# (file stem, mitigation spec, SSCD, CLIP, seeds)
RUNS = [
    ("none", "none", 0.61, 28.0, (0, 1)),
    ("guidance-scale-scale=3", "guidance-scale:scale=3", 0.35, 27.1, (0, 1)),
    ("guidance-scale-scale=5", "guidance-scale:scale=5", None, 27.5, (0, 1)),
    ("other-seeds", "guidance-scale:scale=2", 0.5, 26.0, (7,)),
]


def make_leaderboard(root: Path) -> Path:
    folder = root / "results" / "bundled"
    for stem, spec, sscd, clip, seeds in RUNS:
        write_results(folder / f"{stem}.json", _doc(spec, sscd, clip, seeds), ROWS)
    (folder / "p1.png").write_bytes(PNG_1PX)
    (folder / "broken.json").write_text(json.dumps({"schema": EVIL}))
    (root / "figures").mkdir(parents=True)
    (root / "figures" / "roc_bundled.png").write_bytes(PNG_1PX)
    return root


@pytest.fixture
def lb(tmp_path) -> Path:
    root = make_leaderboard(tmp_path / "leaderboard")
    S.build_site(root)
    return root


class Page(HTMLParser):
    """Tables (by id: rows of (tr attrs, [(td attrs, text)])), links and ids of a page."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[tuple[dict, list[tuple[dict, str]]]]] = {}
        self.headers: dict[str, list[str]] = {}
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.scripts = 0
        self._table: list[str] = []
        self._cell: list | None = None
        self._in_head = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        for k in ("href", "src"):
            if tag in ("a", "img", "link") and a.get(k):
                self.links.append(a[k])
        if tag == "script":
            self.scripts += 1
        if tag == "table":
            self._table.append(a.get("id", ""))
            self.tables.setdefault(a.get("id", ""), [])
            self.headers.setdefault(a.get("id", ""), [])
        elif tag == "thead":
            self._in_head = True
        elif tag == "tbody":
            self._in_head = False
        elif tag == "tr" and self._table and not self._in_head:
            self.tables[self._table[-1]].append((a, []))
        elif tag in ("td", "th") and self._table:
            self._cell = [a, ""]

    def handle_endtag(self, tag):
        if tag == "table" and self._table:
            self._table.pop()
        elif tag in ("td", "th") and self._cell is not None and self._table:
            t = self._table[-1]
            if self._in_head:
                self.headers[t].append(self._cell[1].strip())
            elif self.tables[t]:
                self.tables[t][-1][1].append((self._cell[0], self._cell[1].strip()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data


def read(p: Path) -> Page:
    return Page(p.read_text(encoding="utf-8"))


def raw_json(path: Path) -> dict:
    """The results file read with plain json (independent of memberbench.results)."""
    return json.loads(path.read_text(encoding="utf-8"))


def jtext(x) -> str:
    return "" if x is None else json.dumps(x)


# --------------------------------------------------------------------------------------------
# the generated HTML


def test_run_pages_list_every_number_of_their_json_exactly(lb):
    for stem, *_ in RUNS:
        doc = raw_json(lb / "results" / "bundled" / f"{stem}.json")
        page = read(lb / "site" / "runs" / "bundled" / f"{stem}.html")
        rows = {
            tr["data-metric"]: [t for _, t in cells] for tr, cells in page.tables["metrics-table"]
        }
        assert set(rows) == set(doc["metrics"])
        for name, m in doc["metrics"].items():
            ci = m["ci"] or [None, None]
            want = [jtext(m[k]) for k in ("value", "stderr", "n")] + [jtext(c) for c in ci]
            assert rows[name][1:6] == want, name
        # the awkward floats survive exactly (shortest repr, as the file writes them)
        text = (lb / "site" / "runs" / "bundled" / f"{stem}.html").read_text()
        assert ">1e-07<" in text
        assert (">0.7000000000000001<" in text) == (stem == "none")
        # per-prompt values: the exact number in data-v, a rounded one shown
        per = {tr["data-prompt"]: cells for tr, cells in page.tables["prompts-memorized"]}
        assert set(per) == {"p1", "p2"}
        heads = page.headers["prompts-memorized"]
        i = heads.index("sscd_mean")
        p2 = per["p2"][i]
        assert p2[0]["data-v"] == "0.12345678901234568" and p2[1] == "0.1235"
        assert per["p1"][heads.index("sscd_per_seed")][1] == "0.1, 0.5"
        nonmem = page.tables["prompts-nonmemorized"][0][1]
        # shown as is where the rounded text is the exact one (the sort then reads the text)
        assert nonmem[page.headers["prompts-nonmemorized"].index("sscd_mean.nonmem")] == (
            {},
            "1.5e-05",
        )
        # the settings come from the JSON
        assert "skew_320" in text and "beta_start" in text


def test_links_resolve_to_files_that_exist(lb):
    site = lb / "site"
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == 1 + len(RUNS)
    checked = 0
    for p in pages:
        page = read(p)
        for link in page.links:
            u = urlsplit(link)
            if u.scheme == "data":
                continue
            assert not u.scheme and not u.netloc, f"{p}: {link} leaves the disk"
            target = (p.parent / unquote(u.path)).resolve() if u.path else p
            assert target.is_file(), f"{p.relative_to(lb)}: {link} -> {target} is missing"
            if u.fragment:
                assert u.fragment in read(target).ids, f"{p}: {link}: no such anchor"
            checked += 1
    assert checked > 50
    index = (site / "index.html").read_text()
    assert 'src="../figures/roc_bundled.png"' in index
    none = (site / "runs" / "bundled" / "none.html").read_text()
    assert 'href="../../../results/bundled/none.json"' in none
    assert 'href="../../../results/bundled/none.prompts.jsonl"' in none
    assert 'src="../../../results/bundled/p1.png"' in none  # the image the row names


def test_every_string_is_escaped(lb):
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27; &lt;/td&gt;"
    for p in sorted((lb / "site").rglob("*.html")):
        text = p.read_text()
        assert EVIL not in text and "<script>alert" not in text
        assert read(p).scripts == 1  # only the page's own sorting script
        if p.parent.name == "bundled":  # the caption and the citation
            assert text.count(escaped) >= 2
    index = read(lb / "site" / "index.html")
    assert "invalid" in index.ids  # broken.json is listed, its schema text escaped
    assert "broken.json" in (lb / "site" / "index.html").read_text()


def test_headline_and_comparison_tables(lb):
    page = read(lb / "site" / "index.html")
    dirs = {
        "sscd_mean": False,
        "clip_score.nonmem": True,
        "detect_auc.wen.k1": True,
        "detect_auc.d1.k50": True,
        "d1": False,
    }
    want = [
        h.title + (" ↑" if dirs[h.key] else " ↓") for h in headlines("leaderboard") if h.key in dirs
    ]
    assert len(want) == 5
    assert page.headers["headline-bundled"] == [
        "run", "mitigation", "steps", "seeds", "memorized", "non-memorized", "profile", *want
    ]  # fmt: skip
    runs = [tr["data-run"] for tr, _ in page.tables["headline-bundled"]]
    assert runs == ["bundled/none"] + [f"bundled/{s}" for s, *_ in sorted(RUNS[1:])]
    # comparisons: the two runs with the baseline's setup, not the one with other seeds
    cmp_rows = {tr["data-run"]: cells for tr, cells in page.tables["compare-bundled--none"]}
    assert set(cmp_rows) == {"bundled/guidance-scale-scale=3", "bundled/guidance-scale-scale=5"}
    heads = page.headers["compare-bundled--none"]
    sscd = cmp_rows["bundled/guidance-scale-scale=3"][heads.index("Δ SSCD ↓")]
    assert sscd[0]["data-v"] == json.dumps(0.35 - 0.61) and sscd[0]["class"] == "better"
    clip = cmp_rows["bundled/guidance-scale-scale=3"][heads.index("Δ CLIP non-mem ↑")]
    assert clip[0]["data-v"] == json.dumps(27.1 - 28.0) and clip[0]["class"] == "worse"
    assert cmp_rows["bundled/guidance-scale-scale=5"][heads.index("Δ SSCD ↓")][0] == {}
    text = (lb / "site" / "index.html").read_text()
    assert "No baseline with the same setup" in text and "other-seeds" in text
    # the detection section: one run records it, so one row per metric, a column for the run
    assert page.headers["sec-detection-table"] == ["metric", "bundled/none"]
    det = page.tables["sec-detection-table"]
    assert [tr["data-metric"] for tr, _ in det] == ["detect_auc.d1.k50", "detect_auc.wen.k1"]
    assert det[1][1][1][0]["data-v"] == "0.7000000000000001"
    assert "1 of 4 runs record these metrics" in text


def test_same_inputs_give_the_same_bytes(lb, tmp_path):
    def snapshot(site: Path) -> dict[str, bytes]:
        return {
            p.relative_to(site).as_posix(): p.read_bytes() for p in site.rglob("*") if p.is_file()
        }

    first = snapshot(lb / "site")
    for p in (lb / "results").rglob("*"):  # new mtimes: nothing may depend on the clock
        p.touch()
    S.build_site(lb)
    assert snapshot(lb / "site") == first
    # a copy elsewhere builds the same (the invalid file is named relative to the folder)
    other = tmp_path / "elsewhere" / "leaderboard"
    shutil.copytree(lb / "results", other / "results")
    shutil.copytree(lb / "figures", other / "figures")
    S.build_site(other)
    assert snapshot(other / "site") == first
    assert (
        "<li>results/bundled/broken.json: not a memberbench"
        in (other / "site" / "index.html").read_text()
    )


def test_a_failed_build_leaves_the_old_site(lb, monkeypatch):
    before = {p: p.read_bytes() for p in (lb / "site").rglob("*") if p.is_file()}
    write_results(lb / "results" / "bundled" / "new.json", _doc("new:x=1", 0.2, 20.0), ROWS)
    calls = []

    def failing_write(path, text, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(path, text, **kw)

    real = S.atomic_write_text
    monkeypatch.setattr(S, "atomic_write_text", failing_write)
    with pytest.raises(MemberbenchError, match="No space left on device.*old site is unchanged"):
        S.build_site(lb)
    after = {p: p.read_bytes() for p in (lb / "site").rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in lb.iterdir() if p.name.startswith(".")] == []  # no temp folder left
    monkeypatch.undo()
    S.build_site(lb)
    assert (lb / "site" / "runs" / "bundled" / "new.html").is_file()


def test_cli_leaderboard_builds_the_site(tmp_path, capsys):
    from memberbench.cli import main

    root = make_leaderboard(tmp_path / "lb")
    (root / "results" / "bundled" / "broken.json").unlink()
    assert main(["leaderboard", "--root", str(root), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {root / 'site'}/ ({1 + len(RUNS)} pages" in out
    assert (root / "site" / "index.html").is_file()
    # a file where the site goes: one line, non-zero, nothing else changed
    shutil.rmtree(root / "site")
    (root / "site").write_text("mine")
    assert main(["leaderboard", "--root", str(root), "--no-figures"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"memberbench: error: {root / 'site'} exists and is not a folder; move it away and rebuild"
    ]
    assert (root / "site").read_text() == "mine"


def test_committed_site_is_small():
    """leaderboard/site/ is committed only while small (the run pages grow with the rows)."""
    site = REPO / "leaderboard" / "site"
    if not site.is_dir():
        pytest.skip("leaderboard/site/ is not committed")
    pages = [p for p in site.rglob("*") if p.is_file()]
    runs = len(list((REPO / "leaderboard" / "results").glob("*/*.json")))
    size = sum(p.stat().st_size for p in pages)
    # a run page holds every metric and per-prompt value of its run: ~60-250 KB here; the index
    # holds one row per run in each section's table: ~8 KB per run (497 KB for 61 runs)
    big = [
        (p.name, p.stat().st_size)
        for p in pages
        if p.stat().st_size > (64 + 10 * runs if p.name == "index.html" else 400) * 1024
    ]
    assert not big, f"pages over budget (run pages 400 KB, the index 64 + 10 KB per run): {big}"
    assert size < (512 + 160 * runs) * 1024, f"{size} bytes: gitignore leaderboard/site/ instead"


def test_committed_site_is_the_build_of_the_committed_results():
    """leaderboard/site/ is what `memberbench leaderboard` makes of leaderboard/results/ now."""
    from memberbench.leaderboard import collect

    board = REPO / "leaderboard"
    if not (board / "site").is_dir():
        pytest.skip("leaderboard/site/ is not committed")
    entries, errors = collect(board / "results")
    want = S.render(board, entries, errors)
    have = {
        p.relative_to(board / "site").as_posix(): p.read_text(encoding="utf-8")
        for p in (board / "site").rglob("*")
        if p.is_file()
    }
    stale = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    assert not stale, (
        f"leaderboard/site/ is out of date ({stale[:5]}): run `memberbench leaderboard`"
    )


# --------------------------------------------------------------------------------------------
# a real browser


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(
            "chromium / chromedriver not installed (apt-get install -y chromium "
            "chromium-driver; .ci/run does this where apt is available)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium not installed (pip install -e '.[test]')")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    opts.add_argument("--window-size=1400,1000")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(executable_path=driver))


@pytest.fixture(scope="module")
def browser():
    d = _browser()
    yield d
    d.quit()


def _load(browser, path: Path) -> list[dict]:
    """Open ``path`` from disk; the console's messages of level SEVERE (errors)."""
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(path.resolve().as_uri())
    browser.execute_script("return document.readyState")
    return [m for m in browser.get_log("browser") if m["level"] == "SEVERE"]


def test_browser_sees_console_errors(browser, tmp_path):
    """The check below can fail: a page with a broken script and a missing image is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><img src="missing.png"><script>notDefined();</script>')
    errors = _load(browser, bad)
    assert any("notDefined" in e["message"] for e in errors)


def _rows(browser, table_id: str, attr: str = "data-run") -> list[str]:
    return browser.execute_script(
        f"return Array.from(document.querySelectorAll('#{table_id} tbody tr'))"
        f".map(r => r.getAttribute('{attr}'))",
    )


def _header(browser, table_id: str, title: str):
    from selenium.webdriver.common.by import By

    for th in browser.find_elements(By.CSS_SELECTOR, f"#{table_id} thead th"):
        if th.text.strip().rstrip("▲▼ ").strip() == title:
            return th
    raise AssertionError(f"no header {title!r} in #{table_id}")


def _order(values: dict[str, float | None], descending: bool = False) -> list[str]:
    """Keys by value (a stable sort: ties keep their order), nulls last either way."""
    have = [k for k, v in values.items() if v is not None]
    have.sort(key=lambda k: -values[k] if descending else values[k])
    return have + [k for k, v in values.items() if v is None]


def test_site_in_a_browser(browser, lb):
    site = lb / "site"
    assert _load(browser, site / "index.html") == []
    start = _rows(browser, "headline-bundled")
    sscd = {}
    for r in start:
        doc = raw_json(lb / "results" / f"{r}.json")
        sscd[r] = doc["metrics"]["sscd_mean"]["value"]
    th = _header(browser, "headline-bundled", "SSCD ↓")
    th.click()
    assert _rows(browser, "headline-bundled") == _order(sscd)
    assert th.get_attribute("aria-sort") == "ascending"
    th.click()
    assert _rows(browser, "headline-bundled") == _order(sscd, descending=True)
    assert _rows(browser, "headline-bundled") != start
    # a run page shows the numbers of its JSON
    doc = raw_json(lb / "results" / "bundled" / "none.json")
    assert _load(browser, site / "runs" / "bundled" / "none.html") == []
    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('#metrics-table tbody tr')).map("
        "r => [r.getAttribute('data-metric'), Array.from(r.cells).map(c => c.innerText)])"
    )
    assert {k for k, _ in shown} == set(doc["metrics"])
    for name, cells in shown:
        m = doc["metrics"][name]
        assert cells[1:4] == [jtext(m["value"]), jtext(m["stderr"]), jtext(m["n"])], name
    caption = browser.execute_script(
        "return document.querySelector('#prompts-memorized tr[data-prompt=p1]').cells[2].innerText"
    )
    assert caption == EVIL.strip()


def test_committed_results_in_a_browser(browser, tmp_path):
    """The site of the committed leaderboard: no console errors, sorting a real column."""
    src = REPO / "leaderboard"
    if not (src / "results").is_dir():
        pytest.skip("no leaderboard/results in this checkout")
    root = tmp_path / "leaderboard"
    shutil.copytree(src / "results", root / "results")
    if (src / "figures").is_dir():
        shutil.copytree(src / "figures", root / "figures")
    S.build_site(root)
    assert _load(browser, root / "site" / "index.html") == []
    tables = browser.execute_script(
        "return Array.from(document.querySelectorAll('table[id^=headline-]')).map(t => t.id)"
    )
    assert tables
    table = tables[0]
    model = table.removeprefix("headline-")
    runs = _rows(browser, table)
    clip = {
        r: (raw_json(root / "results" / f"{r}.json")["metrics"].get("clip_score.nonmem") or {}).get(
            "value"
        )
        for r in runs
    }
    _header(browser, table, "CLIP non-mem ↑").click()
    assert _rows(browser, table) == _order(clip)
    for page in sorted((root / "site" / "runs" / model).glob("*.html"))[:3]:
        assert _load(browser, page) == []
