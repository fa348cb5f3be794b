"""What-if sweeps on the real engine: the same grid on the local process pool
and on a local Ray instance gives the same table, a Ray task killed mid-run
is retried, bad input is one line and exit 2 with nothing written.

The trace is the Mooncake slice recorded on the modelled clock (the session's
default engine, shared with test_timed), so a replay of its own configuration
is exact and every figure is a pure function of the trace and the grid."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading

import psutil
import pytest

from sgl_replay.runs import whatif
from sgl_replay.runs.engine import EngineConfig
from sgl_replay.runs.record import record_workload
from sgl_replay.timing import latency
from sgl_replay.traffic import specs
from test_timed import COST, GOLDEN_WITHOUT_TIMES, SCALE, SLICE
from test_views import _browser, _chromium

# 5 configurations on 2 engines: chunked_prefill_size=256 is the recorded
# value, so its rows share the baseline's engine
GRID = ("--grid", "chunked_prefill_size=64,256", "--grid", "max_in_flight=4,8")


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sgl_replay.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def recording(engines, tmp_path_factory):
    spec = specs.parse(f"mooncake:{SLICE}", options={"token_scale": SCALE, "time_scale": "0.5",
                                                         "clock": "modeled"})
    out = str(tmp_path_factory.mktemp("whatif") / "modelled.sglt")
    record_workload(engines.get(EngineConfig.embedded()), spec, out, cost=COST)
    return out


class _KillOneTask:
    """Kills the first Ray worker seen running a sweep task once its engine
    has started (the task is mid-run), once."""

    def __init__(self) -> None:
        self.killed: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "_KillOneTask":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for proc in psutil.process_iter(["cmdline"]):
                try:
                    title = (proc.info["cmdline"] or [""])[0]
                    if title.startswith("ray::run_task") and proc.children():
                        proc.kill()
                        self.killed.append(proc.pid)
                        return
                except psutil.Error:
                    continue


def test_the_pool_and_ray_give_the_same_table_and_a_killed_task_is_retried(recording, tmp_path):
    pool_json = tmp_path / "pool.json"
    run = cli("whatif", recording, *GRID, "--skip-model", "--workers", "2", "-o", str(pool_json))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "5 configurations" in run.stdout and "a process pool of 2" in run.stdout
    pool = json.loads(pool_json.read_text())
    rows = {row["config"]: row for row in pool["rows"]}
    assert set(rows) == {"recorded", "chunked_prefill_size=64 max_in_flight=4",
                         "chunked_prefill_size=64 max_in_flight=8", "chunked_prefill_size=256 max_in_flight=4",
                         "chunked_prefill_size=256 max_in_flight=8"}
    assert all(row["failed"] is None and row["finished"] == 24 for row in rows.values())
    # the recording's own configuration on the clock it was recorded with: exact
    assert pool["fidelity"]["schedule"] is None
    assert pool["fidelity"]["ttft_median_abs_pct"] == 0 and pool["fidelity"]["throughput_pct"] == 0
    assert rows["recorded"]["baseline"] and rows["recorded"]["ttft_p90_ms"] == latency.figure(pool["recorded"], "ttft_p90")
    # smaller chunks: another schedule from the first batch on, and prefills that wait longer
    for limit in (4, 8):
        row = rows[f"chunked_prefill_size=64 max_in_flight={limit}"]
        assert row["schedule_vs_baseline"].startswith("iteration")
        assert row["ttft_p90_vs_baseline_pct"] > 0
    ranked = [row["ttft_p90_ms"] for row in pool["rows"]]
    assert ranked == sorted(ranked) and [row["rank"] for row in pool["rows"]] == [1, 2, 3, 4, 5]

    outs = [tmp_path / f"ray.{kind}" for kind in ("json", "csv", "html")]
    with _KillOneTask() as killer:
        run = cli("whatif", recording, *GRID, "--skip-model", "--ray", *(a for o in outs for a in ("-o", str(o))))
    assert run.returncode == 0, run.stderr[-3000:]
    assert killer.killed, "no Ray task was seen running"
    assert "Ray (local)" in run.stdout
    assert json.loads(outs[0].read_text())["rows"] == pool["rows"]
    csv_lines = outs[1].read_text().splitlines()
    assert csv_lines[0].startswith("rank,config,baseline,") and len(csv_lines) == 6

    browser = _browser()
    page = _chromium(browser, tmp_path / "profile", "--dump-dom", outs[2].as_uri())
    assert page.returncode == 0, page.stderr[-2000:]
    assert re.search(r'<ul id="page-errors">\s*</ul>', page.stdout), "errors on the page"
    assert 'data-points="5"' in page.stdout
    assert page.stdout.count('<tr class="baseline">') == 1


def test_bad_input_is_one_line_and_exit_2_with_nothing_written(tmp_path):
    out = tmp_path / "table.csv"
    cases = [
        ((GOLDEN_WITHOUT_TIMES, "-o", str(out)), "an empty grid"),
        ((GOLDEN_WITHOUT_TIMES, "--grid", "chunked_prefil_size=64", "-o", str(out)), "not a key a sweep can vary"),
        ((GOLDEN_WITHOUT_TIMES, "--grid", "chunked_prefill_size=64,", "-o", str(out)), "an empty value"),
        ((GOLDEN_WITHOUT_TIMES, "--grid", "chunked_prefill_size=sixty", "-o", str(out)), "is not an int"),
        ((GOLDEN_WITHOUT_TIMES, "--grid", "max_in_flight=0", "-o", str(out)), "out of range"),
        ((GOLDEN_WITHOUT_TIMES, "--grid", "max_in_flight=4", "-o", str(tmp_path / "table.xlsx")),
         "write .csv, .json or .html"),
        ((GOLDEN_WITHOUT_TIMES, "--grid", "max_in_flight=4", "--ray", "127.0.0.1:9", "-o", str(out)),
         "no Ray cluster answers"),
        ((GOLDEN_WITHOUT_TIMES, "--grid", "max_in_flight=4", "-o", str(out)), latency.NO_TIMES),
    ]
    for args, message in cases:
        run = cli("whatif", *args, timeout=60)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, run.stderr)
        assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_the_grid_is_every_combination_with_the_recorded_configuration_first():
    configs = whatif.parse_grid(["chunked_prefill_size=64,128", "schedule_policy=lpm,fcfs",
                                 "schedule_conservativeness=1"], max_in_flight=16)
    assert configs[0] == whatif.Config(max_in_flight=16)
    assert len(configs) == 5 and len(set(configs)) == 5
    assert configs[1].engine_args == (("chunked_prefill_size", 64), ("schedule_policy", "lpm"),
                                      ("schedule_conservativeness", 1.0))
    assert configs[1].label == "chunked_prefill_size=64 schedule_policy=lpm schedule_conservativeness=1.0 max_in_flight=16"
    # a grid row equal to the baseline is the baseline
    assert whatif.parse_grid(["max_in_flight=4,8"], max_in_flight=4) == [whatif.Config(max_in_flight=4),
                                                                        whatif.Config(max_in_flight=8)]
    with pytest.raises(whatif.WhatifError, match="given twice"):
        whatif.parse_grid(["page_size=1", "page-size=2"])
    with pytest.raises(whatif.WhatifError, match="more than a sweep takes"):
        whatif.parse_grid([f"{k}=1,2" for k in ("max_running_requests", "max_prefill_tokens", "page_size",
                                                "prefill_max_requests", "num_continuous_decode_steps",
                                                "max_total_tokens", "max_queued_requests", "random_seed",
                                                "prefill_decode_interval", "default_priority_value",
                                                "num_reserved_decode_tokens")])


def test_the_pool_is_sized_by_cores_memory_and_tasks():
    gib = 2**30
    assert whatif.default_workers(8, cores=16, available=64 * gib) == 8
    assert whatif.default_workers(8, cores=2, available=64 * gib) == 2
    assert whatif.default_workers(8, cores=16, available=4 * gib) == 4 * gib // whatif.ENGINE_MEMORY_BYTES
    assert whatif.default_workers(8, cores=16, available=gib // 2) == 1
