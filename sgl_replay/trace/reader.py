"""Streaming trace reader for untrusted files.

Loading a trace never runs code: msgpack maps of plain values, decoded into
the typed records of trace/format.py. Format 3 blocks are decoded by msgspec,
a block (one msgpack array) in one call: faster than msgpack-python's
streaming unpacker on these records (tools/bench/trace_size.py prints both).
Formats 1 and 2, records one after another, are read with msgpack's Unpacker
and converted.

Any file gives either records or one TraceError whose one-line message names
the byte offset or frame and what is wrong; never another exception. Memory
is bounded by the constants below, whatever the file declares: the zstd
frames are walked block by block, so one decompression step yields at most
one zstd block (128 KiB), and a trace block may not declare more than
MAX_BLOCK_BYTES. Time is linear in the file's size. The reader also checks,
once, what the records' consumers rely on (TraceReader.iterations lists it),
and that nothing follows the end record.
"""

from __future__ import annotations

import gc
import os
import re
from typing import Any, Iterable, Iterator, NoReturn, Optional

import msgpack
import msgspec
import zstandard

from sgl_replay.trace.format import (FORMAT_VERSION, HEADER, ITER, READABLE_VERSIONS, SEGMENT_SUFFIX, AbortInput, Batch,
                                     End, GenerateInput, Header, Iteration, Record, Segment, pack_ids)

# Caps on what a file can make the reader hold. They are constants, not
# anything the file declares: a size a file declares is what a hostile one
# would inflate (tests/test_trace_fuzz.py reads such files).
# A trace block (format 3) or a record (formats 1 and 2) up to this many
# bytes. The writer's blocks are about BLOCK_BYTES (64 KiB) plus one record,
# and it refuses a record that would not fit; 64 MiB still holds one
# iteration pulling dozens of 128k-token prompts.
MAX_BLOCK_BYTES = 64 << 20
# A block (format 3) or a record (formats 1 and 2) up to this many msgpack
# values (maps, arrays, keys, strings, numbers: every value counts), counted
# before it is decoded. Bytes alone do not bound memory: a value takes 1 byte
# in the file and up to 72 as a Python object (an empty map), so 40 million
# empty maps compress to 7.7 KB and would decode to 3 GB. With both caps,
# decoding one block holds at most its bytes plus 72 bytes per value:
# min(73 x its bytes, its bytes + 76 MB), under 150 MB whatever the file.
# A block of fewer bytes cannot hold more values and is not counted (the
# writer's blocks are about 64 KiB); a legitimate larger block is a few huge
# prompts (one value each), and a million values is 60,000 generate inputs
# in one iteration. Counting a block that is refused takes about 0.4 s.
MAX_BLOCK_ITEMS = 1 << 20
# The zstd window a frame may ask for: level 3, the writer's, uses 2 MiB and
# level 19 8 MiB; libzstd would allocate up to 128 MiB if a frame asked.
MAX_WINDOW_BYTES = 8 << 20
# zstd's own cap on one block, compressed or not. Frames are fed to the
# decompressor one zstd block at a time, so one step yields at most this.
ZSTD_BLOCK_MAX = zstandard.BLOCKSIZE_MAX

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_RESERVED_BLOCK = 3  # zstd block types: 0 raw, 1 RLE (one byte repeated), 2 compressed
_UINT_SIZES = {0xCC: 1, 0xCD: 2, 0xCE: 4}  # msgpack uint8/16/32 markers: bytes that follow
# What msgpack and msgspec raise on bad input (msgspec's errors and msgpack's
# ExtraData/FormatError/StackError are ValueErrors; TypeError: an unhashable
# map key; OverflowError: format 1 input ids past int32).
_DECODE_ERRORS = (ValueError, TypeError, RecursionError, OverflowError, msgpack.UnpackException)


