"""The timeline (trace-event JSON) and the HTML report, without an engine.

The report is opened in a real headless Chromium: its DOM must show the
rendered charts, the divergence marker and the diverging requests, with no
console message. Without Chromium the browser test skips, or fails when CI
is set.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from sgl_replay.diff import Options, diff
from sgl_replay.trace import TraceReader, TraceWriter
from sgl_replay.views import write_report, write_timeline
from sgl_replay.views.report import MAX_POINTS, _Buckets
from sgl_replay.views.timeline import ITERATION_US, _timed

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = str(ROOT / "traces" / "kv_pressure_retraction.sglt")
ODD_RID = 'kv-11<i>&"x'  # a rid that must be escaped everywhere
DIVERGES_AT = 115  # where the golden retracts kv-11; B leaves that out


def _copy(src: str, dst: str, *, drop_retraction_at=None, env=None) -> None:
    """The golden with kv-11 renamed to ODD_RID; optionally without one
    iteration's retractions, or with other engine environment knobs."""
    with TraceReader(src) as reader:
        header = reader.header if env is None else msgspec.structs.replace(reader.header, env=env)
        writer = TraceWriter(dst, header)
        for record in reader.iterations():
            if record.inputs:
                inputs = [msgspec.structs.replace(x, rid=ODD_RID) if getattr(x, "rid", None) == "kv-11" else x
                          for x in record.inputs]
                record = msgspec.structs.replace(record, inputs=inputs)
            if record.i == drop_retraction_at:
                record = msgspec.structs.replace(record, retracted=())
            writer.write(record)
        writer.close(reader.end)


def _diff(a: str, b: str, options: Options = Options()):
    with TraceReader(a) as ra, TraceReader(b) as rb:
        return diff(ra, rb, options)


@pytest.fixture
def pair(tmp_path):
    a, b = str(tmp_path / "a.sglt"), str(tmp_path / "b.sglt")
    _copy(GOLDEN, a)
    _copy(GOLDEN, b, drop_retraction_at=DIVERGES_AT)
    return a, b


# ------------------------------------------------------------------ report
def _browser() -> str:
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if found is None:
        message = "no chromium on PATH: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=120)


def test_report_renders_in_a_headless_browser(pair, tmp_path):
    browser = _browser()
    a, b = pair
    result = _diff(a, b)
    assert result.verdict == "diverged" and result.first.iteration == DIVERGES_AT
    out = tmp_path / "report.html"
    write_report(a, b, result, str(out), label_a="recorded <A>", label_b="replayed")

    run = _chromium(browser, tmp_path / "profile", "--dump-dom", out.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    dom = run.stdout
    assert re.search(r'<ul id="page-errors">\s*</ul>', dom), "errors on the page"
    assert 'data-charts="6"' in dom and "rendered 6 charts" in dom
    assert dom.count("<canvas") >= 6
    markers = re.findall(r'class="divergence-marker" data-iteration="(\d+)"', dom)
    assert markers == [str(DIVERGES_AT)] * 6
    assert "diverged at 115" in dom
    escaped = "kv-11&lt;i&gt;&amp;\"x"
    assert f"<li>{escaped} retracted at iteration 115 in A, not in B</li>" in dom
    differing = re.findall(r'<tbody class="differs"[^>]*><tr><td rowspan="2" class="rid">([^<]*)</td>', dom)
    assert differing == [escaped]
    assert "<i>" not in dom and "recorded &lt;A&gt;" in dom

    shot = tmp_path / "report.png"
    run = _chromium(browser, tmp_path / "profile", "--hide-scrollbars", f"--screenshot={shot}",
                    "--window-size=1400,1800", out.as_uri())
    assert run.returncode == 0 and shot.stat().st_size > 10_000, run.stderr[-2000:]
    print(f"report screenshot: {shot}")


def test_report_is_one_offline_file(pair, tmp_path):
    a, b = pair
    out = tmp_path / "report.html"
    write_report(a, b, _diff(a, b), str(out))
    page = out.read_text()
    assert "<script src" not in page and "<link" not in page
    assert not re.search(r"https?://(?!github\.com/leeoniya/uPlot)", page)  # uPlot's banner only
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>',
                                page, re.S).group(1))
    assert data["divergence"] == DIVERGES_AT
    for run in data["runs"]:
        assert run["width"] == 1 and run["x"] == list(range(246))
    assert '<tbody class="differs"' in page and page.count('<tbody class="same"') == 15


