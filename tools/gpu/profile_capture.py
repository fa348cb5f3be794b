"""On the lent GPU machine (tools/gpu/capture_on_device.sh's set-up, then
this): where a recorded plain server's scheduler spends its time at
saturation. One recorded server (capture_on_device.py's configuration),
warmed up, then bench_serving with 64 requests always in flight while
py-spy samples the scheduler process twice: every thread, and only the
thread holding the GIL (--gil). Raw stacks and the trace go to OUT.

    python3 tools/gpu/profile_capture.py --out OUT [--seconds 20]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import threading
import time

from capture_on_device import MODEL, bench, start, stop, wait_ready
from sgl_replay.runs.embedded_model import write_model_dir


def scheduler_pid(proc: subprocess.Popen) -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"sglang::scheduler" in f.read():
                        return int(entry)
            except OSError:
                pass
    raise RuntimeError("no scheduler process")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args()
    model = write_model_dir(MODEL)
    proc = start("long", 30001, model, args.out, ["--max-total-tokens", "200000"], True)
    figures: dict = {}
    try:
        wait_ready(30001, proc, "long")
        bench(30001, model, "/tmp/warm.jsonl", groups=16, per_group=16, rate=float("inf"), concurrency=64, seed=7)
        load = threading.Thread(target=lambda: figures.update(load=bench(
            30001, model, "/tmp/load.jsonl", groups=64, per_group=60, rate=float("inf"), concurrency=64,
            seed=9)))
        load.start()
        time.sleep(25)  # the client builds its prompts first
        pid = scheduler_pid(proc)
        for name, extra in (("all", []), ("gil", ["--gil"])):
            subprocess.run(["py-spy", "record", "-p", str(pid), "-d", str(args.seconds), "-r", "250",
                            "-f", "raw", "-o", os.path.join(args.out, f"spy-{name}.txt"), *extra],
                           capture_output=True, timeout=args.seconds + 60)
        load.join(timeout=300)
    finally:
        stop(proc)
    traces = sorted(glob.glob(os.path.join(args.out, "long", "*.sglt")))
    if traces:
        shutil.move(traces[-1], os.path.join(args.out, "long.sglt"))
    shutil.rmtree(os.path.join(args.out, "long"), ignore_errors=True)
    with open(os.path.join(args.out, "figures.json"), "w") as f:
        json.dump({k: {kk: v.get(kk) for kk in ("output_throughput", "duration", "completed")}
                   for k, v in figures.items()}, f)


if __name__ == "__main__":
    main()