# What the first byte of a msgpack value says: the value's size in bytes
# and the values it holds, for values whose first byte says it all (numbers
# up to 7 bits, nil, bools, strings up to 31 bytes, maps and arrays up to
# 15 entries); size 0 for the others, whose header holds a length or count.
_SIZES = bytearray(256)
_CHILDREN = bytearray(256)
for _b in range(256):
    if _b < 0x80 or _b >= 0xE0 or _b in (0xC0, 0xC2, 0xC3):
        _SIZES[_b] = 1
    elif _b < 0xA0:
        _SIZES[_b], _CHILDREN[_b] = 1, (2 if _b < 0x90 else 1) * (_b & 0x0F)
    elif _b < 0xC0:
        _SIZES[_b] = 1 + (_b & 0x1F)
# The others: (header bytes, bytes of the length or count in it, what it
# counts: 0 nothing (a fixed-size number: the header is the whole value),
# 1 payload bytes (str, bin, ext), 2 array items, 3 map entries).
_LONG_HEADS = {0xC4: (2, 1, 1), 0xC5: (3, 2, 1), 0xC6: (5, 4, 1),  # bin
               0xC7: (3, 1, 1), 0xC8: (4, 2, 1), 0xC9: (6, 4, 1),  # ext (a type byte after the length)
               0xCA: (5, 0, 0), 0xCB: (9, 0, 0),  # float
               0xCC: (2, 0, 0), 0xCD: (3, 0, 0), 0xCE: (5, 0, 0), 0xCF: (9, 0, 0),  # uint
               0xD0: (2, 0, 0), 0xD1: (3, 0, 0), 0xD2: (5, 0, 0), 0xD3: (9, 0, 0),  # int
               0xD4: (3, 0, 0), 0xD5: (4, 0, 0), 0xD6: (6, 0, 0), 0xD7: (10, 0, 0), 0xD8: (18, 0, 0),  # fixext
               0xD9: (2, 1, 1), 0xDA: (3, 2, 1), 0xDB: (5, 4, 1),  # str
               0xDC: (3, 2, 2), 0xDD: (5, 4, 2), 0xDE: (3, 2, 3), 0xDF: (5, 4, 3)}  # array, map


class _ValueCounter:
    """Counts the msgpack values of each top-level value (a block, or a
    format 1 or 2 record) from their headers alone, payloads skipped, and
    refuses one holding more than MAX_BLOCK_ITEMS before anything decodes
    it. Resumable: `walk` is called again as the stream grows; `pos` may lie
    past the data's end, inside a payload still to come. A block is one
    value: what follows it is left to the decoder to refuse."""

    __slots__ = ("budget", "many", "pending", "pos", "start")

    def __init__(self, *, many: bool) -> None:
        self.many = many  # top-level values follow one another (records), or one only (a block)
        self.pos = 0  # the next value's header
        self.pending = 0  # values still to come in the current top-level value
        self.budget = 0  # values the current top-level value may still hold
        self.start = 0  # where the current top-level value starts

    def walk(self, data: "bytes | bytearray | memoryview", what: str) -> None:
        pos, pending, budget, start = self.pos, self.pending, self.budget, self.start
        sizes, children = _SIZES, _CHILDREN
        end = len(data)
        try:
            while pos < end:
                if not pending:
                    if pos and not self.many:
                        return
                    pending, budget, start = 1, MAX_BLOCK_ITEMS, pos
                b = data[pos]
                size = sizes[b]
                if size:
                    pending += children[b]
                else:
                    head = _LONG_HEADS.get(b)
                    if head is None:  # 0xc1, never used: the decoder names it
                        return
                    size, length_bytes, kind = head
                    if pos + size > end:
                        return
                    n = int.from_bytes(data[pos + 1:pos + 1 + length_bytes], "big") if length_bytes else 0
                    if kind == 1:
                        size += n
                    elif kind:
                        pending += n if kind == 2 else 2 * n
                pending -= 1
                pos += size
                budget -= 1
                if budget < 0:
                    raise _BadData(f"a {what} of more than {MAX_BLOCK_ITEMS} values (the most a trace "
                                   f"{what} may hold)")
            if not pending:
                start = pos
        finally:
            self.pos, self.pending, self.budget, self.start = pos, pending, budget, start


def _refuse_ext(code: int, data: "bytes | memoryview") -> None:
    raise ValueError(f"a msgpack ext value (type {code}): a trace holds plain values only")


class TraceError(Exception):
    """A trace that cannot be read; the message is one line naming where."""


