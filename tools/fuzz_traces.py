"""Fuzz the trace reader: any bytes must give records or one TraceError.

Mutates real traces (the goldens in traces/, tests/data/kv_pressure.v1.sglt
and format-3 copies of them written by TraceWriter in small frames and
blocks): bit flips, byte overwrites, truncation at frame and zstd-block
boundaries, frame surgery (dropping, duplicating, reordering frames, a
second trace or garbage appended), records decoded, changed and re-encoded
into valid frames, and hand-made hostile frames (deep nesting, unhashable
map keys, huge declared block sizes, decompression bombs). Each case is read
whole (header, iterations(), end) and the records of a clean read are fed to
the text consumers; anything but records or one single-line TraceError is a
failure, as is a read over the time or memory cap.

    python tools/fuzz_traces.py --cases 100000 --seconds 300 [--seed 1]

Prints the cases tried and each distinct failure signature (exception type
and top frame, with the seed of a case that shows it: rerun it with
--replay SEED) and ends with one JSON line: {"bench": "fuzz_traces", ...}.
tests/test_trace_fuzz.py runs the same cases, fewer of them.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import random
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

import msgpack
import msgspec
import zstandard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sgl_replay.trace import TraceReader, TraceWriter  # noqa: E402
from sgl_replay.trace import writer as writer_module  # noqa: E402
from sgl_replay.trace.format import GenerateInput, unpack_ids  # noqa: E402
from sgl_replay.trace.reader import MAX_BLOCK_BYTES, TraceError  # noqa: E402
from sgl_replay.trace.text import batch_text, input_text, names_from, state_text  # noqa: E402

GOLDENS = sorted(glob.glob(str(ROOT / "traces" / "*.sglt")) + glob.glob(str(ROOT / "traces" / "gpu" / "*.sglt"))
                 + [str(ROOT / "tests" / "data" / "kv_pressure.v1.sglt")])
CASE_SECONDS = 2.0  # one read of a mutated trace (they are at most a few MB) takes far less
# Growth of the process's peak RSS over a whole run: a reader that trusts a
# size a hostile trace declares allocates gigabytes for one read.
RSS_GROWTH_BYTES = 256 << 20


# -- seeds ----------------------------------------------------------------

def format3_copy(golden: str, out: str) -> None:
    """`golden`'s records written by TraceWriter in small frames and blocks:
    many boundaries to cut at."""
    with TraceReader(golden) as reader:
        records = [msgspec.to_builtins(r, builtin_types=(bytes,)) for r in reader.iterations()]
        header, end = reader.header, reader.end
    saved = writer_module.FRAME_BYTES, writer_module.BLOCK_BYTES
    writer_module.FRAME_BYTES, writer_module.BLOCK_BYTES = 4096, 512
    try:
        w = TraceWriter(out, header)
        for record in records:
            w.write(record)
        w.close(end)
    finally:
        writer_module.FRAME_BYTES, writer_module.BLOCK_BYTES = saved


def seeds() -> list[bytes]:
    """The goldens as they are (formats 1 and 2) and as format 3."""
    out = [Path(p).read_bytes() for p in GOLDENS]
    with tempfile.TemporaryDirectory() as tmp:
        for k, golden in enumerate(GOLDENS):
            path = os.path.join(tmp, f"{k}.sglt")
            format3_copy(golden, path)
            out.append(Path(path).read_bytes())
    return out


# -- structure of a file, found independently of the reader ---------------

def frame_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each whole zstd frame, up to the first that is not."""
    spans, start = [], 0
    while start < len(data):
        dobj = zstandard.ZstdDecompressor().decompressobj()
        try:
            dobj.decompress(data[start:])
        except zstandard.ZstdError:
            break
        if not dobj.eof:
            break
        end = len(data) - len(dobj.unused_data)
        spans.append((start, end))
        start = end
    return spans


def zstd_block_offsets(data: bytes, span: tuple[int, int]) -> list[int]:
    """Where each zstd block of a frame starts, then where the frame ends."""
    start, end = span
    offset = start + zstandard.frame_header_size(data[start:start + 18])
    offsets = []
    while offset < end:
        offsets.append(offset)
        value = int.from_bytes(data[offset:offset + 3], "little")
        offset += 3 + (1 if (value >> 1) & 3 == 1 else value >> 3)
        if value & 1:
            break
    return offsets + [end]


