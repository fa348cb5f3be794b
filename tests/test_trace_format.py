"""The trace file on its own: streaming, torn tails, corruption, versions.
Pure format logic: no engine."""

from __future__ import annotations

import msgpack
import msgspec
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from sgl_replay.trace import FORMAT_VERSION, TraceError, TraceReader, TraceWriter, seal_incomplete
from sgl_replay.trace import writer as writer_module
from sgl_replay.trace.format import End, Header, pack_ids
from sgl_replay.trace.writer import pack_block


def header(**extra) -> dict:
    """A header as a map, for files built by hand."""
    return {"t": "header", "format": 1, "engine_args": {}, "env": {}, "pools": {}, **extra}


def iteration(i: int, n_reqs: int = 2) -> dict:
    """Iteration i runs requests 0..n_reqs-1, which iteration 0 pulls."""
    record = {"t": "iter", "i": i,
              "batches": [{"fwd": i, "mode": "decode", "reqs": list(range(n_reqs)), "tokens": n_reqs}],
              "state": {"waiting": 0, "running": n_reqs, "kv_free": 1000 - i, "req_free": 10}}
    if i == 0:
        record["inputs"] = [generate(f"r{n}") for n in range(n_reqs)]
    return record


def generate(rid: str, ids=(1, 2, 3)) -> dict:
    return {"type": "generate", "rid": rid, "input_ids": pack_ids(ids), "sampling": {}, "stream": False}


def end_of(records, *, complete=True, reason=None) -> End:
    """The end record whose counts agree with `records`, as the recorder's."""
    fwds = [b["fwd"] for r in records for b in r.get("batches", ())]
    return End(complete=complete, reason=reason, iterations=max((r["i"] + 1 for r in records), default=0),
               forwards=fwds[-1] + 1 if fwds else 0,
               requests=sum(x["type"] == "generate" for r in records for x in r.get("inputs", ())))


def write(path, records, *, end=True) -> None:
    w = TraceWriter(str(path), Header(format=1))
    for rec in records:
        w.write(rec)
    if end:
        w.close(end_of(records))
    else:
        w.flush()


def plain(records) -> list[dict]:
    """Typed records as the maps they were written from."""
    return [msgspec.to_builtins(rec, builtin_types=(bytes,)) for rec in records]


def read_all(path):
    with TraceReader(str(path)) as r:
        return plain(r.iterations()), r.end


def small_frames(monkeypatch, frame=2048, block=256):
    monkeypatch.setattr(writer_module, "FRAME_BYTES", frame)
    monkeypatch.setattr(writer_module, "BLOCK_BYTES", block)


def test_round_trip_across_many_frames(tmp_path, monkeypatch):
    small_frames(monkeypatch)
    records = [iteration(i) for i in range(500)]
    write(tmp_path / "t.sglt", records)
    body, end = read_all(tmp_path / "t.sglt")
    assert body == records and end.complete
    with TraceReader(str(tmp_path / "t.sglt")) as r:
        list(r.iterations())
        assert r.frames > 10


def frames_of(data: bytes) -> list[bytes]:
    """A trace's frames, each decompressed."""
    frames = []
    while data:
        dobj = zstandard.ZstdDecompressor().decompressobj()
        frames.append(dobj.decompress(data))
        data = dobj.unused_data
    return frames


def recompressed(frames: list[bytes], every: int) -> bytes:
    """The frames compressed again, with a zstd block every `every` bytes:
    the reader decompresses one zstd block at a time."""
    out = b""
    for raw in frames:
        frame = zstandard.ZstdCompressor(write_checksum=True).compressobj()
        for k in range(0, len(raw), every):
            out += frame.compress(raw[k:k + every]) + frame.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        out += frame.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
    return out


@pytest.mark.parametrize("every", [1, 7, 300])
def test_blocks_split_across_zstd_blocks_read_back(tmp_path, every):
    """zstd blocks this small end inside trace blocks and inside their length
    prefixes: the reader must carry each part over until its block is whole."""
    records = [{**iteration(i), "inputs": [*iteration(i).get("inputs", ()), generate(f"p{i}", range(i % 200))]}
               for i in range(300)]
    write(tmp_path / "t.sglt", records)
    (tmp_path / "r.sglt").write_bytes(recompressed(frames_of((tmp_path / "t.sglt").read_bytes()), every))
    body, end = read_all(tmp_path / "r.sglt")
    assert body == records and end.complete