class _BadData(Exception):
    """Raised inside a stream; the reader adds the frame and offset."""


class _RecordStream:
    """Formats 1 and 2: a frame's bytes are records one after another, each
    unpacked as a map and converted to its type (except the trace's first
    record, the header)."""

    def __init__(self, first_raw: bool) -> None:
        # Handed whole records only: an unpacker builds a record's objects as
        # its bytes arrive, so a record is counted (below) before it gets them.
        # Its nesting is capped by its own stack (StackError).
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, ext_hook=_refuse_ext,
                                          max_buffer_size=MAX_BLOCK_BYTES)
        # Finds where each record ends (skip() builds nothing).
        self._skipper = msgpack.Unpacker()
        self._first_raw = first_raw
        # The stream from the end of the last whole record, at _tail_offset:
        # once longer than MAX_BLOCK_ITEMS bytes, its values are counted.
        self._tail = bytearray()
        self._tail_offset = 0
        self._counter = _ValueCounter(many=True)

    def feed(self, data: bytes) -> list[list[Any]]:
        """The records that `data` completes (a list of one list, or two: the
        header apart)."""
        tail = self._tail
        tail += data
        if len(tail) > MAX_BLOCK_ITEMS:
            self._counter.walk(tail, "record")
        skipper = self._skipper
        skipper.feed(data)
        whole = 0  # bytes of tail the records that `data` completes end at
        while True:
            try:
                skipper.skip()
            except msgpack.OutOfData:
                break
            whole = skipper.tell() - self._tail_offset
        if len(tail) - whole > MAX_BLOCK_BYTES:
            raise _BadData(f"a record longer than {MAX_BLOCK_BYTES} bytes")
        if not whole:
            return [[]]
        self._unpacker.feed(tail[:whole])
        del tail[:whole]
        self._tail_offset += whole
        counter = self._counter
        if counter.pos >= whole:  # it counted past the records read: it goes on from there
            counter.pos -= whole
            counter.start -= whole
        else:
            self._counter = _ValueCounter(many=True)
        records = list(self._unpacker)
        if self._first_raw and records:
            self._first_raw = False
            return [records[:1], [_typed_record(r) for r in records[1:]]]
        return [[_typed_record(r) for r in records]]

    def finish(self) -> None:
        if self._tail:
            raise _BadData("ends inside a record")


def _typed_record(record: Any) -> Record:
    """A format 1 or 2 record as format 3 decodes it. Format 1 (and early 2)
    wrote input ids as a list of ints."""
    if type(record) is dict and record.get("t") == ITER:
        for item in record.get("inputs", ()):
            if type(item) is dict and type(item.get("input_ids")) is list:
                item["input_ids"] = pack_ids(item["input_ids"])
    return _typed(record)


def _typed(record: Any) -> Record:
    """A record of plain values as its type; a field the type refuses is bad
    data naming the iteration and the field."""
    try:
        typed: Record = msgspec.convert(record, Record)
    except msgspec.ValidationError as e:
        i = record.get("i") if type(record) is dict else None
        raise _BadData(f"iteration {i}: {e}" if type(i) is int else str(e)) from None
    return typed


