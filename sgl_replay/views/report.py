"""Two runs and their diff as one self-contained HTML page that opens offline.

Runs in the parent process: reads traces and a DiffResult, never imports
sglang. The page shows the runs side by side as per-iteration charts (batch
tokens split prefill / decode / chunked prefill; running and waiting
requests; KV pool use), a vertical marker at the first divergence on every
chart with the diff's explanation, the header differences, and the
per-request lifecycle table with the requests whose lifecycles differ
highlighted.

Charts are drawn by uPlot (MIT, vendored in assets/), inlined with its CSS;
the data travels as JSON in a <script type="application/json"> element and
every string from a trace is HTML-escaped. The series come from streaming
both traces; a long trace is cut into at most MAX_POINTS buckets of equal
width per series (tokens: the mean per iteration over the bucket; queues and
KV use: the maximum), so memory and page size do not grow with its length.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Optional

from sgl_replay.diff import DiffResult, Lifecycle, Outcome
from sgl_replay.trace.format import Batch, GenerateInput, Header, State
from sgl_replay.trace.reader import TraceReader

MAX_POINTS = 5000
# Lifecycle's fields after the rid, in the diff's order
LIFECYCLE_COLUMNS = ("arrival", "first_scheduled", "first_token", "finish", "reason",
                     "output_len", "retractions", "cached")
_SAMPLING_WORDS = ("one point per {width} loop iterations: tokens are the mean per iteration "
                   "over those iterations, queues and KV use their maximum")


def write_report(trace_a: str, trace_b: str, result: DiffResult, out_path: str, *,
                 label_a: str = "A", label_b: str = "B") -> None:
    runs = [_run(trace_a, label_a), _run(trace_b, label_b)]
    last = max(run["iterations"] for run in runs) - 1
    for run in runs:  # both sides span the same iterations: their charts line up
        _pad(run["series"], last)
    first = result.first
    data = {"divergence": first.iteration if first is not None else None,
            "runs": [{"label": run["label"], "kv_label": run["kv_label"], **run["series"]}
                     for run in runs]}
    page = _PAGE.format(
        head=page_head(_e(f"sgl-replay: {label_a} vs {label_b}"), _CSS),
        verdict=_verdict(result, label_a, label_b),
        headers=_headers(result),
        runs=_runs_table(runs),
        sampling=_e(_sampling(runs)),
        label_a=_e(label_a), label_b=_e(label_b),
        lifecycles=_lifecycles(result),
        data=_json_for_script(data),
        script=_SCRIPT)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(page)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _asset(name: str) -> str:
    return resources.files("sgl_replay.views").joinpath("assets", name).read_text(encoding="utf-8")


def _json_for_script(data: dict) -> str:
    """JSON that cannot end its <script> element early: no '<', '>' or '&'
    survive as such (JSON.parse reads the escapes back)."""
    text = json.dumps(data, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ------------------------------------------------------------------ series
class _Buckets:
    """Per-iteration values kept in at most MAX_POINTS buckets of `width`
    loop iterations; when full, neighbours merge and the width doubles.
    A row: [bucket index, iterations, prefill, decode, chunked tokens (sums),
    running, waiting, kv (maxima, None before the first state)]."""

    def __init__(self) -> None:
        self.width = 1
        self.rows: list[list] = []

    def add(self, i: int, count: int, tokens: tuple, state: Optional[tuple]) -> None:
        """`count` iterations from `i` on with the same values (an idle
        stretch comes in one call)."""
        while count > 0:
            index = i // self.width
            take = min(count, (index + 1) * self.width - i)
            row = [index, take, *(t * take for t in tokens), *(state or (None, None, None))]
            if self.rows and self.rows[-1][0] == index:
                _merge(self.rows[-1], row)
            else:
                self.rows.append(row)
                if len(self.rows) > MAX_POINTS:
                    self._coarsen()
            i += take
            count -= take

    def _coarsen(self) -> None:
        self.width *= 2
        merged: list[list] = []
        for row in self.rows:
            row[0] //= 2
            if merged and merged[-1][0] == row[0]:
                _merge(merged[-1], row)
            else:
                merged.append(row)
        self.rows = merged

    def series(self) -> dict:
        def mean(k: int) -> list:
            return [round(r[k] / r[1], 2) for r in self.rows]
        return {"width": self.width, "x": [r[0] * self.width for r in self.rows],
                "prefill": mean(2), "decode": mean(3), "chunked": mean(4),
                "running": [r[5] for r in self.rows], "waiting": [r[6] for r in self.rows],
                "kv": [r[7] for r in self.rows]}


def _merge(into: list, row: list) -> None:
    into[1] += row[1]
    for k in (2, 3, 4):
        into[k] += row[k]
    for k in (5, 6, 7):
        if row[k] is not None and (into[k] is None or row[k] > into[k]):
            into[k] = row[k]


def _split(batch: Batch) -> tuple[int, int, int]:
    """A batch's new tokens as (prefill, decode, chunked prefill)."""
    if batch.new is None:
        return 0, batch.tokens, 0
    prefill = decode = chunked = 0
    for n, new in zip(batch.reqs, batch.new):
        if n == batch.chunked:
            chunked += new
        elif batch.mode == "mixed" and new == 1:  # decoding requests ride along one token each
            decode += new
        else:
            prefill += new
    return prefill, decode, chunked


