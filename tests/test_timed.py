"""Timed recordings, latency, cost models and the modelled clock, on the
real engine (the default embedded engine the rest of the suite shares; a
replay runs on the engine configuration `check` of the same trace uses).

The traffic is the Mooncake slice at 1/32 of its lengths: 24 requests over
4.4 s of arrivals, with shared prefixes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from sgl_replay.diff import Options, diff
from sgl_replay.runs.check import check
from sgl_replay.runs.engine import EngineConfig
from sgl_replay.runs.record import record_workload
from sgl_replay.runs.replay import engine_config_for, replay_trace
from sgl_replay.timing import latency
from sgl_replay.timing.fit import cost_for, mismatch
from sgl_replay.timing.model import FEATURES, FORMAT, KIND, CostModel, CostModelError, Source, Tracker, load
from sgl_replay.trace import TraceReader
from sgl_replay.trace.format import Batch, GenerateInput, Header, Iteration, Resolved, Timing
from sgl_replay.traffic import public_traces as pt
from sgl_replay.traffic import specs

TESTS = Path(__file__).parent
SLICE = TESTS / "data" / "mooncake_slice.jsonl"
SCALE = "0.03125"
GOLDEN_WITHOUT_TIMES = TESTS.parent / "traces" / "chunked_prefill.sglt"


def a_cost_model(**coef: float) -> CostModel:
    """A cost model with chosen coefficients (ms): what a fit would write."""
    values = [coef.get(name, 0.0) for name in FEATURES]
    return CostModel(kind=KIND, format=FORMAT, features=list(FEATURES), coef_ms=values, floor_ms=0.5,
                     source=Source(device="cpu", model="hand-made"))


COST = a_cost_model(const=4.0, batch_new_ktok=20.0, batch_attn_mtok=50.0, batch_reqs=0.3, batch_prefill=3.0)


def body(path: str) -> tuple[Header, list[Iteration]]:
    with TraceReader(path) as reader:
        return reader.header, list(reader.iterations())


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sgl_replay.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def wall_recording(engines, tmp_path_factory):
    spec = specs.parse(f"mooncake:{SLICE}", options={"token_scale": SCALE, "time_scale": "0.5",
                                                         "clock": "wall"})
    out = str(tmp_path_factory.mktemp("timed") / "wall.sglt")
    record_workload(engines.get(EngineConfig.embedded()), spec, out)
    return spec, out


@pytest.fixture(scope="module")
def modelled_replays(engines, wall_recording, tmp_path_factory):
    """The wall recording replayed twice on the modelled clock with COST."""
    _, out = wall_recording
    root = tmp_path_factory.mktemp("modelled")
    with TraceReader(out) as reader:
        engine = engines.get(engine_config_for(reader.header))
    paths = [str(root / f"modelled-{k}.sglt") for k in range(2)]
    for path in paths:
        replay_trace(engine, out, path, cost=COST)
    return paths


def test_a_wall_clock_recording_keeps_every_busy_iteration_time(wall_recording):
    spec, out = wall_recording
    header, records = body(out)
    assert header.timing is not None and header.timing.clock == "wall"
    busy = [r for r in records if r.batches]
    assert busy and all(r.ms is not None for r in records)
    times = [r.ms for r in records]
    assert times == sorted(times)
    imported = pt.load("mooncake", spec.path, spec.options)
    arrived = {}
    for r in records:
        assert len(r.arrivals) == len(r.inputs)
        for x, at in zip(r.inputs, r.arrivals):
            assert at <= r.ms  # pulled during the iteration it ended
            if x.kind == "generate":
                arrived[x.rid] = at
    # sent at its (scaled) time, pulled no earlier
    assert all(arrived[q.rid] >= float(q.arrival_ms) for q in imported.requests)
    summary = latency.of_trace(out).summary()
    assert summary["finished"] == len(imported.requests) == summary["requests"]
    for q in imported.requests:
        figures = summary["per_request"][q.rid]
        assert 0 < figures["ttft_ms"] <= figures["e2e_ms"]
        assert figures["output_len"] == q.output_len
    assert summary["throughput_tok_s"] > 0


def test_a_modelled_replay_is_a_pure_function_of_trace_and_cost(wall_recording, modelled_replays):
    """Two replays on the modelled clock: the same bytes; each input is
    pulled at the first iteration boundary at or after its recorded time;
    the clock advances by the cost model's length of every iteration the
    scheduler ran."""
    _, out = wall_recording
    first, second = modelled_replays
    assert Path(first).read_bytes() == Path(second).read_bytes()
    _, recorded = body(out)
    header, replayed = body(first)
    assert header.timing.clock == "modeled" and header.timing.cost == msgspec.to_builtins(COST)
    arrivals = {x.rid: at for r in recorded for x, at in zip(r.inputs, r.arrivals) if x.kind == "generate"}
    pulled = {}
    prev_ms = 0.0
    for r in replayed:
        for x, at in zip(r.inputs, r.arrivals):
            if x.kind == "generate":
                pulled[x.rid] = at
                assert prev_ms <= at <= r.ms  # at the start of the iteration that pulled it
        prev_ms = r.ms
    assert set(pulled) == set(arrivals)
    for rid, at in arrivals.items():
        assert pulled[rid] >= at - 1e-3
    assert any(pulled[rid] == pytest.approx(at, abs=1e-3) for rid, at in arrivals.items())  # idle: at once
    # every iteration's length is the model's: recompute from the trace
    tracker, prev = Tracker(), None
    checked = 0
    for r in replayed:
        tracker.inputs(r.inputs)
        follows = prev is not None and prev.i == r.i - 1
        x = tracker.iteration([(b.mode, b.reqs, b.new, b.cached, b.chunked) for b in r.batches], r.finished,
                              follows=follows)
        if follows and not r.after_idle and r.batches:
            assert r.ms - prev.ms == pytest.approx(COST.iteration_ms(x), abs=2e-3)
            checked += 1
        prev = r
    assert checked > 10
    # the clock jumped over the idle stretches between the slice's waves
    assert any(r.after_idle for r in replayed)
    summary = latency.of_trace(first).summary()
    assert summary["finished"] == 24 and summary["clock"] == "modeled"


def test_a_recording_on_the_modelled_clock_replays_its_batches(engines, tmp_path):
    """`record mooncake:... --clock modeled --cost C`, replayed on the
    modelled clock with the cost model it carries: the same batches at
    --level composition, the same latency to the microsecond."""
    spec = specs.parse(f"mooncake:{SLICE}", options={"token_scale": SCALE, "clock": "modeled"})
    recorded = str(tmp_path / "modelled-record.sglt")
    record_workload(engines.get(EngineConfig.embedded()), spec, recorded, cost=COST)
    header, records = body(recorded)
    assert header.timing.clock == "modeled"
    imported = pt.load("mooncake", spec.path, spec.options)
    pulled = [at for r in records for x, at in zip(r.inputs, r.arrivals) if x.kind == "generate"]
    assert len(pulled) == len(imported.requests)
    assert all(p >= float(q.arrival_ms) - 1e-3 for p, q in zip(pulled, imported.requests))
    assert pulled[0] == pytest.approx(float(imported.requests[0].arrival_ms), abs=1e-3)
    model, notes = cost_for(recorded, header, None)
    assert model == COST and notes
    replayed = str(tmp_path / "modelled-replay.sglt")
    replay_trace(engines.get(engine_config_for(header)), recorded, replayed, cost=model)
    with TraceReader(recorded) as a, TraceReader(replayed) as b:
        result = diff(a, b, Options(level="composition"))
    assert result.verdict == "same", result
    a, b = latency.of_trace(recorded).summary(), latency.of_trace(replayed).summary()
    error = latency.compare(a, b)
    assert error["requests_compared"] == 24
    assert error["ttft_median_abs_pct"] == 0 and error["e2e_median_abs_pct"] == 0 and error["throughput_pct"] == 0


def test_check_on_the_modelled_clock_prints_the_latency_consequences(engines, wall_recording):
    _, out = wall_recording
    verdict = check(out, pool=engines, cost=COST)
    assert verdict.latency is not None
    lines = verdict.lines(out, "replay")
    assert any(line.startswith("latency on the modelled clock") and "p90 TTFT" in line for line in lines), lines
    plain = verdict.to_plain(out, "replay")
    assert set(plain["latency"]) == {"recorded", "replay", "error"}
    assert plain["latency"]["error"]["requests_compared"] == 24


def test_latency_of_two_traces_json(wall_recording, modelled_replays):
    _, out = wall_recording
    proc = cli("latency", out, modelled_replays[0], "--json")
    assert proc.returncode == 0, proc.stderr
    both = json.loads(proc.stdout)
    assert set(both) == {"a", "b", "error"}
    for side in ("a", "b"):
        assert {"requests", "ttft_ms", "itl_ms", "e2e_ms", "throughput_tok_s", "per_request"} <= set(both[side])
        assert set(both[side]["ttft_ms"]) >= {"p50", "p90", "p99"}
    assert {"ttft_median_abs_pct", "ttft_p90_abs_pct", "e2e_median_abs_pct", "throughput_pct"} <= set(both["error"])
    assert both["error"]["requests_compared"] == 24
    text = cli("latency", out)
    assert text.returncode == 0 and "TTFT ms" in text.stdout and "24 of 24 requests finished" in text.stdout


# ------------------------------------------------------------------ no engine
def test_a_trace_without_times_is_one_line_and_exit_2(tmp_path):
    for args in (["latency", str(GOLDEN_WITHOUT_TIMES)],
                 ["cost", str(GOLDEN_WITHOUT_TIMES), "-o", str(tmp_path / "c.json")],
                 ["replay", str(GOLDEN_WITHOUT_TIMES), "--clock", "modeled", "-o", str(tmp_path / "r.sglt")]):
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "no iteration times: recorded with --clock wall, serve, or a capture?" in lines[0]
    assert not (tmp_path / "c.json").exists() and not (tmp_path / "r.sglt").exists()


@pytest.mark.parametrize("content, message", [
    (b"not json at all", "not a cost model"),
    (b'{"kind": "something else", "format": 1, "features": [], "coef_ms": [], "floor_ms": 0}', "not an sgl-replay"),
    (b'{"kind": "sgl-replay cost model", "format": 1, "features": ["const"], "coef_ms": [1], "floor_ms": 0}',
     "other features"),
    (b'{"kind": "sgl-replay cost model", "format": 1, "features": %s, "coef_ms": %s, "floor_ms": 0}'
     % (json.dumps(list(FEATURES)).encode(), json.dumps([1e300] * len(FEATURES)).encode()), "finite"),
    (b"[" * 100_000, "not a cost model"),
])
def test_a_cost_file_that_is_not_one_is_one_line(tmp_path, content, message):
    bad = tmp_path / "cost.json"
    bad.write_bytes(content)
    with pytest.raises(CostModelError, match=message):
        load(str(bad))
    proc = cli("replay", str(TESTS / "data" / "kv_pressure.v1.sglt"), "--clock", "modeled", "--cost", str(bad),
               "-o", str(tmp_path / "out.sglt"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_cost_model_of_another_device_or_model_is_a_note():
    header = Header(device=msgspec.convert({"type": "cuda", "name": "NVIDIA H200"}, type=type(Header().device)))
    assert mismatch(COST, header) is not None and "device cpu vs cuda" in mismatch(COST, header)
    same = Header(device=msgspec.convert({"type": "cpu"}, type=type(Header().device)))
    assert mismatch(a_cost_model(const=1.0), same) is None or "model" in mismatch(a_cost_model(const=1.0), same)


def test_a_format_1_cost_model_still_loads(tmp_path):
    """A file written before the loop's own work was a feature predicts
    what it predicted: its coefficients, and 0 for the loop features."""
    from sgl_replay.timing.model import FEATURES_V1

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"kind": KIND, "format": 1, "features": list(FEATURES_V1),
                               "coef_ms": [2.0] + [0.0] * (len(FEATURES_V1) - 1), "floor_ms": 0.5}))
    model = load(str(old))
    assert model.format == FORMAT and list(model.features) == list(FEATURES)
    assert model.coef_ms == [2.0] + [0.0] * (len(FEATURES) - 1)


def test_a_format_2_cost_model_still_loads(tmp_path):
    """A file written before "firsts" was a feature: its coefficients by
    name, 0 for the firsts."""
    from sgl_replay.timing.model import FEATURES_V2

    coef = {name: float(k + 1) for k, name in enumerate(FEATURES_V2)}
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"kind": KIND, "format": 2, "features": list(FEATURES_V2),
                               "coef_ms": list(coef.values()), "floor_ms": 0.5}))
    model = load(str(old))
    assert model.format == FORMAT and list(model.features) == list(FEATURES)
    assert model.coef_ms == [coef.get(name, 0.0) for name in FEATURES]
    assert model.coef_ms[FEATURES.index("batch_firsts")] == 0.0 == model.coef_ms[FEATURES.index("prev_firsts")]


def test_an_iteration_that_launches_a_prefill_has_its_own_coefficients(tmp_path):
    """Format 3: prefill_coef_ms price an iteration that launches a prefill
    batch, coef_ms every other; an older format cannot carry them."""
    from sgl_replay.timing.model import FEATURES_V2

    model = msgspec.structs.replace(COST, prefill_coef_ms=[7.0] + [0.0] * (len(FEATURES) - 1))
    x = [1.0] + [0.0] * (len(FEATURES) - 1)
    assert model.iteration_ms(x) == 4.0  # COST's const
    x[FEATURES.index("batch_prefill")] = 1.0
    assert model.iteration_ms(x) == 7.0
    path = tmp_path / "cost.json"
    path.write_bytes(model.to_json())
    assert load(str(path)) == model
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"kind": KIND, "format": 2, "features": list(FEATURES_V2), "floor_ms": 0.5,
                               "coef_ms": [1.0] * len(FEATURES_V2), "prefill_coef_ms": [1.0] * len(FEATURES)}))
    with pytest.raises(CostModelError, match="no prefill_coef_ms"):
        load(str(old))


def test_firsts_are_the_requests_a_prefill_batch_completes():
    """A chunk that leaves its request mid prefill completes none; the last
    chunk, and every request of a batch but the chunked one, complete theirs;
    the next iteration sees them as the previous batch's."""
    from sgl_replay.trace.format import pack_ids

    tracker = Tracker()
    tracker.inputs([GenerateInput(rid=f"r{k}", input_ids=pack_ids(list(range(n)))) for k, n in enumerate((100, 300))])
    first, prev = FEATURES.index("batch_firsts"), FEATURES.index("prev_firsts")
    x = tracker.iteration([("extend", [0, 1], [100, 156], [0, 0], 1)])
    assert x[first] == 1 and x[prev] == 0
    x = tracker.iteration([("extend", [1], [144], [156], None)])
    assert x[first] == 1 and x[prev] == 1
    x = tracker.iteration([("decode", [0, 1], None, None, None)])
    assert x[first] == 0 and x[prev] == 1


