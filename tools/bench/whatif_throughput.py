"""What-if sweep throughput: replays per hour with 1, 2 and all local
workers, measured side by side in one run on the same grid, and the peak
memory of one worker's engine (what sizes a pool or a Ray cluster).

Every configuration of the grid needs its own engine (a chunked prefill
size each), so a replay costs one engine start plus the modelled replay;
the default trace is the H100 capture A of tools/gpu/results (about 900
requests, 8,900 iterations, 107 s of serving), replayed with the model
skipped, as a sweep over an hour of traffic would be.

    python tools/bench/whatif_throughput.py [--trace T --cost C] [--configs 6]

Prints one JSON line last: {"bench": "whatif_throughput", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil

from sgl_replay.runs import whatif
from sgl_replay.timing.fit import cost_for
from sgl_replay.runs.check import read_header

RESULTS = Path(__file__).resolve().parent.parent / "gpu" / "results" / "2026-12-05-timed-prediction"
CHUNKS = (32, 48, 64, 96, 128, 192, 384, 512)


class PeakMemory:
    """The largest memory of one engine process tree (an engine's main
    process and its children) seen while the block runs: its proportional
    set size (a page shared by n processes counts 1/n: torch's libraries are
    mapped in each of sglang's processes, so resident sizes add them up
    several times) and, for comparison, the sum of resident sizes."""

    def __init__(self) -> None:
        self.peak = 0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for proc in psutil.process_iter(["cmdline"]):
                try:
                    if "sgl_replay.runs.child" not in " ".join(proc.info["cmdline"] or []):
                        continue
                    tree = [proc.memory_full_info() for proc in [proc, *proc.children(recursive=True)]]
                    self.peak = max(self.peak, sum(m.pss for m in tree))
                    self.peak_rss = max(self.peak_rss, sum(m.rss for m in tree))
                except psutil.Error:
                    continue


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trace", default=str(RESULTS / "a" / "a.sglt"))
    parser.add_argument("--cost", default=str(RESULTS / "cost-a.json"))
    parser.add_argument("--configs", type=int, default=6, help="grid rows besides the baseline (each its own engine)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    grid = [f"chunked_prefill_size={','.join(str(c) for c in CHUNKS[:args.configs])}"]
    configs = whatif.parse_grid(grid)
    cost, _ = cost_for(args.trace, read_header(args.trace), args.cost)
    runs = []
    for workers in sorted({1, 2, cores}):
        started = time.monotonic()
        with PeakMemory() as memory:
            result = whatif.sweep(args.trace, configs, cost, workers=workers, skip_model=True)
        seconds = time.monotonic() - started
        failed = [r.config.label for r in result.rows if r.failed]
        replay_s = sorted(r.seconds for r in result.rows if not r.failed)
        runs.append({"workers": workers, "configurations": len(configs), "seconds": round(seconds, 1),
                     "replays_per_hour": round(len(configs) / seconds * 3600, 1),
                     "replay_s_median": round(replay_s[len(replay_s) // 2], 1) if replay_s else None,
                     "engine_tree_peak_pss_gib": round(memory.peak / 2**30, 2),
                     "engine_tree_peak_rss_sum_gib": round(memory.peak_rss / 2**30, 2), "failed": failed})
        print(f"{workers} workers: {len(configs)} replays in {seconds:.0f} s = {runs[-1]['replays_per_hour']:.0f}/hour "
              f"(a replay alone {runs[-1]['replay_s_median']} s, the rest engine starts); "
              f"engine tree peak {runs[-1]['engine_tree_peak_pss_gib']} GiB PSS "
              f"({runs[-1]['engine_tree_peak_rss_sum_gib']} GiB of resident sizes added up)", file=sys.stderr)
    print(json.dumps({"bench": "whatif_throughput", "trace": args.trace, "cores": cores,
                      "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "runs": runs}))


if __name__ == "__main__":
    main()
