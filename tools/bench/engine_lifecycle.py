"""Engine start, stop, and how fast a death during start-up is reported.

- start: Engine.start() of the embedded CPU engine until it accepts scripts;
- first job: start, then a one-iteration script until its reply (what a
  replay, a bisect step or a sweep waits for before its own work);
- stop: Engine.stop() until the whole process tree is gone;
- death during start-up: the scheduler process of each start is killed (a silent death is tried once more) while the engine
  is still starting (as soon as it exists); reported after how long.

    python tools/bench/engine_lifecycle.py [--starts 2]
    python tools/bench/engine_lifecycle.py --starts 5 --tree BEFORE --tree AFTER

Each start runs in a fresh process, as a CLI's does (its first start imports
sglang's harness classes too). With --tree, the starts use the sgl_replay of
each checkout, round by round in alternating order, and the death report is
skipped: before and after side by side on the same machine.

Prints one JSON line last: {"bench": "engine_lifecycle", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def first_job(ctx):
    """The script of the first job: one loop iteration."""
    yield


def one_start() -> None:
    from sgl_replay.runs.engine import Engine, EngineConfig

    t = time.monotonic()
    engine = Engine.start(EngineConfig.embedded(), extra_sys_path=(str(HERE),))
    start = time.monotonic() - t
    engine.run_script("engine_lifecycle:first_job")
    job = time.monotonic() - t
    t = time.monotonic()
    engine.stop()
    print(json.dumps({"start_s": start, "first_job_s": job, "stop_s": time.monotonic() - t}))


def run_start(tree: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one"], cwd=tree, env=env,
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "n": len(values)}


def death_report() -> dict:
    import psutil

    from sgl_replay.runs.engine import Engine, EngineConfig
    from sgl_replay.runs.errors import EngineError

    killed_at: list[float] = []

    def kill_scheduler_when_it_appears() -> None:
        """Both starts' schedulers: a silent death is tried once more."""
        killed: set[int] = set()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(killed) < 2:
            for p in psutil.process_iter(["cmdline"]):
                if p.pid not in killed and "sglang::scheduler" in " ".join(p.info["cmdline"] or []):
                    p.kill()
                    killed.add(p.pid)
                    killed_at.append(time.monotonic())
            time.sleep(0.05)

    threading.Thread(target=kill_scheduler_when_it_appears, daemon=True).start()
    try:
        Engine.start(EngineConfig.embedded()).stop()
        reported = None
    except EngineError as e:
        reported = time.monotonic()
        message = str(e).splitlines()[0]
    latency = reported - killed_at[-1] if reported and killed_at else None
    print(f"death during start-up reported {latency:.2f}s after the kill: {message}" if latency
          else "the kill did not happen during start-up", file=sys.stderr)
    return {"death_report_s": round(latency, 2) if latency else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=2)
    parser.add_argument("--tree", action="append", type=Path, default=[],
                        help="a checkout whose sgl_replay to start (repeat to compare)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_start()
        return
    trees = [t.resolve() for t in args.tree] or [Path.cwd()]
    runs: dict[Path, list[dict]] = {t: [] for t in trees}
    for r in range(args.starts):
        for tree in (trees if r % 2 == 0 else trees[::-1]):
            run = run_start(tree)
            runs[tree].append(run)
            print(f"{tree.name}: start {run['start_s']:.1f}s, first job {run['first_job_s']:.1f}s, "
                  f"stop {run['stop_s']:.2f}s", file=sys.stderr)
    result: dict = {"bench": "engine_lifecycle"}
    for tree in trees:
        result[str(tree) if args.tree else "this"] = {
            key: summary([run[key] for run in runs[tree]]) for key in ("start_s", "first_job_s", "stop_s")}
    if not args.tree:
        result.update(death_report())
    result["targets"] = {"start_s": 35, "stop_s": 5, "death_report_s": 5}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
