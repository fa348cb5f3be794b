"""A long recording: 2,000 requests over more than 50,000 scheduler loop
iterations on the embedded CPU engine, then `diff` of that trace against
itself.

Reports the recorder process's (the scheduler's) resident memory from the
start of the recording to its end, sampled every second, and the diff's time
and peak Python memory.

    python tools/bench/long_run.py [--requests 2000]

Prints one JSON line last: {"bench": "long_run", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from diff_throughput import timed_diff  # beside this script
from sgl_replay.traffic.specs import parse as parse_workload
from sgl_replay.runs.engine import Engine, EngineConfig
from sgl_replay.runs.capture import partial_path
from sgl_replay.runs.record import record_workload

HERE = Path(__file__).parent


def scheduler_process(engine: Engine) -> psutil.Process:
    for p in psutil.Process(engine._process.pid).children(recursive=True):
        if "sglang::scheduler" in " ".join(p.cmdline()):
            return p
    raise RuntimeError("no scheduler process")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sgl-replay-bench-"))
    trace = str(tmp / "long.sglt")
    env = {"SGLREPLAY_LONG_RUN_REQUESTS": str(args.requests)}
    samples: list[tuple[float, int]] = []
    with Engine.start(EngineConfig.embedded(env=env), extra_sys_path=(str(HERE),)) as engine:
        scheduler = scheduler_process(engine)
        stop = threading.Event()

        def sample() -> None:
            while not os.path.exists(partial_path(trace)) and not stop.is_set():
                time.sleep(0.01)
            while not stop.is_set():
                samples.append((time.monotonic(), scheduler.memory_info().rss))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        end = record_workload(engine, parse_workload("bench_workloads:long_run"), trace)
        samples.append((time.monotonic(), scheduler.memory_info().rss))
        stop.set()
        sampler.join()
        seconds = time.monotonic() - started
    start_rss, end_rss = samples[0][1], samples[-1][1]
    max_rss = max(rss for _, rss in samples)
    print(f"recorded {end.iterations} iterations, {end.forwards} forwards, {end.requests} "
          f"requests in {seconds:.0f}s; scheduler RSS {start_rss / 2**20:.1f} -> {end_rss / 2**20:.1f} MiB "
          f"(max {max_rss / 2**20:.1f}); trace {os.path.getsize(trace) / 2**20:.2f} MiB", file=sys.stderr)
    diff_seconds, peak, verdict = timed_diff(trace, trace)
    print(f"diff against itself: {verdict}, {end.iterations / diff_seconds:,.0f} it/s, "
          f"peak {peak / 2**20:.2f} MiB", file=sys.stderr)
    print(json.dumps({"bench": "long_run", "iterations": end.iterations, "forwards": end.forwards,
                      "requests": end.requests, "record_seconds": round(seconds, 1),
                      "trace_bytes": os.path.getsize(trace),
                      "scheduler_rss_start": start_rss, "scheduler_rss_end": end_rss,
                      "scheduler_rss_max": max_rss, "rss_growth_mib": round((end_rss - start_rss) / 2**20, 1),
                      "diff_verdict": verdict, "diff_it_per_s": round(end.iterations / diff_seconds),
                      "diff_peak_bytes": peak, "targets": {"rss_growth_mib": 50}}))


if __name__ == "__main__":
    main()
