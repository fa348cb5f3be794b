"""A trace as Chrome trace-event JSON, for ui.perfetto.dev and chrome://tracing.

Runs in the parent process: reads a trace, never imports sglang. What it
writes (pid 1 "scheduler", pid 2 "requests"):

  - one complete event ("X") per forward batch on the "forward batches"
    thread, its args the mode, the requests (rids), new and cached tokens and
    the chunked request;
  - counters ("C"): running, waiting, KV pool free, request pool free, tokens
    per forward, each written when its value changes;
  - each request's life as nestable async slices ("b"/"e", id = the request's
    number): the life from arrival to finish named by its rid, and inside it
    its phases (waiting, prefill, decode, requeued after a retraction);
  - an instant event ("i") per retraction on the "retractions" thread;
  - process and thread names ("M").

The time axis is the wall clock where the recording kept it: a recording
whose inputs came by the wall clock (a capture, serve mode, --clock wall)
keeps on each iteration that pulled inputs its time since the recording
started (`ms`); the iterations between two such are spread evenly over the
time between them, and those after the last up to the end record's
`seconds`. Elsewhere the axis is the loop iteration scaled to microseconds
(1 iteration = 1000 us). `otherData` and the scheduler's process labels say
which.

Streams: events are written as records are read, and the only state is the
requests still open (their rid and phase) and, on the wall-clock axis, the
records since the last timed one (at most MAX_HELD), so memory does not grow
with the trace's length.
"""

from __future__ import annotations

import gzip
import io
import itertools
import math
import os
from typing import Callable, Iterator, Optional, TypeGuard

import msgspec

from sgl_replay.trace.format import Batch, End, GenerateInput, Iteration, State
from sgl_replay.trace.reader import TraceReader

ITERATION_US = 1000  # time axis without wall times: one loop iteration per millisecond
MAX_HELD = 4096  # records held waiting for the next wall time; past it, placed at the last pace
SCHEDULER, REQUESTS = 1, 2  # pids
FORWARDS, RETRACTIONS = 1, 2  # tids of the scheduler process
ASYNC_TID = 0  # async events belong to their id, not a thread; tid is required anyway

# State fields as counter tracks, in the order Perfetto lists them.
_COUNTERS = (("running", "running requests"), ("waiting", "waiting requests"),
             ("kv_free", "KV pool free (tokens)"), ("req_free", "request pool free"))
_TOKENS = "tokens per forward"


def write_timeline(trace_path: str, out_path: str) -> dict:
    """Convert a trace to trace-event JSON (gzip when `out_path` ends in
    .gz). Returns figures: events, forwards, retractions, requests,
    iterations, time_axis ("iteration" or "wall") and the output's bytes."""
    with TraceReader(trace_path) as reader, _open(out_path) as out:
        writer = _EventWriter(out)
        figures = _Timeline(writer).run(reader)
        writer.close(other_data={"source": trace_path, "time_axis": figures["time_axis"],
                                 "time_unit": _axis_words(figures["time_axis"])})
    figures["events"] = writer.count
    figures["bytes"] = os.path.getsize(out_path)
    return figures


def _open(path: str) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        return gzip.open(path, "wb", compresslevel=6)  # 9: 1.6x the time for 6% less (bench trace)
    return open(path, "wb")


def _axis_words(axis: str) -> str:
    if axis == "iteration":
        return f"1 loop iteration = {ITERATION_US} us (the trace records no wall time)"
    return "wall time, us from the run's start (idle iterations share the time between records)"


class _EventWriter:
    """The JSON object written piece by piece: '{"traceEvents":[', events
    joined by commas, then the closing keys. Events are gathered into
    FLUSH_BYTES pieces (gzip is slow on many small writes); nothing is kept
    after that."""

    FLUSH_BYTES = 1 << 16

    def __init__(self, out: io.BufferedIOBase) -> None:
        self._out = out
        self._encode = msgspec.json.Encoder().encode
        self._pending = bytearray(b'{"displayTimeUnit":"ms","traceEvents":[\n')
        self.count = 0

    def event(self, event: dict) -> None:
        if self.count:
            self._pending += b",\n"
        self._pending += self._encode(event)
        self.count += 1
        if len(self._pending) >= self.FLUSH_BYTES:
            self._out.write(self._pending)
            self._pending.clear()

    def close(self, other_data: dict) -> None:
        self._pending += b'\n],"otherData":' + self._encode(other_data) + b"}\n"
        self._out.write(self._pending)
        self._pending.clear()


