"""Engine start, stop, and how fast a death during start-up is reported.

- start: Engine.start() of the embedded CPU engine until it accepts scripts;
- stop: Engine.stop() until the whole process tree is gone;
- death during start-up: the scheduler process is killed while the engine
  is still starting (as soon as it exists); reported after how long.

    python tools/bench/engine_lifecycle.py [--starts 2]

Prints one JSON line last: {"bench": "engine_lifecycle", ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

import psutil

from sgl_replay.runs.engine import Engine, EngineConfig
from sgl_replay.runs.errors import EngineError


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=2)
    args = parser.parse_args()
    starts, stops = [], []
    for _ in range(args.starts):
        t = time.monotonic()
        engine = Engine.start(EngineConfig.embedded())
        starts.append(time.monotonic() - t)
        t = time.monotonic()
        engine.stop()
        stops.append(time.monotonic() - t)
        print(f"start {starts[-1]:.1f}s, stop {stops[-1]:.2f}s", file=sys.stderr)

    killed_at: list[float] = []

    def kill_scheduler_when_it_appears() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for p in psutil.process_iter(["cmdline"]):
                if "sglang::scheduler" in " ".join(p.info["cmdline"] or []):
                    p.kill()
                    killed_at.append(time.monotonic())
                    return
            time.sleep(0.05)

    threading.Thread(target=kill_scheduler_when_it_appears, daemon=True).start()
    try:
        Engine.start(EngineConfig.embedded()).stop()
        reported = None
    except EngineError as e:
        reported = time.monotonic()
        message = str(e).splitlines()[0]
    latency = reported - killed_at[0] if reported and killed_at else None
    print(f"death during start-up reported {latency:.2f}s after the kill: {message}" if latency
          else "the kill did not happen during start-up", file=sys.stderr)
    print(json.dumps({"bench": "engine_lifecycle", "start_s": round(statistics.median(starts), 1),
                      "stop_s": round(statistics.median(stops), 2),
                      "death_report_s": round(latency, 2) if latency else None,
                      "targets": {"start_s": 35, "stop_s": 5, "death_report_s": 5}}))


if __name__ == "__main__":
    main()