def boundaries(data: bytes) -> list[int]:
    cuts = {0, len(data)}
    for span in frame_spans(data):
        cuts.update(zstd_block_offsets(data, span))
    return sorted(cuts)


def raw_frames(data: bytes) -> list[bytes]:
    return [zstandard.ZstdDecompressor().decompressobj().decompress(data[a:b]) for a, b in frame_spans(data)]


def compress(raw: bytes, *, checksum: bool = True, every: int = 0) -> bytes:
    """One frame of `raw`, a zstd block every `every` bytes when asked."""
    frame = zstandard.ZstdCompressor(write_checksum=checksum).compressobj()
    out = b""
    step = every or max(len(raw), 1)
    for k in range(0, len(raw), step):
        out += frame.compress(raw[k:k + step]) + frame.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    return out + frame.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


def blocks_of(raw: bytes) -> Optional[list[list]]:
    """A format-3 frame's blocks as plain values; None if not blocks."""
    values = list(msgpack.Unpacker(io.BytesIO(raw), raw=False, strict_map_key=False))
    if len(values) % 2 or not all(type(v) is int for v in values[0::2]):
        return None
    return values[1::2]


def block(records: list) -> bytes:
    array = msgpack.packb(records, use_bin_type=True)
    return msgpack.packb(len(array)) + array


# -- mutations ------------------------------------------------------------

def hostile_value(rnd: random.Random):
    return rnd.choice([
        None, True, -1, 0, 1, 2**31, -2**31 - 1, 2**63 - 1, 2**64 - 1, -2**63, 1.5, float("nan"),
        "", "x" * rnd.randrange(1, 40), b"\x00\x01\x02", b"\x00" * 5, [], [0], [[0, "length", 1]],
        [-1, "length", 0, 0], [0, 7, -1, "h"], {}, {"type": None}, {"type": "generate"},
        {"type": "generate", "rid": 5}, {"type": "abort"}, {"type": "pause"}, {"type": "other"},
        [{"type": "generate", "rid": "r", "input_ids": b"\x01\x02\x03"}],
        {"type": "generate", "rid": "r", "sampling": {1: 2}}, list(range(70)), {"x": [[[[]]]]},
        {b"max_total_tokens": 1}, msgpack.ExtType(5, b"x"),  # a bytes key, an ext value (header maps too)
    ])


def walk(value, rnd: random.Random, depth: int = 0):
    """A random container inside `value` and a key or index in it (or None)."""
    if depth > 20:
        return None
    if type(value) is dict and value and (depth == 0 or rnd.random() < 0.7):
        key = rnd.choice(list(value))
        inner = walk(value[key], rnd, depth + 1)
        return inner if inner and rnd.random() < 0.6 else (value, key)
    if type(value) is list and value:
        index = rnd.randrange(len(value))
        inner = walk(value[index], rnd, depth + 1)
        return inner if inner and rnd.random() < 0.6 else (value, index)
    return None


def mutate_record(record, rnd: random.Random):
    spot = walk(record, rnd)
    if spot is None:
        return hostile_value(rnd)
    container, key = spot
    action = rnd.randrange(4)
    if action == 0:
        container[key] = hostile_value(rnd)
    elif action == 1 and type(container) is dict:
        del container[key]
    elif action == 2 and type(container[key]) is int:
        container[key] += rnd.choice([-2, -1, 1, 2, 1000, 2**40])
    elif action == 3 and type(container) is list:
        container.insert(key, container[key])
    else:
        container[key] = hostile_value(rnd)
    return record


def records_mutated(data: bytes, rnd: random.Random) -> bytes:
    """Decode the frames, change records (fields, order, counts, copies),
    and encode them into frames that decompress and checksum fine."""
    frames = raw_frames(data)
    if not frames:
        return data
    out = b""
    for k, raw in enumerate(frames):
        blocks = blocks_of(raw)
        records = [r for b in blocks for r in b] if blocks is not None else \
            list(msgpack.Unpacker(io.BytesIO(raw), raw=False, strict_map_key=False))
        if records and rnd.random() < 0.5 + 0.5 * (k == len(frames) - 1):
            for _ in range(rnd.randrange(1, 4)):
                if not records:
                    break
                which = rnd.randrange(len(records))
                action = rnd.random()
                if action < 0.7:
                    records[which] = mutate_record(records[which], rnd)
                elif action < 0.8:
                    records.insert(which, msgpack.unpackb(msgpack.packb(records[which]), raw=False,
                                                          strict_map_key=False))
                elif action < 0.9:
                    del records[which]
                else:
                    records.append(records.pop(which))
        if blocks is not None:
            cut = rnd.randrange(len(records) + 1) if records else 0
            body = b"".join(block(part) for part in (records[:cut], records[cut:]) if part)
        else:
            body = b"".join(msgpack.packb(r, use_bin_type=True) for r in records)
        out += compress(body, every=rnd.choice([0, 0, 0, 1, 7, 100]))
    return out