def test_report_of_same_and_of_not_comparable_runs(pair, tmp_path):
    a, _ = pair
    out = tmp_path / "same.html"
    write_report(a, a, _diff(a, a), str(out))
    page = out.read_text()
    assert "Same: 246 recorded iterations" in page and 'id="divergence"' not in page
    assert '"divergence":null' in page

    other = str(tmp_path / "other-env.sglt")
    _copy(GOLDEN, other, env={"SGLANG_SOMETHING": "<1>"})
    result = _diff(a, other)
    assert result.verdict == "not comparable"
    write_report(a, other, result, str(out))
    page = out.read_text()
    assert "Not comparable" in page
    assert '<li class="blocking">' in page and "&#x27;&lt;1&gt;&#x27;" in page


def test_buckets_keep_at_most_max_points():
    buckets = _Buckets()
    for i in range(12_345):
        buckets.add(i, 1, (i % 3, 1, 0), (i % 7, 2, i))
    series = buckets.series()
    assert series["width"] == 4 and len(series["x"]) == 3087  # 6,173 buckets of 2 are too many
    assert series["x"][:3] == [0, 4, 8]
    assert series["prefill"][0] == 0.75 and series["decode"][0] == 1  # means per iteration
    assert series["running"][0] == 3 and series["kv"][0] == 3  # maxima
    buckets.add(12_345, 10**9, (0, 0, 0), (0, 0, 5))  # a long idle stretch, in one call
    series = buckets.series()
    assert len(series["x"]) <= MAX_POINTS
    assert series["x"] == [k * series["width"] for k in range(len(series["x"]))]
    assert series["x"][-1] + series["width"] >= 12_345 + 10**9


# ------------------------------------------------------------------ timeline
def _validate(doc: dict) -> dict:
    """Check a trace-event document against the format; return the events
    by phase."""
    assert isinstance(doc["traceEvents"], list)
    by_phase = defaultdict(list)
    last_ts: dict = {}
    open_async: dict = defaultdict(list)
    thread_end: dict = {}
    for event in doc["traceEvents"]:
        ph = event["ph"]
        for key in ("ts", "pid", "tid", "name"):
            assert key in event, (key, event)
        by_phase[ph].append(event)
        if ph == "M":
            continue
        if ph == "X":
            assert event["dur"] >= 0
            track = (event["pid"], event["tid"])
            assert event["ts"] >= thread_end.get(track, 0) - 1e-6, "overlapping complete events"
            thread_end[track] = event["ts"] + event["dur"]
        elif ph in ("b", "e", "n"):
            assert "id" in event and "cat" in event
            track = (event["cat"], event["id"])
            if ph == "b":
                open_async[track].append(event["name"])
            elif ph == "e":
                assert open_async[track] and open_async[track].pop() == event["name"], event
        elif ph == "C":
            assert event["args"] and all(isinstance(v, (int, float)) for v in event["args"].values())
            track = (event["pid"], "C", event["name"])
        elif ph == "i":
            assert event["s"] in ("t", "p", "g")
            track = (event["pid"], event["tid"])
        else:
            raise AssertionError(f"unexpected phase {ph}")
        if ph not in ("b", "e", "n", "C"):
            track = (event["pid"], event["tid"])
        assert event["ts"] >= last_ts.get(track, float("-inf")), ("time goes back", event)
        last_ts[track] = event["ts"]
    assert not any(open_async.values()), "a begin without its end"
    return by_phase