class _BlockStream:
    """Format 3: a frame's bytes are blocks, each its byte length (a msgpack
    uint) then a msgpack array of records; a block is decoded once whole."""

    _typed = msgspec.msgpack.Decoder(list[Record], ext_hook=_refuse_ext)
    _plain = msgspec.msgpack.Decoder(list, ext_hook=_refuse_ext)  # the header's frame

    def __init__(self, header: bool) -> None:
        self._decoder = self._plain if header else self._typed
        self._header = header  # the header's frame holds the header alone
        # A block that a later chunk completes, grown in place (copying it
        # whole on every read would be quadratic), and its size with the length
        # prefix: 0 while that prefix itself is cut.
        self._pending = bytearray()
        self._pending_size = 0

    def feed(self, data: bytes) -> Iterator[list[Any]]:
        """The blocks that `data` completes, each a list of records. Blocks
        are decoded where they lie in `data` (copying every chunk through a
        buffer makes prompt-heavy traces read 1.2x to 1.5x slower)."""
        pending = self._pending
        if pending:
            if not self._pending_size:  # a cut length prefix: a few bytes
                data = bytes(pending) + data
                pending.clear()
            else:
                missing = self._pending_size - len(pending)
                pending += data[:missing]
                if len(pending) < self._pending_size:
                    return
                self._pending = bytearray()
                self._pending_size = 0
                data = data[missing:]
                with memoryview(pending) as view:
                    yield self._decode(view[_prefix_size(pending[0]):])
        start = 0
        size = len(data)
        with memoryview(data) as view:
            while start < size:
                marker = view[start]
                if marker < 0x80:  # positive fixint
                    head, length = 1, marker
                elif marker in _UINT_SIZES:
                    head = 1 + _UINT_SIZES[marker]
                    if start + head > size:
                        self._pending += view[start:]
                        break
                    length = int.from_bytes(view[start + 1:start + head], "big")
                    if length > MAX_BLOCK_BYTES:
                        raise _BadData(f"a block declares {length} bytes, more than the "
                                       f"{MAX_BLOCK_BYTES} a trace block may hold")
                else:
                    raise _BadData(f"a block must start with its length, found byte 0x{marker:02x}")
                end = start + head + length
                if end > size:
                    self._pending += view[start:]
                    self._pending_size = head + length
                    break
                records = self._decode(view[start + head:end])
                start = end
                yield records

    def _decode(self, data: memoryview) -> list[Any]:
        if len(data) > MAX_BLOCK_ITEMS:
            _ValueCounter(many=False).walk(data, "block")
        try:
            records = _decode_without_gc_passes(self._decoder, data)
        except msgspec.ValidationError:
            # The block's records one by one, to name the iteration (bad
            # input only; the block was counted before the first decode).
            for record in self._plain.decode(data):
                _typed(record)
            raise
        if not records:
            raise _BadData("a block of no records")  # the writer never writes one
        if self._header:
            if len(records) > 1:
                raise _BadData("the header's frame holds more than the header")
            self._header = False
        elif self._decoder is self._plain:
            raise _BadData("the header's frame holds more than the header")
        return records

    def finish(self) -> None:
        if self._pending:
            raise _BadData("ends inside a block")


def _prefix_size(marker: int) -> int:
    return 1 if marker < 0x80 else 1 + _UINT_SIZES[marker]


def _decode_without_gc_passes(decoder: msgspec.msgpack.Decoder[list[Any]], data: memoryview) -> list[Any]:
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


