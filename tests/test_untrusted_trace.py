"""Crafted traces through every command that reads one: bad input is one
line and exit 2 (never an internal error), memory stays bounded whatever
the file decodes to, an exported test cannot be injected, and a trace's
claims cannot make `check` wait. No engine starts: each failure comes
before one would."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner

from sgl_replay.cli import main
from sgl_replay.trace import TraceReader
from sgl_replay.trace.format import pack_ids

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("fuzz_traces", ROOT / "tools" / "fuzz_traces.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

GOLDEN = str(ROOT / "traces" / "kv_pressure_retraction.sglt")
MEMORY_CAP = 1 << 30


def golden_header() -> dict:
    with TraceReader(GOLDEN) as reader:
        return reader.header.to_dict() | {"t": "header", "format": 3}


def write_trace(path: Path, header: dict, body: list, *, end: dict | None = None) -> str:
    """A format-3 trace of `header` and `body` (plain records; the end
    record, made to agree with the body unless given, last)."""
    if end is None:
        requests = sum(1 for r in body for x in r.get("inputs", ()) if x.get("type") == "generate")
        end = {"t": "end", "complete": True, "reason": None, "iterations": len(body), "forwards": 0,
               "requests": requests}
    path.write_bytes(fuzz.compress(fuzz.block([header])) + fuzz.compress(fuzz.block([*body, end])))
    return str(path)


def commands(trace: str, out: Path) -> list[list[str]]:
    """Every command that reads a trace, on `trace`."""
    return [["show", trace], ["show", "--header", trace], ["stats", trace], ["diff", trace, trace],
            ["timeline", trace, "-o", str(out / "timeline.json.gz")],
            ["export", trace, "-o", str(out / "export.jsonl")],
            ["export-test", trace, "-o", str(out / "test_exported.py")],
            ["redact", trace, "-o", str(out / "redacted.sglt")],
            ["report", trace, trace, "-o", str(out / "report.html")], ["check", trace]]


def run_cli(argv: list[str]):
    result = CliRunner().invoke(main, argv)
    return result.exit_code, result.stderr.strip().splitlines()


def assert_bad_input(argv: list[str], complaint: str) -> None:
    code, lines = run_cli(argv)
    assert code == 2 and len(lines) == 1 and complaint in lines[0], (argv, code, lines)


# -- 1. bad header maps and inputs: one line, exit 2 ----------------------

def with_bytes_key(header: dict) -> dict:
    return header | {"engine_args": {**header["engine_args"], b"max_total_tokens": 1}}


def with_nested_bytes_key(header: dict) -> dict:
    config = {**header["model"]["config"], "rope_scaling": {b"type": "linear"}}
    return header | {"model": {**header["model"], "config": config}}


def with_ext_value(header: dict) -> dict:
    return header | {"env": {**header["env"], "SGLANG_TEST_RETRACT": msgpack.ExtType(5, b"x")}}


@pytest.mark.parametrize("change, complaint", [
    # the header's settings maps are typed: the decoder itself names the key's place
    (with_bytes_key, "Expected `str`, got `bytes` - at `key` in `$.engine_args`"),
    (with_nested_bytes_key, "a map key b'type' in header.model.config.rope_scaling"),
    (with_ext_value, "a msgpack ext value (type 5)"),
])
def test_a_bad_header_map_is_bad_input_in_every_command(tmp_path, change, complaint):
    trace = write_trace(tmp_path / "bad.sglt", change(golden_header()), [{"t": "iter", "i": 0}])
    for argv in commands(trace, tmp_path):
        assert_bad_input(argv, complaint)


def test_an_input_keyed_by_bytes_is_bad_input(tmp_path):
    body = [{"t": "iter", "i": 0, "inputs": [{"type": "flush", b"x": 1}]}]
    trace = write_trace(tmp_path / "bad.sglt", golden_header(), body)
    for argv in (["show", trace], ["stats", trace], ["diff", trace, trace]):
        assert_bad_input(argv, "bad record data")


def test_export_test_of_a_generate_input_without_input_ids_is_bad_input(tmp_path):
    body = [{"t": "iter", "i": 0, "inputs": [{"type": "generate", "rid": "r0", "sampling": {}}]}]
    trace = write_trace(tmp_path / "noids.sglt", golden_header(), body)
    assert_bad_input(["export-test", trace, "-o", str(tmp_path / "test_x.py")],
                     "iteration 0: generate input 'r0' has no input_ids")


# -- 4. export-test writes trace values as literals only -------------------

_SCRIPTED_RUNTIME = {  # what an exported test imports of sglang, and the names it takes
    "sglang": [], "sglang.test": [], "sglang.test.scripted_runtime": ["http_server"],
    "sglang.test.scripted_runtime.context": [],
    "sglang.test.scripted_runtime.context.http_post": ["_http_post_and_await_recv_msg"],
    "sglang.test.scripted_runtime.http_server": ["ScriptedHttpServer"],
    "sglang.test.scripted_runtime.req_handle": ["ScriptedReqHandle"]}
# Imports an exported test as pytest would, and prints what it holds. The
# scripted runtime's names are placeholders: importing sglang takes 25 s
# here, and nothing of it runs when the file is imported.
_IMPORT = textwrap.dedent("""
    import importlib, json, sys, types
    for name, attrs in json.loads(sys.argv[2]).items():
        module = sys.modules[name] = types.ModuleType(name)
        module.__path__ = []
        for attr in attrs:
            setattr(module, attr, sys.modules.get(f"{name}.{attr}"))
    sys.modules["sglang.test.scripted_runtime"].http_server = sys.modules["sglang.test.scripted_runtime.http_server"]
    sys.path.insert(0, sys.argv[1])
    exported = importlib.import_module("test_hostile")
    print(json.dumps({"recording": exported.RECORDING, "inputs": exported.INPUTS}))
