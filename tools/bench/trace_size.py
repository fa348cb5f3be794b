"""Trace size and codec speed, on traces recorded from the real engine.

Records a decode-heavy workload (256 concurrent requests, 512 new tokens
each) and a prefill-heavy one on the embedded CPU engine, then reports for
each: bytes per forward batch (the body: the header, about 6 KB of server
arguments and versions, is counted apart), the same records written as JSON
lines (bytes and ratio, header included and not), and the encode and decode
rates of the trace codec (records per second, median of 5 timings with the
engine stopped, the recorded body written and read back 10 times over; every
record here is a busy loop iteration), beside the decode rate of the same
records laid out as format 2 wrote them (one after another, no blocks: the
reader unpacks those one by one and converts each to its typed record).

    python tools/bench/trace_size.py

Prints one JSON line last: {"bench": "trace_size", ...}.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import msgspec
import zstandard

from sgl_replay.traffic.specs import parse as parse_workload
from sgl_replay.runs.engine import Engine, EngineConfig
from sgl_replay.runs.record import record_workload
from sgl_replay.trace import TraceReader, TraceWriter
from sgl_replay.trace.format import unpack_ids
from sgl_replay.trace.format import End

HERE = Path(__file__).parent
REPEAT = 10  # the body this many times over in one codec timing
RUNS = 5  # codec timings per figure
WORKLOADS = ("decode_heavy", "prefill_heavy")


def median_rates(count: int, *runs) -> list[tuple[int, int, int]]:
    """Records per second of each run (median, slowest, fastest of RUNS),
    the runs taking turns: this machine's speed drifts by half from minute
    to minute, and side by side the drift hits them alike."""
    rates = [[] for _ in runs]
    for _ in range(RUNS):
        for run, timings in zip(runs, rates):
            started = time.perf_counter()
            run()
            timings.append(count / (time.perf_counter() - started))
    return [(round(sorted(t)[len(t) // 2]), round(min(t)), round(max(t))) for t in rates]


def codec_rates(path: str, tmp: Path) -> dict:
    with TraceReader(path) as r:
        header = r.header
        # as the recorder hands records to the writer: plain maps
        body = [msgspec.to_builtins(rec, builtin_types=(bytes,)) for rec in r.iterations()]
    # the body REPEAT times over, renumbered, so that one timing is long
    # enough; the writer leaves repeated batch requests out, as in the recorded trace
    records = [{**rec, "i": rec["i"] + k * 10**6} for k in range(REPEAT) for rec in body]
    out = str(tmp / "codec.sglt")

    def encode():
        w = TraceWriter(out, header)
        for rec in records:
            w.write(rec)
        w.close(End(complete=True, reason=None, iterations=len(records), forwards=0,
                           requests=0))

    def decode(path: str):
        def run():
            with TraceReader(path) as r:
                for _ in r.iterations():
                    pass
        return run

    [encode_rate] = median_rates(len(records), encode)
    # The same stored records as format 2 laid them out (one after another,
    # no blocks), read by the same reader: what reading an older trace costs.
    with open(out, "rb") as f:
        raw = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    values = list(msgpack.Unpacker(io.BytesIO(raw), raw=False, strict_map_key=False))
    stored = [rec for block in values[1::2] for rec in block]  # (length, block) pairs
    cctx = zstandard.ZstdCompressor(level=3)
    out_2 = str(tmp / "codec.format2.sglt")
    Path(out_2).write_bytes(cctx.compress(msgpack.packb({**stored[0], "format": 2}))
                            + cctx.compress(b"".join(msgpack.packb(rec) for rec in stored[1:])))
    decode_rate, format_2_rate = median_rates(len(records), decode(out), decode(out_2))
    os.unlink(out)
    os.unlink(out_2)

    def jsonl(records):  # the same content as JSON: token ids as numbers
        return sum(len(json.dumps(rec, separators=(",", ":"), default=unpack_ids)) + 1 for rec in records)

    return {"encode_it_per_s": encode_rate[0], "encode_range": encode_rate[1:],
            "decode_it_per_s": decode_rate[0], "decode_range": decode_rate[1:],
            "format_2_decode_it_per_s": format_2_rate[0],
            "decode_over_format_2": round(decode_rate[0] / format_2_rate[0], 2),
            "raw_bytes_per_it": round(len(raw) / len(records)),
            "jsonl_bytes": jsonl([header.to_dict()] + body), "jsonl_body_bytes": jsonl(body)}


def header_bytes(path: str) -> int:
    """Size of the header's frame (the first frame holds only the header)."""
    with TraceReader(path) as r:
        next(iter(r.iterations()), None)
        return r.good_bytes


def main() -> None:
    figures = {}
    config = EngineConfig.embedded(engine_args={"max_total_tokens": 65536})
    tmp = Path(tempfile.mkdtemp(prefix="sgl-replay-bench-"))
    try:
        ends = {}
        with Engine.start(config, extra_sys_path=(str(HERE),)) as engine:
            for name in WORKLOADS:
                ends[name] = record_workload(engine, parse_workload(f"bench_workloads:{name}"),
                                             str(tmp / f"{name}.sglt"))
        # the codec is timed with the engine stopped: its processes share this machine's cores
        for name in WORKLOADS:
            out, end = str(tmp / f"{name}.sglt"), ends[name]
            size = os.path.getsize(out)
            body = size - header_bytes(out)
            rates = codec_rates(out, tmp)
            jsonl_body = rates.pop("jsonl_body_bytes")
            figures[name] = f = {
                "forwards": end.forwards, "iterations": end.iterations, "bytes": size,
                "body_bytes": body, "bytes_per_forward": round(body / end.forwards, 1),
                "jsonl_ratio": round(rates["jsonl_bytes"] / size, 1),
                "jsonl_body_ratio": round(jsonl_body / body, 1), **rates,
            }
            print(f"{name}: {f['forwards']} forwards, {size} bytes ({body} body), "
                  f"{f['bytes_per_forward']} B/forward; JSON lines {f['jsonl_ratio']}x larger "
                  f"({f['jsonl_body_ratio']}x for the body); {f['raw_bytes_per_it']} B/record unpacked; "
                  f"encode {f['encode_it_per_s']:,} records/s, decode {f['decode_it_per_s']:,} records/s "
                  f"(the same records laid out as format 2: {f['format_2_decode_it_per_s']:,})",
                  file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"bench": "trace_size", **figures,
                      "targets": {"jsonl_ratio": 20, "encode_it_per_s": 100_000,
                                  "decode_it_per_s": 500_000}}))


if __name__ == "__main__":
    main()