class TraceReader:
    """Iterate a trace: `header` is read on open, `iterations()` streams the
    body, and `end` holds the end record once the body has been read.

    A torn, corrupt or inconsistent trace raises TraceError naming the frame
    and its byte offset, or the iteration; everything before it has already
    been yielded. Only a read that ends without TraceError has read the whole
    trace: `end` set and nothing after it. With keep_torn, `torn_records`
    holds the checked records of the frame being read and `good_bytes` where
    the last whole frame ends (what seal_incomplete keeps).
    """

    def __init__(self, path: str, *, keep_torn: bool = False) -> None:
        # A directory or a run's name prefix reads the chain of files a
        # rotating capture wrote (trace/format.py, Segment) as one trace.
        self._links = chain_paths(path)
        self._keep_torn = keep_torn
        self.file_bytes = 0
        self.raw_bytes = 0
        self.frames = 0
        self._open(self._links[0])
        try:
            self.header: Header = self._check_header(next(self._records, None))
            self._first_segment = self._check_segment(self.header, 0)
        except TraceError:
            self.close()
            raise

    def _open(self, path: str) -> None:
        self.path = path
        try:
            self._file = open(path, "rb", buffering=1 << 16)
        except OSError as e:
            raise TraceError(f"cannot open trace {path}: {e.strerror}") from None
        self.file_bytes += os.fstat(self._file.fileno()).st_size
        self.good_bytes = 0  # end of the last frame that ended and whose records all checked
        self.torn_records: list[Record] = []  # with keep_torn: records of the frame being read that checked
        self.end: Optional[End] = None
        self.format: Optional[int] = None
        self._header_frame_blocks = False  # the header came in a frame of blocks (format 3)
        self._header_frame_checksummed = False
        self._records = self._iter_records()

    def _check_segment(self, header: Header, index: int) -> Segment:
        """The counts this file numbers on from: zero for a whole trace and a
        chain's first link; a later link must be the one expected."""
        seg = header.segment
        if seg is None:
            if len(self._links) > 1:
                raise TraceError(f"{self.path}: not part of a chain of trace files (no segment in its header)")
            return Segment(run="")
        if len(self._links) > 1 and seg.index != index:
            raise TraceError(f"{self.path}: link {seg.index} of its recording where link {index} belongs")
        if len(self._links) > 1 and index == 0 and (seg.iterations or seg.forwards or seg.requests):
            raise TraceError(f"{self.path}: the chain's first link numbers on from {seg}")
        return seg

    def _next_link(self, end: End) -> Optional[Segment]:
        """After a link's end record: open the next link of the chain and
        check that it continues this one; None after the last link."""
        index = self._links.index(self.path) + 1
        if index == len(self._links):
            return None
        if end.complete:
            raise TraceError(f"{self.path}: the recording ended here, but {self._links[index]} follows")
        first = self.header
        self._file.close()
        self._open(self._links[index])
        header = self._check_header(next(self._records, None))
        seg = self._check_segment(header, index)
        if (seg.run != self._first_segment.run or header.format != first.format
                or (seg.iterations, seg.forwards, seg.requests) != (end.iterations, end.forwards, end.requests)):
            raise TraceError(f"{self.path}: does not continue {self._links[index - 1]} (starts at "
                             f"iteration {seg.iterations}, forward {seg.forwards}, request {seg.requests} "
                             f"of run {seg.run!r}; that one ended at {end.iterations}, {end.forwards}, "
                             f"{end.requests})")
        return seg

    def _check_header(self, first: Any) -> Header:
        path = self.path
        if first is None:
            raise TraceError(f"{path}: empty file, not a trace")
        if type(first) is not dict or first.get("t") != HEADER:
            raise TraceError(f"{path}: does not start with a trace header")
        version = first.get("format")
        if version not in READABLE_VERSIONS or type(version) is not int:
            newer = type(version) is int and version > FORMAT_VERSION
            hint = ("it was written by a newer sgl-replay; upgrade sgl-replay to read it"
                    if newer else "this sgl-replay cannot migrate it")
            raise TraceError(f"{path}: trace format version {version!r}, this sgl-replay "
                             f"reads {list(READABLE_VERSIONS)}: {hint}")
        if self._header_frame_blocks != (version == 3):
            raise TraceError(f"{path}: frame 0 at byte 0: a format {version} header in "
                             f"{'blocks' if self._header_frame_blocks else 'loose records'}")
        if version == 3 and not self._header_frame_checksummed:
            raise TraceError(f"{path}: frame 0 at byte 0: no content checksum (format 3 frames carry one)")
        self.format = version
        try:
            header = msgspec.convert(first, Header)
        except _DECODE_ERRORS as e:  # msgspec.ValidationError is a ValueError
            raise TraceError(f"{path}: bad header ({_one_line(e)})") from None
        _check_plain_header(first, path)
        return header

    def __enter__(self) -> "TraceReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def iterations(self) -> Iterator[Iteration]:
        """Yield iteration records in order; stop at the end record, then
        check that nothing follows it. Every batch comes with its `reqs`,
        filled in where the trace left them out because they repeat the
        previous batch's (the lists are shared: do not mutate them).

        A record is yielded only once it has been checked (TraceError names
        the iteration otherwise), so consumers may rely on:
        - iteration numbers i >= 0 and strictly increasing;
        - every field of the type trace/format.py gives it (msgspec checks
          those as it decodes: an input is one of the Input types, request
          numbers and output lengths are >= 0, ...); requests are numbered by
          their generate input's position in the trace;
        - a generate input's input_ids are a whole number of int32s (or
          None); an abort's rid is None only with all;
        - every batch's reqs, "chunked", finished and retracted entries are
          request numbers below the count of generate inputs so far, this
          iteration's included; "new" and "cached" are both present or both
          absent, and as long as reqs;
        - the trace ends with the end record (nothing after it), which agrees:
          iterations >= last i + 1, forwards == last
          batch's fwd + 1 (0 without batches), requests == generate inputs.
        The hot loop of every reader: keep it lean."""
        keep_torn = self._keep_torn
        seg: Optional[Segment] = self._first_segment
        while seg is not None:
            yield from self._link_iterations(seg, keep_torn)
            assert self.end is not None  # a link's records end only at its end record
            seg = self._next_link(self.end)

    def _link_iterations(self, seg: Segment, keep_torn: bool) -> Iterator[Iteration]:
        """One file's records, numbered on from `seg`'s counts."""
        path = self.path
        last_reqs = None
        last_i = seg.iterations - 1
        last_fwd = seg.forwards - 1
        requests = seg.requests  # generate inputs so far
        for record in self._records:
            if type(record) is Iteration:
                i = record.i
                if i <= last_i:
                    raise TraceError(f"{path}: iteration {i}: follows iteration {last_i}")
                last_i = i
                if record.inputs:
                    requests = _check_inputs(record, requests, path)
                for batch in record.batches:
                    reqs = batch.reqs
                    if reqs is None:
                        if last_reqs is None:
                            raise TraceError(f"{path}: iteration {i}: a batch repeats requests "
                                             f"before any were named")
                        batch.reqs = last_reqs
                    else:  # checked once: later batches share the list, requests only grow
                        if reqs and max(reqs) >= requests:
                            _bad_request(record, reqs, requests, path)
                        last_reqs = reqs
                    if batch.new is not None or batch.cached is not None or batch.chunked is not None:
                        _check_batch(record, batch, requests, path)
                    last_fwd = batch.fwd
                if record.finished or record.retracted:
                    _check_finished_and_retracted(record, requests, path)
                if keep_torn:
                    self.torn_records.append(record)
                yield record
            elif type(record) is End:
                _check_end(record, last_i, last_fwd, requests, path)
                self.end = record
                if keep_torn:
                    self.torn_records.append(record)
                for extra in self._records:  # ends the frame, or finds what follows
                    raise TraceError(f"{path}: a record after the end record: {str(extra)[:80]}")
                return
            else:
                raise TraceError(f"{path}: unexpected record {str(record)[:80]}")
        raise TraceError(f"{path}: ends at byte {self.good_bytes} without the end record "
                         f"(a recording cut short: `sgl-replay seal` closes it)")

    def _iter_records(self) -> Iterator[Any]:
        """Records as their blocks decompress, frame after frame. Records of a
        frame that has not ended (a torn tail) are yielded too; with
        keep_torn, the current frame's checked records stay in
        `torn_records` until it ends (seal_incomplete rewrites them)."""
        read = self._file.read
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES)
        offset = 0  # where the current frame starts in the file
        index = 0
        while True:
            start = read(5)  # magic number and frame header descriptor
            if not start:
                return
            where = f"{self.path}: frame {index} at byte {offset}"
            if self.end is not None:
                raise TraceError(f"{self.path}: {self.file_bytes - offset} bytes after the end "
                                 f"record, from byte {offset}")
            if start[:4] != _ZSTD_MAGIC[:len(start)]:
                raise TraceError(f"{where}: not a zstd frame")
            if len(start) < 5:
                raise TraceError(f"{where}: truncated (file ends in the frame header)")
            try:
                frame_header = start + read(zstandard.frame_header_size(start) - 5)
                params = zstandard.get_frame_parameters(frame_header)
            except zstandard.ZstdError as e:
                raise TraceError(f"{where}: bad frame header ({_one_line(e)})") from None
            if params.dict_id:
                raise TraceError(f"{where}: needs zstd dictionary {params.dict_id}")
            if params.window_size > MAX_WINDOW_BYTES:
                raise TraceError(f"{where}: asks for a {params.window_size}-byte window, "
                                 f"more than the {MAX_WINDOW_BYTES} allowed")
            if index == 0:
                self._header_frame_checksummed = params.has_checksum
            elif self.format == 3 and not params.has_checksum:
                raise TraceError(f"{where}: no content checksum (format 3 frames carry one)")
            decompress = dctx.decompressobj().decompress
            stream = None  # for the header's frame, known from its first byte
            if index > 0:
                stream = _BlockStream(header=False) if self.format == 3 else _RecordStream(False)
            size = len(frame_header)
            # format 3's header frame (one record): handed out once its checksum checked out
            held = []
            try:
                decompress(frame_header)
                last = False
                while not last:
                    block_header = read(3)
                    value = int.from_bytes(block_header, "little")
                    last = bool(value & 1)
                    kind = (value >> 1) & 3
                    length = 1 if kind == 1 else value >> 3
                    if len(block_header) < 3:
                        raise TraceError(f"{where}: truncated (file ends mid-frame)")
                    if kind == _RESERVED_BLOCK or value >> 3 > ZSTD_BLOCK_MAX:
                        raise TraceError(f"{where}: corrupt (bad zstd block header at byte {offset + size})")
                    block = read(length)
                    if len(block) < length:
                        raise TraceError(f"{where}: truncated (file ends mid-frame)")
                    size += 3 + length
                    chunk = decompress(block_header + block)
                    if not chunk:
                        continue
                    self.raw_bytes += len(chunk)
                    if stream is None:
                        self._header_frame_blocks = not (0x80 <= chunk[0] <= 0x8F or chunk[0] in (0xDE, 0xDF))
                        stream = _BlockStream(header=True) if self._header_frame_blocks else _RecordStream(True)
                    # `records` keeps the last block until the next one is
                    # decoded and stored: freed only then, its objects offset
                    # the new block's in the collector's young count, and no
                    # GC pass scans each new block (146 passes instead of 1 on
                    # 100k records; decoding into a list, or dropping the
                    # block sooner, reads 1.3x slower)
                    for records in stream.feed(chunk):
                        if index == 0 and self._header_frame_blocks:
                            held += records
                        else:
                            yield from records
                if params.has_checksum:
                    checksum = read(4)
                    size += len(checksum)
                    if len(checksum) < 4:
                        raise TraceError(f"{where}: truncated (file ends in the frame's checksum)")
                    decompress(checksum)
                if stream is not None:
                    stream.finish()
                yield from held
            except zstandard.ZstdError as e:
                raise TraceError(f"{where}: corrupt ({_one_line(e)})") from None
            except _BadData as e:
                raise TraceError(f"{where}: bad record data ({e})") from None
            except _DECODE_ERRORS as e:
                raise TraceError(f"{where}: bad record data ({type(e).__name__}: {_one_line(e)})") from None
            offset += size
            self.good_bytes = offset
            self.frames += 1
            index += 1
            self.torn_records = []