def test_a_finish_and_a_pull_are_features_of_their_iteration():
    """The loop's own work: the requests pulled in (and their prompt tokens)
    and the requests that finished, in the iteration they happened in."""
    from sgl_replay.trace.format import pack_ids

    tracker = Tracker()
    tracker.inputs([GenerateInput(rid="r", input_ids=pack_ids(list(range(500))))])
    x = tracker.iteration([("extend", [0], [500], [0], None)])
    assert x[FEATURES.index("loop_inputs")] == 1 and x[FEATURES.index("loop_input_ktok")] == 0.5
    assert x[FEATURES.index("loop_finished")] == 0
    x = tracker.iteration([("decode", [0], None, None, None)], [[0, "length", 1, 0]])
    assert x[FEATURES.index("loop_inputs")] == 0 and x[FEATURES.index("loop_finished")] == 1


def test_cost_model_file_round_trips(tmp_path):
    path = tmp_path / "cost.json"
    path.write_bytes(COST.to_json())
    assert load(str(path)) == COST
    assert COST.iteration_ms([1.0] + [0.0] * (len(FEATURES) - 1)) == 4.0
    assert COST.iteration_ms([0.0] * len(FEATURES)) == 0.5  # the floor


# ------------------------------------------------------------------ latency from records
def _iteration(i: int, ms: float, **fields) -> Iteration:
    return Iteration(i=i, ms=ms, **fields)


