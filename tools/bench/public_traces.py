"""Importing public serving traces: time per 1,000 imported requests (parse,
select and scale, and build the exact prompts the engine gets; the parse's
peak memory), also from a
file --repeat times the Mooncake sample (its rows again and again, later in
time: a long production trace), and, given recorded traces, trace size per
request. No engine.

    python tools/bench/public_traces.py [--repeat 100] [--trace run.sglt ...]

Prints one JSON line last: {"bench": "public_traces", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc

from sgl_replay.traffic import public_traces as pt
from sgl_replay.trace import TraceReader
from sgl_replay.trace.format import GenerateInput

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")
SOURCES = [("mooncake", "mooncake_synthetic.jsonl"), ("azure", "azure_llm_2023_code.csv")]


def import_time(fmt: str, path: str, options: dict, n: int) -> dict:
    started = time.perf_counter()
    imported = pt.load(fmt, path, {**options, "limit": n})
    parsed = time.perf_counter()
    tokens = sum(len(imported.input_ids(r)) for r in imported.requests)
    built = time.perf_counter()
    tracemalloc.start()  # a second import, for its peak memory (Python allocations)
    pt.load(fmt, path, {**options, "limit": n})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    k = len(imported.requests) / 1000
    return {"format": fmt, "file": os.path.basename(path), "file_mb": round(os.path.getsize(path) / 1e6, 1),
            "token_scale": options.get("token_scale", 1), "requests": len(imported.requests),
            "prompt_tokens": tokens,
            "parse_s_per_1k": round((parsed - started) / k, 3),
            "prompts_s_per_1k": round((built - parsed) / k, 3),
            "total_s_per_1k": round((built - started) / k, 3), "parse_peak_mb": round(peak / 1e6, 1)}


def repeated(source: str, times: int, directory: str) -> str:
    """The Mooncake sample `times` over, each copy after the last in time."""
    with open(source) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    span = max(r["timestamp"] for r in rows) + 1
    path = os.path.join(directory, f"mooncake_x{times}.jsonl")
    with open(path, "w") as f:
        for k in range(times):
            f.writelines(json.dumps({**r, "timestamp": r["timestamp"] + k * span}) + "\n" for r in rows)
    return path


def trace_size(path: str) -> dict:
    with TraceReader(path) as reader:
        requests = sum(1 for rec in reader.iterations() for x in rec.inputs if type(x) is GenerateInput)
        size = reader.file_bytes
    return {"trace": path, "requests": requests, "bytes": size,
            "bytes_per_request": round(size / requests, 1) if requests else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.normpath(DATA))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=100, help="the long file: the Mooncake sample this many times")
    parser.add_argument("--trace", action="append", default=[])
    args = parser.parse_args()
    imports = []
    for fmt, name in SOURCES:
        path = os.path.join(args.data, name)
        if not os.path.exists(path):
            print(f"skipped {path}: missing", file=sys.stderr)
            continue
        for scale in (1, 0.03125):
            imports.append(import_time(fmt, path, {"token_scale": scale}, args.requests))
            print(json.dumps(imports[-1]), file=sys.stderr)
    sample = os.path.join(args.data, SOURCES[0][1])
    if args.repeat > 1 and os.path.exists(sample):
        with tempfile.TemporaryDirectory() as directory:
            long_file = repeated(sample, args.repeat, directory)
            imports.append(import_time("mooncake", long_file, {"token_scale": 0.03125}, args.requests))
            print(json.dumps(imports[-1]), file=sys.stderr)
    sizes = [trace_size(t) for t in args.trace]
    print(json.dumps({"bench": "public_traces", "imports": imports, "traces": sizes}))


if __name__ == "__main__":
    main()