_LINK_NAME = re.compile(r"^(?P<run>.+)\.(?P<index>\d{4,})" + re.escape(SEGMENT_SUFFIX) + "$")


def chain_paths(path: str) -> list[str]:
    """The files a trace path names, in order: a file is itself; a directory
    holding one recording, or a recording's name prefix (DIR/RUN for files
    DIR/RUN.0000.sglt, DIR/RUN.0001.sglt, ...), is that recording's chain.
    The link numbers must run 0, 1, 2, ... without a gap."""
    if os.path.isfile(path) or not (os.path.isdir(path) or os.path.isdir(os.path.dirname(path) or ".")):
        return [path]
    directory, prefix = (path, None) if os.path.isdir(path) else (os.path.dirname(path) or ".", os.path.basename(path))
    runs: dict[str, dict[int, str]] = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise TraceError(f"cannot list {directory}: {e.strerror}") from None
    for name in names:
        m = _LINK_NAME.match(name)
        if m and (prefix is None or m["run"] == prefix):
            runs.setdefault(m["run"], {})[int(m["index"])] = os.path.join(directory, name)
        elif prefix is None and name.endswith(SEGMENT_SUFFIX):
            runs.setdefault(name, {})[0] = os.path.join(directory, name)
    if not runs:
        if prefix is None:
            raise TraceError(f"{path}: a directory with no trace in it")
        return [path]  # the open fails, naming it
    if len(runs) > 1:
        shown = ", ".join(os.path.join(directory, r) for r in list(runs)[:3])
        raise TraceError(f"{path}: holds {len(runs)} recordings; name one ({shown}{', ...' if len(runs) > 3 else ''})")
    (links,) = runs.values()
    missing = next((k for k in range(len(links)) if k not in links), None)
    if missing is not None:
        raise TraceError(f"{path}: link {missing} of the recording is missing ({len(links)} files, "
                         f"numbered up to {max(links)})")
    return [links[k] for k in range(len(links))]


