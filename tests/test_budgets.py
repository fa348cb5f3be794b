"""Latency budgets of golden traces: the manifest's budget table, the
judgment of a check against it, and, on the real engine, planted scheduling
changes (tests/plugins' sched_tweaks) against a budget golden.

The engine test runs on engines the session already holds: the golden is
recorded in the 1024-token KV pool with sched_tweaks loaded (the tweaks
engine) and replayed on that pool's replay configuration with sched_tweaks
loaded (test_minimize's suspect engine)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sgl_replay.diff.outcome import Outcome as Status
from sgl_replay.golden import Budget, GoldenSuite, ManifestError, judge, load_manifest
from sgl_replay.runs.check import Verdict
from sgl_replay.traffic.specs import KV_PRESSURE_ARGS

from test_timed import COST, SLICE

# The Mooncake slice at 1/64 of its lengths (its longest prompt fits the
# 1024-token pool) and a tenth of its arrival times: the requests queue, so
# the order the scheduler admits them in moves TTFT (p90 263 ms with
# test_timed's COST).
WORKLOAD = f"mooncake:{SLICE}?token_scale=0.015625&time_scale=0.1&clock=modeled"


def manifest(directory: Path, entries: dict[str, str]) -> list:
    """A goldens.toml of budget goldens of WORKLOAD: name -> the entry's extra lines."""
    (directory / "goldens.toml").write_text("".join(
        f'[{name}]\nworkload = "{WORKLOAD}"\ndescription = "the Mooncake slice, queued"\n'
        f'engine_args = {{ max_total_tokens = {KV_PRESSURE_ARGS["max_total_tokens"]} }}\n'
        f'cost = "slice.cost.json"\n{extra}\n' for name, extra in entries.items()))
    return load_manifest(directory)


# ------------------------------------------------------------------ the manifest
def test_a_budget_is_how_much_worse_a_named_figure_may_get(tmp_path):
    (golden,) = manifest(tmp_path, {"g": 'budget = { ttft_p90 = "+5%", throughput = "-3.5%" }\n'
                                          'max_in_flight = 4\nschedule = "may change"'})
    assert golden.budget == (Budget("ttft_p90", 5.0), Budget("throughput", 3.5))
    assert [b.written for b in golden.budget] == ["+5%", "-3.5%"]
    assert golden.cost == tmp_path / "slice.cost.json" and golden.max_in_flight == 4
    assert golden.schedule == "may change"


@pytest.mark.parametrize("extra, message", [
    ('budget = { ttft_p90 = "-5%" }', 'ttft_p90 gets worse as it rises; write "\\+5%"'),
    ('budget = { throughput = "+3%" }', 'throughput gets worse as it falls; write "-3%"'),
    ('budget = { ttft_p95 = "+5%" }', "unknown figure 'ttft_p95'; the figures: ttft_p50, "),
    ('budget = { e2e_p99 = "5%" }', 'e2e_p99 = \'5%\': write how much worse it may get, e.g. "\\+5%"'),
    ('budget = { e2e_p99 = 5 }', "e2e_p99 = 5: write how much worse"),
    ('budget = { ttft_p90 = "+5%" }\nschedule = "may differ"', 'schedule = \'may differ\': "must match" or "may change"'),
    ('schedule = "may change"', "max_in_flight and schedule go with a budget"),
    ('budget = { ttft_p90 = "+5%" }\nmax_in_flight = 0', "max_in_flight = 0: a number of requests"),
])
def test_a_budget_that_says_nothing_sensible_is_a_manifest_error_naming_it(tmp_path, extra, message):
    with pytest.raises(ManifestError, match=rf"\[g\] .*{message}"):
        manifest(tmp_path, {"g": extra})


def test_a_budget_needs_a_recording_that_keeps_time(tmp_path):
    (tmp_path / "goldens.toml").write_text('[g]\nworkload = "chunked_prefill"\nbudget = { ttft_p90 = "+5%" }\n')
    with pytest.raises(ManifestError, match="needs a recording that keeps time"):
        load_manifest(tmp_path)
    (tmp_path / "goldens.toml").write_text(f'[g]\nworkload = "{WORKLOAD}"\ndescription = "d"\n')
    with pytest.raises(ManifestError, match="modelled clock needs its cost model"):
        load_manifest(tmp_path)


# ------------------------------------------------------------------ the judgment
def summary(ttft_p90: float, throughput: float) -> dict:
    return {"ttft_ms": {"p50": 1.0, "p90": ttft_p90, "p99": ttft_p90}, "e2e_ms": {"p90": None},
            "throughput_tok_s": throughput}


