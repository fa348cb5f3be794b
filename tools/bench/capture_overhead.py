"""Cost of capturing a plain sglang server: bench_serving throughput, TTFT and
ITL of the embedded CPU model's plain server with and without SGLREPLAY_RECORD_DIR, and
the recorder's own share of the recorded loop time (the trace's end record).

    python tools/bench/capture_overhead.py [--prompts 128] [--rate 16] [--rounds 1]

Prints its figures last as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from test_capture import Server, _bench, _traces  # noqa: E402

from sgl_replay.trace.reader import TraceReader  # noqa: E402


def one(tmp: Path, record: bool, prompts: int, rate: float, seed: int) -> dict:
    env = {"SGLREPLAY_RECORD_DIR": str(tmp / "traces")} if record else {}
    server = Server(tmp, f"server-{'rec' if record else 'plain'}-{seed}", env)
    try:
        result = _bench(server, tmp / f"bench-{record}-{seed}.jsonl", prompts=prompts, rate=rate, seed=seed)
    finally:
        server.stop()
    out = {key: result[key] for key in ("output_throughput", "request_throughput", "median_ttft_ms",
                                        "median_itl_ms", "p99_itl_ms")}
    if record:
        trace = _traces(tmp / "traces")[-1]
        with TraceReader(str(trace)) as reader:
            for _ in reader.iterations():
                pass
            end = reader.end
        out["recorder_share"] = end.recorder_seconds / end.seconds if end.seconds else None
        out["recorder_share_busy"] = (end.busy_recorder_seconds / end.busy_seconds
                                      if end.busy_seconds else None)
        out["trace_bytes"] = os.path.getsize(trace)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--rate", type=float, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            order = (False, True) if k % 2 == 0 else (True, False)
            rows.append({rec: one(Path(tmp), rec, args.prompts, args.rate, seed=k + 1) for rec in order})
    ratio = statistics.median(r[True]["output_throughput"] / r[False]["output_throughput"] for r in rows)
    print(json.dumps({"rounds": args.rounds, "throughput_recorded_over_plain": round(ratio, 4),
                      "recorder_share": statistics.median(r[True]["recorder_share"] for r in rows),
                      "recorder_share_busy": statistics.median(r[True]["recorder_share_busy"] for r in rows),
                      "plain": [r[False] for r in rows], "recorded": [r[True] for r in rows]}))


if __name__ == "__main__":
    main()