@pytest.mark.parametrize("overlap", [False, True])
def test_token_times_follow_the_batches_that_produced_them(overlap):
    """A 2-chunk prefill then decode: the chunk that leaves a request mid
    prefill yields no token; with overlap scheduling each token shows at the
    end of the next iteration; a finished request's extra overlap step is
    not a token."""
    gen = GenerateInput(rid="r", input_ids=b"\0" * 40)
    header = Header(timing=Timing(clock="wall"), resolved=Resolved(overlap_schedule=overlap))
    chunk = Batch(fwd=0, mode="extend", tokens=6, reqs=[0], new=[6], cached=[0], chunked=0)
    last = Batch(fwd=1, mode="extend", tokens=4, reqs=[0], new=[4], cached=[6])
    decode = [Batch(fwd=k, mode="decode", tokens=1, reqs=[0]) for k in (2, 3, 4)]
    finish_at = 4 if overlap else 3
    records = [_iteration(0, 10.0, inputs=[gen], arrivals=[1.0], batches=[chunk]),
               _iteration(1, 20.0, batches=[last]),
               _iteration(2, 30.0, batches=[decode[0]]),
               _iteration(3, 40.0, batches=[decode[1]], finished=[[0, "length", 3, 0]] if not overlap else ()),
               _iteration(4, 50.0, batches=[decode[2]] if overlap else (),
                          finished=[[0, "length", 3, 0]] if overlap else ())]
    times = latency.from_records(header, records)
    (r,) = times.requests
    shift = 10.0 if overlap else 0.0
    assert r.tokens == [20.0 + shift, 30.0 + shift, 40.0 + shift]
    assert r.ttft == 19.0 + shift and r.finish == finish_at * 10 + 10.0 and r.queue == 0.0
    summary = times.summary()
    assert summary["itl_ms"]["p50"] == 10.0
    assert summary["throughput_tok_s"] == pytest.approx(3 / ((r.finish - 1.0) / 1000), rel=1e-4)
    assert math.isclose(summary["e2e_ms"]["p50"], r.finish - 1.0)