def _state_values(state: State, kv_total: Optional[int]) -> tuple:
    kv = state.kv_free if kv_total is None else kv_total - state.kv_free
    return state.running, state.waiting, kv


def _run(path: str, label: str) -> dict:
    """One trace streamed into its chart series and summary figures."""
    buckets = _Buckets()
    counts = {"forwards": 0, "requests": 0, "retractions": 0, "finished": 0}
    with TraceReader(path) as reader:
        header: Header = reader.header
        kv_total = header.pools.max_total_tokens
        nxt = 0  # the first iteration not yet in the buckets
        state = None
        for record in reader.iterations():
            if record.i > nxt:  # idle iterations: nothing ran, sizes as they were
                buckets.add(nxt, record.i - nxt, (0, 0, 0), state)
            tokens = [0, 0, 0]
            for batch in record.batches:
                for k, value in enumerate(_split(batch)):
                    tokens[k] += value
            if record.state is not None:
                state = _state_values(record.state, kv_total)
            buckets.add(record.i, 1, tuple(tokens), state)
            nxt = record.i + 1
            counts["forwards"] += len(record.batches)
            counts["requests"] += sum(type(x) is GenerateInput for x in record.inputs)
            counts["retractions"] += len(record.retracted)
            counts["finished"] += len(record.finished)
        end = reader.end
    iterations = max(nxt, end.iterations if end is not None else 0)
    if iterations > nxt:
        buckets.add(nxt, iterations - nxt, (0, 0, 0), state)
    workload = header.workload
    return {"label": label, "path": path, "iterations": iterations, **counts,
            "workload": (f"{workload.name or workload.kind}: {workload.description or ''}"
                         if workload is not None else "unknown"),
            "device": " ".join(str(v) for v in (header.device.type, header.device.name) if v),
            "sglang": header.versions.sglang or "unknown",
            "complete": ("incomplete: " + str(end.reason) if end is not None and not end.complete
                         else "complete" if end is not None else "no end record"),
            "kv_label": (f"KV pool used (tokens of {kv_total})" if kv_total is not None
                         else "KV pool free (tokens; pool size unknown)"),
            "series": buckets.series()}


def _pad(series: dict, last: int) -> None:
    """A point without values at the last iteration of the longer run."""
    if series["x"] and series["x"][-1] < last:
        series["x"].append(last)
        for key in ("prefill", "decode", "chunked", "running", "waiting", "kv"):
            series[key].append(None)


def _sampling(runs: list) -> str:
    widths = [run["series"]["width"] for run in runs]
    if widths[0] == widths[1]:
        return _sampling_words(widths[0])
    return "; ".join(f"{run['label']}: {_sampling_words(width)}" for run, width in zip(runs, widths))


def _sampling_words(width: int) -> str:
    return "one point per loop iteration" if width == 1 else _SAMPLING_WORDS.format(width=width)


