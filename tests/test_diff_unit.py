"""The diff's pure logic on synthetic traces (the engine-backed diff tests are
in test_replay.py)."""

from __future__ import annotations

import json
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgl_replay.diff import ExitCode, Options, Outcome, diff
from sgl_replay.diff.report import text_lines, to_json
from sgl_replay.trace.format import End, Header, Iteration, pack_ids

HEADER = {"t": "header", "format": 1, "engine_args": {"chunked_prefill_size": 64},
          "env": {"SGLANG_RETRACT_DECODE_STEPS": "20", "X": "1"},
          "pools": {"max_total_tokens": 1024}, "model": {"config": {"n_layer": 2}},
          "device": {"type": "cpu", "name": "x86_64"}, "versions": {"sglang": "0.5.23"},
          "resolved": {"sampling_backend": "token_oracle"}}


class Synthetic:
    """A trace as a TraceReader hands it on: typed header, records and end.
    Tests set `header` as a map."""

    def __init__(self, body: list) -> None:
        self.body = body
        self.header = dict(HEADER)
        self.end = None

    header = property(lambda self: msgspec.convert(self._header, Header),
                      lambda self, value: setattr(self, "_header", value))

    def iterations(self):  # typed, as a TraceReader yields them
        for rec in self.body:
            yield msgspec.convert(rec, Iteration)
        self.end = End(complete=True, reason=None, iterations=(self.body[-1]["i"] + 1) if self.body else 0,
                       forwards=0, requests=0)


def gen(rid):
    return {"type": "generate", "rid": rid, "input_ids": pack_ids([1] * 8), "sampling": {}, "stream": True}


def run(rid_order=("r0", "r1", "r2"), *, retract_at=None, kv_shift=0, finish_hash=7):
    """Three requests: pulled at 0, extended at 0, decoded until 5, finish at 6."""
    n = len(rid_order)
    body = [{"t": "iter", "i": 0, "inputs": [gen(r) for r in rid_order],
             "batches": [{"fwd": 0, "mode": "extend", "reqs": list(range(n)), "new": [8] * n,
                          "cached": [0] * n, "tokens": 8 * n}],
             "state": {"waiting": 0, "running": 0, "kv_free": 900, "req_free": 7}}]
    running = list(range(n))
    for i in range(1, 6):
        rec = {"t": "iter", "i": i,
               "batches": [{"fwd": i, "mode": "decode", "reqs": list(running), "tokens": len(running)}],
               "state": {"waiting": 0, "running": len(running), "kv_free": 900 - i + kv_shift, "req_free": 7}}
        if retract_at == i:
            rec["retracted"] = [running.pop()]
        body.append(rec)
    body.append({"t": "iter", "i": 6, "state": {"waiting": 0, "running": 0, "kv_free": 1000, "req_free": 10},
                 "finished": [[k, "length", 6, finish_hash] for k in range(n)]})
    return Synthetic(body)


def test_identical_traces_are_same():
    result = diff(run(), run())
    assert result.verdict == "same" and result.first is None
    assert result.iterations_compared == 7 and result.forwards_compared == 6
    assert "same: 7 recorded iterations and 6 forward batches match" in "\n".join(text_lines(result))


def test_first_divergence_is_explained_per_request():
    result = diff(run(), run(retract_at=3))
    assert result.verdict == "diverged"
    first = result.first
    assert first.iteration == 3
    assert "r2 retracted at iteration 3 in B, not in A" in first.reasons
    assert [c.i for c in first.context_a] == [0, 1, 2]
    text = "\n".join(text_lines(result))
    assert "diverged at iteration 3" in text and "retract r2" in text
    # realigned summary: r2 decoded less in B and carries one retraction
    rows = {rid: (a, b) for rid, a, b in result.lifecycles}
    assert rows["r2"][0].retractions == 0 and rows["r2"][1].retractions == 1
    assert rows["r0"][0] == rows["r0"][1]
    assert result.kinds["batches"] >= 2


def test_composition_level_ignores_pool_sizes_and_output_hashes():
    a, b = run(), run(kv_shift=5, finish_hash=8)
    assert diff(a, b).verdict == "diverged"
    assert diff(run(), run(kv_shift=5, finish_hash=8), Options(level="composition")).verdict == "same"
    result = diff(run(), run(kv_shift=5), Options(ignore=frozenset({"state.kv_free"})))
    assert result.verdict == "same"


def test_full_level_names_the_pool_difference():
    result = diff(run(), run(kv_shift=5))
    assert result.first.iteration == 1
    assert any("kv_free 899 in A, 904 in B" in r for r in result.first.reasons)


def test_different_request_numbering_is_compared_by_rid():
    """Same rids pulled in another order: numbers differ, rids do not lie."""
    result = diff(run(("r0", "r1", "r2")), run(("r1", "r0", "r2")))
    assert result.verdict == "diverged" and result.first.iteration == 0
    assert any("another order" in r for r in result.first.reasons)


