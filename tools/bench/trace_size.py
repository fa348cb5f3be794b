"""Trace size and codec speed, on traces recorded from the real engine.

Records a decode-heavy workload (256 concurrent requests, 512 new tokens
each) and a prefill-heavy one on the embedded CPU engine, then reports for
each: bytes per forward batch (the body: the header, about 6 KB of server
arguments and versions, is counted apart), the same records written as JSON
lines (bytes and ratio, header included and not), and the encode and decode
rates of the trace codec (records per second, the recorded body written and
read back 10 times over; every record here is a busy loop iteration).

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
from sgl_replay.trace.format import unpack_ids
from sgl_replay.trace.writer import end_record

HERE = Path(__file__).parent
REPEAT = 10


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
    def jsonl(records):  # the same content as JSON: token ids as numbers
        return sum(len(json.dumps(rec, separators=(",", ":"), default=unpack_ids)) + 1 for rec in records)

    return {"encode_it_per_s": round(encode), "decode_it_per_s": round(decode),
            "jsonl_bytes": jsonl([header] + body), "jsonl_body_bytes": jsonl(body)}


def header_bytes(path: str) -> int:
    """Size of the header's frame (the first frame holds only the header)."""
    with TraceReader(path) as r:
        next(iter(r.iterations()), None)
        return r.good_bytes


def main() -> None:
    figures = {}
    config = EngineConfig.embedded(engine_args={"max_total_tokens": 65536})
    tmp = Path(tempfile.mkdtemp(prefix="sgl-replay-bench-"))
    with Engine.start(config, extra_sys_path=(str(HERE),)) as engine:
        for name in ("decode_heavy", "prefill_heavy"):
            out = str(tmp / f"{name}.sglt")
            end = record_workload(engine, {"kind": "script", "name": f"bench_workloads:{name}"}, out)
            size = os.path.getsize(out)
            body = size - header_bytes(out)
            rates = codec_rates(out)
            figures[name] = {
                "forwards": end["forwards"], "iterations": end["iterations"], "bytes": size,
                "body_bytes": body, "bytes_per_forward": round(body / end["forwards"], 1),
                "jsonl_bytes": rates["jsonl_bytes"], "jsonl_ratio": round(rates["jsonl_bytes"] / size, 1),
                "jsonl_body_ratio": round(rates["jsonl_body_bytes"] / body, 1),
                "encode_it_per_s": rates["encode_it_per_s"], "decode_it_per_s": rates["decode_it_per_s"],
            }
            f = figures[name]
            print(f"{name}: {f['forwards']} forwards, {size} bytes ({body} body), "
                  f"{f['bytes_per_forward']} B/forward; JSON lines {f['jsonl_ratio']}x larger "
                  f"({f['jsonl_body_ratio']}x for the body); encode {f['encode_it_per_s']:,} records/s, "
                  f"decode {f['decode_it_per_s']:,} records/s", file=sys.stderr)
    print(json.dumps({"bench": "trace_size", **figures,
                      "targets": {"jsonl_ratio": 20, "encode_it_per_s": 100_000,
                                  "decode_it_per_s": 500_000}}))


if __name__ == "__main__":
    main()
