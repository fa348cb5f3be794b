"""sgl-replay's trace against SGLang's own request dump, same run.

Starts the embedded engine, turns on SGLang's request dump
(/configure_logging: dump_requests_folder, threshold = all requests at once),
records the 64-request concurrent_decode workload, and reports the bytes each
left on disk and what each holds.

    python tools/bench/request_dump.py

Prints one JSON line last: {"bench": "request_dump", ...}.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import requests

from sgl_replay.traffic.specs import parse as parse_workload
from sgl_replay.runs.engine import Engine, EngineConfig
from sgl_replay.runs.record import record_workload
from sgl_replay.trace import TraceReader

REQUESTS = 64


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sgl-replay-bench-"))
    dump_dir = tmp / "request-dump"
    dump_dir.mkdir()
    trace = str(tmp / "concurrent_decode.sglt")
    with Engine.start(EngineConfig.embedded()) as engine:
        requests.post(f"{engine.base_url}/configure_logging", timeout=30,
                      json={"dump_requests_folder": str(dump_dir), "dump_requests_threshold": REQUESTS})
        record_workload(engine, parse_workload("concurrent_decode"), trace)
        deadline = time.monotonic() + 30  # the dump is written by the tokenizer manager, a moment later
        while not list(dump_dir.glob("*.pkl")) and time.monotonic() < deadline:
            time.sleep(0.2)
    dumps = list(dump_dir.glob("*.pkl"))
    dump_bytes = sum(p.stat().st_size for p in dumps)
    # what the dump holds, by its own keys (only to describe it; a trace never unpickles)
    held = {}
    if dumps:
        with open(dumps[0], "rb") as f:
            data = pickle.load(f)
        requests_list = data.get("requests", data) if isinstance(data, dict) else data
        first = requests_list[0]
        held = {"entries": len(requests_list), "entry": [type(x).__name__ for x in first]}
    with TraceReader(trace) as r:
        forwards = sum(len(rec.batches) for rec in r.iterations())
        iterations = r.end.iterations
    trace_bytes = os.path.getsize(trace)
    print(f"request dump: {dump_bytes} bytes in {len(dumps)} pickle file(s), {held}", file=sys.stderr)
    print(f"sgl-replay trace: {trace_bytes} bytes, {iterations} iterations, {forwards} forward batches",
          file=sys.stderr)
    print(json.dumps({"bench": "request_dump", "requests": REQUESTS, "request_dump_bytes": dump_bytes,
                      "request_dump_files": len(dumps), "trace_bytes": trace_bytes,
                      "trace_iterations": iterations, "trace_forwards": forwards,
                      "dump_entries": held.get("entries")}))


if __name__ == "__main__":
    main()
