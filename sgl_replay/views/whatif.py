"""A what-if sweep as one self-contained HTML page in the report's style:
the ranked table, and a chart of the rank figure against throughput, one
point per configuration (the baseline marked). Like the report, it opens
offline (uPlot inlined), escapes every string and lists the page's own
errors in #page-errors."""

from __future__ import annotations

from typing import Any

from sgl_replay.timing import latency
from sgl_replay.views.report import _CSS, _e, _json_for_script, page_head

_COLUMNS = (("rank", "#"), ("config", "configuration"), ("ttft_p50_ms", "TTFT p50 ms"),
            ("ttft_p90_ms", "TTFT p90 ms"), ("ttft_p99_ms", "TTFT p99 ms"), ("itl_p90_ms", "ITL p90 ms"),
            ("e2e_p90_ms", "E2E p90 ms"), ("throughput_tok_s", "output tok/s"), ("peak_queue", "peak queue"),
            ("retractions", "retractions"), ("schedule_vs_baseline", "schedule vs baseline"))


def versus(row: dict[str, Any], rank: str) -> str:
    """A table row's rank figure against the baseline's, in words."""
    change = row[f"{rank}_vs_baseline_pct"]
    if change is None or row["baseline"]:
        return "-"
    return f"{change:+.1f}% worse" if change > 0 else f"{-change:.1f}% better" if change < 0 else "same"


def page(trace: str, runner: str, rank: str, rows: list[dict[str, Any]], fidelity: str) -> str:
    """A sweep of `trace` on `runner`: its table (runs/whatif.py's `table`)
    ranked by `rank`, and the baseline's `fidelity` line."""
    against = f"{rank}_vs_baseline_pct"
    columns = "".join(f"<th>{_e(title)}</th>" for _, title in _COLUMNS) + f"<th>{_e(rank)} vs baseline</th>"
    body = []
    for row in rows:
        if row["failed"]:
            body.append(f'<tr class="failed"><td>{row["rank"]}</td><td>{_e(row["config"])}</td>'
                        f'<td colspan="{len(_COLUMNS) - 1}">failed: {_e(row["failed"])}</td></tr>')
            continue
        cells = "".join(f"<td>{_e(_cell(row[key]))}</td>" for key, _ in _COLUMNS)
        change = row[against]
        cls = "" if change is None or row["baseline"] else (" bad" if change > 0 else " good")
        cells += f'<td class="{cls.strip()}">{_e(versus(row, rank))}</td>'
        body.append(f'<tr{" class=baseline" if row["baseline"] else ""}>{cells}</tr>')
    points = sorted(((r["throughput_tok_s"], latency.figure(_as_summary(r), rank), r["config"], r["baseline"])
                     for r in rows if not r["failed"] and r["throughput_tok_s"] is not None),
                    key=lambda p: p[0])
    y_label = "output tok/s" if rank == "throughput" else f"{rank} (ms)"
    data = {"x": [p[0] for p in points], "y": [p[1] for p in points], "labels": [p[2] for p in points],
            "baseline": [p[3] for p in points], "y_label": y_label}
    title = f"sgl-replay what-if: {trace}"
    return _PAGE.format(head=page_head(_e(title), _CSS + _MORE_CSS),
                        summary=_e(f"{len(rows)} configurations on {runner}, ranked by {rank}; "
                                   f"figures on the modelled clock"),
                        fidelity=_e(fidelity), columns=columns, body="\n".join(body),
                        y_label=_e(y_label), data=_json_for_script(data), script=_SCRIPT)


def _as_summary(row: dict[str, Any]) -> dict[str, Any]:
    """A table row's figures in the shape latency.figure reads."""
    out: dict[str, Any] = {"throughput_tok_s": row["throughput_tok_s"]}
    for key, value in row.items():
        if key.endswith("_ms") and key.count("_") == 2:
            kind, p, _ = key.split("_")
            out.setdefault(f"{kind}_ms", {})[p] = value
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


_MORE_CSS = """
.sweep { border-collapse: collapse; font-size: 13px; }
.sweep th, .sweep td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
.sweep td:nth-child(2) { text-align: left; font-family: ui-monospace, monospace; }
.sweep tr.baseline td { background: #eef4fb; font-weight: 600; }
.sweep tr.failed td { color: #b00020; }
"""

_PAGE = """{head}<p class="verdict">{summary}</p>
<p>{fidelity}</p>
<h2>{y_label} against throughput</h2>
<p class="note">one point per configuration; the baseline (the recorded configuration) in red</p>
<div class="chart"><div id="chart-sweep"></div></div>
<h2>Configurations</h2>
<table class="sweep"><thead><tr>{columns}</tr></thead><tbody>
{body}
</tbody></table>
<p id="render-status" class="note">chart not rendered</p>
<script type="application/json" id="sweep-data">{data}</script>
<script>{script}</script>
</body></html>
"""

_SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById("sweep-data").textContent);
  var el = document.getElementById("chart-sweep");
  function label(u) {
    // each point named by its configuration
    var ctx = u.ctx;
    ctx.save();
    ctx.font = (11 * devicePixelRatio) + "px sans-serif";
    for (var k = 0; k < data.x.length; k++) {
      if (data.y[k] === null) continue;
      var x = u.valToPos(data.x[k], "x", true), y = u.valToPos(data.y[k], "y", true);
      ctx.fillStyle = data.baseline[k] ? "#b00020" : "#333";
      ctx.beginPath(); ctx.arc(x, y, 4 * devicePixelRatio, 0, 2 * Math.PI); ctx.fill();
      ctx.fillText(data.labels[k], x + 6 * devicePixelRatio, y - 4 * devicePixelRatio);
    }
    ctx.restore();
  }
  var opts = {width: Math.max(400, el.clientWidth || 800), height: 360,
              scales: {x: {time: false}},
              axes: [{label: "output tokens per second"}, {label: data.y_label}],
              series: [{label: "output tok/s"}, {label: data.y_label, paths: function () { return null; },
                                                   points: {show: false}}],
              hooks: {draw: [label]}};
  new uPlot(opts, [data.x, data.y], el);
  var status = document.getElementById("render-status");
  status.textContent = "rendered 1 chart with " + data.x.length + " points";
  status.dataset.points = data.x.length;
})();
"""