def test_a_chats_next_turn_is_found_with_its_think_time():
    """follow_ups: a prompt that begins with an earlier request's prompt and
    answer continues it; one that shares only the prompt, or begins with an
    answer not yet given, does not."""
    from sgl_replay.trace.format import pack_ids
    from sgl_replay.timing.turns import follow_ups

    first, answer = list(range(10, 40)), [7, 8, 9]
    def gen(rid, ids):
        return GenerateInput(rid=rid, input_ids=pack_ids(ids))
    records = [
        Iteration(i=0, ms=5.0, inputs=[gen("t1", first), gen("early", first + answer + [1])], arrivals=[1.0, 2.0]),
        Iteration(i=1, ms=50.0, finished=[[0, "length", 3, 0]], outputs=[[0, pack_ids(answer)]]),
        Iteration(i=2, ms=80.0, inputs=[gen("t2", first + answer + [100, 101]), gen("same-prompt", first + [5])],
                  arrivals=[75.0, 76.0]),
    ]
    assert follow_ups(records) == {"t2": ("t1", 25.0)}


def test_a_closed_loop_clients_hop_is_its_arrival_after_the_finish_that_freed_its_slot():
    """client_hops with a limit of 1: the second request came 3 ms after
    the first finished (held back for the slot: a hop of 3 ms); the third
    came long after the second finished, longer than the second ran: it
    went at its own time, no hop."""
    from sgl_replay.timing.turns import client_hops

    def gen(rid):
        return GenerateInput(rid=rid, input_ids=b"\0" * 8)
    records = [
        Iteration(i=0, ms=1.0, inputs=[gen("a")], arrivals=[0.5]),
        Iteration(i=1, ms=20.0, finished=[[0, "length", 4, 0]]),
        Iteration(i=2, ms=24.0, inputs=[gen("b")], arrivals=[23.0]),
        Iteration(i=3, ms=40.0, finished=[[1, "length", 4, 0]]),
        Iteration(i=4, ms=500.0, inputs=[gen("c")], arrivals=[499.0]),
    ]
    assert client_hops(records, 1) == {"b": 3.0}
    assert client_hops(records, 2) == {}


