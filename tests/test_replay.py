"""Replay on the real engine: fidelity, sensitivity, and what the diff says."""

from __future__ import annotations

import json

import pytest

from clients import irregular_arrivals
from conftest import TESTS, forwards, read, rid_table
from sgl_replay.diff import Options, diff
from sgl_replay.diff.report import text_lines
from sgl_replay.runs.check import Outcome, check
from sgl_replay.runs.record import record_workload
from sgl_replay.runs.replay import replay_trace
from sgl_replay.traffic.specs import BUILTIN
from sgl_replay.traffic.specs import parse as parse_workload
from sgl_replay.trace import FORMAT_VERSION, TraceReader
from sgl_replay.trace.format import Iteration

FIDELITY_RUNS = 5


def compare(a: str, b: str, **options):
    with TraceReader(a) as ra, TraceReader(b) as rb:
        return diff(ra, rb, Options(**options))


# Round by round: the same trace comes back only after every other workload,
# so no replay waits out sglang's 2 s stream-abort window of the last one.
@pytest.mark.parametrize("run,name", [(run, name) for run in range(FIDELITY_RUNS) for name in BUILTIN],
                         ids=lambda v: str(v))
def test_every_builtin_replays_with_zero_divergence_five_times(engines, recorded, run, name):
    trace = recorded(name)
    verdict = check(trace, pool=engines, options=Options(level="full"))
    assert verdict.outcome is Outcome.SAME, f"run {run}:\n" + "\n".join(verdict.lines(trace, "replay"))
    assert verdict.result.forwards_compared == len(forwards(read(trace)[1]))


def test_a_format_1_trace_still_replays(engines, tmp_path):
    """tests/data keeps a trace written by format 1 (every batch lists its
    requests); format 2 leaves repeats out. The reader fills them in."""
    legacy = str(TESTS / "data" / "kv_pressure.v1.sglt")
    header, body, _ = read(legacy)
    assert header.format == 1 and all(b.reqs is not None for b in forwards(body))
    observed = str(tmp_path / "observed.sglt")
    verdict = check(legacy, pool=engines, observed=observed)
    assert read(observed)[0].format == FORMAT_VERSION
    assert verdict.outcome is Outcome.SAME, "\n".join(verdict.lines(legacy, observed))


# ------------------------------------------------------------ test-only plugin
def expected_first_divergence(tweak: str, body: list[Iteration]) -> int:
    """Where each planted change must first show, from the recorded run alone."""
    if tweak == "reverse_waiting":
        # the first prefill picks from a queue it did not take whole
        first = next(rec for rec in body if rec.batches)
        waiting = sum(1 for x in body[0].inputs if x.kind == "generate")
        assert len(first.batches[0].reqs) < waiting
        return first.i
    if tweak == "cap_prefill_2":
        return next(rec.i for rec in body for b in rec.batches
                    if b.mode == "extend" and len(b.reqs) > 2)
    if tweak == "reverse_retraction":
        return next(rec.i for rec in body if rec.retracted)
    raise AssertionError(tweak)


def test_a_replay_that_skips_the_model_never_runs_it_and_changes_nothing(
        tweaks_engine, tweak_baseline, tmp_path):
    """--skip-model: placeholder logits instead of the model's forward (the
    planted tweak makes the transformer raise if it runs), and the replay of
    a run with retractions is still the same at --level full."""
    engine, mode, _ = tweaks_engine
    mode.write_text("model_raises")
    observed = str(tmp_path / "observed.sglt")
    replay_trace(engine, tweak_baseline, observed, overrides={"skip_model": True})
    assert read(tweak_baseline)[1][-1].i > 0 and any(rec.retracted for rec in read(tweak_baseline)[1])
    result = compare(tweak_baseline, observed, level="full")
    assert result.verdict == "same", "\n".join(text_lines(result, "recorded", "replay"))
    assert read(observed)[0].source.overrides == {"skip_model": True}


