"""`memberbench fetch-images`: recovering a prompt set's images, against a local HTTP server only.

The server (127.0.0.1, port 0, a thread) serves good images, error pages, a slow answer, truncated
bodies, redirects and a flaky 500; it counts the hits per path, so reruns can be checked to fetch
nothing already done.  Nothing here touches the internet.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import memberbench.data.fetch as fetch
from memberbench import cli
from memberbench.data import image_sha256, load_prompt_file, load_prompt_set
from memberbench.data.fetch import TokenBucket, fetch_images, parse_urls, sniff_image
from memberbench.data.sets import PINNED_HASHES, REMOTE_SETS, set_file_env_var
from memberbench.types import MemberbenchError

REPO = Path(__file__).resolve().parents[1]
# The real prompt lists live beside the repository (../shared/prompts) and are never copied in.
SHARED = REPO.parent / "shared" / "prompts"
WEN = SHARED / "wen_sdv1_500_memorized.jsonl"
NEMO_UNMEM = SHARED / "nemo_unmemorized_laion_prompts.csv"

FAST = ["--timeout", "0.5", "--retries", "1", "--backoff", "0.02", "--rate", "0", "--workers", "4"]
FAST_KW = dict(timeout=0.5, retries=1, backoff=0.02, rate=0, workers=4)


def _pixels(seed: int, h: int = 12, w: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


PNG_PIX = _pixels(1)
PNG = _encode(PNG_PIX, "PNG")
JPEG = _encode(_pixels(2, 16, 16), "JPEG", quality=90)
JPEG_PIX = np.asarray(Image.open(io.BytesIO(JPEG)).convert("RGB"))
WEBP = _encode(_pixels(3), "WEBP", lossless=True)
PNG2_PIX = _pixels(4)
PNG2 = _encode(PNG2_PIX, "PNG")
HTML = b"<!DOCTYPE html><html><body>404 - this image is gone</body></html>"


class Server:
    """A tiny HTTP server: routes[path] = handler(request) -> None; counts hits per path."""

    def __init__(self) -> None:
        self.hits: Counter = Counter()
        self.user_agents: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # noqa: ANN002
                pass

            def do_GET(self):  # noqa: N802
                path = self.path.split("?", 1)[0]
                with outer.lock:
                    outer.hits[path] += 1
                    n = outer.hits[path]
                    outer.user_agents.append(self.headers.get("User-Agent", ""))
                outer.route(self, path, n)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    @staticmethod
    def send(h, code: int, body: bytes, ctype: str = "application/octet-stream", **headers):
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(headers.pop("length", len(body))))
        for k, v in headers.items():
            h.send_header(k.replace("_", "-"), v)
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()

    def route(self, h, path: str, n: int) -> None:  # noqa: ANN001, C901
        if path in ("/good.png", "/good2.png", "/multi-a.png"):
            # a wrong Content-Type on purpose: the format is sniffed from the bytes
            self.send(h, 200, PNG if path != "/good2.png" else PNG2, "text/plain")
        elif path in ("/good.jpg", "/multi-b.jpg"):
            self.send(h, 200, JPEG, "image/jpeg")
        elif path == "/good.webp":
            self.send(h, 200, WEBP, "image/webp")
        elif path == "/slow.png":
            time.sleep(1.5)
            with __import__("contextlib").suppress(OSError):
                self.send(h, 200, PNG, "image/png")
        elif path == "/hang.png":  # for the kill -9 test
            time.sleep(30)
        elif path == "/truncated.png":  # says 1000 more bytes than it sends, then hangs up
            self.send(h, 200, PNG[: len(PNG) // 2], "image/png", length=len(PNG) + 1000)
            h.close_connection = True
        elif path == "/cut.png":  # a correct Content-Length, but the PNG itself is cut
            self.send(h, 200, PNG[: len(PNG) - 30], "image/png")
        elif path == "/page.jpg":  # an HTML error page with status 200 and an image type
            self.send(h, 200, HTML, "image/jpeg")
        elif path == "/empty.png":
            self.send(h, 200, b"", "image/png")
        elif path == "/text.png":
            self.send(h, 200, b"just some text, not an image at all", "image/png")
        elif path == "/redirect":
            h.send_response(302)
            h.send_header("Location", "/good.jpg")
            h.send_header("Content-Length", "0")
            h.end_headers()
        elif path == "/flaky.png":  # a 500, then the image
            if n == 1:
                self.send(h, 500, b"oops", "text/plain")
            else:
                self.send(h, 200, PNG2, "image/png")
        elif path == "/busy.png":  # always 503
            self.send(h, 503, b"busy", "text/plain")
        elif path.startswith("/archive/"):  # a mirror: gives the image of any archived URL
            self.send(h, 200, WEBP, "image/webp")
        else:
            self.send(h, 404, b"not found", "text/plain")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.close()


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _manifest(out: Path) -> dict[tuple[str, int], dict]:
    return {(e["prompt_id"], e["url_index"]): e for e in _read_jsonl(out / "manifest.jsonl")}


def _main(args: list[str], capsys) -> tuple[int, str, str]:  # noqa: ANN001
    rc = cli.main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# --------------------------------------------------------------------------------------------
# the main run: every kind of server answer


@pytest.fixture(scope="module")
def main_run(server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("main")
    rows = [
        {"prompt_id": "png", "caption": "a good png", "url": server.url("/good.png")},
        {"prompt_id": "jpg", "caption": "a good jpeg", "url": server.url("/good.jpg")},
        {"prompt_id": "gone", "caption": "a 404", "url": server.url("/nope.png")},
        {"prompt_id": "slow", "caption": "too slow", "url": server.url("/slow.png")},
        {"prompt_id": "trunc", "caption": "truncated body", "url": server.url("/truncated.png")},
        {"prompt_id": "cut", "caption": "cut png", "url": server.url("/cut.png")},
        {"prompt_id": "html", "caption": "an html page", "url": server.url("/page.jpg")},
        {"prompt_id": "empty", "caption": "empty body", "url": server.url("/empty.png")},
        {"prompt_id": "text", "caption": "not an image", "url": server.url("/text.png")},
        {"prompt_id": "redir", "caption": "redirected", "url": server.url("/redirect")},
        {"prompt_id": "flaky", "caption": "500 then ok", "url": server.url("/flaky.png")},
        {
            "prompt_id": "multi",
            "caption": "several urls",
            "url": [
                server.url("/multi-a.png"),
                server.url("/missing.png"),
                server.url("/multi-b.jpg"),
            ],
        },
        {"prompt_id": "nourl", "caption": "no url at all", "group": "N", "memorized": False},
        {"prompt_id": "bad:id/with spaces", "caption": "odd id", "url": server.url("/good.webp")},
    ]
    src = _jsonl(tmp / "set.jsonl", rows)
    out = tmp / "out"
    before = Counter(server.hits)
    rc = cli.main(["fetch-images", str(src), "--out", str(out), *FAST])
    hits = Counter(server.hits)
    hits.subtract(before)
    return {"src": src, "out": out, "rc": rc, "hits": +hits, "rows": rows}


def test_main_run_recovers_exactly_the_good_images(main_run) -> None:
    assert main_run["rc"] == 0
    out = main_run["out"]
    # 12 rows with URLs, one with 3 URLs, one without: 16 images; recovered: png, jpg, redir,
    # flaky, multi-a, multi-b, webp
    m = _manifest(out)
    assert len(m) == 16
    ok = sorted(k for k, e in m.items() if e["status"] == "ok")
    assert ok == sorted(
        [("png", 0), ("jpg", 0), ("redir", 0), ("flaky", 0), ("multi", 0), ("multi", 2)]
        + [("bad:id/with spaces", 0)]
    )


def test_summary_line(server, tmp_path, capsys) -> None:
    src = _jsonl(
        tmp_path / "s.jsonl",
        [
            {"caption": "a", "url": server.url("/good.png")},
            {"caption": "b", "url": server.url("/nope-summary.png")},
            {"caption": "c", "url": server.url("/page.jpg")},
        ],
    )
    rc, stdout, _ = _main(["fetch-images", str(src), "--out", str(tmp_path / "o"), *FAST], capsys)
    assert rc == 0
    lines = stdout.splitlines()
    assert lines[0] == "1 of 3 images recovered"
    assert "recovered: 1 from url" in stdout
    assert "not recovered: 1 HTTP 404, 1 HTML page instead of an image" in stdout


def test_manifest_statuses_and_errors(main_run) -> None:
    m = _manifest(main_run["out"])
    fail = {k[0]: e for k, e in m.items() if e["status"] != "ok"}
    assert fail["gone"]["reason"] == "http-404" and fail["gone"]["error"] == "HTTP 404 Not Found"
    assert fail["gone"]["attempts"] == 1  # a 404 is not retried
    assert fail["slow"]["reason"] == "timeout" and "timed out after 0.5 s" in fail["slow"]["error"]
    assert fail["slow"]["attempts"] == 2  # retried once
    assert fail["trunc"]["reason"] == "truncated" and "truncated" in fail["trunc"]["error"]
    assert fail["cut"]["reason"] == "bad-image"
    assert "truncated or corrupt PNG image" in fail["cut"]["error"]
    assert fail["html"]["reason"] == "html" and "HTML page" in fail["html"]["error"]
    assert "Content-Type image/jpeg" in fail["html"]["error"]
    assert fail["empty"]["reason"] == "empty" and "0 bytes" in fail["empty"]["error"]
    assert fail["text"]["reason"] == "not-image" and "not an image" in fail["text"]["error"]
    assert m[("multi", 1)]["status"] == "failed" and m[("multi", 1)]["reason"] == "http-404"
    assert fail["nourl"]["status"] == "no_url" and fail["nourl"]["url"] is None
    for e in fail.values():
        assert e["file"] is None and e["sha256"] is None
    flaky = m[("flaky", 0)]
    assert flaky["attempts"] == 2 and flaky["source"] == "url"
    redir = m[("redir", 0)]
    assert redir["fetched_from"].endswith("/good.jpg") and redir["format"] == "JPEG"
    # nothing that failed was saved: the image folder holds exactly the recovered files
    names = sorted(p.name for p in (main_run["out"] / "images").iterdir())
    assert names == sorted(Path(e["file"]).name for e in m.values() if e["status"] == "ok")


def test_saved_files_are_the_served_images(main_run) -> None:
    out = main_run["out"]
    m = _manifest(out)
    served = {
        "png": (PNG, PNG_PIX, "png"),
        "jpg": (JPEG, JPEG_PIX, "jpg"),
        "redir": (JPEG, JPEG_PIX, "jpg"),
        "flaky": (PNG2, PNG2_PIX, "png"),
    }
    for pid, (data, pix, ext) in served.items():
        e = m[(pid, 0)]
        path = out / e["file"]
        assert path.suffix == f".{ext}"
        assert path.read_bytes() == data  # the original bytes, untouched
        assert e["sha256"] == hashlib.sha256(data).hexdigest() and e["bytes"] == len(data)
        assert e["image_sha256"] == image_sha256(pix)
        assert image_sha256(np.asarray(Image.open(path).convert("RGB"))) == image_sha256(pix)
    odd = m[("bad:id/with spaces", 0)]
    assert odd["file"].startswith("images/bad_id_with_spaces-") and odd["file"].endswith(".webp")


def test_prompts_jsonl_loads_with_images_on_recovered_rows(main_run) -> None:
    out = main_run["out"]
    rows = _read_jsonl(out / "prompts.jsonl")
    assert [r["prompt_id"] for r in rows] == [r["prompt_id"] for r in main_run["rows"]]
    ps = load_prompt_file(out / "prompts.jsonl")
    assert ps.n == len(main_run["rows"]) and ps.n_skipped == 0
    have = {r.prompt_id for r in ps if r.image_available}
    assert have == {"png", "jpg", "redir", "flaky", "multi", "bad:id/with spaces"}
    by_id = {r.prompt_id: r for r in ps}
    np.testing.assert_array_equal(by_id["png"].image, PNG_PIX)
    assert by_id["jpg"].image_sha256 == image_sha256(JPEG_PIX)
    np.testing.assert_array_equal(by_id["multi"].image, PNG_PIX)  # the first recovered URL
    assert by_id["nourl"].memorized is False and by_id["nourl"].group == "N"
    assert by_id["gone"].url.endswith("/nope.png")
    multi = next(r for r in rows if r["prompt_id"] == "multi")
    assert multi["images"] == [
        _manifest(out)[("multi", 0)]["file"],
        _manifest(out)[("multi", 2)]["file"],
    ]
    assert len(multi["urls"]) == 3 and multi["url"] == multi["urls"][0]
    gone = next(r for r in rows if r["prompt_id"] == "gone")
    assert gone["image"] is None and gone["fetch_status"] == "failed"
    assert gone["fetch_error"] == "HTTP 404 Not Found" and "images" not in gone
    single = next(r for r in rows if r["prompt_id"] == "png")
    assert "images" not in single and single["image_source"] == "url"


def test_user_agent_and_hits(main_run, server) -> None:
    assert all(ua.startswith("memberbench/") for ua in server.user_agents)
    hits = main_run["hits"]
    assert hits["/good.png"] == 1 and hits["/flaky.png"] == 2 and hits["/nope.png"] == 1
    assert hits["/slow.png"] == 2 and hits["/redirect"] == 1


def test_rerun_fetches_nothing_already_done(main_run, server, capsys) -> None:
    out = main_run["out"]
    before = Counter(server.hits)
    first = (out / "prompts.jsonl").read_bytes()
    rc, stdout, _ = _main(
        ["fetch-images", str(main_run["src"]), "--out", str(out), *FAST, "--skip-failed"], capsys
    )
    assert rc == 0 and server.hits == before  # not one request
    assert stdout.splitlines()[0] == "7 of 16 images recovered"
    assert "7 already done" in stdout
    assert (out / "prompts.jsonl").read_bytes() == first
    # without --skip-failed only the failed rows are asked again
    rc, stdout, _ = _main(["fetch-images", str(main_run["src"]), "--out", str(out), *FAST], capsys)
    new = Counter(server.hits)
    new.subtract(before)
    assert rc == 0 and new["/good.png"] == 0 and new["/good.jpg"] == 0 and new["/flaky.png"] == 0
    assert new["/nope.png"] == 1 and new["/multi-a.png"] == 0 and new["/missing.png"] == 1
    assert len(_read_jsonl(out / "manifest.jsonl")) == 16  # compacted: one line per image


# --------------------------------------------------------------------------------------------
# interruption, stale files, changed files


def _two_good(server: Server, tmp_path: Path, n: int = 4) -> Path:
    paths = ["/good.png", "/good.jpg", "/good.webp", "/good2.png"]
    rows = [
        {"prompt_id": f"r{i}", "caption": f"row {i}", "url": server.url(paths[i % 4]) + f"?{i}"}
        for i in range(n)
    ]
    return _jsonl(tmp_path / "good.jsonl", rows)


class SimulatedKill(BaseException):
    pass


def test_simulated_kill_leaves_no_half_file_and_rerun_completes(server, tmp_path, monkeypatch):
    src = _two_good(server, tmp_path, 4)
    out = tmp_path / "out"
    real_replace = os.replace
    calls = []

    def dying_replace(a, b):  # noqa: ANN001
        calls.append(b)
        if len(calls) == 3:  # the third image: the process "dies" between write and rename
            raise SimulatedKill
        return real_replace(a, b)

    monkeypatch.setattr(fetch.os, "replace", dying_replace)
    with pytest.raises(SimulatedKill):
        fetch_images(str(src), out, **{**FAST_KW, "workers": 1})
    monkeypatch.setattr(fetch.os, "replace", real_replace)
    parts = [p for p in (out / "images").iterdir() if p.name.endswith(".part")]
    assert parts == []  # the failed write removed its temp file (memberbench.io.atomic_open)
    finals = [p for p in (out / "images").iterdir() if not p.name.endswith(".part")]
    assert len(finals) == 2
    for p in finals:
        Image.open(p).load()  # every file under a final name is whole
    entries = _read_jsonl(out / "manifest.jsonl")
    assert len(entries) == 2 and all(e["status"] == "ok" for e in entries)
    assert all((out / e["file"]).is_file() for e in entries)

    report = fetch_images(str(src), out, **FAST_KW)
    assert report.removed_temp == 0 and report.already_done == 2 and report.fetched == 2
    assert report.n_recovered == 4
    assert not [p for p in (out / "images").iterdir() if p.name.endswith(".part")]
    assert load_prompt_file(out / "prompts.jsonl").n_with_image == 4


def test_kill_minus_9_mid_run(server, tmp_path) -> None:
    rows = [
        {"prompt_id": f"g{i}", "caption": f"good {i}", "url": server.url(f"/good.png?k{i}")}
        for i in range(3)
    ]
    rows.append({"prompt_id": "hang", "caption": "hangs", "url": server.url("/hang.png")})
    src = _jsonl(tmp_path / "k.jsonl", rows)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "memberbench.cli", "fetch-images", str(src), "--out", str(out)]
    cmd += ["--workers", "1", "--timeout", "20", "--rate", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.jsonl"
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if manifest.is_file() and manifest.read_bytes().count(b"\n") >= 3:
                break
            assert proc.poll() is None, "the fetch ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("the fetch did not get through the good rows in time")
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "prompts.jsonl").exists()  # written only at the end, atomically
    entries = _read_jsonl(manifest)
    assert len(entries) == 3 and all(e["status"] == "ok" for e in entries)
    for e in entries:
        assert hashlib.sha256((out / e["file"]).read_bytes()).hexdigest() == e["sha256"]
    # rerun without the hanging row: the three finished rows are not fetched again
    _jsonl(src, rows[:3])
    before = Counter(server.hits)
    report = fetch_images(str(src), out, **FAST_KW)
    assert report.already_done == 3 and report.fetched == 0 and server.hits == before


def test_truncated_manifest_line_and_stale_temps_and_missing_file(server, tmp_path) -> None:
    src = _two_good(server, tmp_path, 3)
    out = tmp_path / "out"
    fetch_images(str(src), out, **FAST_KW)
    m = _read_jsonl(out / "manifest.jsonl")
    # a killed run: a half-written last line, a stale temp file, a recorded file gone
    with open(out / "manifest.jsonl", "ab") as f:
        f.write(b'{"prompt_id": "r1", "url_index": 0, "status": "o')
    stale = out / "images" / ".fetch-r9.jpg.abc123.part"
    stale.write_bytes(b"half an image")
    (out / m[2]["file"]).unlink()
    before = Counter(server.hits)
    report = fetch_images(str(src), out, **FAST_KW)
    assert not stale.exists() and report.removed_temp == 1
    assert report.missing_files == [m[2]["file"]] and report.fetched == 1
    assert report.already_done == 2 and report.n_recovered == 3
    new = Counter(server.hits)
    new.subtract(before)
    assert sum(new.values()) == 1
    assert len(_read_jsonl(out / "manifest.jsonl")) == 3  # the partial line is gone


def test_changed_file_is_kept_aside_and_refetched(server, tmp_path, capsys) -> None:
    src = _two_good(server, tmp_path, 2)
    out = tmp_path / "out"
    fetch_images(str(src), out, **FAST_KW)
    e = _read_jsonl(out / "manifest.jsonl")[0]
    target = out / e["file"]
    target.write_bytes(JPEG)  # someone replaced the file
    rc, stdout, _ = _main(["fetch-images", str(src), "--out", str(out), *FAST], capsys)
    assert rc == 0
    assert "1 file(s) no longer matched their recorded sha256" in stdout
    kept = list((out / "images" / "changed").iterdir())
    assert len(kept) == 1 and kept[0].read_bytes() == JPEG  # not deleted
    assert target.read_bytes() == PNG  # the served image is back
    assert "previous_sha256" not in _manifest(out)[("r0", 0)]  # the same bytes as before


def test_upstream_change_is_reported(server, tmp_path) -> None:
    src = _jsonl(
        tmp_path / "u.jsonl", [{"prompt_id": "u", "caption": "u", "url": server.url("/good.png?u")}]
    )
    out = tmp_path / "out"
    fetch_images(str(src), out, **FAST_KW)
    e = _read_jsonl(out / "manifest.jsonl")[0]
    (out / e["file"]).unlink()
    # the previous run recorded other bytes for this URL than the server now sends
    e["sha256"] = "0" * 64
    (out / "manifest.jsonl").write_text(json.dumps(e) + "\n")
    report = fetch_images(str(src), out, **FAST_KW)
    assert report.upstream_changed == ["u"]
    new = _read_jsonl(out / "manifest.jsonl")[0]
    assert new["previous_sha256"] == "0" * 64 and new["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert "differ from the bytes a previous run recorded" in "\n".join(report.summary_lines())


def test_webster_style_parquet_with_list_urls(server, tmp_path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "caption": ["Living in the Light with Ann Graham Lotz", "a plain prompt"],
            "url": [
                [server.url("/good.png?w1")],
                [server.url("/nope-w.png"), server.url("/good.jpg?w2")],
            ],
            "overfit_type": ["MV", "N"],
            "index": [11, 12],
        }
    )
    src = tmp_path / "sdv1_bb_edge_groundtruth.parquet"
    pq.write_table(table, src)
    out = tmp_path / "out"
    report = fetch_images(str(src), out, **FAST_KW)
    assert (report.n_recovered, report.n_images, report.n_rows_with_image) == (2, 3, 2)
    rows = _read_jsonl(out / "prompts.jsonl")
    assert [r["group"] for r in rows] == ["MV", "N"]
    assert [r["memorized"] for r in rows] == [True, False]  # Webster's N stays non-memorized
    assert rows[0]["url"] == server.url("/good.png?w1") and "urls" not in rows[0]
    assert rows[1]["urls"] == [server.url("/nope-w.png"), server.url("/good.jpg?w2")]
    assert rows[1]["images"] == [rows[1]["image"]] and rows[1]["image"].endswith(".u1.jpg")
    ps = load_prompt_file(out / "prompts.jsonl")
    assert [r.memorized for r in ps] == [True, False] and ps.n_with_image == 2
    assert ps[1].image_sha256 == image_sha256(JPEG_PIX)


def test_interrupt_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    def interrupted(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch, "fetch_images", interrupted)
    rc, _, err = _main(["fetch-images", "x.jsonl", "--out", str(tmp_path / "o")], capsys)
    assert rc == 130 and err.count("\n") == 1 and "rerun the same command" in err


# --------------------------------------------------------------------------------------------
# extra sources


def test_local_dir_fallback(server, tmp_path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    gone = server.url("/gone-local.png")
    gone2 = server.url("/gone-local-2.png")
    (local / "77.jpg").write_bytes(JPEG)  # by index
    (local / "p-local.png").write_bytes(PNG)  # by prompt_id
    (local / f"{hashlib.sha1(gone2.encode()).hexdigest()}.webp").write_bytes(WEBP)  # sha1(url)
    (local / "88.png").write_bytes(HTML)  # garbage under a matching name
    rows = [
        {"prompt_id": "a", "caption": "by index", "url": gone, "index": 77},
        {"prompt_id": "p-local", "caption": "by id, no url"},
        {"prompt_id": "c", "caption": "by url hash", "url": gone2},
        {
            "prompt_id": "d",
            "caption": "not an image locally",
            "url": server.url("/x404"),
            "index": 88,
        },
    ]
    src = _jsonl(tmp_path / "l.jsonl", rows)
    out = tmp_path / "out"
    report = fetch_images(str(src), out, local_dir=local, **FAST_KW)
    m = _manifest(out)
    assert report.n_recovered == 3 and report.by_source["local-dir"] == 3
    assert m[("a", 0)]["source"] == "local-dir" and m[("a", 0)]["fetched_from"].endswith("77.jpg")
    assert m[("a", 0)]["tried"] == ["HTTP 404 Not Found"]
    assert m[("p-local", 0)]["status"] == "ok" and m[("p-local", 0)]["url"] is None
    assert (out / m[("c", 0)]["file"]).read_bytes() == WEBP
    assert m[("d", 0)]["status"] == "failed" and m[("d", 0)]["reason"] == "http-404"
    assert "local-dir:" in m[("d", 0)]["error"] and "HTML page" in m[("d", 0)]["error"]
    ps = load_prompt_file(out / "prompts.jsonl")
    assert [r.image_available for r in ps] == [True, True, True, False]
    assert ps[0].extra["index"] == 77 and ps[0].extra["image_source"] == "local-dir"


def test_hf_dataset_fallback(server, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    gone = server.url("/gone-hf.png")
    ds = datasets.Dataset.from_dict(
        {
            "url": [gone, "http://elsewhere/x.png"],
            "index": [5, 6],
            "image": [{"bytes": PNG2, "path": None}, {"bytes": JPEG, "path": None}],
        }
    ).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hf"))
    rows = [
        {"prompt_id": "h1", "caption": "by url", "url": gone, "index": 1},
        {"prompt_id": "h2", "caption": "not there", "url": server.url("/gone-hf-2.png")},
    ]
    src = _jsonl(tmp_path / "h.jsonl", rows)
    report = fetch_images(str(src), tmp_path / "o1", hf_dataset=str(tmp_path / "hf"), **FAST_KW)
    m = _manifest(tmp_path / "o1")
    assert report.n_recovered == 1 and m[("h1", 0)]["source"] == "hf-dataset"
    assert m[("h1", 0)]["image_sha256"] == image_sha256(PNG2_PIX)
    assert "hf-dataset: no row with url" in m[("h2", 0)]["error"]
    # keyed by index, through the CLI, on a row without any URL
    src2 = _jsonl(tmp_path / "h2.jsonl", [{"prompt_id": "i6", "caption": "index 6", "index": 6}])
    rc = cli.main(
        ["fetch-images", str(src2), "--out", str(tmp_path / "o2"), "--hf-dataset",
         str(tmp_path / "hf"), "--hf-key", "index", *FAST]
    )  # fmt: skip
    assert rc == 0
    e = _manifest(tmp_path / "o2")[("i6", 0)]
    assert e["status"] == "ok" and e["format"] == "JPEG"
    with pytest.raises(MemberbenchError, match="--hf-image-column 'nope' is not a column"):
        fetch.HFDatasetSource(str(tmp_path / "hf"), key="index", image_column="nope")
    datasets.Dataset.from_dict({"k": [1], "image": [b"x"]}).save_to_disk(str(tmp_path / "hf2"))
    with pytest.raises(MemberbenchError, match="no index column .*found columns"):
        fetch.HFDatasetSource(str(tmp_path / "hf2"), key="index")


def test_url_template_fallback(server, tmp_path) -> None:
    gone = server.url("/gone-tpl.png")
    src = _jsonl(
        tmp_path / "t.jsonl",
        [
            {"prompt_id": "t1", "caption": "archived", "url": gone},
            {"prompt_id": "t2", "caption": "fine", "url": server.url("/good.png?t2")},
        ],
    )
    tpl = server.url("/archive/2023id_/{url}")
    report = fetch_images(str(src), tmp_path / "out", url_template=tpl, **FAST_KW)
    m = _manifest(tmp_path / "out")
    assert report.n_recovered == 2
    assert m[("t1", 0)]["source"] == "url-template"
    assert m[("t1", 0)]["fetched_from"] == server.url("/archive/2023id_/") + gone
    assert m[("t2", 0)]["source"] == "url"
    with pytest.raises(MemberbenchError, match=r"unknown placeholder \{nope\}"):
        fetch_images(str(src), tmp_path / "o2", url_template="http://x/{nope}", **FAST_KW)
    # only the mirror (no request to the rows' own URLs)
    before = Counter(server.hits)
    r2 = fetch_images(
        str(src), tmp_path / "o3", url_template=tpl, sources=["url-template"], **FAST_KW
    )
    assert r2.n_recovered == 2 and server.hits["/gone-tpl.png"] == before["/gone-tpl.png"]


# --------------------------------------------------------------------------------------------
# the field's real files (read in place; skipped when absent)


def _real(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} not present (the shared prompt files live outside the repo)")
    return path


def test_real_wen_set_through_a_mirror(server, tmp_path, capsys) -> None:
    wen = _real(WEN)
    out = tmp_path / "wen"
    rc, stdout, _ = _main(
        ["fetch-images", "wen-sd1-memorized", "--set-file", str(wen), "--out", str(out),
         "--limit", "5", "--sources", "url-template", "--url-template",
         server.url("/archive/{url}"), *FAST],
        capsys,
    )  # fmt: skip
    assert rc == 0 and stdout.splitlines()[0] == "5 of 5 images recovered"
    ps = load_prompt_file(out / "prompts.jsonl")
    assert ps.n == 5 and ps.n_with_image == 5 and all(r.memorized is True for r in ps)
    assert ps[0].caption == "The No Limits Business Woman Podcast"
    assert ps[0].extra["index"] == 1030727993
    assert ps[0].url == "https://onlinecoach1.hipcast.com/albumart/1000_1618923228.jpg"


def test_real_nemo_csv_from_a_local_dir(tmp_path) -> None:
    nemo = _real(NEMO_UNMEM)
    local = tmp_path / "laion"
    local.mkdir()
    (local / "396.png").write_bytes(PNG)  # the first row's LAION index
    report = fetch_images(str(nemo), tmp_path / "out", limit=2, local_dir=local,
                          sources=["local-dir"], **FAST_KW)  # fmt: skip
    assert (report.n_recovered, report.n_images) == (1, 2)
    ps = load_prompt_file(tmp_path / "out" / "prompts.jsonl")
    assert [r.image_available for r in ps] == [True, False]
    assert ps[0].memorized is False and ps[0].extra["index"] == 396
    assert "Index" not in ps[0].extra


# --------------------------------------------------------------------------------------------
# bad input: one clear line, non-zero exit, nothing written


def test_missing_url_column(tmp_path, capsys) -> None:
    src = tmp_path / "nourl.csv"
    src.write_text("Caption;Index\na cat;1\na dog;2\n", encoding="utf-8")
    out = tmp_path / "out"
    rc, stdout, err = _main(["fetch-images", str(src), "--out", str(out)], capsys)
    assert rc == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith("memberbench: error: ")
    assert "no row has a URL" in err and "found columns Caption, Index" in err
    assert not out.exists()


def test_unknown_set_and_unwritable_out(tmp_path, capsys) -> None:
    rc, _, err = _main(["fetch-images", "wen-sd1-memorised", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "Did you mean 'wen-sd1-memorized'" in err
    src = _jsonl(tmp_path / "s.jsonl", [{"caption": "c", "url": "http://127.0.0.1:9/x.png"}])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for bad in (blocker, blocker / "sub"):
        rc, _, err = _main(["fetch-images", str(src), "--out", str(bad)], capsys)
        assert rc == 2 and err.count("\n") == 1 and f"--out {bad}" in err
    rc, _, err = _main(["fetch-images", str(src), "--out", str(tmp_path / "o"), "--set-file",
                        str(src)], capsys)  # fmt: skip
    assert rc == 2 and "--set-file is for the registered remote sets" in err
    rc, _, err = _main(["fetch-images", str(src), "--out", str(tmp_path / "o"), "--sources",
                        "url,local-dir"], capsys)  # fmt: skip
    assert rc == 2 and "--sources local-dir needs --local-dir" in err
    with pytest.raises(SystemExit) as e:  # argparse: usage + one error line
        cli.main(["fetch-images", str(src), "--out", str(tmp_path / "o"), "--workers", "0"])
    assert e.value.code == 2
    assert "--workers: expected an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_second_run_on_the_same_folder_is_refused(server, tmp_path) -> None:
    fcntl = pytest.importorskip("fcntl")
    src = _two_good(server, tmp_path, 1)
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".fetch.lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        with pytest.raises(MemberbenchError, match="another fetch-images run is writing there"):
            fetch_images(str(src), out, **FAST_KW)
    assert fetch_images(str(src), out, **FAST_KW).n_recovered == 1


def test_refused_connection_is_a_row_failure(tmp_path, capsys) -> None:
    rows = [
        {"caption": "c", "url": "http://127.0.0.1:9/x.png"},
        {"caption": "d", "url": "ftp://example/x.png"},
    ]
    src = _jsonl(tmp_path / "s.jsonl", rows)
    rc, stdout, _ = _main(["fetch-images", str(src), "--out", str(tmp_path / "o"), *FAST], capsys)
    assert rc == 0 and stdout.startswith("0 of 2 images recovered")
    m = list(_manifest(tmp_path / "o").values())
    assert m[0]["reason"] == "connection" and m[0]["attempts"] == 2
    assert m[1]["reason"] == "invalid-url" and "not an http(s) URL" in m[1]["error"]


# --------------------------------------------------------------------------------------------
# pinned upstream files


def test_pinned_hashes_cover_the_remote_sets() -> None:
    assert set(PINNED_HASHES) == set(REMOTE_SETS)
    assert PINNED_HASHES["webster-sd1"] == ("md5", "72c2dded275dda496de9c3f7c33c4f3d")
    assert PINNED_HASHES["wen-sd1-memorized"][1].startswith("8eb16c6f")


def test_local_copy_is_verified(tmp_path, monkeypatch, capsys) -> None:
    wen = _real(WEN)
    assert load_prompt_set("wen-sd1-memorized", path=str(wen)).n == 500
    monkeypatch.setenv(set_file_env_var("wen-sd1-memorized"), str(wen))
    assert set_file_env_var("wen-sd1-memorized") == "MEMBERBENCH_SET_WEN_SD1_MEMORIZED"
    assert load_prompt_set("wen-sd1-memorized", limit=2).n == 2
    other = tmp_path / "sdv1_500_memorized.jsonl"
    other.write_bytes(wen.read_bytes().replace(b"Podcast", b"Podcasts", 1))
    with pytest.raises(MemberbenchError, match="is not the pinned file: expected sha256 8eb16c6f"):
        load_prompt_set("wen-sd1-memorized", path=str(other))
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    fake = tmp_path / "sdv1_bb_edge_groundtruth.parquet"
    pq.write_table(
        pa.table({"caption": ["c"], "url": ["http://x/1.jpg"], "overfit_type": ["N"]}), fake
    )
    rc, _, err = _main(["fetch-images", "webster-sd1", "--set-file", str(fake), "--out",
                        str(tmp_path / "o")], capsys)  # fmt: skip
    assert rc == 2 and err.count("\n") == 1
    assert "expected md5 72c2dded275dda496de9c3f7c33c4f3d, got" in err
    assert REMOTE_SETS["webster-sd1"] in err and "MEMBERBENCH_SET_WEBSTER_SD1" in err


def test_downloaded_file_changed_upstream(tmp_path, monkeypatch) -> None:
    import datasets

    import memberbench.data.hub as prompts

    changed = tmp_path / "download"
    changed.write_text('{"caption": "not the pinned file", "url": "http://x/1.jpg"}\n')
    monkeypatch.setattr(prompts, "hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(datasets.DownloadManager, "download", lambda self, url: str(changed))
    with pytest.raises(MemberbenchError) as err:
        load_prompt_set("wen-sd1-memorized")
    msg = str(err.value)
    assert "the upstream file changed since its hash was pinned: expected sha256 8eb16c6f" in msg
    assert "got " + hashlib.sha256(changed.read_bytes()).hexdigest() in msg
    assert "pass a local copy" in msg and "\n" not in msg


def test_offline_registered_set_says_where_to_get_it(tmp_path, monkeypatch, capsys) -> None:
    import memberbench.data.hub as prompts

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(prompts, "hub_reachable", lambda *a, **k: False)
    rc, _, err = _main(["fetch-images", "webster-sd2", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "unreachable" in err and REMOTE_SETS["webster-sd2"] in err
    assert "--set-file" in err or "path=" in err


# --------------------------------------------------------------------------------------------
# units


def test_sniff_and_parse_urls() -> None:
    assert sniff_image(PNG).ext == "png" and sniff_image(JPEG).ext == "jpg"
    assert sniff_image(WEBP).format == "WEBP"
    gif = _encode(_pixels(5), "GIF")
    assert sniff_image(gif).ext == "gif"
    cases = [
        (b"", "empty"),
        (HTML, "html"),
        (b"GIF89a" + b"\0" * 10, "bad-image"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "not-image"),
        (b'{"error": "rate limited"}', "not-image"),
    ]
    for data, reason in cases:
        with pytest.raises(fetch.FetchFailure) as e:
            sniff_image(data)
        assert e.value.reason == reason
    assert parse_urls('["http://a", "http://b"]') == ["http://a", "http://b"]
    assert parse_urls("['http://a', 'http://b']") == ["http://a", "http://b"]
    assert parse_urls(["http://a", None, ""]) == ["http://a"]
    assert (
        parse_urls(None) == []
        and parse_urls("nan") == []
        and parse_urls(" http://a ") == ["http://a"]
    )


def test_token_bucket_rate() -> None:
    bucket = TokenBucket(rate=50)
    t0 = time.monotonic()
    for _ in range(6):
        bucket.acquire()
    assert time.monotonic() - t0 >= 5 / 50 - 0.01


def test_subcommand_is_listed() -> None:
    assert "fetch-images" in cli.build_parser().format_help()
    assert "fetch-images SOURCE --out DIR" in cli.__doc__
