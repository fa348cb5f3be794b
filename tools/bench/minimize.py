"""How long `minimize` takes, and how many steps and candidates it needs:
every planted scheduler change of tests/plugins' sched_tweaks that makes a
run diverge, and a changed engine argument, each on a recording of the
built-in concurrent_decode (64 requests), or for reverse_retraction of
tests/scripts.py's kv_pressure_32 (32 requests that outgrow a 2,048-token
KV pool, so the scheduler retracts).

    flock /tmp/engine.lock .venv/bin/python tools/bench/minimize.py [--case NAME ...]

Engines are shared across cases (one EnginePool of two): a case's seconds
are minimize's wall time, including the engine starts it needed (counted in
the "starts" column).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = str(ROOT / "tests" / "plugins")
TESTS = str(ROOT / "tests")  # scripts.py

from sgl_replay.runs.engine import EngineConfig  # noqa: E402
from sgl_replay.runs.pool import EnginePool  # noqa: E402
from sgl_replay.runs.minimize import NotDiverging, minimize  # noqa: E402
from sgl_replay.runs.record import record_workload  # noqa: E402
from sgl_replay.traffic.specs import parse  # noqa: E402

CASES = {
    # name: (workload, the recording's engine args, suspect engine args, tweak mode or None)
    "reverse_waiting": ("concurrent_decode", {}, {}, "reverse_waiting"),
    "cap_prefill_2": ("concurrent_decode", {}, {}, "cap_prefill_2"),
    "reverse_retraction": ("scripts:kv_pressure_32", {"max_total_tokens": 2048}, {}, "reverse_retraction"),
    "max_running_requests=8": ("concurrent_decode", {}, {"max_running_requests": 8}, None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    args = parser.parse_args()
    pool = EnginePool(extra_sys_path=(PLUGINS, TESTS), max_live=2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            traces: dict[tuple, str] = {}
            for name in args.case or list(CASES):
                workload, record_args, engine_args, tweak = CASES[name]
                key = (workload, tuple(sorted(record_args.items())))
                if key not in traces:
                    t0 = time.monotonic()
                    traces[key] = os.path.join(tmp, f"{workload.replace(':', '-')}-{len(traces)}.sglt")
                    record_workload(pool.get(EngineConfig.embedded(engine_args=record_args)), parse(workload),
                                    traces[key])
                    print(f"recorded {workload} {record_args or ''} in {time.monotonic() - t0:.1f}s "
                          f"(engine start included)")
                env = {}
                if tweak:
                    mode = os.path.join(tmp, f"mode-{tweak}")
                    Path(mode).write_text(tweak)
                    env = {"SCHED_TWEAKS_FILE": mode}
                starts = pool.starts
                try:
                    res = minimize(traces[key], os.path.join(tmp, f"{name}.sglt"), pool=pool,
                                   engine_args=engine_args, engine_env=env,
                                   engine_path=(PLUGINS,) if tweak else (), progress=print)
                except NotDiverging as e:
                    print(f"{name}: {e}")
                    continue
                rows.append((name, res, pool.starts - starts))
        finally:
            pool.close()
    print()
    print(f"{'case':26} {'requests':>9} {'steps':>6} {'cands':>6} {'seconds':>8} {'starts':>6}  verdicts")
    for name, res, starts in rows:
        print(f"{name:26} {res.requests_before:>4}->{res.requests_after:<4} {res.steps:>6} {res.candidates:>6} "
              f"{res.seconds:>8.1f} {starts:>6}  baseline {res.baseline.outcome.value}, "
              f"suspect {res.suspect.outcome.value}")


if __name__ == "__main__":
    sys.exit(main())
