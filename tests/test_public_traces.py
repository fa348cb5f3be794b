"""Public serving traces in (mooncake:FILE, azure:FILE, burstgpt:FILE), Mooncake
and CSV out. Unit tests need no engine; the engine tests share the session's
default engine and record one 24-request Mooncake slice (tests/data, see
tests/data/PUBLIC_TRACES.md for its source and licence)."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from sgl_replay.cli import main
from sgl_replay.runs.check import Outcome, check
from sgl_replay.runs.engine import EngineConfig
from sgl_replay.convert.export import BlockIds, default_block_size, export, in_order_of_first_appearance
from sgl_replay.runs.record import record_workload
from sgl_replay.traffic import public_traces as pt
from sgl_replay.traffic import specs
from sgl_replay.trace import TraceReader
from sgl_replay.trace.format import Header, Workload, pack_ids, unpack_ids
from sgl_replay.views import write_timeline

DATA = Path(__file__).parent / "data"
SLICE = DATA / "mooncake_slice.jsonl"
AZURE = DATA / "azure_code_slice.csv"
SCALE = "0.03125"  # 1/32: a 512-token block becomes 16 tokens


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def mooncake(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def lcp(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def canonical(chains) -> list[list[int]]:
    """Hash-id structure up to renumbering."""
    ids: dict = {}
    return [[ids.setdefault(h, len(ids)) for h in chain] for chain in chains]


# ------------------------------------------------------------------ prompts
def test_equal_leading_hash_ids_share_exactly_those_blocks(tmp_path):
    rows = [
        {"timestamp": 0, "input_length": 2048, "output_length": 3, "hash_ids": [1, 2, 3, 4]},
        {"timestamp": 5, "input_length": 1800, "output_length": 3, "hash_ids": [1, 2, 3, 9]},  # 3 shared
        {"timestamp": 9, "input_length": 1100, "output_length": 3, "hash_ids": [1, 7, 8]},     # 1 shared
        {"timestamp": 9, "input_length": 1300, "output_length": 3, "hash_ids": [1, 2, 3]},     # partial 3rd
        {"timestamp": 20, "input_length": 900, "output_length": 3, "hash_ids": [5, 6]},        # none
        {"timestamp": 30, "input_length": 1500, "output_length": 3, "hash_ids": [1]},          # tail beyond
        {"timestamp": 30, "input_length": 1500, "output_length": 3, "hash_ids": [1]},          # same hash ids
    ]
    imported = pt.load("mooncake", write(tmp_path, "t.jsonl", mooncake(rows)), {"token_scale": "0.25"})
    prompts = [imported.input_ids(r) for r in imported.requests]
    assert [len(p) for p in prompts] == [512, 450, 275, 325, 225, 375, 375]
    assert all(3 <= t <= 1023 for p in prompts for t in p)
    block = 128  # 512 * 0.25
    for i, a in enumerate(rows):
        for j, b in enumerate(rows[:i]):
            common = lcp(a["hash_ids"], b["hash_ids"])
            shared = min(common * block, len(prompts[i]), len(prompts[j]))
            if i in (5, 6) and j in (5, 6):
                continue  # tokens beyond the hash ids are each row's own (below)
            assert lcp(prompts[i], prompts[j]) == shared, (i, j)
    # hash ids [1] cover 128 of 375 tokens: the rest is unique to the row
    assert lcp(prompts[5], prompts[6]) == block
    # the same file and options give the same prompts (a pure function)
    again = pt.load("mooncake", imported.path, {"token_scale": "0.25"})
    assert [again.input_ids(r) for r in again.requests] == prompts


def test_azure_prompts_are_distinct_and_timestamps_exact():
    imported = pt.load("azure", str(AZURE), {"limit": 5, "iteration_ms": 1})
    assert [r.rid for r in imported.requests] == [f"azure-{n}" for n in range(2, 7)]
    # 18:17:03.9799600 -> 18:17:04.0319600 is exactly 52 ms
    assert imported.requests[1].arrival_ms == Fraction(52)
    assert [r.iteration for r in imported.requests][:2] == [0, 52]
    assert [(r.input_len, r.output_len) for r in imported.requests][:2] == [(4808, 10), (3180, 8)]
    prompts = [imported.input_ids(r) for r in imported.requests]
    assert max(lcp(a, b) for i, a in enumerate(prompts) for b in prompts[:i]) == 0


def test_burstgpt_skips_failed_requests(tmp_path):
    text = ("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
            "5,ChatGPT,472,18,490,Conversation log\n"
            "6.5,GPT-4,1000,0,1000,Conversation log\n"
            "7.25,ChatGPT,30,12,42,API log\n")
    imported = pt.load("burstgpt", write(tmp_path, "b.csv", text), {"iteration_ms": 250})
    assert imported.skipped_failed == 1
    assert [(r.rid, r.iteration, r.input_len, r.output_len) for r in imported.requests] == [
        ("burstgpt-2", 0, 472, 18), ("burstgpt-4", 9, 30, 12)]


def test_window_and_scales(tmp_path):
    rows = [{"timestamp": t, "input_length": n, "output_length": 0, "hash_ids": []}
            for t, n in ((0, 10), (100, 3), (250, 1000), (400, 7))]
    path = write(tmp_path, "t.jsonl", mooncake(rows))
    imported = pt.load("mooncake", path, {"start_ms": 100, "limit": 2, "time_scale": 2,
                                          "token_scale": "0.1", "iteration_ms": 30})
    # rebased to the first selected request, times doubled, 30 ms per iteration
    assert [(r.line, r.arrival_ms, r.iteration) for r in imported.requests] == [(2, 0, 0), (3, 300, 10)]
    # lengths scaled, at least one token
    assert [(r.input_len, r.output_len) for r in imported.requests] == [(1, 1), (100, 1)]


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("fmt, text, message", [
    ("mooncake", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n{"timestamp": 1,',
     ":2: not a JSON object"),
    ("mooncake", '{"timestamp": 0, "input_length": 5}\n', ":1: field output_length missing"),
    ("mooncake", '{"timestamp": 0, "input_length": -5, "output_length": 1}\n',
     ":1: field input_length: expected a non-negative integer, got -5"),
    ("mooncake", '{"timestamp": "soon", "input_length": 5, "output_length": 1}\n',
     ":1: field timestamp: expected a non-negative number"),
    ("mooncake", '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1, "a"]}\n',
     ":1: field hash_ids: expected a list of integers"),
    ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,10,2\nyesterday,10,2\n",
     ":3: field TIMESTAMP"),
    ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,10\n",
     ":2: expected 3 columns, got 2"),
    ("azure", "TIMESTAMP,Context\n", ":1: header lacks column(s) ContextTokens, GeneratedTokens"),
    ("burstgpt", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                 "1,ChatGPT,ten,3,13,API log\n", ":2: field Request tokens"),
    ("mooncake", "[" * 200_000 + "\n", ":1: not a JSON object"),
    ("azure", 'TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,"' + "1" * 200_000 + '",2\n',
     ":2: not a CSV row: field larger than field limit"),
    ("mooncake", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n' + " " * (pt.MAX_LINE_BYTES + 1),
     f":2: line longer than {pt.MAX_LINE_BYTES} bytes"),
])
def test_a_malformed_row_is_one_error_naming_line_and_field(tmp_path, fmt, text, message):
    path = write(tmp_path, "bad", text)
    with pytest.raises(ValueError) as e:
        pt.load(fmt, path, {})
    assert f"{path}{message}" in str(e.value)
    assert "\n" not in str(e.value)


_JUNK = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                     max_leaves=6)


def _sometimes(valid, junk=_JUNK):
    """Mostly valid (one draw in 20 is junk)."""
    return st.integers(0, 19).flatmap(lambda k: junk if k == 0 else valid)


_MOONCAKE_ROW = st.fixed_dictionaries({
    "timestamp": _sometimes(st.integers(0, 10 ** 6) | st.floats(0, 1e6)),
    "input_length": _sometimes(st.integers(0, 3000)), "output_length": _sometimes(st.integers(0, 50))},
    optional={"hash_ids": _sometimes(st.lists(st.integers(-5, 5), max_size=8))})
# well-formed cells listed twice: drawn more often than the malformed ones
_CSV_CELL = {"time": st.sampled_from(["2023-11-16 18:17:03.97", "2023-11-16 18:17:04", "2023-11-16T18:17:05Z",
                                      "2023-11-16 18:17:03.97", "2023-11-16 18:17:04", "5", "x", ""]),
             "number": st.sampled_from(["1", "17", "2000", "1", "17", "2000", "0", "-2", "1.5", "ten", ""])}


def _csv(header: str, kinds: tuple[str, ...]):
    row = st.tuples(*(_CSV_CELL[k] for k in kinds)).map(",".join)
    return st.lists(_sometimes(row, st.text(max_size=8)), min_size=1, max_size=5).map(
        lambda rows: (header + "\n" + "".join(r + "\n" for r in rows)).encode())


_FILES = {
    "mooncake": st.lists(_MOONCAKE_ROW, min_size=1, max_size=5).map(
        lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()),
    "azure": _csv("TIMESTAMP,ContextTokens,GeneratedTokens", ("time", "number", "number")),
    "burstgpt": _csv("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type",
                     ("number", "time", "number", "number", "number", "time")),
}


@settings(max_examples=400, deadline=None)
@given(st.data(), st.sampled_from(pt.FORMATS), st.fixed_dictionaries({}, optional={
    "limit": st.integers(1, 3), "token_scale": st.sampled_from(["0.01", "1", "3"]),
    "start_ms": st.sampled_from([0, 1, 10 ** 9]), "block_size": st.sampled_from([1, 16, 512])}))
def test_any_file_imports_or_is_one_value_error(tmp_path_factory, data, fmt, options):
    """Whatever the file holds (rows of the format, mostly well formed, or
    any bytes): an import whose prompts have their lengths, or one
    ValueError line naming the file, never another exception."""
    raw = data.draw(st.binary(max_size=200) if data.draw(st.integers(0, 7)) == 0 else _FILES[fmt])
    path = tmp_path_factory.mktemp("any") / "f"
    path.write_bytes(raw)
    try:
        imported = pt.load(fmt, str(path), options)
    except ValueError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e), str(e)
        return
    for request in imported.requests:
        assert len(imported.input_ids(request)) == request.input_len >= 1


def test_bytes_that_are_not_utf8_are_one_error_naming_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,10,2\n\xff\xfe,1,1\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: not UTF-8 text$"):
        pt.load("azure", str(path), {})


def test_a_file_in_time_order_is_read_only_up_to_the_selection(tmp_path):
    """A week of traffic, --limit 1000: the rows after the selection are
    never parsed (here, a malformed one), so import time does not grow
    with the file."""
    rows = [{"timestamp": t, "input_length": 8, "output_length": 1} for t in (0, 10, 10, 30)]
    path = write(tmp_path, "t.jsonl", mooncake(rows) + "not json\n")
    imported = pt.load("mooncake", path, {"limit": 3})
    assert [r.line for r in imported.requests] == [1, 2, 3]
    imported = pt.load("mooncake", path, {"start_ms": 5, "limit": 2})
    assert [r.line for r in imported.requests] == [2, 3]
    with pytest.raises(ValueError, match=r"t.jsonl:5: not a JSON object"):
        pt.load("mooncake", path, {"limit": 5})


def test_a_file_out_of_time_order_is_sorted_whole(tmp_path):
    """Its earliest row anywhere is time zero; the selection is the earliest
    rows in time (file order among equal times), wherever they lie."""
    times = (100, 300, 0, 200, 100)
    rows = [{"timestamp": t, "input_length": 8, "output_length": 1} for t in times]
    path = write(tmp_path, "t.jsonl", mooncake(rows))
    imported = pt.load("mooncake", path, {"limit": 3, "iteration_ms": 1})
    assert [(r.line, r.arrival_ms) for r in imported.requests] == [(3, 0), (1, 100), (5, 100)]
    imported = pt.load("mooncake", path, {"start_ms": 150})
    assert [r.line for r in imported.requests] == [4, 2]


def test_a_row_too_long_names_the_row_and_the_largest_scale_that_fits():
    imported = pt.load("mooncake", str(SLICE), {})
    with pytest.raises(ValueError) as e:
        pt.check_fits(imported, 4096, 16384)
    text = str(e.value)
    assert text.startswith(f"{SLICE}:1: input 18578 + output 7 tokens")
    scale = text.split("largest token scale that fits every selected row: ")[1].split(" ")[0]
    pt.check_fits(pt.load("mooncake", str(SLICE), {"token_scale": scale}), 4096, 16384)
    bigger = str(Fraction(scale) * Fraction(1001, 1000))
    with pytest.raises(ValueError):
        pt.check_fits(pt.load("mooncake", str(SLICE), {"token_scale": bigger}), 4096, 16384)


def test_a_row_of_a_trillion_tokens_is_named_not_cut_into_blocks(tmp_path):
    rows = [{"timestamp": 0, "input_length": 900, "output_length": 2, "hash_ids": [1, 2]},
            {"timestamp": 5, "input_length": 10 ** 12, "output_length": 10 ** 12, "hash_ids": [1, 3]}]
    path = write(tmp_path, "t.jsonl", mooncake(rows))
    imported = pt.load("mooncake", path, {})
    assert [len(r.nodes) for r in imported.requests] == [2, 3]  # two blocks, then the row's own rest
    with pytest.raises(ValueError, match=r"t.jsonl:2: input 1000000000000 \+ output 1000000000000 tokens"):
        pt.check_fits(imported, 4096, None)


def test_specs(tmp_path):
    spec = specs.parse(f"mooncake:{SLICE}?limit=3&token-scale={SCALE}", options={"limit": 2})
    assert spec.kind == "public" and spec.options["limit"] == 2
    assert spec.options["token_scale"] == 0.03125 and spec.options["block_size"] == 512
    assert spec.path == str(SLICE) and len(spec.sha256) == 64
    assert spec.description.startswith("2 requests of mooncake trace mooncake_slice.jsonl")
    with pytest.raises(ValueError, match="unknown option 'speed'"):
        specs.parse(f"azure:{AZURE}?speed=2")
    with pytest.raises(ValueError, match="option clock: 'sundial'; expected one of virtual, wall"):
        specs.parse(f"azure:{AZURE}", options={"clock": "sundial"})
    assert specs.by_wall_clock(specs.parse(f"azure:{AZURE}?clock=wall"))
    assert not specs.by_wall_clock(specs.parse(f"azure:{AZURE}"))
    with pytest.raises(ValueError, match="apply to mooncake:FILE"):
        specs.parse("kv_pressure", options={"limit": 2})
    assert specs.parse("tests.scripts:x").kind == "script"  # other module:function specs


def test_cli_bad_input_exits_2_and_records_nothing(tmp_path):
    bad = write(tmp_path, "bad.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n[]\n')
    out = tmp_path / "out.sglt"
    runner = CliRunner()
    result = runner.invoke(main, ["record", f"mooncake:{bad}", "-o", str(out)])
    assert result.exit_code == 2 and f"{bad}:2: not a JSON object" in result.output
    result = runner.invoke(main, ["record", f"mooncake:{SLICE}", "--limit", "4", "-o", str(out)])
    assert result.exit_code == 2 and "largest token scale that fits" in result.output
    assert not out.exists() and not list(tmp_path.glob("out.sglt*"))


def test_hash_chains_number_prefixes_in_order_of_first_appearance():
    a, b = [5] * 10, [5] * 4 + [6] * 6
    blocks = BlockIds(4)
    unused = blocks.chain(pack_ids([9] * 9))  # a prompt left out of the export
    chains = [blocks.chain(pack_ids(p)) for p in (a, b, a[:6], [7], [5] * 8)]
    assert unused == [0, 1, 2] and chains[0] == [3, 4, 5]
    assert in_order_of_first_appearance(chains) == [[0, 1, 2], [0, 3, 4], [0, 5], [6], [0, 1]]


@pytest.mark.parametrize("workload,block", [
    (Workload(kind="public", options={"block_size": 512, "token_scale": 0.02}), 10),  # 10.24
    (Workload(kind="public", options={"block_size": 512, "token_scale": 0.03125}), 16),
    (Workload(kind="public", options={"block_size": 100, "token_scale": 0.025}), 3),  # 2.5, half up
    (Workload(kind="public", options={"block_size": 512, "token_scale": 0.0001}), 1),  # at least 1
    (Workload(kind="public", options={"block_size": 64, "token_scale": 3}), 192),
    (Workload(kind="public", options={"block_size": "x", "token_scale": 1}), 512),  # not a number
    (Workload(kind="builtin", name="kv_pressure"), 512),
    (None, 512),
])
def test_export_defaults_to_the_imported_block_scaled(workload, block):
    assert default_block_size(Header(workload=workload)) == block


# ------------------------------------------------------------------ engine
@pytest.fixture(scope="module")
def slice_recording(engines, tmp_path_factory):
    spec = specs.parse(f"mooncake:{SLICE}", options={"token_scale": SCALE})
    root = tmp_path_factory.mktemp("public")
    out = str(root / "slice.sglt")
    record_workload(engines.get(EngineConfig.embedded()), spec, out)
    return spec, out


def body(path: str) -> list:
    with TraceReader(path) as reader:
        return list(reader.iterations())


def test_mooncake_slice_prefix_reuse_shows_as_cached_tokens(slice_recording):
    spec, out = slice_recording
    imported = pt.load("mooncake", spec.path, spec.options)
    prompts = [imported.input_ids(r) for r in imported.requests]
    records = body(out)
    inputs = [x for rec in records for x in rec.inputs if x.kind == "generate"]
    assert [x.rid for x in inputs] == [r.rid for r in imported.requests]
    first_cached: dict[int, int] = {}
    for rec in records:
        for batch in rec.batches:
            for req, cached in zip(batch.reqs, batch.cached or ()):
                first_cached.setdefault(req, cached)
    # what the radix cache serves each request when it first runs: its
    # longest common prefix with an earlier prompt (all earlier ones have
    # finished by then in this slice; the last token is always computed)
    expected = [min(max((lcp(p, q) for q in prompts[:i]), default=0), len(p) - 1)
                for i, p in enumerate(prompts)]
    assert [first_cached[i] for i in range(len(prompts))] == expected
    assert sum(expected) > 5000 and sum(1 for e in expected if e) >= 5


def test_record_then_export_gives_the_imported_rows(slice_recording, tmp_path):
    spec, out = slice_recording
    imported = pt.load("mooncake", spec.path, spec.options)
    exported = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["export", out, "-o", str(exported), "--block-size", "16"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [(r["timestamp"], r["input_length"], r["output_length"]) for r in rows] == [
        (q.iteration * 10, q.input_len, q.output_len) for q in imported.requests]
    # the source's hash ids, cut to the scaled prompt (a partial last block
    # is its own id unless another prompt ends at the same token)
    expected = []
    for q in imported.requests:
        bounds = imported.boundaries(q.input_len)
        expected.append([(n, bounds[j + 1] - bounds[j]) if bounds[j + 1] - bounds[j] < 16 else n
                         for j, n in enumerate(q.nodes)])
    assert canonical(r["hash_ids"] for r in rows) == canonical(expected)
    # ... which is the file's own structure where the prompt covers the block
    source = [json.loads(line) for line in SLICE.read_text().splitlines()]
    full = [len(q.nodes) - (1 if imported.boundaries(q.input_len)[-1] % 16 else 0)
            for q in imported.requests]
    assert canonical(s["hash_ids"][:k] for s, k in zip(source, full)) == \
        canonical(r["hash_ids"][:k] for r, k in zip(rows, full))
    export(out, str(tmp_path / "out.csv"), fmt="csv")
    with open(tmp_path / "out.csv") as f:
        table = list(csv.DictReader(f))
    assert [(float(r["arrival_ms"]), int(r["prompt_tokens"]), int(r["completion_tokens"]))
            for r in table] == [(q.iteration * 10, q.input_len, q.output_len) for q in imported.requests]


def test_export_without_a_block_size_shares_the_blocks_the_import_shared(slice_recording, tmp_path):
    """The slice was imported at token scale 1/32: its 512-token blocks are
    16 tokens in the recording, and the default export cuts them there."""
    _, out = slice_recording
    by_default, by_16 = tmp_path / "default.jsonl", tmp_path / "16.jsonl"
    assert CliRunner().invoke(main, ["export", out, "-o", str(by_default)]).exit_code == 0
    assert CliRunner().invoke(main, ["export", out, "-o", str(by_16), "--block-size", "16"]).exit_code == 0
    assert by_default.read_text() == by_16.read_text()
    rows = [json.loads(line) for line in by_default.read_text().splitlines()]
    assert sum(1 for i, a in enumerate(rows) for b in rows[:i] if a["hash_ids"][0] == b["hash_ids"][0]) > 0
    help_text = " ".join(CliRunner().invoke(main, ["export", "--help"]).output.split())
    assert "the block its import used times its --token-scale" in help_text


def test_recording_twice_gives_identical_bodies(slice_recording, engines, tmp_path):
    spec, out = slice_recording
    again = str(tmp_path / "again.sglt")
    record_workload(engines.get(EngineConfig.embedded()), spec, again)
    assert body(again) == body(out)


def test_wall_clock_sends_each_request_at_its_time_and_the_recording_replays(engines, tmp_path):
    """--clock wall: each request goes over HTTP when the wall clock reaches
    its (scaled) arrival time, and the scheduler pulls it whenever it does;
    the recording keeps when each request was pulled, which export reads."""
    spec = specs.parse(f"mooncake:{SLICE}", options={"token_scale": SCALE, "time_scale": "0.5",
                                                         "clock": "wall"})
    imported = pt.load("mooncake", spec.path, spec.options)
    out = str(tmp_path / "wall.sglt")
    record_workload(engines.get(EngineConfig.embedded()), spec, out)
    records = body(out)
    pulled = {x.rid: at for rec in records for x, at in zip(rec.inputs, rec.arrivals)
              if x.kind == "generate"}
    ended = {x.rid: rec.ms for rec in records for x in rec.inputs if x.kind == "generate"}
    assert list(pulled) == [r.rid for r in imported.requests]
    # pulled no earlier than its time (the recording starts before the first
    # send), and not long after it (a CPU forward of a few prompts takes
    # hundreds of ms on a busy 2-core machine)
    late = [pulled[r.rid] - float(r.arrival_ms) for r in imported.requests]
    assert min(late) >= 0 and max(late) < 3000, late
    assert float(imported.requests[-1].arrival_ms) > 2000  # the span the clock had to follow
    finished = {f[0]: f[2] for rec in records for f in rec.finished}
    assert [finished[k] for k in range(len(imported.requests))] == [r.output_len for r in imported.requests]
    # what ran at which iteration is a recording like any other: it replays
    verdict = check(out, pool=engines)
    assert verdict.outcome is Outcome.SAME, verdict.lines(out, "replay")
    exported = tmp_path / "wall.csv"
    result = export(out, str(exported), fmt="csv")
    assert result.iteration_ms is None and result.rows == len(imported.requests)
    with open(exported) as f:
        table = list(csv.DictReader(f))
    first = pulled[imported.requests[0].rid]
    assert [float(r["arrival_ms"]) for r in table] == pytest.approx(
        [pulled[q.rid] - first for q in imported.requests], abs=1e-3)
    assert [int(r["prompt_tokens"]) for r in table] == [q.input_len for q in imported.requests]
    # the timeline is drawn on the recording's wall clock: each request's
    # life starts at the (end) time of the iteration that pulled it
    drawn = tmp_path / "wall.json"
    assert write_timeline(out, str(drawn))["time_axis"] == "wall"
    events = json.loads(drawn.read_text())["traceEvents"]
    life = {}
    for e in events:
        if e["ph"] == "b":
            life.setdefault(e["id"], e["ts"])
    assert [life[k] for k in range(len(imported.requests))] == pytest.approx(
        [ended[r.rid] * 1000 for r in imported.requests], abs=1)
    forwards = [e["ts"] for e in events if e["ph"] == "X"]
    with TraceReader(out) as reader:
        seconds = sum(1 for _ in reader.iterations()) and reader.end.seconds
    assert forwards == sorted(forwards) and forwards[-1] <= seconds * 1e6


# ------------------------------------------------------------------ redact
def test_redaction_keeps_lengths_prefix_relation_and_eos_and_nothing_else(tmp_path):
    """No engine: a hand-made capture-like trace (prompts with shared
    prefixes, recorded outputs, an EOS), redacted."""
    from sgl_replay.convert.redact import redact
    from sgl_replay.trace.format import Header, Iteration, Model, hash_ids, pack_ids, unpack_ids
    from sgl_replay.trace.writer import TraceWriter
    from sgl_replay.trace.format import End

    prompts = [[50, 51, 52, 53, 54], [50, 51, 52, 99], [50, 51, 52, 53, 54, 55, 56], [7, 8], [50, 2, 9]]
    outputs = {0: [60, 61, 2], 2: [62, 63]}
    src = str(tmp_path / "src.sglt")
    header = Header(model=Model(vocab_size=1024, eos_token_ids=[2]),
                    engine_args={"api_key": "s3cret", "max_total_tokens": 1024},
                    argv=["--api-key", "s3cret", "--port", "1"])
    writer = TraceWriter(src, header)
    inputs = [{"type": "generate", "rid": f"r{k}", "input_ids": pack_ids(p), "sampling": {}, "stream": False}
              for k, p in enumerate(prompts)]
    writer.write(Iteration(i=0, inputs=inputs))
    writer.write(Iteration(i=1, finished=[[n, "stop", len(o), hash_ids(o)] for n, o in outputs.items()],
                           outputs=[[n, pack_ids(o)] for n, o in outputs.items()]))
    writer.close(End(complete=True, reason=None, iterations=2, forwards=0, requests=5))
    out = str(tmp_path / "out.sglt")
    figures = redact(src, out)
    assert figures == {"requests": 5, "tokens": 21 + 5, "outputs": 2}
    header2, body, end = read_all(out)
    assert header2.redacted and header2.engine_args["api_key"] == "<redacted>"
    assert header2.argv == ["--api-key", "<redacted>", "--port", "1"] and end.complete
    new = [unpack_ids(x.input_ids) for x in body[0].inputs]
    outs = {n: unpack_ids(o) for n, o in body[1].outputs}
    assert [len(p) for p in new] == [len(p) for p in prompts]
    assert {n: len(o) for n, o in outs.items()} == {n: len(o) for n, o in outputs.items()}
    full_old = [p + outputs.get(k, []) for k, p in enumerate(prompts)]
    full_new = [p + outs.get(k, []) for k, p in enumerate(new)]
    for i in range(5):
        for j in range(5):
            assert lcp(full_new[i], full_new[j]) == lcp(full_old[i], full_old[j]), (i, j)
    assert new[4][1] == 2 and outs[0][-1] == 2  # EOS kept where it was
    assert all(a != b for a, b in zip(new, prompts)) and 50 not in new[0] + new[1] + new[2]
    assert [f[3] for f in body[1].finished] == [hash_ids(outs[n]) for n in (0, 2)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from([2, 5, 6, 7, 40]), max_size=12), min_size=1, max_size=8),
       st.integers(0, 7))
def test_the_trie_keeps_every_common_prefix_and_every_reserved_id(sequences, stem):
    """Any sequences (sharing stems, prefixes of each other, branching inside
    an edge, before or after it was split): the synthetic ones keep each
    length, every pairwise common-prefix length and every reserved id; no
    other id is left as it was mapped to a reserved one; mapping a sequence
    again gives the same ids."""
    from sgl_replay.convert.redact import TokenTrie

    sequences = [sequences[stem % len(sequences)][:k % 9] + s for k, s in enumerate(sequences)]
    trie = TokenTrie(64, {0, 1, 2, 40})
    new = [trie.map(pack_ids(s)) for s in sequences]
    assert [len(s) for s in new] == [len(s) for s in sequences]
    for a, x in zip(sequences, new):
        for b, y in zip(sequences, new):
            assert lcp(x, y) == lcp(a, b)
        assert [t for t, o in zip(x, a) if o in (2, 40)] == [o for o in a if o in (2, 40)]
        assert not any(t in (0, 1, 2, 40) for t, o in zip(x, a) if o not in (2, 40))
    assert [trie.map(pack_ids(s)) for s in sequences] == new


def test_the_trie_refuses_more_distinct_tokens_than_it_may_hold():
    from sgl_replay.convert.redact import TokenTrie
    from sgl_replay.trace.reader import TraceError

    trie = TokenTrie(64, {0, 1, 2}, max_tokens=10)
    trie.map(pack_ids([5] * 10))
    trie.map(pack_ids([5] * 6))  # shared: nothing more held
    with pytest.raises(TraceError, match="more than 10 distinct prefix tokens"):
        trie.map(pack_ids([5] * 9 + [6]))


def test_redacting_a_hostile_trace_is_one_trace_error(tmp_path):
    """An output for a request that never arrived, or a vocabulary size of a
    billion in the header: a TraceError, and no vocabulary-sized list."""
    from sgl_replay.convert.redact import redact
    from sgl_replay.trace.format import End, Header, Iteration, Model, pack_ids
    from sgl_replay.trace.reader import TraceError
    from sgl_replay.trace.writer import TraceWriter

    def trace(name: str, header: Header, records: list) -> str:
        path = str(tmp_path / name)
        writer = TraceWriter(path, header)
        for record in records:
            writer.write(record)
        writer.close(End(complete=True, reason=None, iterations=2, forwards=0, requests=1))
        return path

    generate = {"type": "generate", "rid": "r0", "input_ids": pack_ids([5, 6, 7]), "sampling": {}, "stream": False}
    orphan = trace("orphan.sglt", Header(), [Iteration(i=0, inputs=[generate]),
                                             Iteration(i=1, outputs=[[7, pack_ids([1])]])])
    with pytest.raises(TraceError, match="output of request 7, which has no input"):
        redact(orphan, str(tmp_path / "out.sglt"))
    assert not (tmp_path / "out.sglt").exists()
    huge = trace("huge.sglt", Header(model=Model(vocab_size=10**9)), [Iteration(i=0, inputs=[generate])])
    assert redact(huge, str(tmp_path / "huge.out.sglt"))["tokens"] == 3
    bad = trace("bad.sglt", Header(model=Model(config={"vocab_size": "many"})), [Iteration(i=0, inputs=[generate])])
    with pytest.raises(TraceError, match="vocabulary size"):
        redact(bad, str(tmp_path / "bad.out.sglt"))


def read_all(path: str):
    with TraceReader(path) as reader:
        body = list(reader.iterations())
        return reader.header, body, reader.end


def test_record_redact_writes_only_the_redacted_trace_and_keeps_the_recording_if_redaction_fails(
        engines, tmp_path, monkeypatch):
    """`record --redact` on the session's engine (the command's own start
    swapped for the pool's engine of the same configuration)."""
    import contextlib

    from sgl_replay.convert import redact as redact_module
    from sgl_replay.runs.engine import Engine

    engine = engines.get(EngineConfig.embedded())

    def start(cls, config, **kw):
        assert config == engine.config
        return contextlib.nullcontext(engine)

    monkeypatch.setattr(Engine, "start", classmethod(start))
    spec = f"mooncake:{SLICE}?token_scale={SCALE}&limit=6"
    out = tmp_path / "red.sglt"
    result = CliRunner().invoke(main, ["record", spec, "--redact", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["red.sglt"]
    header, records, end = read_all(str(out))
    imported = pt.load("mooncake", str(SLICE), {"token_scale": SCALE, "limit": 6})
    prompts = [unpack_ids(x.input_ids) for rec in records for x in rec.inputs if x.kind == "generate"]
    originals = [imported.input_ids(r) for r in imported.requests]
    assert header.redacted and end.complete and end.requests == 6
    assert [len(p) for p in prompts] == [len(p) for p in originals]
    assert all(p != q for p, q in zip(prompts, originals))
    # a redaction that cannot be done: one line, exit 2, and the recording is kept
    monkeypatch.setattr(redact_module, "MAX_TRIE_TOKENS", 100)
    out = tmp_path / "again.sglt"
    result = CliRunner().invoke(main, ["record", spec, "--redact", "-o", str(out)])
    raw = f"{out}.unredacted"
    assert result.exit_code == 2 and f"the recording, not redacted, is {raw}" in result.output
    assert not out.exists() and read_all(raw)[2].requests == 6


def test_a_redacted_recording_replays_with_the_originals_consequences(slice_recording, engines, tmp_path):
    """The Mooncake slice (prefix reuse: cached tokens) redacted: no prompt is
    kept, its replay is `same`, and what ran (batches with their new and
    cached tokens, finishes) is the original recording's."""
    _, out = slice_recording
    redacted = str(tmp_path / "redacted.sglt")
    result = CliRunner().invoke(main, ["redact", out, "-o", redacted])
    assert result.exit_code == 0, result.output
    original, replayed = body(out), str(tmp_path / "replayed.sglt")
    old_prompts = [x.input_ids for rec in original for x in rec.inputs if x.kind == "generate"]
    new_prompts = [x.input_ids for rec in body(redacted) for x in rec.inputs if x.kind == "generate"]
    assert len(new_prompts) == 24 and all(a != b and len(a) == len(b) for a, b in zip(old_prompts, new_prompts))
    verdict = check(redacted, pool=engines, observed=replayed)
    assert verdict.outcome is Outcome.SAME, verdict.lines(redacted, "replay")

    def consequences(records):
        return [(rec.i, [(b.mode, b.reqs, b.new, b.cached) for b in rec.batches],
                 [f[:3] for f in rec.finished]) for rec in records if rec.batches or rec.finished]

    assert consequences(body(replayed)) == consequences(original)
    assert sum(c for rec in original for b in rec.batches for c in (b.cached or ())) > 5000
