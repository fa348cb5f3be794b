"""Loop time of the real engine with the recorder against without it, and of
a replay against its recording: side by side, alternating, on one engine.

One engine (embedded model; --device cuda on a GPU machine). Each round runs
the same 64-request workload three ways: as a plain scripted-runtime script
(sgl-replay's hooks installed but not recording), recorded, and replayed from
that recording. The workload times itself in the first two (their order
alternates); the replay's loop time comes from its trace. Ratios are taken
per round, then the median over the rounds. Each recording's end record also
says how much of its loop time the recorder's own code took (measured inside
the engine, free of the machine's noise).

    python tools/bench/recorder_overhead.py [--rounds 15] [--device cpu|cuda]

Prints one JSON line last: {"bench": "recorder_overhead", ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from sgl_replay.traffic.specs import parse as parse_workload
from sgl_replay.runs.engine import Engine, EngineConfig
from sgl_replay.runs.record import record_workload
from sgl_replay.runs.engine import DEVICE_ARGS
from sgl_replay.runs.replay import replay_trace
from sgl_replay.trace import TraceReader

HERE = Path(__file__).parent
WORKLOAD = "bench_workloads:concurrent_64_timed"


def last_timing(path: Path) -> float:
    entry = json.loads(path.read_text().splitlines()[-1])
    return entry["seconds"] / entry["iterations"]


def recorder_share(path: str) -> float:
    """Of the recording's loop time, the part spent in the recorder's own
    code, as the recorder itself measured it (the end record)."""
    with TraceReader(path) as r:
        for _ in r.iterations():
            pass
        return r.end.recorder_seconds / r.end.seconds


def trace_loop_time(path: str) -> float:
    """Seconds per iteration over the recording, from its end record."""
    with TraceReader(path) as r:
        for _ in r.iterations():
            pass
        return r.end.seconds / r.end.iterations


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sgl-replay-bench-"))
    results = tmp / "timings.jsonl"
    config = EngineConfig.embedded(engine_args=DEVICE_ARGS[args.device],
                                   env={"SGLREPLAY_BENCH_RESULTS": str(results)})
    plain, recorded, replayed, record_vs_plain, replay_vs_record, shares = [], [], [], [], [], []
    with Engine.start(config, extra_sys_path=(str(HERE),)) as engine:
        engine.run_script(WORKLOAD)  # warm-up (first-use compilation on a GPU)
        for k in range(args.rounds):
            trace = str(tmp / f"run-{k}.sglt")
            # alternate which goes first, so that neither always runs on a
            # warmer engine; the ratio is taken per round (paired), then the median
            for way in (("plain", "recorded") if k % 2 == 0 else ("recorded", "plain")):
                if way == "plain":
                    engine.run_script(WORKLOAD)
                    plain.append(last_timing(results))
                else:
                    record_workload(engine, parse_workload(WORKLOAD), trace)
                    recorded.append(last_timing(results))
            record_vs_plain.append(recorded[-1] / plain[-1])
            shares.append(recorder_share(trace))
            observed = str(tmp / f"replay-{k}.sglt")
            replay_trace(engine, trace, observed)
            replayed.append(trace_loop_time(observed))
            replay_vs_record.append(trace_loop_time(observed) / trace_loop_time(trace))
            print(f"round {k}: plain {plain[-1] * 1e3:.2f} ms/iter, recorded {recorded[-1] * 1e3:.2f} "
                  f"(x{record_vs_plain[-1]:.3f}; recorder's code {shares[-1] * 100:.2f}%), "
                  f"replayed {replayed[-1] * 1e3:.2f}", file=sys.stderr)
        device = engine.config.engine_args.get("device")
        with TraceReader(trace) as r:
            device_name = r.header.device.name
    figures = {
        "device": device, "device_name": device_name, "rounds": args.rounds,
        "plain_ms_per_iter": round(statistics.median(plain) * 1e3, 3),
        "recorded_ms_per_iter": round(statistics.median(recorded) * 1e3, 3),
        "replayed_ms_per_iter": round(statistics.median(replayed) * 1e3, 3),
        "record_over_plain": round(statistics.median(record_vs_plain), 3),
        "record_over_plain_spread": [round(min(record_vs_plain), 3), round(max(record_vs_plain), 3)],
        # measured inside the engine: no noise from the machine, a lower bound
        # (what the recorder's code adds to each loop, not its cache effects)
        "recorder_share_of_loop_time": round(statistics.median(shares), 5),
        "replay_over_record": round(statistics.median(replay_vs_record), 3),
        "replay_over_record_spread": [round(min(replay_vs_record), 3), round(max(replay_vs_record), 3)],
        "targets": {"record_over_plain": 1.02, "replay_over_record": 1.10},
    }
    print(f"loop time: plain {figures['plain_ms_per_iter']} ms/iter, recorded "
          f"{figures['recorded_ms_per_iter']} (x{figures['record_over_plain']}), replayed "
          f"{figures['replayed_ms_per_iter']} (x{figures['replay_over_record']} of the recording); "
          f"the recorder's own code {figures['recorder_share_of_loop_time'] * 100:.2f}% of the recorded loop time",
          file=sys.stderr)
    print(json.dumps({"bench": "recorder_overhead", **figures}))


if __name__ == "__main__":
    main()