def verdict(outcome: Status, replay: dict) -> Verdict:
    recorded = summary(100.0, 50.0)
    return Verdict(outcome, latency={"recorded": recorded, "replay": replay, "error": {}})


@pytest.mark.parametrize("outcome, schedule, replay, expected", [
    (Status.SAME, "must match", summary(105.0, 48.5), Status.SAME),  # at the budget's edge
    (Status.SAME, "must match", summary(112.0, 50.0), Status.OVER_BUDGET),  # no divergence, still slower
    (Status.DIVERGED, "may change", summary(104.0, 55.0), Status.WITHIN_BUDGET),
    (Status.DIVERGED, "must match", summary(104.0, 55.0), Status.DIVERGED),
    (Status.DIVERGED, "may change", summary(90.0, 40.0), Status.OVER_BUDGET),
    (Status.SAME, "must match", {"ttft_ms": {"p90": None}, "e2e_ms": {"p90": None},
                                             "throughput_tok_s": None}, Status.OVER_BUDGET),
    (Status.FAILED, "may change", summary(100.0, 50.0), Status.FAILED),
])
def test_a_figure_over_budget_fails_and_a_divergence_passes_only_where_it_may(tmp_path, outcome, schedule,
                                                                               replay, expected):
    (golden,) = manifest(tmp_path, {"g": f'budget = {{ ttft_p90 = "+5%", throughput = "-3%" }}\n'
                                          f'schedule = "{schedule}"'})
    status, lines = judge(golden, verdict(outcome, replay))
    assert status is expected
    if expected is Status.OVER_BUDGET:
        over = lines[1:3] if lines[2].startswith("  ") else lines[1:2]
        assert all(("ttft_p90" in l or "throughput" in l) and "budget" in l for l in over)
    if replay == summary(112.0, 50.0):
        assert lines[:2] == ["over budget on the modelled clock (the schedule did not diverge):",
                             "  ttft_p90 100.00 -> 112.00 ms (+12.0%, budget +5%)"]
    if replay == summary(90.0, 40.0):
        assert lines[1] == "  throughput 50.00 -> 40.00 tok/s (-20.0%, budget -3%)"


# ------------------------------------------------------------------ on the engine
@pytest.fixture
def suite(engines, tweaks, tmp_path):
    config, mode, _ = tweaks
    mode.write_text("off")
    (tmp_path / "goldens").mkdir()
    (tmp_path / "goldens" / "slice.cost.json").write_bytes(COST.to_json())
    yield GoldenSuite(engines, device="cpu", scratch=tmp_path, engine_env=config.env), mode
    mode.write_text("off")


def test_planted_scheduling_changes_against_budget_goldens(suite, tmp_path):
    """reverse_waiting (newest first) slows p90 TTFT by half: the golden
    fails naming it, though its schedule may change. cap_prefill_2 (two
    requests per prefill batch) changes the schedule and moves p90 TTFT 2%
    and throughput 1%: it passes the golden whose schedule may change and
    fails the one whose schedule must match."""
    suite, mode = suite
    budget = 'budget = { ttft_p90 = "+5%", throughput = "-3%" }'
    must, may = manifest(tmp_path / "goldens", {"must": budget, "may": f'{budget}\nschedule = "may change"'})
    assert suite.update(must).status is Status.CREATED  # recorded on the modelled clock with its cost
    shutil.copyfile(must.path, may.path)
    assert suite.check(must).status is Status.SAME

    mode.write_text("reverse_waiting")
    slow = suite.check(may)
    assert slow.status is Status.OVER_BUDGET and not slow.passed
    text = suite.failure(slow)
    assert "over budget on the modelled clock (the schedule diverged too):" in text
    over = next(line for line in text.splitlines() if line.startswith("  "))
    assert over.startswith("  ttft_p90 ") and over.endswith(", budget +5%)"), text
    assert f"sgl-replay latency {may.path} {suite.observed_path(may)}" in text
    assert suite.observed_path(may).exists()

    mode.write_text("cap_prefill_2")
    allowed, refused = suite.check(may), suite.check(must)
    assert allowed.status is Status.WITHIN_BUDGET and allowed.passed, allowed.report
    assert allowed.report[0].startswith("the schedule changed, as it may; inside the budget")
    assert refused.status is Status.DIVERGED and not refused.passed
    assert "diverged at iteration" in suite.failure(refused)