def flip_bits(data: bytes, rnd: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rnd.randrange(1, 9)):
        k = rnd.randrange(len(out))
        out[k] ^= 1 << rnd.randrange(8)
    return bytes(out)


def overwrite(data: bytes, rnd: random.Random) -> bytes:
    out = bytearray(data)
    k = rnd.randrange(len(out))
    n = rnd.randrange(1, 17)
    out[k:k + n] = bytes(rnd.choice([0x00, 0xFF, 0xCE, 0xDC, 0x91, rnd.randrange(256)]) for _ in range(n))
    return bytes(out)


def truncate(data: bytes, rnd: random.Random) -> bytes:
    cuts = boundaries(data)
    cut = rnd.choice(cuts) + rnd.choice([-2, -1, 0, 0, 0, 1, 2]) if rnd.random() < 0.7 else rnd.randrange(len(data))
    return data[:max(0, cut)]


def frame_surgery(data: bytes, rnd: random.Random) -> bytes:
    spans = frame_spans(data)
    if len(spans) < 2:
        return data + data
    frames = [data[a:b] for a, b in spans]
    rest = data[spans[-1][1]:]
    action = rnd.randrange(7)
    k = rnd.randrange(len(frames))
    if action == 0:
        del frames[k]
    elif action == 1:
        frames.insert(k, frames[k])
    elif action == 2:
        j = rnd.randrange(len(frames))
        frames[k], frames[j] = frames[j], frames[k]
    elif action == 3:
        rest += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 64)))
    elif action == 4:
        rest += data  # a second trace after the end
    elif action == 5:
        frames[k] = compress(raw_frames(frames[k])[0], checksum=False)  # the same frame, unchecked
    else:
        rest += b"\x00" * rnd.randrange(1, 4096)  # what a crash can leave past the end
    return b"".join(frames) + rest


def deeply_nested_block(depth: int) -> bytes:
    """A block whose one iteration has an input holding `depth` nested arrays."""
    record = (b"\x83" + msgpack.packb("t") + msgpack.packb("iter") + msgpack.packb("i") + msgpack.packb(0)
              + msgpack.packb("inputs") + b"\x91\x81" + msgpack.packb("x") + b"\x91" * depth + b"\x01")
    return msgpack.packb(len(record) + 1) + b"\x91" + record


def hostile_frame(data: bytes, rnd: random.Random) -> bytes:
    """The trace's header frame, then a body frame made by hand."""
    spans = frame_spans(data)
    head = data[:spans[0][1]] if spans else data
    bodies = [
        deeply_nested_block(rnd.choice([100, 1000, 20000])),
        msgpack.packb([{"t": "iter", "i": 0, "inputs": [{(1,): 2}]}]),  # an unhashable key, as a list
        b"\x81\x91\x01\x02",  # a map whose key is a list
        b"\xce\xff\xff\xff\xff",  # a block declaring 4 GiB
        b"\xce" + (MAX_BLOCK_BYTES + 1).to_bytes(4, "big") + b"\x90",  # just past the cap
        b"\xce" + (MAX_BLOCK_BYTES - 10).to_bytes(4, "big") + b"\xdd" + b"\x00" * 4096,  # pending, never whole
        b"\xcf" + b"\x00" * 8,  # a uint64 length
        b"\x00",  # an empty block
        b"\x01\x90" * 1000,  # blocks of no records
        b"\x82\xa1t\xa4iter\xa1i\x00",  # a format-2 record in a format-3 frame
    ]
    body = rnd.choice(bodies)
    return head + compress(body, every=rnd.choice([0, 1, 3]))


MUTATIONS: list[Callable[[bytes, random.Random], bytes]] = [
    flip_bits, flip_bits, overwrite, truncate, truncate, frame_surgery, frame_surgery,
    records_mutated, records_mutated, records_mutated, hostile_frame,
]


