"""Streaming trace reader. Memory stays at one block, whatever the trace length.

Loading a trace never runs code: msgpack maps of plain values, decoded into
the typed records of trace/format.py (the header stays a plain map). Format
3 blocks are decoded by msgspec, a block (one msgpack array) in one call:
faster than msgpack-python's streaming unpacker on these records
(tools/bench/trace_size.py prints both). Formats 1 and 2, records one after
another, are read with msgpack's Unpacker and converted.
"""

from __future__ import annotations

import gc
import os
from typing import Iterator, Optional

import msgpack
import msgspec
import zstandard

from sgl_replay.trace.format import (FORMAT_VERSION, HEADER, ITER, READABLE_VERSIONS, End, Iteration,
                                     Record, pack_ids)

READ_CHUNK = 1 << 14  # compressed bytes per read: bounds what one read decompresses to
_UINT_SIZES = {0xCC: 1, 0xCD: 2, 0xCE: 4}  # msgpack uint8/16/32 markers: bytes that follow


class TraceError(Exception):
    """A trace that cannot be read; the message is one line naming where."""


class _RecordStream:
    """Formats 1 and 2: a frame's bytes are records one after another, each
    unpacked as a map and, past the header's frame, converted to its type."""

    def __init__(self, typed: bool) -> None:
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self._typed = typed

    def feed(self, data: bytes) -> Iterator[Iterator]:
        """Runs of records that `data` completes (here one, lazily unpacked)."""
        self._unpacker.feed(data)
        yield map(_typed_record, self._unpacker) if self._typed else self._unpacker

    def leftover(self) -> bool:
        return bool(self._unpacker.read_bytes(1))


def _typed_record(record):
    """A format 1 or 2 record as format 3 decodes it. Format 1 (and early 2)
    wrote input ids as a list of ints."""
    if type(record) is dict and record.get("t") == ITER:
        for item in record.get("inputs", ()):
            if type(item) is dict and type(item.get("input_ids")) is list:
                item["input_ids"] = pack_ids(item["input_ids"])
    return msgspec.convert(record, Record)


class _BlockStream:
    """Format 3: a frame's bytes are blocks, each its byte length (a msgpack
    uint) then a msgpack array of records; a block is decoded once whole."""

    _typed = msgspec.msgpack.Decoder(list[Record])
    _plain = msgspec.msgpack.Decoder(list)  # the header's frame

    def __init__(self, typed: bool) -> None:
        self._decoder = self._typed if typed else self._plain
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[list]:
        """The blocks that `data` completes, each a list of records. Blocks
        are decoded where they lie in `data`; only a block that a later
        chunk completes is copied to the buffer (copying every chunk through
        it made prompt-heavy traces read 1.2x to 1.5x slower)."""
        if self._buffer:
            self._buffer += data
            data = self._buffer
        start = 0
        with memoryview(data) as view:
            while start < len(view):
                marker = view[start]
                if marker < 0x80:  # positive fixint
                    head, size = 1, marker
                elif marker in _UINT_SIZES:  # a length cut short still ends past the data
                    head = 1 + _UINT_SIZES[marker]
                    size = int.from_bytes(view[start + 1:start + head], "big")
                else:
                    raise ValueError(f"a block must start with its length, found byte 0x{marker:02x}")
                end = start + head + size
                if end > len(view):
                    break
                records = _decode_without_gc_passes(self._decoder, view[start + head:end])
                start = end
                yield records
            self._buffer = bytearray(view[start:])

    def leftover(self) -> bool:
        return bool(self._buffer)


