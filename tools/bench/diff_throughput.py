"""Diff throughput and memory on long traces (no engine: the diff never
needs one). Writes pairs of synthetic traces shaped like a busy decode-heavy
run (64 running requests, 2000 requests in all, a finish and an arrival at
even intervals, a record every iteration), then times `diff` on
them and traces its peak Python memory at 10k and 100k iterations. The
per-request lifecycle table is the only state that grows, with requests,
not iterations: equal peaks for the same 2000 requests mean the diff streams.

    python tools/bench/diff_throughput.py [--iterations 100000]

Prints one JSON line last: {"bench": "diff_throughput", ...}.
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
from sgl_replay.trace.format import pack_ids
from sgl_replay.trace.format import Device, End, Header, Model

WIDTH = 64
REQUESTS = 2000


def write_trace(path: str, iterations: int, *, diverge_at: int | None = None) -> None:
    w = TraceWriter(path, Header(model=Model(config={}), device=Device(type="cpu")))
    running = list(range(WIDTH))
    nxt = WIDTH
    every = max(1, iterations // (REQUESTS - WIDTH))
    for i in range(iterations):
        rec = {"t": "iter", "i": i}
        if i == 0:  # the first WIDTH arrive together and prefill
            rec["inputs"] = [{"type": "generate", "rid": f"req-{k}", "input_ids": pack_ids([1] * 32),
                              "sampling": {"max_new_tokens": 64}, "stream": True} for k in running]
            rec["batches"] = [{"fwd": 0, "mode": "extend", "reqs": list(running), "new": [32] * WIDTH,
                               "cached": [0] * WIDTH, "tokens": 32 * WIDTH}]
        elif i % every == 0 and nxt < REQUESTS:  # one arrives, prefills, joins
            rec["inputs"] = [{"type": "generate", "rid": f"req-{nxt}", "input_ids": pack_ids([1] * 32),
                              "sampling": {"max_new_tokens": 64}, "stream": True}]
            rec["batches"] = [{"fwd": i, "mode": "extend", "reqs": [nxt], "new": [32], "cached": [0],
                               "tokens": 32}]
            rec["finished"] = [[running[0], "length", 64, (i * 2654435761) % 2**64]]
            running = running[1:] + [nxt]
            nxt += 1
        else:
            # the writer leaves "reqs" out while they repeat
            rec["batches"] = [{"fwd": i, "mode": "decode", "reqs": running, "tokens": len(running)}]
        waiting = 3 if diverge_at is None or i < diverge_at else 4
        rec["state"] = {"waiting": waiting, "running": len(running), "kv_free": 50_000 - i % 1000,
                        "req_free": 100}
        w.write(rec)
    w.close(End(complete=True, reason=None, iterations=iterations, forwards=iterations,
                       requests=nxt))


def timed_diff(a: str, b: str) -> tuple[float, int, str]:
    """(seconds, peak traced bytes, verdict): timed in one run, memory traced
    in another (tracemalloc slows every allocation)."""
    started = time.perf_counter()
    with TraceReader(a) as ra, TraceReader(b) as rb:
        verdict = diff(ra, rb).verdict
    seconds = time.perf_counter() - started
    tracemalloc.start()
    with TraceReader(a) as ra, TraceReader(b) as rb:
        diff(ra, rb)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak, verdict


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=100_000)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="sgl-replay-bench-")
    figures = {}
    for n in (args.iterations // 10, args.iterations):
        a, b = os.path.join(tmp, f"a{n}.sglt"), os.path.join(tmp, f"b{n}.sglt")
        write_trace(a, n)
        write_trace(b, n)
        # untimed warm-up read, so the page cache holds both files
        timed_diff(a, b)
        seconds, peak, verdict = timed_diff(a, b)
        assert verdict == "same"
        figures[n] = {"seconds": round(seconds, 3), "it_per_s": round(n / seconds),
                      "peak_bytes": peak, "file_bytes": os.path.getsize(a)}
        print(f"{n} iterations: diff {n / seconds:,.0f} it/s, peak memory {peak / 1e6:.2f} MB "
              f"(trace {os.path.getsize(a) / 1e6:.2f} MB)", file=sys.stderr)
    # a pair that parts half way: the realigning summary runs over the rest
    a, b = os.path.join(tmp, "a.sglt"), os.path.join(tmp, "b-diverged.sglt")
    write_trace(a, args.iterations)
    write_trace(b, args.iterations, diverge_at=args.iterations // 2)
    seconds, peak, verdict = timed_diff(a, b)
    assert verdict == "diverged"
    small, large = figures[args.iterations // 10], figures[args.iterations]
    out = {"bench": "diff_throughput", "iterations": args.iterations,
           "same_it_per_s": large["it_per_s"], "peak_bytes_10pct": small["peak_bytes"],
           "peak_bytes_full": large["peak_bytes"], "diverged_it_per_s": round(args.iterations / seconds),
           "diverged_peak_bytes": peak, "targets": {"it_per_s": 200_000}}
    print(f"diverged half way: {out['diverged_it_per_s']:,} it/s, peak {peak / 1e6:.2f} MB", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