def case(corpus: list[bytes], seed: int) -> bytes:
    """Case `seed`: one to three mutations of one seed trace."""
    rnd = random.Random(seed)
    data = rnd.choice(corpus)
    for _ in range(rnd.choice([1, 1, 1, 2, 3])):
        mutation = rnd.choice(MUTATIONS)
        if data:
            try:
                data = mutation(data, rnd)
            except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException,
                    zstandard.ZstdError):
                pass  # a mutation that needs structure an earlier one broke: skipped
    return data


# -- the contract ---------------------------------------------------------

class ContractBroken(Exception):
    """A read that gave neither records nor one clean TraceError."""


def read_whole(path: str) -> Optional[TraceError]:
    """Read the trace as every command does; None when it read clean.
    Raises what the reader raised if that is not a TraceError, and
    ContractBroken for a bad TraceError message, a clean read without an end
    record, or records a consumer cannot use."""
    try:
        with TraceReader(path) as reader:
            rids: list[str] = []
            for record in reader.iterations():
                consume(record, rids)
            if reader.end is None:
                raise ContractBroken("a clean read without an end record")
        return None
    except TraceError as e:
        message = str(e)
        if not message or "\n" in message or not message.startswith((path, "cannot open")):
            raise ContractBroken(f"TraceError message not one line naming the file: {message!r}") from None
        return e


def consume(record, rids: list) -> None:
    """What show, stats, diff and replay do with a record."""
    for item in record.inputs:
        input_text(item)
        if type(item) is GenerateInput:
            rids.append(item.rid)
            if item.input_ids is not None:
                unpack_ids(item.input_ids)
    name = names_from(rids)
    for batch in record.batches:
        batch_text(batch, name)
        for n in batch.reqs:
            rids[n]
    if record.state is not None:
        state_text(record.state)
    for n, _reason, _length, _ in record.finished:
        rids[n]
    for n in record.retracted:
        rids[n]


def signature(error: BaseException) -> str:
    """Exception type and the innermost frame it was raised in."""
    frames = traceback.extract_tb(error.__traceback__)
    top = frames[-1] if frames else None
    where = f"{Path(top.filename).name}:{top.lineno} {top.name}" if top else "?"
    return f"{type(error).__name__} at {where}"


def check(path: str, data: bytes) -> tuple[bool, Optional[str]]:
    """Write `data` at `path` and read it: (whether it read clean, None), or
    (False, the failure's signature)."""
    Path(path).write_bytes(data)
    started = time.perf_counter()
    try:
        error = read_whole(path)
    except Exception as e:  # noqa: BLE001 — every escape is a finding
        return False, signature(e)
    if time.perf_counter() - started > CASE_SECONDS:
        return False, f"slow: over {CASE_SECONDS} s for {len(data)} bytes"
    return error is None, None


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(cases: int, seconds: float, seed: int, *, report=print) -> dict:
    corpus = seeds()
    rss_before = peak_rss_bytes()
    failures: dict[str, int] = {}
    tried = clean = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "case.sglt")
        for k in range(cases):
            if time.monotonic() - started > seconds:
                break
            case_seed = seed * 1_000_003 + k
            read_clean, failure = check(path, case(corpus, case_seed))
            tried += 1
            clean += read_clean
            if failure is not None and failure not in failures:
                failures[failure] = case_seed
                report(f"FAIL {failure} (--replay {case_seed})")
    elapsed = time.monotonic() - started
    growth = peak_rss_bytes() - rss_before
    if growth > RSS_GROWTH_BYTES:
        failures[f"peak RSS grew {growth} bytes, over {RSS_GROWTH_BYTES}"] = -1
    return {"bench": "fuzz_traces", "cases": tried, "seconds": round(elapsed, 1),
            "cases_per_s": round(tried / elapsed) if elapsed else None, "seed": seed,
            "read_clean": clean,
            "failures": len(failures), "signatures": sorted(failures),
            "peak_rss_growth_bytes": growth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--replay", type=int, help="run one case by its seed and show what it raises")
    args = parser.parse_args()
    if args.replay is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "case.sglt")
            Path(path).write_bytes(case(seeds(), args.replay))
            print(read_whole(path) or "read clean")
        return
    figures = run(args.cases, args.seconds, args.seed)
    print(f"{figures['cases']} cases in {figures['seconds']} s, "
          f"{figures['failures']} distinct failure signatures")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