def _timed(records: Iterator[Iteration], end: Callable[[], Optional[End]] = lambda: None
           ) -> Iterator[tuple[Iteration, float, float, bool]]:
    """(record, start us, duration us of one iteration, on the wall clock).
    The wall clock when the first record that pulled inputs carries a time
    (looked for among the first MAX_HELD records); `end` gives the end
    record once the records are exhausted."""
    head = []
    for record in records:
        head.append(record)
        if record.inputs or len(head) >= MAX_HELD:
            break
    if not head or _wall(head[-1]) is None:
        for record in itertools.chain(head, records):
            yield record, record.i * ITERATION_US, ITERATION_US, False
        return
    yield from _on_the_wall_clock(itertools.chain(head, records), end)


def _on_the_wall_clock(records: Iterator[Iteration], end: Callable[[], Optional[End]]
                       ) -> Iterator[tuple[Iteration, float, float, bool]]:
    # the records from the last timed one (the anchor: iteration, us) on;
    # the recording starts at iteration 0, time 0
    anchor_i, anchor_us, pace = 0, 0.0, float(ITERATION_US)
    held: list = []

    def spread(next_i: int, next_us: float) -> Iterator[tuple[Iteration, float, float, bool]]:
        nonlocal pace
        if next_i > anchor_i:
            pace = max(0.0, next_us - anchor_us) / (next_i - anchor_i)
        for r in held:
            yield r, anchor_us + (r.i - anchor_i) * pace, pace, True

    for record in records:
        wall = _wall(record)
        if wall is None and len(held) < MAX_HELD:
            held.append(record)
            continue
        if wall is None:  # a long stretch without inputs: go on at the last pace
            wall = anchor_us + (record.i - anchor_i) * pace
        wall = max(wall, anchor_us)
        yield from spread(record.i, wall)
        anchor_i, anchor_us, held = record.i, wall, [record]
    last = end()
    if last is not None and _finite(last.seconds) and last.iterations > anchor_i:
        yield from spread(last.iterations, max(anchor_us, last.seconds * 1e6))
    else:
        yield from spread(anchor_i, anchor_us)  # at the last pace


def _finite(x: Optional[float]) -> TypeGuard[float]:
    """A recorded time is one (a hostile trace's nan or inf counts as none)."""
    return x is not None and math.isfinite(x)


def _wall(record: Iteration) -> Optional[float]:
    return record.ms * 1000 if _finite(record.ms) else None