_PLAIN_SCALARS = (str, int, float, bool, bytes, type(None))


def _check_plain_header(header: dict[str, Any], path: str) -> None:
    """Every map in the header (engine_args, model.config, ...) keyed by
    strings, and every value a plain one: what its consumers sort, print,
    compare and write back (a timestamp, the one ext value msgspec decodes
    itself, is not one)."""
    stack: list[tuple[Any, str]] = [(header, "header")]
    items: Iterable[tuple[Any, Any]]
    while stack:
        value, where = stack.pop()
        if type(value) is dict:
            for key in value:
                if type(key) is not str:
                    raise TraceError(f"{path}: bad header (a map key {str(key)[:40]} in {where}: "
                                     f"keys are strings)")
            items = value.items()
        else:
            items = ((None, item) for item in value)
        for key, item in items:
            if type(item) in _PLAIN_SCALARS:
                continue
            place = where if key is None else " ".join(f"{where}.{key}".split())[:80]
            if type(item) is not dict and type(item) is not list:
                raise TraceError(f"{path}: bad header ({place}: a {type(item).__name__}, not a plain value)")
            stack.append((item, place))


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200]


def _bad_request(record: Iteration, numbers: Iterable[int], requests: int, path: str) -> NoReturn:
    bad = next(n for n in numbers if n >= requests)
    raise TraceError(f"{path}: iteration {record.i}: request {bad} named, but only {requests} "
                     f"generate inputs so far")


