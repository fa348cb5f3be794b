"""`minimize`: delta debugging on a known predicate, then a planted
scheduler change on the real engine shrunk and exported as a test for
sglang's own harness (tools/bench/minimize.py times more cases)."""

from __future__ import annotations

from sgl_replay.runs.minimize import ddmin


def test_ddmin_finds_a_one_minimal_subset():
    """The search alone: the failure needs units 3 and 11 together."""
    tried = []

    def test(candidate, step):
        tried.append(len(candidate))
        return {3, 11} <= set(candidate)

    result, steps = ddmin(list(range(32)), test)
    assert sorted(result) == [3, 11] and steps >= 1 and len(tried) < 64


def test_a_planted_change_shrinks_to_a_few_requests_and_exports_a_test(engines, recorded, tmp_path):
    """The real engine: the 64-request concurrent_decode recording diverges
    under sched_tweaks' cap_prefill_2 (at most 2 requests per prefill);
    minimize keeps at most 5 requests, the small trace is `same` on the
    baseline and diverges on the suspect, and the exported pytest file, which
    imports no sgl-replay, passes on plain sglang and fails with the change."""
    import os
    import subprocess
    import sys

    from conftest import TESTS
    from sgl_replay.runs.check import Outcome
    from sgl_replay.runs.export_test import export_test
    from sgl_replay.runs.minimize import minimize

    plugins = str(TESTS / "plugins")
    mode = tmp_path / "mode"
    mode.write_text("cap_prefill_2")
    small = str(tmp_path / "small.sglt")
    res = minimize(recorded("concurrent_decode"), small, pool=engines,
                   engine_env={"SCHED_TWEAKS_FILE": str(mode)}, engine_path=(plugins,))
    assert res.requests_before == 64 and 1 <= res.requests_after <= 5, res.kept
    assert res.baseline.outcome is Outcome.SAME and res.suspect.outcome is Outcome.DIVERGED

    exported = tmp_path / "exported" / "test_cap_prefill.py"
    exported.parent.mkdir()
    export_test(small, str(exported))
    assert "sgl_replay" not in exported.read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SGLREPLAY", "SGL_REPLAY"))}
    env.pop("PYTHONPATH", None)

    def run_exported(extra_env: dict) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:sgl_replay", "-p", "no:cacheprovider",
                               str(exported)], cwd=str(exported.parent), env={**env, **extra_env},
                              capture_output=True, text=True, timeout=900)

    baseline = run_exported({})
    assert baseline.returncode == 0, baseline.stdout[-3000:]
    suspect = run_exported({"PYTHONPATH": plugins, "SCHED_TWEAKS_FILE": str(mode)})
    assert suspect.returncode == 1 and "AssertionError" in suspect.stdout, suspect.stdout[-3000:]
