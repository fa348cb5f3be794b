"""Trace size and codec speed, on traces recorded from the real engine.

Records a decode-heavy workload (256 concurrent requests) and a prefill-heavy
one on the embedded CPU engine, then reports for each: bytes per forward
batch, the same records written as JSON lines (bytes and ratio), and the
encode and decode rates of the trace codec (iterations per second, the
recorded iterations written and read back 20 times over).

    python tools/bench/trace_size.py

Prints one JSON line last: {"bench": "trace_size", ...}.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from sgl_replay.engine import Engine, EngineConfig
from sgl_replay.record.runner import record_workload
from sgl_replay.trace import TraceReader, TraceWriter
from sgl_replay.trace.writer import end_record

HERE = Path(__file__).parent
REPEAT = 20


def codec_rates(path: str) -> dict:
    with TraceReader(path) as r:
        header = r.header
        body = list(r.iterations())
    # the body REPEAT times over, renumbered, so that the timing is long enough
    records = [{**rec, "i": rec["i"] + k * 10**6} for k in range(REPEAT) for rec in body]
    out = tempfile.mktemp(suffix=".sglt")
    started = time.perf_counter()
    w = TraceWriter(out, header)
    for rec in records:
        w.write(rec)
    w.close(end_record(complete=True, reason=None, iterations=len(records), forwards=0, requests=0))
    encode = len(records) / (time.perf_counter() - started)
    started = time.perf_counter()
    with TraceReader(out) as r:
        n = sum(1 for _ in r.iterations())
    decode = n / (time.perf_counter() - started)
    os.unlink(out)
    jsonl = sum(len(json.dumps(rec, separators=(",", ":"))) + 1 for rec in [header] + body)
    return {"encode_it_per_s": round(encode), "decode_it_per_s": round(decode), "jsonl_bytes": jsonl}


def main() -> None:
    figures = {}
    config = EngineConfig.embedded(engine_args={"max_total_tokens": 65536})
    tmp = Path(tempfile.mkdtemp(prefix="sgl-replay-bench-"))
    with Engine.start(config, extra_sys_path=(str(HERE),)) as engine:
        for name in ("decode_heavy", "prefill_heavy"):
            out = str(tmp / f"{name}.sglt")
            end = record_workload(engine, {"kind": "script", "name": f"bench_workloads:{name}"}, out)
            size = os.path.getsize(out)
            rates = codec_rates(out)
            figures[name] = {
                "forwards": end["forwards"], "iterations": end["iterations"], "bytes": size,
                "bytes_per_forward": round(size / end["forwards"], 1),
                "jsonl_bytes": rates["jsonl_bytes"], "jsonl_ratio": round(rates["jsonl_bytes"] / size, 1),
                "encode_it_per_s": rates["encode_it_per_s"], "decode_it_per_s": rates["decode_it_per_s"],
            }
            f = figures[name]
            print(f"{name}: {f['forwards']} forwards, {size} bytes, {f['bytes_per_forward']} B/forward; "
                  f"JSON lines {f['jsonl_bytes']} bytes ({f['jsonl_ratio']}x larger); "
                  f"encode {f['encode_it_per_s']:,} it/s, decode {f['decode_it_per_s']:,} it/s",
                  file=sys.stderr)
    print(json.dumps({"bench": "trace_size", **figures,
                      "targets": {"jsonl_ratio": 20, "encode_it_per_s": 100_000,
                                  "decode_it_per_s": 500_000}}))


if __name__ == "__main__":
    main()
