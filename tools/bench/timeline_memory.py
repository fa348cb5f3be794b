"""Timeline conversion time and memory on long traces (no engine). Writes
synthetic traces shaped like a busy decode-heavy run (64 running requests,
2000 requests in all, an arrival and a finish at even intervals, a
retraction every 1000 iterations, a record every iteration), converts each
to gzipped trace-event JSON, and traces the conversion's peak Python memory
at 10k and 100k iterations: the requests still open are the timeline's only
state, so equal peaks mean it streams. Then the HTML report of the longest
trace against a copy that parts half way (downsampled series: its size and
memory do not grow with the trace either).

    python tools/bench/timeline_memory.py [--iterations 100000]

Prints one JSON line last: {"bench": "timeline_memory", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc

from sgl_replay.diff import diff
from sgl_replay.trace import TraceReader, TraceWriter
from sgl_replay.trace.format import Device, End, Header, Model, Pools, pack_ids
from sgl_replay.views import write_report, write_timeline

WIDTH = 64
REQUESTS = 2000
KV_TOKENS = 50_000
RETRACT_EVERY = 1000


def write_trace(path: str, iterations: int, *, diverge_at: int | None = None) -> None:
    writer = TraceWriter(path, Header(model=Model(config={}), device=Device(type="cpu"),
                                      pools=Pools(max_total_tokens=KV_TOKENS)))
    running = list(range(WIDTH))
    nxt = WIDTH
    every = max(1, iterations // (REQUESTS - WIDTH))
    victim = None  # retracted last iteration: prefills again now
    for i in range(iterations):
        rec = {"t": "iter", "i": i}
        if i == 0:  # the first WIDTH arrive together and prefill
            rec["inputs"] = [_generate(k) for k in running]
            rec["batches"] = [_extend(0, running)]
        elif victim is not None:
            rec["batches"] = [_extend(i, [victim])]
            running.append(victim)
            victim = None
        elif i % RETRACT_EVERY == 0:
            victim = running.pop()
            rec["batches"] = [{"fwd": i, "mode": "decode", "reqs": list(running), "tokens": len(running)}]
            rec["retracted"] = [victim]
        elif i % every == 0 and nxt < REQUESTS:  # one arrives, prefills, joins; the oldest finishes
            rec["inputs"] = [_generate(nxt)]
            rec["batches"] = [_extend(i, [nxt])]
            rec["finished"] = [[running[0], "length", 64, (i * 2654435761) % 2**64]]
            running = running[1:] + [nxt]
            nxt += 1
        else:  # the writer leaves "reqs" out while they repeat
            rec["batches"] = [{"fwd": i, "mode": "decode", "reqs": running, "tokens": len(running)}]
        waiting = 3 if diverge_at is None or i < diverge_at else 4
        rec["state"] = {"waiting": waiting, "running": len(running),
                        "kv_free": KV_TOKENS - 2000 - i % 1000, "req_free": 100}
        writer.write(rec)
    writer.close(End(complete=True, reason=None, iterations=iterations, forwards=iterations,
                     requests=nxt))


def _generate(k: int) -> dict:
    return {"type": "generate", "rid": f"req-{k}", "input_ids": pack_ids([1] * 32),
            "sampling": {"max_new_tokens": 64}, "stream": True}


def _extend(fwd: int, reqs: list) -> dict:
    return {"fwd": fwd, "mode": "extend", "reqs": list(reqs), "new": [32] * len(reqs),
            "cached": [0] * len(reqs), "tokens": 32 * len(reqs)}


def measured(fn, *args) -> tuple[float, int, object]:
    """(seconds, peak traced bytes, result): timed in one run, memory traced
    in another (tracemalloc slows every allocation)."""
    started = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - started
    tracemalloc.start()
    fn(*args)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak, result


def report(a: str, b: str, out: str) -> None:
    with TraceReader(a) as ra, TraceReader(b) as rb:
        result = diff(ra, rb)
    write_report(a, b, result, out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=100_000)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="sgl-replay-bench-")
    figures = {}
    for n in (args.iterations // 10, args.iterations):
        trace, out = os.path.join(tmp, f"t{n}.sglt"), os.path.join(tmp, f"t{n}.json.gz")
        write_trace(trace, n)
        seconds, peak, result = measured(write_timeline, trace, out)
        assert result["forwards"] == n
        figures[n] = {"seconds": round(seconds, 3), "it_per_s": round(n / seconds), "peak_bytes": peak,
                      "events": result["events"], "out_bytes": result["bytes"],
                      "trace_bytes": os.path.getsize(trace)}
        print(f"{n} iterations: timeline {seconds:.2f} s ({n / seconds:,.0f} it/s), peak memory "
              f"{peak / 1e6:.2f} MB, {result['events']:,} events, {result['bytes'] / 1e6:.2f} MB gzipped",
              file=sys.stderr)
    a = os.path.join(tmp, f"t{args.iterations}.sglt")
    b = os.path.join(tmp, "diverged.sglt")
    write_trace(b, args.iterations, diverge_at=args.iterations // 2)
    page = os.path.join(tmp, "report.html")
    report_seconds, report_peak, _ = measured(report, a, b, page)
    print(f"report of two {args.iterations} iteration traces (diff included): {report_seconds:.2f} s, "
          f"peak memory {report_peak / 1e6:.2f} MB, {os.path.getsize(page):,} bytes", file=sys.stderr)
    small, large = figures[args.iterations // 10], figures[args.iterations]
    print(json.dumps({"bench": "timeline_memory", "iterations": args.iterations,
                      "seconds_10pct": small["seconds"], "seconds_full": large["seconds"],
                      "it_per_s": large["it_per_s"], "peak_bytes_10pct": small["peak_bytes"],
                      "peak_bytes_full": large["peak_bytes"], "events_full": large["events"],
                      "out_bytes_full": large["out_bytes"], "report_seconds": round(report_seconds, 3),
                      "report_peak_bytes": report_peak, "report_bytes": os.path.getsize(page)}))


if __name__ == "__main__":
    main()