""")


def hostile(marker: Path, quote: str) -> str:
    """Text that, pasted into Python source, closes a string and creates `marker`."""
    return f'x{quote}\n__import__("pathlib").Path({str(marker)!r}).touch()\n{quote}'


def test_an_exported_test_of_a_hostile_trace_imports_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    header = golden_header()
    header["workload"] = {"kind": "builtin", "name": hostile(marker, "'''"),
                          "description": hostile(marker, '"""')}
    header["versions"] = {**header["versions"], "sglang": hostile(marker, '"""')}
    rid = hostile(marker, "'")
    body = [{"t": "iter", "i": 0, "inputs": [
        {"type": "generate", "rid": rid, "input_ids": pack_ids([5, 6, 7]), "stream": True,
         "sampling": {"max_new_tokens": 4, "stop": [hostile(marker, '"')]}},
        {"type": "pause", "mode": hostile(marker, '"""')}]}]
    trace = write_trace(tmp_path / "hostile.sglt", header, body)
    exported = tmp_path / "out" / "test_hostile.py"
    exported.parent.mkdir()
    code, lines = run_cli(["export-test", trace, "-o", str(exported)])
    assert code == 0, lines
    assert "pathlib" not in exported.read_text().split('"""')[1]  # the docstring holds no trace text
    imported = subprocess.run([sys.executable, "-c", _IMPORT, str(exported.parent), json.dumps(_SCRIPTED_RUNTIME)],
                              check=False, capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
    assert not marker.exists()
    values = json.loads(imported.stdout)
    assert values["recording"]["sglang"] == header["versions"]["sglang"]
    assert header["workload"]["name"] in values["recording"]["workload"]
    assert header["workload"]["description"] in values["recording"]["workload"]
    generate, pause = (args for _, (_, args) in values["inputs"])
    assert generate["rid"] == rid and generate["sampling"]["stop"] == [hostile(marker, '"')]
    assert pause["mode"] == hostile(marker, '"""')


def test_export_test_refuses_a_value_repr_cannot_write_as_a_literal(tmp_path):
    body = [{"t": "iter", "i": 0, "inputs": [
        {"type": "generate", "rid": "r0", "input_ids": pack_ids([5, 6]), "sampling": {"temperature": float("nan")}}]}]
    trace = write_trace(tmp_path / "nan.sglt", golden_header(), body)
    assert_bad_input(["export-test", trace, "-o", str(tmp_path / "test_nan.py")],
                     "generate input 'r0': \"{'temperature': nan}\" is not a plain value")


# -- 2. decoding amplification: every command within 1 GB -----------------

# Runs CLI commands one after another in one process and prints each one's
# exit code and peak resident memory (the kernel's high-water mark, reset
# between commands), as JSON lines.
_MEASURE = textwrap.dedent("""
    import ctypes, gc, json, sys
    from click.testing import CliRunner
    from sgl_replay.cli import main

    def peak_rss():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmHWM:"))

    for argv in json.loads(sys.argv[1]):
        gc.collect()  # what earlier commands left (in cycles, in malloc's free lists) leaves the count
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        result = CliRunner().invoke(main, argv)
        print(json.dumps({"argv": argv, "code": result.exit_code, "peak": peak_rss(),
                          "stderr": result.stderr.strip().splitlines()}), flush=True)
""")


def measured(argvs: list[list[str]]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(argvs)], check=False, capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def empty_containers(path: Path, count: int, marker: bytes, where: str) -> str:
    """`count` empty maps (marker 0x80) or lists (0x90) in one array, in the
    header or in an input of the body: a few KB of file."""
    many = b"\xdd" + count.to_bytes(4, "big") + marker * count
    if where == "header":
        header = msgpack.packb({"t": "header", "format": 3})
        record = bytes([header[0] + 1]) + header[1:] + msgpack.packb("junk") + many
        path.write_bytes(fuzz.compress(msgpack.packb(len(record) + 1) + b"\x91" + record)
                         + fuzz.compress(fuzz.block([{"t": "end", "complete": True, "reason": None,
                                                      "iterations": 0, "forwards": 0, "requests": 0}])))
    else:
        item = b"\x83" + b"".join(msgpack.packb(v) for v in ("type", "other", "name", "x", "junk")) + many
        record = b"\x83" + b"".join(msgpack.packb(v) for v in ("t", "iter", "i", 0, "inputs")) + b"\x91" + item
        end = msgpack.packb({"t": "end", "complete": True, "reason": None, "iterations": 1, "forwards": 0,
                             "requests": 0})
        array = b"\x92" + record + end
        path.write_bytes(fuzz.compress(fuzz.block([golden_header()]))
                         + fuzz.compress(msgpack.packb(len(array)) + array))
    return str(path)


def flush_inputs(path: Path, count: int) -> str:
    """A trace that reads whole but for its size: one iteration pulling
    `count` flush inputs (12 bytes each; 12 KB of file for 5.5 million)."""
    flush = msgpack.packb({"type": "flush"})
    record = (b"\x83" + b"".join(msgpack.packb(v) for v in ("t", "iter", "i", 0, "inputs"))
              + b"\xdd" + count.to_bytes(4, "big") + flush * count)
    end = msgpack.packb({"t": "end", "complete": True, "reason": None, "iterations": 1, "forwards": 0,
                         "requests": 0})
    array = b"\x92" + record + end
    path.write_bytes(fuzz.compress(fuzz.block([golden_header()])) + fuzz.compress(msgpack.packb(len(array)) + array))
    return str(path)


def empty_lists_in_a_format_1_record(path: Path, count: int) -> str:
    """Formats 1 and 2 have no blocks: a record is counted as it streams in."""
    header = msgpack.packb({"t": "header", "format": 1})
    item = b"\x83" + b"".join(msgpack.packb(v) for v in ("type", "other", "name", "x", "junk"))
    record = (b"\x83" + b"".join(msgpack.packb(v) for v in ("t", "iter", "i", 0, "inputs")) + b"\x91" + item
              + b"\xdd" + count.to_bytes(4, "big") + b"\x90" * count)
    path.write_bytes(fuzz.compress(header) + fuzz.compress(record))
    return str(path)


AMPLIFIERS = {  # issue 30's shapes: a few KB of file each, gigabytes decoded before
    "maps in the header": lambda path: empty_containers(path, 40_000_000, b"\x80", "header"),
    "lists in an input": lambda path: empty_containers(path, 40_000_000, b"\x90", "body"),
    "flush inputs": lambda path: flush_inputs(path, 5_500_000),
}


@pytest.mark.parametrize("shape", AMPLIFIERS)
def test_every_command_reads_an_amplification_file_within_1_gb(tmp_path, shape):
    trace = AMPLIFIERS[shape](tmp_path / "amplifier.sglt")
    assert os.path.getsize(trace) < 20_000
    sealed = tmp_path / "sealed.sglt"  # seal rewrites a damaged trace: a copy
    sealed.write_bytes(Path(trace).read_bytes())
    argvs = [*commands(trace, tmp_path), ["seal", str(sealed)]]
    results = measured(argvs)
    assert len(results) == len(argvs)
    for r in results:
        print(shape, *r["argv"][:2], r["code"], f"peak {r['peak'] / 2**20:.0f} MiB")
    for r in results:
        assert r["peak"] < MEMORY_CAP, r
        reads_the_body = r["argv"][0] != "seal" and r["argv"][:2] != ["show", "--header"]
        if reads_the_body or shape == "maps in the header":
            assert r["code"] == 2 and len(r["stderr"]) == 1 and "values (the most a trace" in r["stderr"][0], r


# -- 3, 5, 6: what a replay takes from a trace is checked before an engine --

def with_huge_model(header: dict) -> dict:
    """The embedded architecture asked 4,096 wide and 16 layers deep, with a
    2^20 vocabulary and a 2^26 context (the token table alone: 4,096 request
    slots of 2^26 int32 each, 1 TiB: too large for any machine this runs on)."""
    config = {**header["model"]["config"], "n_embd": 4096, "n_head": 64, "n_layer": 16, "vocab_size": 1 << 20,
              "n_positions": 1 << 26, "n_ctx": 1 << 26}
    return header | {"model": {**header["model"], "config": config},
                     "engine_args": {k: v for k, v in header["engine_args"].items() if k != "max_running_requests"},
                     "pools": {**header["pools"], "max_running_requests": None}}


def with_string_seed(header: dict) -> dict:
    return header | {"engine_args": {**header["engine_args"], "random_seed": "0; touch /tmp/sglr-seed"}}


@pytest.mark.parametrize("change, commands_, complaint", [
    (with_huge_model, ("check", "replay"), "(vocabulary 1048576, context 67108864, 4096 request slots) needs about"),
    (with_string_seed, ("check", "replay", "show --header", "export-test"),
     "engine argument random_seed is '0; touch /tmp/sglr-seed', not int"),
])
def test_a_header_a_replay_cannot_use_is_one_line_before_any_engine(tmp_path, change, commands_, complaint):
    trace = write_trace(tmp_path / "bad.sglt", change(golden_header()), [{"t": "iter", "i": 0}])
    for command in commands_:
        assert_bad_input([*command.split(), trace, *(["-o", str(tmp_path / "out")] if command in (
            "replay", "export-test") else [])], complaint)


def test_an_end_record_claiming_more_iterations_than_a_replay_turns_is_bad_input(tmp_path):
    end = {"t": "end", "complete": True, "reason": None, "iterations": 10**15, "forwards": 0, "requests": 0}
    trace = write_trace(tmp_path / "lying.sglt", golden_header(), [{"t": "iter", "i": 0}], end=end)
    for argv in (["check", trace], ["replay", trace, "-o", str(tmp_path / "out.sglt")]):
        assert_bad_input(argv, "the end record counts 1000000000000000 loop iterations, the trace holds 1")
    code, _ = run_cli(["stats", trace])  # reading it is fine: the end record's count is what it says
    assert code == 0


def test_a_format_1_record_is_counted_as_it_streams_in(tmp_path):
    trace = empty_lists_in_a_format_1_record(tmp_path / "v1.sglt", 40_000_000)
    (result,) = measured([["stats", trace]])
    assert result["code"] == 2 and "a record of more than 1048576 values" in result["stderr"][0], result
    assert result["peak"] < MEMORY_CAP, result