class _Timeline:
    """Turns records into events as they stream by."""

    def __init__(self, writer: _EventWriter) -> None:
        self.w = writer
        self.open: dict[int, list] = {}  # request number -> [rid, phase]: the only state
        self.requests = 0  # request numbers handed out (generate inputs so far)
        self.counters: dict[str, float] = {}  # last value written per counter
        self.reqs_named: tuple = (None, None)  # (a batch's reqs list, its rids): decode steps repeat it
        self.forwards = self.retractions = self.iterations = 0
        self.wall = False

    def run(self, reader: TraceReader) -> dict:
        self._metadata()
        end_ts = 0.0
        for record, ts, dur, wall in _timed(reader.iterations(), lambda: reader.end):
            self.wall = wall
            self._iteration(record, ts, dur, end_ts)
            end_ts = ts + dur
        for n in list(self.open):  # still running when the trace ended
            self._close(n, end_ts, {"finished": False})
        # known only now; viewers place metadata wherever it comes
        self.w.event({"ph": "M", "name": "process_labels", "ts": 0, "pid": SCHEDULER, "tid": 0,
                      "args": {"labels": _axis_words("wall" if self.wall else "iteration")}})
        return {"iterations": self.iterations, "forwards": self.forwards,
                "retractions": self.retractions, "requests": self.requests,
                "time_axis": "wall" if self.wall else "iteration"}

    def _metadata(self) -> None:
        meta = (("process_name", SCHEDULER, 0, {"name": "scheduler"}),
                ("process_sort_index", SCHEDULER, 0, {"sort_index": 0}),
                ("thread_name", SCHEDULER, FORWARDS, {"name": "forward batches"}),
                ("thread_name", SCHEDULER, RETRACTIONS, {"name": "retractions"}),
                ("process_name", REQUESTS, 0, {"name": "requests"}),
                ("process_sort_index", REQUESTS, 0, {"sort_index": 1}))
        for name, pid, tid, args in meta:
            self.w.event({"ph": "M", "name": name, "ts": 0, "pid": pid, "tid": tid, "args": args})

    def _iteration(self, record: Iteration, ts: float, dur: float, previous_end: float) -> None:
        self.iterations += 1
        if ts > previous_end and self.counters.get(_TOKENS):  # idle loop iterations ran nothing
            self._counter(_TOKENS, 0, previous_end)
        for item in record.inputs:
            if type(item) is GenerateInput:
                self._arrive(item.rid, ts, record.i)
        batches = record.batches
        if batches:
            # more than one forward in an iteration: side by side within it
            share = dur / len(batches) if len(batches) > 1 else dur
            for k, batch in enumerate(batches):
                self._forward(batch, record.i, ts + k * share, share)
        elif self.counters.get(_TOKENS):
            self._counter(_TOKENS, 0, ts)
        if record.state is not None:
            self._state(record.state, ts + dur)
        end = ts + dur
        for n in record.retracted:
            self._retract(n, end, record.i)
        for n, reason, length, _ in record.finished:
            self._close(n, end, {"finished": True, "reason": reason, "output_len": length,
                                 "iteration": record.i})

    # ---------------------------------------------------------- forwards
    def _forward(self, batch: Batch, i: int, ts: float, dur: float) -> None:
        self.forwards += 1
        args = {"iteration": i, "fwd": batch.fwd, "mode": batch.mode, "tokens": batch.tokens,
                "requests": self._rids(batch.reqs)}
        if batch.new is not None:
            args["new"], args["cached"] = batch.new, batch.cached
            args["new_tokens"], args["cached_tokens"] = sum(batch.new), sum(batch.cached or ())
        if batch.chunked is not None:
            args["chunked"] = self._rid(batch.chunked)
        self.w.event({"ph": "X", "name": batch.mode or "forward", "cat": "forward", "ts": ts,
                      "dur": dur, "pid": SCHEDULER, "tid": FORWARDS, "args": args})
        self._counter(_TOKENS, batch.tokens, ts)
        self._phases(batch, ts, ts + dur)

    def _rids(self, reqs: list) -> list:
        # the reader hands decode steps the same list object: name it once
        if self.reqs_named[0] is not reqs:
            self.reqs_named = (reqs, [self._rid(n) for n in reqs])
        return self.reqs_named[1]

    def _rid(self, n: int) -> str:
        req = self.open.get(n)
        return req[0] if req is not None else f"#{n}"

    def _phases(self, batch: Batch, start: float, end: float) -> None:
        """A request's prefill starts with its first extend batch (after a
        retraction: again) and ends with the batch that is not its chunk."""
        if batch.new is None:
            return
        for n in batch.reqs:
            req = self.open.get(n)
            if req is None or req[1] == "decode":  # a decoding request in a mixed batch
                continue
            if req[1] != "prefill":
                self._phase(n, "prefill", start)
            if n != batch.chunked:
                self._phase(n, "decode", end)

    def _phase(self, n: int, phase: str, ts: float) -> None:
        req = self.open[n]
        self._async("e", n, req[1], ts)
        req[1] = phase
        self._async("b", n, phase, ts)

    # ---------------------------------------------------------- requests
    def _arrive(self, rid: str, ts: float, i: int) -> None:
        n = self.requests
        self.requests += 1
        self.open[n] = [rid, "waiting"]
        self._async("b", n, rid, ts, {"arrival": i})
        self._async("b", n, "waiting", ts)

    def _retract(self, n: int, ts: float, i: int) -> None:
        self.retractions += 1
        rid = self._rid(n)
        self.w.event({"ph": "i", "s": "t", "name": f"retract {rid}", "cat": "retraction", "ts": ts,
                      "pid": SCHEDULER, "tid": RETRACTIONS, "args": {"rid": rid, "iteration": i}})
        if n in self.open:
            self._phase(n, "requeued (retracted)", ts)

    def _close(self, n: int, ts: float, args: dict) -> None:
        req = self.open.pop(n, None)
        if req is None:
            return
        rid, phase = req
        self._async("e", n, phase, ts)
        self._async("e", n, rid, ts, args)

    def _async(self, ph: str, n: int, name: str, ts: float, args: Optional[dict] = None) -> None:
        event = {"ph": ph, "name": name, "cat": "request", "id": n, "ts": ts, "pid": REQUESTS,
                 "tid": ASYNC_TID}
        if args:
            event["args"] = args
        self.w.event(event)

    # ---------------------------------------------------------- counters
    def _state(self, state: State, ts: float) -> None:
        for field, name in _COUNTERS:
            self._counter(name, getattr(state, field), ts)

    def _counter(self, name: str, value: float, ts: float) -> None:
        if self.counters.get(name) == value:
            return
        self.counters[name] = value
        self.w.event({"ph": "C", "name": name, "ts": ts, "pid": SCHEDULER, "tid": 0,
                      "args": {"value": value}})
