"""The leaderboard as a static web site: ``<root>/site/`` from ``<root>/results/``.

``memberbench leaderboard`` calls :func:`build_site` after the README.  The site is plain HTML
with one small inline script (click a column header to sort; no build step, no CDN, no network):
it opens from disk (``file://``) and from any static host that serves the leaderboard folder.

Layout::

    leaderboard/site/index.html                     headline tables per model, mitigations
                                                    against their baseline, the declared
                                                    sections (detection first), the figures,
                                                    the list of runs
    leaderboard/site/runs/<model>/<mitigation>.html one page per results file: every metric
                                                    (value, stderr, n, CI exactly as in the
                                                    JSON), the settings, the per-prompt values

The pages link to the results files and figures where they are (``../results/...``,
``../figures/...``), so the site itself holds HTML only.  Which metric shows where comes from the
metrics' declarations (:func:`memberbench.leaderboard.headline_columns`,
:func:`memberbench.metrics.declare.sections`); results are read through
:mod:`memberbench.results` (validated, older schema versions migrated).

The output is a function of the inputs alone (same files -> same bytes: no clock, no random
order).  It is rendered in memory, written into a temporary folder beside ``site/`` and swapped
in by renames, so a build that fails leaves the old site as it was.  Every string from a results
file is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from memberbench.errors import MemberbenchError
from memberbench.io import atomic_write_text, fsync_dir, remove_stale_temps, replace, temp_path
from memberbench.leaderboard import Entry, collect, headline_columns
from memberbench.metrics.declare import natural_key, section_columns, sections
from memberbench.results import load_per_prompt, per_prompt_file, validate_file

SITE_DIR = "site"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
# results sections shown as settings on a run page (the rest except metrics/series follows)
SETTINGS_ORDER = (
    "run",
    "model",
    "sampling",
    "mitigation",
    "prompt_sets",
    "labels",
    "sscd",
    "clip",
    "environment",
    "per_prompt",
)
NOT_SETTINGS = ("schema", "schema_version", "metrics", "series")

# --------------------------------------------------------------------------------------------
# small helpers


def esc(x: Any) -> str:
    """HTML-escape any value's text (quotes included, so it is safe in attributes too)."""
    return html.escape("" if x is None else str(x), quote=True)


def is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def exact(x: Any) -> str:
    """A number exactly as the JSON writes it (``json.dumps``: the shortest text that reads
    back as the same float); '' for null."""
    if x is None:
        return ""
    if is_number(x):
        return json.dumps(x)
    return json.dumps(x, ensure_ascii=False)


def short(x: Any, digits: int = 4) -> str:
    """A number for reading (``digits`` significant digits); lists joined; '' for null."""
    if x is None:
        return ""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}g}" if math.isfinite(x) else str(x)
    if isinstance(x, list):
        return ", ".join(short(v, digits) for v in x)
    return str(x)


def href(*segments: str) -> str:
    """A relative URL from path segments ('..' kept), each percent-encoded, HTML-escaped."""
    return esc("/".join(s if s == ".." else quote(s, safe="") for s in segments))


def arrow(hib: Any) -> str:
    return {True: " ↑", False: " ↓"}.get(hib, "")


def _metric_cell(m: Mapping[str, Any] | None) -> str:
    """A table cell for one metric: ``value ± stderr``, the exact value in ``data-v`` (what the
    sort reads; '' sorts last), n and the CI in the tooltip."""
    if not m:
        return "<td></td>"
    v, se, n, ci = m.get("value"), m.get("stderr"), m.get("n"), m.get("ci")
    if v is None:
        return f'<td data-v="" title="{esc(m.get("reason") or "undefined")}">n/a</td>'
    text = short(v, 3) + (f" ± {short(se, 2)}" if se is not None else "")
    tip = [f"value {exact(v)}"]
    if se is not None:
        tip.append(f"stderr {exact(se)}")
    if n:
        tip.append(f"n {n}")
    if isinstance(ci, list) and len(ci) == 2 and None not in ci:
        tip.append(f"95% CI [{exact(ci[0])}, {exact(ci[1])}]")
    return f'<td data-v="{esc(exact(v))}" title="{esc("; ".join(tip))}">{esc(text)}</td>'