def _check_inputs(record: Iteration, requests: int, path: str) -> int:
    """What an input's type cannot say: a generate input's ids are whole
    int32s, and an abort names its request unless it aborts all. Returns the
    count of generate inputs including this record's."""
    for item in record.inputs:
        if type(item) is GenerateInput:
            if item.input_ids is not None and len(item.input_ids) % 4:
                raise TraceError(f"{path}: iteration {record.i}: bad generate input (input_ids of "
                                 f"{len(item.input_ids)} bytes, not whole int32s): {str(item)[:80]}")
            requests += 1
        elif type(item) is AbortInput and item.rid is None and not item.all:
            raise TraceError(f"{path}: iteration {record.i}: bad abort input (no rid, and not all): "
                             f"{str(item)[:80]}")
    return requests


def _check_batch(record: Iteration, batch: Batch, requests: int, path: str) -> None:
    """An extend batch's per-request lists, and the chunked request."""
    count = len(batch.reqs)
    new, cached, chunked = batch.new, batch.cached, batch.chunked
    if (new is not None or cached is not None) and (
            new is None or cached is None or len(new) != count or len(cached) != count):
        raise TraceError(f"{path}: iteration {record.i}: batch {batch.fwd}: {count} requests, "
                         f"but new and cached tokens for {None if new is None else len(new)} "
                         f"and {None if cached is None else len(cached)}")
    if chunked is not None and chunked >= requests:
        _bad_request(record, (chunked,), requests, path)


def _check_finished_and_retracted(record: Iteration, requests: int, path: str) -> None:
    named = [entry[0] for entry in record.finished]
    named += record.retracted
    if max(named) >= requests:
        _bad_request(record, named, requests, path)


def _check_end(end: End, last_i: int, last_fwd: int, requests: int, path: str) -> None:
    if end.iterations < last_i + 1 or end.forwards != last_fwd + 1 or end.requests != requests:
        raise TraceError(f"{path}: the end record says {end.iterations} iterations, {end.forwards} "
                         f"forwards, {end.requests} requests; the trace holds iterations up to "
                         f"{last_i}, forwards up to {last_fwd}, {requests} generate inputs")