def stored_records(path) -> list:
    """The file's records as stored, with plain zstd and msgpack: blocks,
    each its byte length then an array of records."""
    with open(path, "rb") as f:
        raw = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    values = list(msgpack.Unpacker(__import__("io").BytesIO(raw), raw=False))
    lengths, blocks = values[0::2], values[1::2]
    assert len(lengths) == len(blocks) and all(type(b) is list for b in blocks)
    assert lengths == [len(msgpack.packb(b, use_bin_type=True)) for b in blocks]
    return [record for block in blocks for record in block]


def test_plain_zstd_decodes_the_whole_file(tmp_path):
    records = [iteration(i) for i in range(50)]
    write(tmp_path / "t.sglt", records)
    items = stored_records(tmp_path / "t.sglt")
    assert items[0]["t"] == "header" and items[-1]["t"] == "end"
    # every batch runs requests [0, 1]: only the first batch says so
    assert items[1] == records[0]
    for stored, written in zip(items[2:-1], records[1:], strict=True):
        assert "reqs" not in stored["batches"][0]
        assert stored == {**written, "batches": [{k: v for k, v in written["batches"][0].items()
                                                  if k != "reqs"}]}
    assert all(rec["batches"][0]["reqs"] == [0, 1] for rec in records)  # the caller's, untouched


batch_reqs = st.sampled_from([[0], [0, 1], [1, 0], [2], []])  # few lists: repeats are common


@settings(max_examples=60, deadline=None)
@given(iterations=st.lists(st.lists(batch_reqs, max_size=3), max_size=40))
def test_repeated_requests_are_stored_once_and_read_back(tmp_path_factory, iterations):
    records = [{"t": "iter", "i": i, "batches": [{"fwd": 0, "mode": "decode", "reqs": list(reqs), "tokens": 1}
                                                 for reqs in batches]}
               for i, batches in enumerate(iterations)]
    if records:
        records[0]["inputs"] = [generate(f"r{n}") for n in range(3)]  # the requests batches name
    path = tmp_path_factory.mktemp("reqs") / "t.sglt"
    write(path, records)
    assert read_all(path)[0] == records
    sequence = [b["reqs"] for rec in records for b in rec["batches"]]
    changes = sum(1 for k, reqs in enumerate(sequence) if k == 0 or reqs != sequence[k - 1])
    stored = [b for rec in stored_records(path)[1:-1] for b in rec.get("batches", ())]
    assert sum("reqs" in b for b in stored) == changes


def test_a_format_2_file_records_one_after_another_still_reads(tmp_path):
    records = [iteration(i) for i in range(30)]
    stored = [{**rec, "batches": [{k: v for k, v in rec["batches"][0].items() if k != "reqs" or rec["i"] == 0}]}
              for rec in records]  # format 2 left repeated requests out too
    pack = lambda recs: zstandard.ZstdCompressor().compress(  # noqa: E731
        b"".join(msgpack.packb(r, use_bin_type=True) for r in recs))
    end = end_of(records)
    (tmp_path / "v2.sglt").write_bytes(pack([header(format=2)]) + pack(stored[:10])
                                       + pack([*stored[10:], msgspec.to_builtins(end)]))
    body, read_end = read_all(tmp_path / "v2.sglt")
    assert body == records and read_end == end


def test_torn_tail_is_reported_with_frame_and_offset(tmp_path, monkeypatch):
    small_frames(monkeypatch)
    write(tmp_path / "t.sglt", [iteration(i) for i in range(100)])
    data = (tmp_path / "t.sglt").read_bytes()
    (tmp_path / "cut.sglt").write_bytes(data[: len(data) - 7])
    seen = []
    with pytest.raises(TraceError, match=r"frame \d+ at byte \d+: truncated"):
        with TraceReader(str(tmp_path / "cut.sglt")) as r:
            for rec in r.iterations():
                seen.append(rec)
    assert seen and plain(seen) == [iteration(i) for i in range(len(seen))]