@pytest.mark.parametrize("tweak", ["reverse_waiting", "cap_prefill_2", "reverse_retraction"])
def test_planted_scheduler_change_is_caught_at_the_right_iteration(
        tweaks_engine, tweak_baseline, tmp_path, tweak):
    engine, mode, _ = tweaks_engine
    observed = str(tmp_path / "observed.sglt")
    replay_trace(engine, tweak_baseline, observed)  # the baseline still holds without a tweak
    assert compare(tweak_baseline, observed).verdict == "same"
    mode.write_text(tweak)
    replay_trace(engine, tweak_baseline, observed)
    result = compare(tweak_baseline, observed)
    _, body, _ = read(tweak_baseline)
    assert result.verdict == "diverged"
    assert result.first.iteration == expected_first_divergence(tweak, body)
    assert result.first.reasons  # explained, per request
    if tweak == "reverse_retraction":
        assert any("retracted at iteration" in r for r in result.first.reasons)


def test_composition_level_ignores_what_it_should_not_see(tweaks_engine, tweak_baseline, tmp_path):
    engine, mode, _ = tweaks_engine
    mode.write_text("reverse_waiting")
    observed = str(tmp_path / "observed.sglt")
    replay_trace(engine, tweak_baseline, observed)
    assert compare(tweak_baseline, observed, level="composition").verdict == "diverged"


# ------------------------------------------------------------ changed knobs
def first_over_cap(body: list[Iteration], cap: int) -> int:
    """First iteration whose forward batch would hold more than `cap` started,
    unfinished requests: there a max_running_requests=cap engine must differ."""
    rids = rid_table(body)
    active: set[int] = set()
    for rec in body:
        for b in rec.batches:
            active.update(b.reqs)
            if len(active) > cap:
                return rec.i
        for n, *_ in rec.finished:
            active.discard(n)
    raise AssertionError(f"never more than {cap} of {len(rids)} active")


# (test_cli.py checks a changed chunked_prefill_size through `sgl-replay check`)
@pytest.mark.parametrize("knob,value,expect", [
    ("max_running_requests", 8, first_over_cap),
])
def test_changed_knob_is_reported_at_the_right_first_iteration(engines, recorded, knob, value, expect):
    trace = recorded("concurrent_decode")
    # composition: what ran when (a smaller max_running_requests also shrinks
    # the request pool, which `full` reports from iteration 0 on)
    verdict = check(trace, pool=engines, engine_args={knob: value}, options=Options(level="composition"))
    result = verdict.result
    assert verdict.outcome is Outcome.DIVERGED and result.verdict == "diverged"
    assert result.first.iteration == expect(read(trace)[1], value)
    assert any(f"engine arg {knob}" in note for note in result.header_notes)
    # the summary realigns by request: every request still ran, later or earlier
    assert len(result.lifecycles) == 64
    assert any(a.first_scheduled != b.first_scheduled for _, a, b in result.lifecycles)


# ------------------------------------------------------------ serve mode
@pytest.fixture(scope="session")
def served(engines, tweaks, tmp_path_factory):
    config, mode, witness = tweaks
    mode.write_text("off")
    witness.write_text("")
    out = str(tmp_path_factory.mktemp("serve") / "serve.sglt")
    record_workload(engines.get(config), parse_workload("serve", duration_s=60, idle_s=1.0), out,
                    client=irregular_arrivals)
    return out, witness.read_text().splitlines()


def test_serve_mode_records_the_iteration_the_scheduler_pulled_each_request(served):
    trace, witness_lines = served
    _, body, end = read(trace)
    pulled = {x.rid: rec.i for rec in body for x in rec.inputs if x.kind == "generate"}
    seen = {rid: entry["call"] for entry in map(json.loads, witness_lines) for rid in entry["rids"]}
    assert len(pulled) == 10 and set(pulled) <= set(seen)
    offsets = {seen[rid] - i for rid, i in pulled.items()}
    assert len(offsets) == 1, f"recorded iterations disagree with the scheduler's own count: {offsets}"
    assert len(set(pulled.values())) > 3  # arrivals really were spread out
    assert end.complete


def test_serve_recording_replays_with_zero_divergence_five_times(engines, served, tweaks, tmp_path):
    trace, _ = served
    config, _, _ = tweaks
    for run in range(FIDELITY_RUNS):
        observed = str(tmp_path / f"observed-{run}.sglt")
        replay_trace(engines.get(config), trace, observed)
        result = compare(trace, observed)
        assert result.verdict == "same", "\n".join(text_lines(result))