# ------------------------------------------------------------------ sections
def _verdict(result: DiffResult, label_a: str, label_b: str) -> str:
    scope = f"level {result.level}" + (f", ignoring {', '.join(result.ignored)}" if result.ignored else "")
    if result.verdict is Outcome.NOT_COMPARABLE:
        return '<p class="verdict bad">Not comparable (compare anyway with --force).</p>'
    if result.verdict is Outcome.EMPTY:
        return f'<p class="verdict">Nothing compared ({_e(scope)}): neither trace holds an iteration.</p>'
    if result.first is None:
        return (f'<p class="verdict good">Same: {result.iterations_compared} recorded iterations and '
                f'{result.forwards_compared} forward batches match ({_e(scope)}).</p>')
    first = result.first
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(result.kinds.items())) or "none"
    reasons = "".join(f"<li>{_e(reason)}</li>" for reason in first.reasons)
    return (f'<p class="verdict bad" id="divergence" data-iteration="{first.iteration}">'
            f'Diverged at iteration {first.iteration} ({_e(scope)}; differs in '
            f'{_e(", ".join(first.kinds))}). A = {_e(label_a)}, B = {_e(label_b)}.</p>'
            f'<ul class="reasons">{reasons}</ul>'
            f'<p>From iteration {first.iteration} on, realigned by request id: '
            f'{result.differing_iterations} iterations differ ({_e(kinds)}).</p>')


def _headers(result: DiffResult) -> str:
    forced = " (compared anyway: --force)" if result.verdict is not Outcome.NOT_COMPARABLE else ""
    items = [f'<li class="blocking">{_e(r)}{forced}</li>' for r in result.not_comparable]
    items += [f"<li>{_e(note)}</li>" for note in result.header_notes]
    if not items:
        return "<p>No differences in the headers that matter.</p>"
    return f'<ul class="header-notes">{"".join(items)}</ul>'


_RUN_ROWS = (("trace", "path"), ("workload", "workload"), ("device", "device"),
             ("sglang", "sglang"), ("loop iterations", "iterations"), ("forward batches", "forwards"),
             ("requests", "requests"), ("finished", "finished"), ("retractions", "retractions"),
             ("end", "complete"))


def _runs_table(runs: list) -> str:
    head = "".join(f"<th>{_e(run['label'])}</th>" for run in runs)
    body = "".join(f"<tr><th>{_e(name)}</th>" + "".join(f"<td>{_e(run[key])}</td>" for run in runs)
                   + "</tr>" for name, key in _RUN_ROWS)
    return f'<table class="runs"><tr><th></th>{head}</tr>{body}</table>'


def _lifecycles(result: DiffResult) -> str:
    if not result.lifecycles:
        return "<p>No lifecycle table: the runs did not part.</p>"
    differing = sum(1 for _, la, lb in result.lifecycles if _values(la) != _values(lb))
    head = "".join(f"<th>{_e(c)}</th>" for c in ("rid", "side") + LIFECYCLE_COLUMNS)
    rows = "".join(_lifecycle_rows(rid, la, lb) for rid, la, lb in result.lifecycles)
    return (f'<p>{differing} of {len(result.lifecycles)} requests have a different lifecycle '
            f'from the first divergence on. <label><input type="checkbox" id="only-differing" '
            f'checked> only those</label></p>'
            f'<table class="lifecycles only-differing" id="lifecycles"><thead><tr>{head}</tr></thead>'
            f'{rows}</table>')


def _values(life: Optional[Lifecycle]) -> tuple:
    return tuple(getattr(life, c) for c in LIFECYCLE_COLUMNS) if life is not None else ()


def _lifecycle_rows(rid: str, la: Optional[Lifecycle], lb: Optional[Lifecycle]) -> str:
    """A request's rows in one tbody: A and B with the cells that differ
    marked, or one row "A = B" when they agree (most requests of a long run)."""
    va, vb = _cells(la), _cells(lb)
    if va == vb:
        tds = "".join(f"<td>{_e(c)}</td>" for c in va)
        return f'<tbody class="same"><tr><td class="rid">{_e(rid)}</td><td>A = B</td>{tds}</tr></tbody>'
    rows = []
    for side, cells, other in (("A", va, vb), ("B", vb, va)):
        tds = "".join(f'<td class="cell-differs">{_e(c)}</td>' if c != o else f"<td>{_e(c)}</td>"
                      for c, o in zip(cells, other))
        name = f'<td rowspan="2" class="rid">{_e(rid)}</td>' if side == "A" else ""
        rows.append(f"<tr>{name}<td>{side}</td>{tds}</tr>")
    return f'<tbody class="differs">{"".join(rows)}</tbody>'