def test_a_closed_loop_client_keeps_its_limit_in_flight(engines, wall_recording, tmp_path):
    """--max-in-flight 2: a request goes at its recorded time or, with two
    in flight, when one of them finishes; never three at once."""
    _, out = wall_recording
    with TraceReader(out) as reader:
        engine = engines.get(engine_config_for(reader.header))
    replayed = str(tmp_path / "closed-loop.sglt")
    replay_trace(engine, out, replayed, cost=COST, overrides={"max_in_flight": 2})
    times = latency.of_trace(replayed).requests
    recorded = {r.rid: r.arrival for r in latency.of_trace(out).requests}
    assert len(times) == 24 and all(r.finish is not None for r in times)
    events = sorted([(r.arrival, 1) for r in times] + [(r.finish, -1) for r in times])
    in_flight = peak = 0
    for _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    assert peak == 2
    assert all(r.arrival >= recorded[r.rid] - 1e-3 for r in times)
    assert sum(r.arrival > recorded[r.rid] + 1e-3 for r in times) > 0  # some waited for a free slot


def test_a_timed_trace_with_a_time_that_is_not_a_number_is_bad_input(tmp_path):
    """A hostile timed trace: an arrival that is NaN is one line and exit 2
    for latency and for a modelled replay, before any engine starts."""
    from sgl_replay.trace.format import End, pack_ids
    from sgl_replay.trace.writer import TraceWriter

    with TraceReader(str(GOLDEN_WITHOUT_TIMES)) as reader:
        header = msgspec.structs.replace(reader.header, timing=Timing(clock="wall"))
    path = str(tmp_path / "nan.sglt")
    writer = TraceWriter(path, header)
    writer.write({"t": "iter", "i": 0, "ms": 1.0, "arrivals": [float("nan")],
                  "inputs": [{"type": "generate", "rid": "r", "input_ids": pack_ids([5, 6])}]})
    writer.close(End(complete=True, reason=None, iterations=1, forwards=0, requests=1))
    for args in (["latency", path], ["replay", path, "--clock", "modeled", "-o", str(tmp_path / "out.sglt")]):
        proc = cli(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "no finite arrival" in lines[0], (args, proc.stderr)