def test_corrupt_frame_is_named(tmp_path, monkeypatch):
    small_frames(monkeypatch)
    write(tmp_path / "t.sglt", [iteration(i) for i in range(100)])
    data = bytearray((tmp_path / "t.sglt").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = b"\xff" * 16
    (tmp_path / "bad.sglt").write_bytes(bytes(data))
    with pytest.raises(TraceError, match=r"bad\.sglt: frame \d+ at byte \d+"):
        read_all(tmp_path / "bad.sglt")


def test_a_field_of_the_wrong_type_is_bad_record_data(tmp_path):
    bad = iteration(1)
    bad["state"]["kv_free"] = "lots"
    write(tmp_path / "t.sglt", [iteration(0), bad])
    with pytest.raises(TraceError, match=r"frame \d+ at byte \d+: bad record data.*kv_free"):
        read_all(tmp_path / "t.sglt")


def test_fields_this_version_does_not_know_are_skipped(tmp_path):
    """A later sgl-replay may add fields within the same format version."""
    newer = {**iteration(0), "spec_accept": [3, 1]}
    newer["batches"][0]["lora"] = "adapter-1"
    write(tmp_path / "t.sglt", [newer, iteration(1)])
    assert read_all(tmp_path / "t.sglt")[0] == [iteration(0), iteration(1)]


def test_the_writer_names_its_own_format_version(tmp_path):
    write(tmp_path / "t.sglt", [iteration(0)])  # header() says format 1
    with TraceReader(str(tmp_path / "t.sglt")) as r:
        assert r.header.format == FORMAT_VERSION


def test_newer_format_version_gets_a_clear_error(tmp_path):
    newer = msgpack.packb(header(format=99), use_bin_type=True)
    (tmp_path / "new.sglt").write_bytes(zstandard.ZstdCompressor().compress(pack_block(newer, 1)))
    with pytest.raises(TraceError, match="format version 99.*newer sgl-replay"):
        TraceReader(str(tmp_path / "new.sglt"))


def test_not_a_trace(tmp_path):
    (tmp_path / "x.sglt").write_bytes(b"hello, world")
    with pytest.raises(TraceError, match="x.sglt"):
        TraceReader(str(tmp_path / "x.sglt"))
    with pytest.raises(TraceError, match="empty file"):
        (tmp_path / "e.sglt").write_bytes(b"")
        TraceReader(str(tmp_path / "e.sglt"))
    with pytest.raises(TraceError, match="cannot open"):
        TraceReader(str(tmp_path / "missing.sglt"))


def test_seal_keeps_every_flushed_record_and_marks_the_end(tmp_path, monkeypatch):
    """The writer died in the middle of writing a block, its frame never
    ended: every record flushed before survives the seal."""
    small_frames(monkeypatch, frame=1 << 20)
    path = tmp_path / "t.sglt"
    w = TraceWriter(str(path), Header())
    for i in range(100):
        w.write(iteration(i))
    w.flush()
    flushed = path.stat().st_size
    for i in range(100, 120):
        w.write(iteration(i))
    w.flush()
    torn = flushed + (path.stat().st_size - flushed) // 2
    path.write_bytes(path.read_bytes()[:torn])
    end = seal_incomplete(str(path), "interrupted")
    body, read_end = read_all(path)
    assert body[:100] == [iteration(i) for i in range(100)]
    assert body == [iteration(i) for i in range(len(body))] and len(body) < 120
    assert read_end == end and end.complete is False and end.reason == "interrupted"
    assert end.iterations == len(body) and end.forwards == len(body) and end.requests == 2
    # sealing twice changes nothing
    assert seal_incomplete(str(path), "again") == end


def test_seal_without_a_header_raises(tmp_path):
    (tmp_path / "t.sglt").write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(TraceError):
        seal_incomplete(str(tmp_path / "t.sglt"), "x")


records_strategy = st.lists(
    st.builds(lambda i, n, kv: {"t": "iter", "i": i, "state": {"waiting": n, "running": n,
                                                                   "kv_free": kv, "req_free": 1}},
              st.integers(0, 10**9), st.integers(0, 300), st.integers(0, 10**6)),
    max_size=60)


@settings(max_examples=40, deadline=None)
@given(records=records_strategy, cut=st.integers(min_value=0, max_value=10**6))
def test_any_truncation_yields_a_prefix_or_a_named_error(tmp_path_factory, records, cut):
    """Cut a trace anywhere: the reader yields a prefix of what was written,
    then either ends cleanly or raises TraceError; nothing else."""
    path = tmp_path_factory.mktemp("cut") / "t.sglt"
    saved = writer_module.FRAME_BYTES, writer_module.BLOCK_BYTES
    writer_module.FRAME_BYTES, writer_module.BLOCK_BYTES = 512, 128
    try:
        write(path, records)
    finally:
        writer_module.FRAME_BYTES, writer_module.BLOCK_BYTES = saved
    data = path.read_bytes()
    path.write_bytes(data[: cut % (len(data) + 1)])
    seen = []
    try:
        with TraceReader(str(path)) as r:
            for rec in r.iterations():
                seen.append(rec)
    except TraceError:
        pass
    assert plain(seen) == records[: len(seen)]