def _counts(path: str) -> dict:
    forwards = retractions = requests = 0
    with TraceReader(path) as reader:
        for record in reader.iterations():
            forwards += len(record.batches)
            retractions += len(record.retracted)
            requests += sum(1 for x in record.inputs if x.kind == "generate")
    return {"forwards": forwards, "retractions": retractions, "requests": requests}


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_timeline_of_a_golden_with_retractions(tmp_path, suffix):
    out = str(tmp_path / ("timeline" + suffix))
    figures = write_timeline(GOLDEN, out)
    opener = gzip.open if suffix.endswith(".gz") else open
    with opener(out, "rt") as f:
        doc = json.load(f)
    events = _validate(doc)
    expected = _counts(GOLDEN)
    assert expected["retractions"] == 2
    assert len(events["X"]) == expected["forwards"] == figures["forwards"]
    retractions = [e for e in events["i"] if e["cat"] == "retraction"]
    assert len(retractions) == expected["retractions"] == figures["retractions"]
    lives = [e for e in events["b"] if "arrival" in e.get("args", {})]
    assert len(lives) == expected["requests"] == figures["requests"] == 16
    assert {e["name"] for e in events["C"]} == {
        "running requests", "waiting requests", "KV pool free (tokens)", "request pool free",
        "tokens per forward"}
    assert {e["args"]["name"] for e in events["M"] if e["name"] == "thread_name"} == {
        "forward batches", "retractions"}
    assert doc["otherData"]["time_axis"] == "iteration" and "1000 us" in doc["otherData"]["time_unit"]
    assert figures["events"] == len(doc["traceEvents"])
    first = events["X"][0]
    assert first["args"]["mode"] == "extend" and first["args"]["chunked"] == "kv-5"
    assert first["args"]["requests"][:2] == ["kv-0", "kv-1"] and first["args"]["new_tokens"] == 256
    requeued = [e for e in events["b"] if e["name"] == "requeued (retracted)"]
    assert len(requeued) == 2


@pytest.mark.parametrize("path", sorted(glob.glob(str(ROOT / "traces" / "**" / "*.sglt"), recursive=True)),
                         ids=lambda p: Path(p).stem)
def test_timeline_of_every_golden_is_valid(tmp_path, path):
    out = str(tmp_path / "timeline.json")
    figures = write_timeline(path, out)
    with open(out) as f:
        events = _validate(json.load(f))
    assert len(events["X"]) == _counts(path)["forwards"] == figures["forwards"]


def test_wall_times_are_used_when_records_carry_them():
    """A wall-clock recording's iterations that pulled inputs carry their
    time (ms); those between are spread evenly, those after the last up to
    the end record's time."""
    def rec(i, ms=None, inputs=()):
        return SimpleNamespace(i=i, ms=ms, inputs=inputs)

    pulled = ({"type": "generate"},)
    records = [rec(0, 1.0, pulled), rec(1), rec(3), rec(4, 9.0, pulled), rec(6)]
    end = SimpleNamespace(iterations=8, seconds=0.013)
    assert [(r.i, ts, dur, wall) for r, ts, dur, wall in _timed(iter(records), lambda: end)] == [
        (0, 1000, 2000, True), (1, 3000, 2000, True), (3, 7000, 2000, True),
        (4, 9000, 1000, True), (6, 11000, 1000, True)]
    # no end record (a torn trace), or one whose time is not a number: the last pace goes on
    assert [ts for _, ts, _, _ in _timed(iter(records))][-2:] == [9000, 13000]
    hostile = SimpleNamespace(iterations=8, seconds=float("inf"))
    assert [ts for _, ts, _, _ in _timed(iter(records), lambda: hostile)][-2:] == [9000, 13000]
    plain = [rec(0, inputs=pulled), rec(3, 5.0, pulled)]  # the first arrival has no time: no wall clock
    assert [(ts, dur, wall) for _, ts, dur, wall in _timed(iter(plain))] == [
        (0, ITERATION_US, False), (3 * ITERATION_US, ITERATION_US, False)]