def _cells(life: Optional[Lifecycle]) -> list[str]:
    if life is None:
        return ["absent"] + [""] * (len(LIFECYCLE_COLUMNS) - 1)
    return ["-" if v is None else str(v) for v in _values(life)]


# ------------------------------------------------------------------ page
_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 8px; } h2 { font-size: 16px; margin: 20px 0 6px; }
.verdict { font-weight: 600; } .bad { color: #b00020; } .good { color: #1b7a2f; }
.reasons li, .header-notes li { font-family: ui-monospace, monospace; font-size: 13px; }
.blocking { color: #b00020; }
.runs, .lifecycles { border-collapse: collapse; font-size: 13px; }
.runs th, .runs td, .lifecycles th, .lifecycles td { border: 1px solid #ddd; padding: 2px 8px;
  text-align: left; }
.runs td { max-width: 560px; overflow-wrap: anywhere; }
.lifecycles tbody.differs td { background: #fff4e5; }
.lifecycles tbody.differs td.cell-differs { background: #ffd8a8; font-weight: 600; }
.only-differing tbody.same { display: none; }
.charts { display: grid; grid-template-columns: 1fr 1fr; gap: 8px 24px; }
.charts h3 { font-size: 15px; margin: 4px 0 0; }
.chart h4 { font-size: 12px; margin: 8px 0 2px; font-weight: 600; color: #444; }
.divergence-marker { position: absolute; top: 0; bottom: 0; width: 0;
  border-left: 2px dashed #b00020; pointer-events: none; }
.divergence-marker span { position: absolute; top: 2px; left: 4px; font-size: 11px;
  color: #b00020; background: rgba(255,255,255,.85); white-space: nowrap; }
#page-errors { color: #b00020; }
.note { color: #666; font-size: 12px; }
"""

# Errors from the page land in #page-errors, and #render-status says how many
# charts were drawn: a headless browser's DOM tells whether the page worked.
PAGE_ERRORS_SCRIPT = """
// every error of the page, listed in #page-errors as soon as that exists
window.pageErrors = [];
window.showPageError = function (message) {
  var list = document.getElementById("page-errors");
  if (!list) return;
  var li = document.createElement("li");
  li.textContent = message;
  list.appendChild(li);
};
window.pageError = function (message) { window.pageErrors.push(message); window.showPageError(message); };
window.addEventListener("error", function (e) { window.pageError(String(e.message)); });
(function () { var log = console.error; console.error = function () {
  window.pageError(Array.prototype.join.call(arguments, " ")); log.apply(console, arguments); }; })();
"""



def page_head(title: str, css: str) -> str:
    """An offline page's start, to its <h1>: uPlot and its CSS inlined,
    `css` after them, and the page's errors collected in #page-errors.
    `title` is already escaped."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>\n'
            f"<script>{PAGE_ERRORS_SCRIPT}</script>\n<style>{_asset('uPlot.min.css')}{css}</style>\n"
            f"<script>{_asset('uPlot.iife.min.js')}</script>\n</head><body>\n<ul id=\"page-errors\"></ul>\n"
            f"<script>window.pageErrors.forEach(window.showPageError);</script>\n<h1>{title}</h1>\n")


_PAGE = """{head}{verdict}
<h2>Header differences</h2>
{headers}
<h2>Runs</h2>
{runs}
<h2>Per iteration</h2>
<p class="note">x: loop iteration; {sampling}. Drag to zoom (all charts follow), double-click to reset.</p>
<div class="charts">
<div><h3>{label_a}</h3></div><div><h3>{label_b}</h3></div>
<div class="chart"><h4>new tokens per iteration</h4><div id="chart-tokens-0"></div></div>
<div class="chart"><h4>new tokens per iteration</h4><div id="chart-tokens-1"></div></div>
<div class="chart"><h4>requests</h4><div id="chart-queues-0"></div></div>
<div class="chart"><h4>requests</h4><div id="chart-queues-1"></div></div>
<div class="chart"><h4>KV pool</h4><div id="chart-kv-0"></div></div>
<div class="chart"><h4>KV pool</h4><div id="chart-kv-1"></div></div>
</div>
<h2>Request lifecycles</h2>
{lifecycles}
<p id="render-status" class="note">charts not rendered</p>
<script type="application/json" id="report-data">{data}</script>
<script>{script}</script>
</body></html>
"""

_SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var charts = [];
  var syncing = false;
  var colors = {prefill: "#4e79a7", decode: "#f28e2b", chunked: "#59a14f",
                running: "#4e79a7", waiting: "#e15759", kv: "#76b7b2"};

  function width(el) { return Math.max(300, el.clientWidth); }

  function marker(u) {
    // the first divergence, as a DOM element over the plot: it moves with zoom
    if (data.divergence === null) return;
    var el = document.createElement("div");
    el.className = "divergence-marker";
    el.dataset.iteration = data.divergence;
    var label = document.createElement("span");
    label.textContent = "diverged at " + data.divergence;
    el.appendChild(label);
    u.over.appendChild(el);
    u.divergenceMarker = el;
  }

  function placeMarker(u) {
    var el = u.divergenceMarker;
    if (!el) return;
    var left = u.valToPos(data.divergence, "x");
    el.style.display = left >= 0 && left <= u.over.clientWidth ? "" : "none";
    el.style.left = left + "px";
  }

  function syncZoom(u, key) {
    // one chart zoomed: every chart shows the same iterations
    if (key !== "x" || syncing) return;
    syncing = true;
    charts.forEach(function (other) {
      if (other !== u) other.setScale("x", {min: u.scales.x.min, max: u.scales.x.max});
    });
    syncing = false;
  }

  function line(label, color, extra) {
    var s = {label: label, stroke: color, width: 1.5, paths: uPlot.paths.stepped({align: 1})};
    for (var k in extra) s[k] = extra[k];
    return s;
  }

  function make(el, series, values, extra) {
    var opts = {width: width(el), height: 200, series: [{label: "iteration"}].concat(series),
                scales: {x: {time: false}}, cursor: {sync: {key: "sgl-replay"}},
                legend: {live: true},
                hooks: {ready: [marker], draw: [placeMarker], setScale: [syncZoom]}};
    for (var k in extra) opts[k] = extra[k];
    charts.push(new uPlot(opts, values, el));
  }

  function sum(a, b) { return a.map(function (v, k) { return v === null ? null : v + b[k]; }); }

  function tokens(el, run) {
    // stacked: prefill at the bottom, then decode, then chunked prefill;
    // the legend shows each part, not the running total
    var pd = sum(run.prefill, run.decode), all = sum(pd, run.chunked);
    var parts = [null, run.chunked, run.decode, run.prefill];
    function part(u, v, si, di) { return di === null || parts[si][di] === null ? "--" : parts[si][di]; }
    make(el, [line("chunked prefill", colors.chunked, {value: part}),
              line("decode", colors.decode, {value: part}),
              line("prefill", colors.prefill, {value: part, fill: colors.prefill + "99"})],
         [run.x, all, pd, run.prefill],
         {bands: [{series: [1, 2], fill: colors.chunked + "99"}, {series: [2, 3], fill: colors.decode + "99"}]});
  }

  data.runs.forEach(function (run, k) {
    tokens(document.getElementById("chart-tokens-" + k), run);
    make(document.getElementById("chart-queues-" + k),
         [line("running", colors.running), line("waiting", colors.waiting)],
         [run.x, run.running, run.waiting]);
    make(document.getElementById("chart-kv-" + k),
         [line(run.kv_label, colors.kv, {fill: colors.kv + "55"})], [run.x, run.kv]);
  });

  window.addEventListener("resize", function () {
    charts.forEach(function (u) { u.setSize({width: width(u.root.parentNode), height: 200}); });
  });

  var only = document.getElementById("only-differing");
  if (only) only.addEventListener("change", function () {
    document.getElementById("lifecycles").classList.toggle("only-differing", only.checked);
  });

  var status = document.getElementById("render-status");
  status.textContent = "rendered " + charts.length + " charts";
  status.dataset.charts = charts.length;
})();
"""
