"""Exporting and redacting a large trace: time and peak memory. The trace is
written here: --requests requests, each a random part of one 4,096-token
prefix then 4,096 tokens of its own (about 6,100 tokens a request), one
output token each. No engine.

    python tools/bench/export_redact.py [--requests 2000]

Time is measured without tracemalloc, peak memory (Python allocations) in a
second run with it. Prints one JSON line last: {"bench": "export_redact", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import tracemalloc

from sgl_replay.convert.export import export
from sgl_replay.convert.redact import redact
from sgl_replay.trace.format import End, GenerateInput, Header, Iteration, Model, pack_ids
from sgl_replay.trace.writer import TraceWriter

PREFIX = TAIL = 4096


def write_trace(path: str, requests: int) -> int:
    """The trace; returns its prompt tokens."""
    rng = random.Random(1)
    shared = [rng.randrange(3, 1024) for _ in range(PREFIX)]
    writer = TraceWriter(path, Header(model=Model(vocab_size=1024, eos_token_ids=[2])))
    tokens = 0
    for n in range(requests):
        prompt = shared[:rng.randrange(PREFIX)] + [rng.randrange(3, 1024) for _ in range(TAIL)]
        tokens += len(prompt)
        writer.write(Iteration(i=2 * n, inputs=[GenerateInput(rid=f"r{n}", input_ids=pack_ids(prompt))]))
        writer.write(Iteration(i=2 * n + 1, finished=[(n, "length", 1, 0)]))
    writer.close(End(complete=True, reason=None, iterations=2 * requests, forwards=0, requests=requests))
    return tokens


def measure(name: str, run) -> dict:
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    tracemalloc.start()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    figures = {"step": name, "seconds": round(seconds, 2), "peak_mb": round(peak / 1e6, 1)}
    print(json.dumps(figures), file=sys.stderr)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "big.sglt")
        tokens = write_trace(trace, args.requests)
        out = os.path.join(tmp, "out")
        steps = [measure("export mooncake, 16-token blocks", lambda: export(trace, out, block_size=16)),
                 measure("export mooncake, 512-token blocks", lambda: export(trace, out)),
                 measure("redact", lambda: redact(trace, out))]
        print(json.dumps({"bench": "export_redact", "requests": args.requests, "prompt_tokens": tokens,
                          "trace_mb": round(os.path.getsize(trace) / 1e6, 1), "steps": steps}))


if __name__ == "__main__":
    main()