def test_idle_iteration_against_a_busy_one():
    a = run()
    b = run()
    b.body.insert(1, {"t": "iter", "i": 1, "inputs": [gen("late")],
                      "state": {"waiting": 1, "running": 3, "kv_free": 900, "req_free": 6}})
    for rec in b.body[2:]:
        rec["i"] += 1
    result = diff(a, b)
    assert result.first.iteration == 1
    assert "generate late pulled at iteration 1 in B, not in A" in result.first.reasons


def test_not_comparable_headers_unless_forced():
    other = run()
    other.header = {**HEADER, "model": {"config": {"n_layer": 3}},
                    "env": {"SGLANG_RETRACT_DECODE_STEPS": "10", "X": "2"}}
    result = diff(run(), other)
    assert result.verdict == "not comparable"
    assert "different model config" in result.not_comparable
    assert any("environment SGLANG_RETRACT_DECODE_STEPS" in r for r in result.not_comparable)
    # a variable a replay never applies is a note, not a reason
    assert any("environment X" in n for n in result.header_notes)
    assert not any("environment X" in r for r in result.not_comparable)
    assert result.iterations_compared == 0
    other2 = run()
    other2.header = dict(other._header)
    forced = diff(run(), other2, Options(force=True))
    assert forced.verdict == "same"
    assert forced.not_comparable  # still reported


def test_engine_arg_differences_are_notes_not_blockers():
    other = run()
    other.header = {**HEADER, "engine_args": {"chunked_prefill_size": 128}}
    result = diff(run(), other)
    assert result.verdict == "same"
    assert "engine arg chunked_prefill_size: 64 vs 128" in result.header_notes


def test_never_same_when_nothing_was_compared():
    result = diff(Synthetic([]), Synthetic([]))
    assert result.verdict == "empty" and not result.same
    assert "nothing compared" in "\n".join(text_lines(result))


def test_incomplete_trace_is_a_difference():
    a, b = run(), run()
    list(b.iterations())
    b_end = msgspec.structs.replace(b.end, complete=False, reason="engine died")

    class Cut(Synthetic):
        def iterations(self):
            yield from Synthetic(self.body).iterations()
            self.end = b_end

    result = diff(a, Cut(b.body))
    assert result.verdict == "diverged"
    assert "B is incomplete: engine died" in result.first.reasons


def test_json_report_is_machine_readable():
    result = diff(run(), run(retract_at=2))
    data = json.loads(to_json(result, "a.sglt", "b.sglt"))
    assert data["verdict"] == "diverged" and data["first"]["iteration"] == 2
    assert {row["rid"] for row in data["lifecycles"]} == {"r0", "r1", "r2"}


def test_bad_options():
    with pytest.raises(ValueError, match="unknown level"):
        Options(level="nope")
    with pytest.raises(ValueError, match="cannot ignore bogus"):
        Options(ignore=frozenset({"bogus"}))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_first_divergence_is_the_first_changed_iteration(data):
    """Change one random field of one random iteration: the diff names exactly
    that iteration."""
    a, b = run(), run()
    k = data.draw(st.integers(0, len(b.body) - 1))
    rec = b.body[k]
    choice = data.draw(st.sampled_from(["state", "batches", "finished"]))
    if choice == "state":
        rec["state"] = dict(rec["state"], waiting=rec["state"]["waiting"] + 1)
    elif choice == "batches" and "batches" in rec:
        rec["batches"] = [dict(rec["batches"][0], tokens=rec["batches"][0]["tokens"] + 1)]
    else:
        rec["finished"] = [[0, "abort", 1, 0]]
    result = diff(a, b)
    assert result.verdict == "diverged" and result.first.iteration == rec["i"]


def test_one_vocabulary_prints_and_serializes_as_its_words():
    """`check --json` prints these words and bisect reads them back; text
    and HTML reports print them: the words stay, whatever the members' names."""
    assert [o.value for o in Outcome] == ["same", "diverged", "not comparable", "empty", "inconclusive",
                                          "failed", "could not run", "bad input", "missing", "created",
                                          "updated", "unchanged", "over budget", "within budget"]
    for outcome in Outcome:
        assert f"{outcome}" == str(outcome) == outcome == outcome.value
        assert json.dumps({"verdict": outcome}) == json.dumps({"verdict": outcome.value})
        assert Outcome(outcome.value) is outcome
    assert diff(run(), run()).verdict is Outcome.SAME
    assert [Outcome.SAME.exit_code, Outcome.DIVERGED.exit_code, Outcome.EMPTY.exit_code,
            Outcome.COULD_NOT_RUN.exit_code] == [ExitCode.SAME, ExitCode.DIVERGED, ExitCode.BAD_INPUT, ExitCode.SKIP]
