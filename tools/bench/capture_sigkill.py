"""Crash safety of a capture: a plain server recording under bench_serving
load, its scheduler killed with SIGKILL at a random moment, N times. Each
torn trace is sealed (`sgl-replay seal`) and read back: every kill must
leave a trace that seals, reads whole and numbers its iterations in order
(what was not yet flushed, at most the writer's flush interval and what
waited for the disk, is lost).

    python tools/bench/capture_sigkill.py [--kills 10] [--seed 1]

Prints one line per kill and its figures last as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from test_capture import Server  # noqa: E402

from sgl_replay.trace.reader import TraceReader  # noqa: E402


def scheduler_pid(server: Server) -> int:
    out = subprocess.run(["pgrep", "-s", str(server.proc.pid), "-f", "sglang::scheduler"],
                         capture_output=True, text=True).stdout.split()
    return int(out[0])


def one(tmp: Path, k: int, rng: random.Random) -> dict:
    record_dir = tmp / f"traces-{k}"
    server = Server(tmp, f"server-{k}", {"SGLREPLAY_RECORD_DIR": str(record_dir)})
    bench = None
    try:
        bench = subprocess.Popen(
            [sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang", "--base-url", server.url,
             "--model", server.model, "--tokenizer", server.model, "--dataset-name", "random-ids",
             "--tokenize-prompt", "--num-prompts", "400", "--random-input-len", "96", "--random-output-len", "48",
             "--random-range-ratio", "0.2", "--request-rate", "16", "--temperature", "1.0",
             "--seed", str(k + 1), "--disable-tqdm"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # the kill lands while traffic runs: after the client's first prefill
        warmed = server.text().count("Prefill batch")
        deadline = time.monotonic() + 120
        while server.text().count("Prefill batch") == warmed and time.monotonic() < deadline:
            time.sleep(0.1)
        delay = rng.uniform(0.5, 15.0)
        time.sleep(delay)
        os.kill(scheduler_pid(server), signal.SIGKILL)
    finally:
        if bench is not None:
            bench.kill()
        server.kill()
    trace = sorted(record_dir.glob("*.sglt"))[-1]
    sealed = subprocess.run([sys.executable, "-m", "sgl_replay.cli", "seal", str(trace)],
                            capture_output=True, text=True, timeout=120)
    row = {"kill": k, "into_traffic_s": round(delay, 1), "seal_exit": sealed.returncode}
    try:
        with TraceReader(str(trace)) as reader:
            numbers = [r.i for r in reader.iterations()]
            end = reader.end
        row.update(records=len(numbers), last_iteration=numbers[-1] if numbers else None,
                   ordered=numbers == sorted(set(numbers)), complete=end.complete,
                   reason=(end.reason or "")[:80])
    except Exception as e:  # noqa: BLE001 — the figure to report
        row["unreadable"] = f"{type(e).__name__}: {e}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.kills):
            row = one(Path(tmp), k, rng)
            print(json.dumps(row), flush=True)
            rows.append(row)
    readable = [r for r in rows if "unreadable" not in r and r["seal_exit"] == 0 and r["ordered"]]
    print(json.dumps({"bench": "capture_sigkill", "kills": len(rows), "read_back": len(readable),
                      "records_kept": [r.get("records") for r in rows]}))


if __name__ == "__main__":
    main()