def _num_cell(x: Any) -> str:
    if is_number(x):
        text = short(x)
        if text == exact(x):  # the sort reads the text when there is no data-v
            return f"<td>{esc(text)}</td>"
        return f'<td data-v="{esc(exact(x))}">{esc(text)}</td>'
    if x is None:
        return "<td></td>"
    return f"<td class=t>{esc(short(x))}</td>"


def _table(table_id: str, headers: Sequence[str], rows: Iterable[str], caption: str = "") -> str:
    """A sortable table: ``headers`` are HTML (already escaped), ``rows`` are ``<tr>`` HTML."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    cap = f"<caption>{caption}</caption>" if caption else ""
    body = "\n".join(rows)
    return (
        f'<div class="scroll"><table class="sortable" id="{esc(table_id)}">{cap}'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>"
    )


CSS = """\
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 1.5rem 3rem;color:#1b1b1b}
header{border-bottom:1px solid #ccc;padding:.6rem 0;margin-bottom:1rem}
header a{margin-right:1rem}
h1{font-size:1.5rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #eee}
h3{font-size:1.05rem;margin-top:1.4rem}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.4rem 0 1rem}
th,td{border:1px solid #ddd;padding:.2rem .45rem;vertical-align:top}
thead th{background:#f3f4f6;position:sticky;top:0;white-space:nowrap}
table.sortable thead th{cursor:pointer;user-select:none}
table.sortable thead th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable thead th[aria-sort=descending]::after{content:" \\25BC"}
td{text-align:right;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;white-space:nowrap}
td.t{text-align:left;font-family:inherit;white-space:normal}
tbody td.t:nth-child(-n+2){white-space:nowrap}
td.better{background:#e7f6ea}td.worse{background:#fbeaea}
tbody tr:nth-child(even){background:#fafafa}
table.kv th{text-align:left;background:#f8f8f8;font-weight:600;white-space:nowrap}
table.kv td{text-align:left;white-space:normal;word-break:break-word}
figure{display:inline-block;margin:0 1rem 1rem 0;vertical-align:top}
figure img{max-width:min(100%,900px);border:1px solid #eee}
.note{color:#555}.bad{color:#a00}
img.sample{width:64px;height:64px;image-rendering:pixelated}
"""

# The one script: sort a table by a clicked (or Enter / Space) header.  Numbers compare as
# numbers (read from data-v when present), text with numeric runs compared as numbers; empty
# cells go last in both directions; equal keys keep their order (Array.prototype.sort is stable).
JS = """\
(function(){
function key(td){
if(!td)return null;
var v=td.hasAttribute("data-v")?td.getAttribute("data-v"):td.textContent.trim();
if(v==="")return null;
var x=Number(v);
return isNaN(x)?v:x;
}
function cmp(x,y){
if(typeof x==="number"&&typeof y==="number")return x-y;
if(typeof x==="number")return -1;
if(typeof y==="number")return 1;
return x.localeCompare(y,"en",{numeric:true});
}
function sortBy(t,th,i){
var asc=th.getAttribute("aria-sort")!=="ascending";
var hs=t.tHead.rows[0].cells;
for(var j=0;j<hs.length;j++)hs[j].removeAttribute("aria-sort");
th.setAttribute("aria-sort",asc?"ascending":"descending");
var tb=t.tBodies[0];
var rows=Array.prototype.slice.call(tb.rows);
rows.sort(function(a,b){
var x=key(a.cells[i]),y=key(b.cells[i]);
if(x===null||y===null)return x===y?0:(x===null?1:-1);
var c=cmp(x,y);
return asc?c:-c;
});
for(var k=0;k<rows.length;k++)tb.appendChild(rows[k]);
}
var ts=document.querySelectorAll("table.sortable");
for(var n=0;n<ts.length;n++)(function(t){
var hs=t.tHead.rows[0].cells;
for(var i=0;i<hs.length;i++)(function(th,i){
th.tabIndex=0;
th.title="sort by this column";
th.addEventListener("click",function(){sortBy(t,th,i);});
th.addEventListener("keydown",function(e){
if(e.key==="Enter"||e.key===" "){e.preventDefault();sortBy(t,th,i);}
});
})(hs[i],i);
})(ts[n]);
})();
"""


def page(title: str, body: str, depth: int) -> str:
    """A whole HTML document; ``depth`` is how many folders below the site root it lies."""
    up = "../" * depth
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width,initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{esc(title)}</title>\n"
        "<!-- generated by `memberbench leaderboard` from leaderboard/results/; do not edit -->\n"
        f"<style>\n{CSS}</style></head><body>\n"
        f'<header><a href="{up}index.html">memberbench leaderboard</a>'
        f'<a href="{up}index.html#headline">headline</a>'
        f'<a href="{up}index.html#comparisons">mitigations</a>'
        f'<a href="{up}index.html#sections">detection &amp; sections</a>'
        f'<a href="{up}index.html#figures">figures</a>'
        f'<a href="{up}index.html#runs">runs</a></header>\n'
        f"<main>\n{body}\n</main>\n"
        f"<script>\n{JS}</script>\n</body></html>\n"
    )


# --------------------------------------------------------------------------------------------
# what the pages show


@dataclass
class Run:
    """One results file with what its page shows."""

    entry: Entry
    rows: list[dict[str, Any]]  # per-prompt rows (empty when there are none)
    per_prompt: Path | None  # the JSONL the rows came from
    problems: list[str]  # why per-prompt values are not shown, if they are not

    @property
    def page(self) -> tuple[str, ...]:
        """The page's path segments below the site root."""
        return ("runs", self.entry.model, self.entry.mitigation + ".html")

    @property
    def name(self) -> str:
        return f"{self.entry.model}/{self.entry.mitigation}"


def load_runs(entries: Sequence[Entry]) -> list[Run]:
    """Each entry with its per-prompt rows (checked against the JSON's sha256 and row count by
    :func:`memberbench.results.validate_file`; a mismatch is shown, not fatal)."""
    runs = []
    for e in entries:
        errors, _ = validate_file(e.path)
        jl = per_prompt_file(e.path, e.doc)
        if errors:
            runs.append(Run(e, [], jl, errors))
            continue
        try:
            rows = load_per_prompt(e.path, e.doc)
        except MemberbenchError as err:
            runs.append(Run(e, [], jl, [str(err)]))
            continue
        runs.append(Run(e, rows, jl, []))
    return runs


def _sort(entries: Sequence[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: (e.model, e.mitigation != "none", e.mitigation))


def _settings(doc: Mapping[str, Any]) -> dict[str, Any]:
    s = doc.get("sampling") or {}
    ps = doc.get("prompt_sets") or {}

    def n(side: str) -> Any:
        v = ps.get(side)
        return v.get("n") if isinstance(v, Mapping) else None

    return {
        "steps": s.get("steps"),
        "seeds": len(s.get("seeds") or []),
        "memorized": n("memorized"),
        "non-memorized": n("nonmemorized"),
        "profile": (doc.get("run") or {}).get("profile"),
    }


def _run_link(run: Run, depth: int = 0, text: str | None = None) -> str:
    return f'<a href="{"../" * depth}{href(*run.page)}">{esc(text or run.entry.mitigation)}</a>'


def _results_href(root_rel: Sequence[str], depth: int) -> str:
    """A link from a page ``depth`` folders below the site to ``<root>/<root_rel...>``."""
    return href(*([".."] * (depth + 1)), *root_rel)


def headline_tables(runs: Sequence[Run]) -> str:
    """One sortable table per model: each run's settings and its headline metrics (the
    declared headline columns that some run of the model records)."""
    out = ['<h2 id="headline">Headline</h2>']
    out.append(
        '<p class="note">One row per results file. Cells are <code>value ± standard error</code>; '
        "hover a cell for the exact value, n and CI; ↑ / ↓ mark the better direction. "
        "Bare metric names are measured on the memorized prompts, <code>non-mem</code> on the "
        "non-memorized ones. Click a column header to sort.</p>"
    )
    if not runs:
        out.append("<p><em>No results submitted yet.</em></p>")
    for model in sorted({r.entry.model for r in runs}):
        mine = [r for r in runs if r.entry.model == model]
        cols = [(k, t) for k, t in headline_columns() if any(k in r.entry.metrics for r in mine)]
        dirs = {k: _direction(mine, k) for k, _ in cols}
        headers = ["run", "mitigation", "steps", "seeds", "memorized", "non-memorized", "profile"]
        headers = [esc(h) for h in headers] + [
            f'<span title="{esc(k)}">{esc(t + arrow(dirs[k]))}</span>' for k, t in cols
        ]
        rows = []
        for r in mine:
            st = _settings(r.entry.doc)
            cells = [
                f"<td class=t>{_run_link(r)}</td>",
                f"<td class=t>{esc(r.entry.mitigation_name)}</td>",
            ]
            cells += [_num_cell(st[k]) for k in ("steps", "seeds", "memorized", "non-memorized")]
            cells.append(f"<td class=t>{esc(st['profile'])}</td>")
            cells += [_metric_cell(r.entry.metrics.get(k)) for k, _ in cols]
            rows.append(f'<tr data-run="{esc(r.name)}">{"".join(cells)}</tr>')
        out.append(f'<h3 id="model-{esc(model)}">{esc(model)}</h3>')
        out.append(_table(f"headline-{model}", headers, rows))
    return "\n".join(out)


def _direction(runs: Sequence[Run], key: str) -> Any:
    for r in runs:
        m = r.entry.metrics.get(key)
        if m:
            return m.get("higher_is_better")
    return None


def baseline_of(run: Run, runs: Sequence[Run]) -> Run | None:
    """The run without mitigation (``mitigation.name == "none"``) of the same model whose setup
    is the same (:func:`memberbench.compare.identity_differences` finds nothing), or None."""
    from memberbench.compare import identity_differences

    for b in runs:
        if b is run or b.entry.model != run.entry.model or b.entry.mitigation_name != "none":
            continue
        if not identity_differences(b.entry.doc, run.entry.doc):
            return b
    return None


def _delta_cell(base: Mapping[str, Any] | None, cur: Mapping[str, Any] | None) -> str:
    """``current - baseline``, shaded by the better direction; both values in the tooltip."""
    bv = (base or {}).get("value")
    cv = (cur or {}).get("value")
    if not is_number(bv) or not is_number(cv):
        return "<td></td>"
    d = cv - bv
    hib = (cur or {}).get("higher_is_better")
    cls = ""
    if hib is not None and d != 0:
        cls = ' class="better"' if (d > 0) == bool(hib) else ' class="worse"'
    tip = f"baseline {exact(bv)} -> this run {exact(cv)}"
    text = ("+" if d > 0 else "") + short(d, 3)
    return f'<td{cls} data-v="{esc(exact(d))}" title="{esc(tip)}">{esc(text)}</td>'


def comparison_tables(runs: Sequence[Run]) -> str:
    """Per model and baseline: each mitigated run's change in every headline metric."""
    out = ['<h2 id="comparisons">Mitigations against their baseline</h2>']
    out.append(
        '<p class="note">Each mitigated run against the run without mitigation of the same '
        "model and setup (same model fingerprint, prompt sets, seeds, steps, scheduler, "
        "guidance and SSCD model). Cells are <code>mitigated − baseline</code>, green where "
        "that is the better direction, red where worse, without a significance test; hover a "
        "cell for both values.</p>"
    )
    groups: dict[str, list[Run]] = {}
    alone: list[Run] = []
    for r in runs:
        if r.entry.mitigation_name == "none":
            continue
        b = baseline_of(r, runs)
        if b is None:
            alone.append(r)
        else:
            groups.setdefault(b.name, []).append(r)
    by_name = {r.name: r for r in runs}
    if not groups:
        out.append("<p><em>No mitigated run has a baseline with the same setup.</em></p>")
    for bname in sorted(groups):
        b = by_name[bname]
        mine = groups[bname]
        cols = [
            (k, t)
            for k, t in headline_columns()
            if k in b.entry.metrics and any(k in r.entry.metrics for r in mine)
        ]
        headers = ["run", "mitigation"] + [
            f'<span title="{esc(k)}">{esc("Δ " + t + arrow(_direction(mine, k)))}</span>'
            for k, t in cols
        ]
        headers = [esc(h) for h in headers[:2]] + headers[2:]
        rows = []
        for r in mine:
            cells = [
                f"<td class=t>{_run_link(r)}</td>",
                f"<td class=t>{esc(r.entry.mitigation_name)}</td>",
            ]
            cells += [_delta_cell(b.entry.metrics.get(k), r.entry.metrics.get(k)) for k, _ in cols]
            rows.append(f'<tr data-run="{esc(r.name)}">{"".join(cells)}</tr>')
        st = _settings(b.entry.doc)
        setup = (
            f"{st['steps']} steps, {st['seeds']} seeds, {st['memorized']} memorized and "
            f"{st['non-memorized']} non-memorized prompts"
        )
        out.append(
            f'<h3 id="vs-{esc(bname.replace("/", "--"))}">{esc(b.entry.model)}: against '
            f"{_run_link(b, text=bname)} ({esc(setup)})</h3>"
        )
        out.append(_table(f"compare-{bname.replace('/', '--')}", headers, rows))
    if alone:
        items = ", ".join(_run_link(r, text=r.name) for r in alone)
        out.append(f'<p class="note">No baseline with the same setup: {items}.</p>')
    return "\n".join(out)


def section_tables(runs: Sequence[Run]) -> str:
    """The declared leaderboard sections (detection first), each over the runs that record
    any of its metrics.  A section with fewer such runs than metrics is shown turned (one row
    per metric, one column per run), so a single run's 40 detection scores read down a page."""
    out = ['<h2 id="sections">Detection and the other sections</h2>']
    recorded = {n for r in runs for n in r.entry.metrics}
    for sec in sections():
        cols = section_columns(sec.id, recorded)
        have = [r for r in runs if any(k in r.entry.metrics for k in cols)]
        if not cols:
            if sec.always:
                out += [f'<h3 id="sec-{esc(sec.id)}">{esc(sec.title)}</h3>', "<p>No run records "
                        "these metrics.</p>"]  # fmt: skip
            continue
        out.append(f'<h3 id="sec-{esc(sec.id)}">{esc(sec.title)}</h3>')
        if sec.intro:
            out.append(f'<p class="note">{esc(sec.intro)}</p>')
        if len(have) < len(runs):
            out.append(
                f'<p class="note">{len(have)} of {len(runs)} runs record these metrics; '
                "the others are left out.</p>"
            )
        if len(have) < len(cols):
            headers = ["metric"] + [_run_link(r, text=r.name) for r in have]
            rows = []
            for k in cols:
                cells = [f"<td class=t>{esc(k + arrow(_direction(have, k)))}</td>"]
                cells += [_metric_cell(r.entry.metrics.get(k)) for r in have]
                rows.append(f'<tr data-metric="{esc(k)}">{"".join(cells)}</tr>')
        else:
            headers = ["run"] + [esc(k + arrow(_direction(have, k))) for k in cols]
            rows = []
            for r in have:
                cells = [f"<td class=t>{_run_link(r, text=r.name)}</td>"]
                cells += [_metric_cell(r.entry.metrics.get(k)) for k in cols]
                rows.append(f'<tr data-run="{esc(r.name)}">{"".join(cells)}</tr>')
        out.append(_table(f"sec-{sec.id}-table", headers, rows))
    return "\n".join(out)


def figures_html(root: Path) -> str:
    out = ['<h2 id="figures">Figures</h2>']
    figs = sorted((root / "figures").glob("*.png")) if (root / "figures").is_dir() else []
    if not figs:
        out.append("<p><em>No figures (run <code>memberbench leaderboard</code> without "
                   "<code>--no-figures</code>).</em></p>")  # fmt: skip
    for p in figs:
        src = _results_href(("figures", p.name), 0)
        out.append(
            f'<figure><a href="{src}"><img src="{src}" alt="{esc(p.stem)}"></a>'
            f"<figcaption>{esc(p.name)}</figcaption></figure>"
        )
    return "\n".join(out)


def runs_table(runs: Sequence[Run], root: Path) -> str:
    headers = ["run", "results file", "per-prompt file", "metrics", "prompts", "status", "finished"]
    rows = []
    for r in runs:
        e = r.entry
        rel = e.path.relative_to(root).parts
        jl = ""
        if r.per_prompt is not None:
            jl_rel = r.per_prompt.relative_to(root).parts
            jl = f'<a href="{_results_href(jl_rel, 0)}">{esc(r.per_prompt.name)}</a>'
        run = e.doc.get("run") or {}
        rows.append(
            f'<tr data-run="{esc(r.name)}"><td class=t>{_run_link(r, text=r.name)}</td>'
            f'<td class=t><a href="{_results_href(rel, 0)}">{esc(e.path.name)}</a></td><td class=t>{jl}</td>'
            f"{_num_cell(len(e.metrics))}{_num_cell(len(r.rows))}"
            f"<td class=t>{esc(run.get('status'))}</td><td class=t>{esc(run.get('finished'))}</td></tr>"
        )
    return '<h2 id="runs">Runs</h2>\n' + _table("runs-table", [esc(h) for h in headers], rows)


def index_page(root: Path, runs: Sequence[Run], errors: Sequence[str]) -> str:
    body = [
        "<h1>memberbench leaderboard</h1>",
        '<p class="note">Memorization of text-to-image diffusion models and of the mitigations '
        f"against it, measured with the memberbench task suite; {len(runs)} results files "
        "from <code>leaderboard/results/</code>. Each run has a page with every metric, its "
        "settings and its per-prompt values.</p>",
        headline_tables(runs),
        comparison_tables(runs),
        section_tables(runs),
        figures_html(root),
        runs_table(runs, root),
    ]
    if errors:
        body.append('<h2 id="invalid">Files that failed validation</h2><ul class="bad">')
        # named relative to the leaderboard folder, so the page does not depend on where it is
        prefix = str(root) + os.sep
        body += [f"<li>{esc(m.replace(prefix, ''))}</li>" for m in errors]
        body.append("</ul>")
    return page("memberbench leaderboard", "\n".join(body), 0)


def _kv(obj: Any, depth: int = 0) -> str:
    """A settings value: a nested key/value table for an object, JSON text otherwise."""
    if isinstance(obj, Mapping) and obj and depth < 6:
        rows = "".join(
            f"<tr><th>{esc(k)}</th><td>{_kv(v, depth + 1)}</td></tr>" for k, v in obj.items()
        )
        return f'<table class="kv">{rows}</table>'
    if isinstance(obj, str):
        return esc(obj)
    return esc(json.dumps(obj, ensure_ascii=False))


def _image_cells(row: Mapping[str, Any], run: Run, root: Path) -> str:
    """The row's images, where the per-prompt row names them (``image`` or ``images``: plain
    file names beside the results file that exist)."""
    names = row.get("images") if isinstance(row.get("images"), list) else [row.get("image")]
    imgs = []
    folder = run.entry.path.parent
    for n in names:
        if not isinstance(n, str) or not n or n.startswith(".") or "/" in n or "\\" in n:
            continue
        if not n.lower().endswith(IMAGE_SUFFIXES) or not (folder / n).is_file():
            continue
        src = _results_href((*folder.relative_to(root).parts, n), 2)
        imgs.append(f'<img class="sample" src="{src}" alt="{esc(n)}" loading="lazy">')
    return "".join(imgs)


def per_prompt_html(run: Run, root: Path) -> str:
    out = ['<h2 id="per-prompt">Per-prompt values</h2>']
    if run.problems:
        out.append('<p class="bad">Per-prompt values not shown: ' + esc("; ".join(run.problems)))
        return "\n".join(out) + "</p>"
    if not run.rows:
        out.append("<p><em>This results file has no per-prompt records.</em></p>")
        return "\n".join(out)
    out.append(
        '<p class="note">Rounded to 4 significant digits; the sort uses the exact values (and '
        "the per-prompt file has them).</p>"
    )
    sides = sorted({str(r.get("set")) for r in run.rows}, key=lambda s: (s != "memorized", s))
    for side in sides:
        rows = [r for r in run.rows if str(r.get("set")) == side]
        names: set[str] = set()
        for r in rows:
            if isinstance(r.get("metrics"), Mapping):
                names.update(r["metrics"])
        cols = sorted(names, key=natural_key)
        images = any(_image_cells(r, run, root) for r in rows)
        headers = ["prompt", "group", "caption", "seeds"] + (["images"] if images else [])
        headers = [esc(h) for h in headers] + [esc(c) for c in cols]
        trs = []
        for r in rows:
            ms = r.get("metrics") if isinstance(r.get("metrics"), Mapping) else {}
            cells = [
                f"<td class=t>{esc(r.get('prompt_id'))}</td>",
                f"<td class=t>{esc(r.get('group'))}</td>",
                f"<td class=t>{esc(r.get('caption'))}</td>",
                f"<td class=t>{esc(short(r.get('seeds')))}</td>",
            ]
            if images:
                cells.append(f"<td class=t>{_image_cells(r, run, root)}</td>")
            for c in cols:
                v = ms.get(c)
                if isinstance(v, list):
                    cells.append(f'<td data-v="">{esc(short(v))}</td>')
                else:
                    cells.append(_num_cell(v))
            trs.append(f'<tr data-prompt="{esc(r.get("prompt_id"))}">{"".join(cells)}</tr>')
        out.append(f'<h3 id="set-{esc(side)}">{esc(side)} ({len(rows)} prompts)</h3>')
        out.append(_table(f"prompts-{side}", headers, trs))
    return "\n".join(out)


def run_page(run: Run, root: Path) -> str:
    e = run.entry
    doc = e.doc
    depth = 2
    rel = e.path.relative_to(root).parts
    links = [f'<a href="{_results_href(rel, depth)}">{esc(e.path.name)}</a>']
    if run.per_prompt is not None:
        jl_rel = run.per_prompt.relative_to(root).parts
        links.append(f'<a href="{_results_href(jl_rel, depth)}">{esc(run.per_prompt.name)}</a>')
    runinfo = doc.get("run") or {}
    body = [
        f"<h1>{esc(e.model)} / {esc(e.mitigation)}</h1>",
        f"<p>Results file: {' · per-prompt file: '.join(links)}</p>",
        f'<p class="note">mitigation <code>{esc((doc.get("mitigation") or {}).get("spec"))}'
        f"</code>; status {esc(runinfo.get('status'))}, profile {esc(runinfo.get('profile'))}, "
        f"finished {esc(runinfo.get('finished'))}. Numbers are exactly as in the results "
        "file.</p>",
        f'<h2 id="metrics">Metrics ({len(e.metrics)})</h2>',
    ]
    headers = ["metric", "value", "stderr", "n", "CI low", "CI high", "better", "test", "note"]
    rows = []
    for k, m in sorted(e.metrics.items(), key=lambda kv: natural_key(kv[0])):
        ci = m.get("ci") if isinstance(m.get("ci"), list) else [None, None]
        better = {True: "higher", False: "lower"}.get(m.get("higher_is_better"), "")
        note = "; ".join(str(x) for x in (m.get("reason"), m.get("note")) if x)
        cells = [
            f'<td class=t title="{esc(m.get("description"))}">{esc(k)}</td>',
            # the text is the exact number, which the sort reads when there is no data-v
            *(
                f"<td>{esc(exact(x))}</td>"
                for x in (m.get("value"), m.get("stderr"), m.get("n"), ci[0], ci[1])
            ),
            f"<td class=t>{esc(better)}</td>",
            f"<td class=t>{esc(m.get('test'))}</td>",
            f"<td class=t>{esc(note)}</td>",
        ]
        rows.append(f'<tr data-metric="{esc(k)}">{"".join(cells)}</tr>')
    body.append(_table("metrics-table", [esc(h) for h in headers], rows))
    body.append(per_prompt_html(run, root))
    body.append('<h2 id="settings">Settings</h2>')
    keys = [k for k in SETTINGS_ORDER if k in doc]
    keys += [k for k in doc if k not in keys and k not in NOT_SETTINGS]
    for k in keys:
        body.append(f'<h3 id="settings-{esc(k)}">{esc(k)}</h3>{_kv(doc[k])}')
    series = doc.get("series") or {}
    if series:
        body.append(
            f'<p class="note">The results file also holds {len(series)} curves (<code>series'
            "</code>: ROC, decomposition, ...) that the figures are drawn from.</p>"
        )
    return page(f"{e.model} / {e.mitigation} - memberbench", "\n".join(body), depth)


def render(root: str | Path, entries: Sequence[Entry], errors: Sequence[str]) -> dict[str, str]:
    """Every page of the site: {path relative to the site folder (posix): HTML}."""
    root = Path(root)
    runs = load_runs(_sort(entries))
    pages = {"index.html": index_page(root, runs, errors)}
    for r in runs:
        pages["/".join(r.page)] = run_page(r, root)
    return pages


# --------------------------------------------------------------------------------------------
# writing


def _remove_stale_builds(root: Path, min_age_s: float = 3600.0) -> None:
    """Temporary site folders left by a killed build (older than ``min_age_s``, or whose
    builder is gone)."""
    remove_stale_temps(root, min_age_s=min_age_s, dead_writer_age_s=60.0, dirs=True)


def write_site(site: Path, pages: Mapping[str, str]) -> Path:
    """Write ``pages`` into a temporary folder beside ``site`` and swap it in; on any failure
    the temporary folder is removed and ``site`` is as it was."""
    if site.exists() and not site.is_dir():
        raise MemberbenchError(f"{site} exists and is not a folder; move it away and rebuild")
    site.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(site)
    old: Path | None = None
    try:
        tmp.mkdir()
        for rel in sorted(pages):
            atomic_write_text(tmp / rel, pages[rel])
        fsync_dir(tmp)
        if site.exists():
            old = temp_path(site)
            os.rename(site, old)
            try:
                replace(tmp, site)
            except BaseException:
                os.rename(old, site)
                old = None
                raise
        else:
            replace(tmp, site)
    except OSError as e:
        raise MemberbenchError(
            f"cannot write the site {site} ({e.strerror or e}); the old site is unchanged"
        ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return site


def build_site(
    root: str | Path = "leaderboard",
    entries: Sequence[Entry] | None = None,
    errors: Sequence[str] | None = None,
) -> tuple[Path, int]:
    """Build ``root/site/`` from ``root/results/`` (and link ``root/figures/``): ``(site folder,
    number of pages)``.  ``entries`` and ``errors`` default to
    :func:`memberbench.leaderboard.collect` of ``root/results``."""
    root = Path(root)
    if entries is None or errors is None:
        entries, errors = collect(root / "results")
    pages = render(root, entries, errors)
    _remove_stale_builds(root)
    return write_site(root / SITE_DIR, pages), len(pages)