def _decode_without_gc_passes(decoder, data):
    """A block's hundreds of new objects would trigger several cyclic GC
    passes inside the one C call that builds them (no Python code runs there,
    so pausing the collector is not observable): about 12% of decode time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return decoder.decode(data)
    finally:
        if enabled:
            gc.enable()


def _stream_for(first_byte: int, typed: bool):
    """A frame of records starts with a map, a frame of blocks with an uint."""
    if 0x80 <= first_byte <= 0x8F or first_byte in (0xDE, 0xDF):
        return _RecordStream(typed)
    return _BlockStream(typed)


class TraceReader:
    """Iterate a trace: `header` is read on open, `iterations()` streams the
    body, and `end` holds the end record once the body has been read.

    A torn or corrupt frame raises TraceError naming the frame and its byte
    offset; everything before it has already been yielded.
    """

    def __init__(self, path: str, *, keep_torn: bool = False) -> None:
        self.path = path
        self._keep_torn = keep_torn
        try:
            self._file = open(path, "rb")
        except OSError as e:
            raise TraceError(f"cannot open trace {path}: {e.strerror}") from None
        self.file_bytes = os.fstat(self._file.fileno()).st_size
        self.raw_bytes = 0
        self.frames = 0
        self.good_bytes = 0  # end of the last frame that ended and decoded
        self.torn_records: list = []  # records of the frame being read
        self.end: Optional[dict] = None
        self._records = self._iter_records()
        first = next(self._records, None)
        if first is None:
            raise TraceError(f"{path}: empty file, not a trace")
        if not isinstance(first, dict) or first.get("t") != HEADER:
            raise TraceError(f"{path}: does not start with a trace header")
        version = first.get("format")
        if version not in READABLE_VERSIONS:
            newer = isinstance(version, int) and version > FORMAT_VERSION
            hint = ("it was written by a newer sgl-replay; upgrade sgl-replay to read it"
                    if newer else "this sgl-replay cannot migrate it")
            raise TraceError(f"{path}: trace format version {version!r}, this sgl-replay "
                             f"reads {list(READABLE_VERSIONS)}: {hint}")
        self.header: dict = first

    def __enter__(self) -> "TraceReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def iterations(self) -> Iterator[Iteration]:
        """Yield iteration records in order; stop at the end record. Every
        batch comes with its `reqs`, filled in where the trace left them out
        because they repeat the previous batch's (the lists are shared: do
        not mutate them). The hot loop of every reader: keep it lean."""
        last_reqs = None
        for record in self._records:
            kind = type(record)
            if kind is Iteration:
                for batch in record.batches:
                    if batch.reqs is not None:
                        last_reqs = batch.reqs
                    elif last_reqs is None:
                        raise TraceError(f"{self.path}: iteration {record.i}: a batch "
                                         f"repeats requests before any were named")
                    else:
                        batch.reqs = last_reqs
                yield record
            elif kind is End:
                self.end = msgspec.to_builtins(record)
                return
            else:
                raise TraceError(f"{self.path}: unexpected record {str(record)[:80]}")

    def _iter_records(self) -> Iterator:
        """Records as their blocks decompress, frame after frame. Records of a
        frame that has not ended (a torn tail) are yielded too; with
        keep_torn, the current frame's records stay in `torn_records` until
        it ends (seal_incomplete rewrites them)."""
        dctx = zstandard.ZstdDecompressor()
        data = self._file.read(READ_CHUNK)
        offset = 0  # where the current frame starts in the file
        index = 0
        while data:
            dobj = dctx.decompressobj()
            stream = None  # known from the frame's first byte
            fed = 0
            self.torn_records = []
            while True:
                try:
                    chunk = dobj.decompress(data)
                except zstandard.ZstdError as e:
                    raise TraceError(f"{self.path}: frame {index} at byte {offset}: "
                                     f"corrupt ({e})") from None
                fed += len(data)
                self.raw_bytes += len(chunk)
                if chunk:
                    if stream is None:  # the header's frame decodes to plain maps
                        stream = _stream_for(chunk[0], typed=index > 0)
                    try:
                        for records in stream.feed(chunk):
                            if self._keep_torn:
                                for record in records:
                                    self.torn_records.append(record)
                                    yield record
                            else:
                                yield from records
                    except (ValueError, msgpack.ExtraData, msgpack.FormatError,
                            msgpack.StackError) as e:  # msgspec's errors are ValueErrors
                        raise TraceError(f"{self.path}: frame {index} at byte {offset}: "
                                         f"bad record data ({e})") from None
                if dobj.eof:
                    break
                data = self._file.read(READ_CHUNK)
                if not data:
                    raise TraceError(f"{self.path}: frame {index} at byte {offset}: "
                                     f"truncated (file ends mid-frame)")
            if stream is not None and stream.leftover():
                raise TraceError(f"{self.path}: frame {index} at byte {offset}: "
                                 f"ends inside a record")
            data = dobj.unused_data or self._file.read(READ_CHUNK)
            offset += fed - len(dobj.unused_data)
            self.good_bytes = offset
            self.frames += 1
            index += 1
