"""`minimize`: delta debugging on a known predicate, then every planted
scheduler change of tests/plugins' sched_tweaks shrunk on the real engine,
and a changed engine argument, and one exported as a test for sglang's own
harness (tools/bench/minimize.py times these)."""

from __future__ import annotations

import pytest

from conftest import TESTS, read, rid_table
from sgl_replay.runs.check import Outcome
from sgl_replay.runs.engine import EngineConfig
from sgl_replay.convert.export_test import export_test
from sgl_replay.runs.minimize import ddmin, minimize
from sgl_replay.runs.record import record_workload
from sgl_replay.traffic.specs import KV_PRESSURE_ARGS
from sgl_replay.traffic.specs import parse as parse_workload


def test_ddmin_finds_a_one_minimal_subset():
    """The search alone: the failure needs units 3 and 11 together."""
    tried = []

    def test(candidate, step):
        tried.append(len(candidate))
        return {3, 11} <= set(candidate)

    result, steps = ddmin(list(range(32)), test)
    assert sorted(result) == [3, 11] and steps >= 1 and len(tried) < 64


@pytest.fixture(scope="module")
def kv_pool_run(engines, tmp_path_factory):
    """The 64-request concurrent_decode recorded in kv_pressure's 1024-token
    KV pool: the tweaks engine (shared with test_replay) is that engine with
    the test-only plugin switched on, so no engine starts for these tests."""
    out = str(tmp_path_factory.mktemp("kv_pool") / "concurrent_decode.sglt")
    record_workload(engines.get(EngineConfig.embedded(engine_args=KV_PRESSURE_ARGS)),
                    parse_workload("concurrent_decode"), out)
    return out


# reverse_retraction is not here: it shows only where the pool overflows,
# which takes a dozen or more long requests; ddmin then needs about eighty
# candidates of that size to prove a set 1-minimal, and keeps 19 of 32
# (minutes; tools/bench/minimize.py measures it).
@pytest.mark.parametrize("tweak", ["reverse_waiting", "cap_prefill_2"])
def test_every_planted_change_shrinks_to_a_few_requests(engines, tweaks, kv_pool_run, tmp_path, tweak):
    """A sched_tweaks change on the 64-request recording: minimize keeps at
    most 5 requests, the small trace is `same` on the baseline and diverges
    on the suspect (the tweaks engine, shared with test_replay)."""
    config, mode, _ = tweaks
    assert len(rid_table(read(kv_pool_run)[1])) == 64
    mode.write_text(tweak)
    try:
        small = str(tmp_path / "small.sglt")
        res = minimize(kv_pool_run, small, pool=engines, engine_env=config.env)
    finally:
        mode.write_text("off")
    assert res.requests_before == 64 and 1 <= res.requests_after <= 5, res.kept
    assert res.baseline.outcome is Outcome.SAME and res.suspect.outcome is Outcome.DIVERGED
    EXPORTS[tweak] = small


def test_a_changed_engine_argument_shrinks_to_one_request(engines, recorded, kv_pool_run, tmp_path):
    """--engine-arg: the default engine's 64-request concurrent_decode on a
    1,024-token KV pool (max_running_requests as sglang sizes it for that
    pool), which is the replay configuration of kv_pool_run's recording, so
    both engines are shared. The pool's size is a consequence --level full
    compares after every iteration: one request shows it. (At --level
    composition the batches differ only once the pool overflows: 18
    requests, 87 candidates, 2.5 minutes here; not run in CI.)"""
    trace = recorded("concurrent_decode")
    small = str(tmp_path / "small.sglt")
    starts = engines.starts
    res = minimize(trace, small, pool=engines, engine_args={"max_total_tokens": 1024, "max_running_requests": 512})
    assert res.requests_before == 64 and res.requests_after == 1, res.kept
    assert res.kinds == ("state",)
    assert res.baseline.outcome is Outcome.SAME and res.suspect.outcome is Outcome.DIVERGED
    assert engines.starts - starts <= 1  # at most an engine the pool had let go


EXPORTS: dict[str, str] = {}  # tweak -> its minimized trace, for the export test below


def test_a_minimized_trace_exports_a_test_for_sglangs_harness(tweaks, tmp_path):
    """The cap_prefill_2 minimization above, exported: the pytest file imports
    no sgl-replay, passes on plain sglang and fails with the change."""
    import os
    import subprocess
    import sys

    config, _, _ = tweaks
    small = EXPORTS.get("cap_prefill_2")
    if small is None:
        pytest.skip("needs test_every_planted_change_shrinks_to_a_few_requests[cap_prefill_2]")
    plugins = str(TESTS / "plugins")
    mode = tmp_path / "mode"
    mode.write_text("cap_prefill_2")
    exported = tmp_path / "exported" / "test_cap_prefill.py"
    exported.parent.mkdir()
    export_test(small, str(exported))
    assert "sgl_replay" not in exported.read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SGLREPLAY", "SGL_REPLAY", "SCHED_TWEAKS"))}
    env.pop("PYTHONPATH", None)

    def start_exported(extra_env: dict) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:sgl_replay", "-p", "no:cacheprovider",
                                 str(exported)], cwd=str(exported.parent), env={**env, **extra_env},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
        out, _ = proc.communicate(timeout=900)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")

    # both at once: each starts an engine of its own (most of the time here)
    runs = [start_exported({}), start_exported({"PYTHONPATH": plugins, "SCHED_TWEAKS_FILE": str(mode)})]
    try:
        baseline, suspect = [finish(p) for p in runs]
    finally:
        for p in runs:
            p.kill()
    assert baseline.returncode == 0, baseline.stdout[-3000:]
    assert suspect.returncode == 1 and "AssertionError" in suspect.stdout, suspect.stdout[-3000:]
