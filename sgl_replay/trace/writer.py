"""Streaming trace writer: msgpack records in zstd frames, flushed in blocks.

A frame holds up to FRAME_BYTES of records and keeps one compression
context, so small records compress against everything before them in the
frame. The records between two flushes make one block: its byte length, then
a msgpack array of them (the reader decodes a block in one call). Every flush
also ends a zstd block: what was written up to there is decodable from the
file at once. A crash loses at most the records
not yet flushed (FLUSH_INTERVAL_S of a run at most); `seal_incomplete`
re-closes the torn last frame. A finished trace is plain zstd (`zstd -d`).
"""

from __future__ import annotations

import os
import time
from typing import Any, BinaryIO, Optional, Union

import msgpack
import msgspec
import zstandard

from sgl_replay.trace.format import END, FORMAT_VERSION, HEADER, Iteration

FRAME_BYTES = 1 << 22  # uncompressed bytes per frame (one compression context)
BLOCK_BYTES = 1 << 16  # flush at least this often, by size...
FLUSH_INTERVAL_S = 0.5  # ...and by time: a slow run still reaches the disk this often
COMPRESSION_LEVEL = 3


class TraceWriter:
    def __init__(self, path: str, header: dict, *, level: int = COMPRESSION_LEVEL) -> None:
        assert header.get("t") == HEADER
        self.path = path
        self._file: Optional[BinaryIO] = open(path, "wb")
        # the checksum makes a corrupt frame fail loudly at its end, not decode to garbage
        self._compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
        self._packer = msgpack.Packer(use_bin_type=True)
        self._buffer = bytearray()  # the block's records, packed
        self._buffer_records = 0
        self._frame = None  # the open frame's compressor
        self._frame_raw = 0
        self._last_flush = time.monotonic()
        self._last_reqs = None  # the previous forward batch's "reqs"
        self.raw_bytes = 0
        # The header travels alone in the first frame: `show` reads it without
        # decompressing the body. The layout is this writer's: so is the version.
        self.write({"t": HEADER, "format": FORMAT_VERSION,
                    **{k: v for k, v in header.items() if k not in ("t", "format")}})
        self.flush(end_frame=True)

    def write(self, record: Union[dict, Iteration]) -> None:
        """Append a record: a map as the recorder builds it, or a record as a
        reader yields it. A batch whose "reqs" equal the previous batch's
        is written without them (most decode steps); the reader fills them
        back in. The caller's record is not changed."""
        if type(record) is Iteration:
            record = msgspec.to_builtins(record, builtin_types=(bytes,))
        batches = record.get("batches")
        if batches:
            record = self._leave_out_repeated_reqs(record, batches)
        packed = self._packer.pack(record)
        self._buffer += packed
        self._buffer_records += 1
        self.raw_bytes += len(packed)
        if len(self._buffer) >= BLOCK_BYTES:
            self.flush()

    def _leave_out_repeated_reqs(self, record: dict, batches: list) -> dict:
        """The record as written: copied only where a batch loses its "reqs"
        (this runs in the scheduler loop, every iteration)."""
        kept = None
        for k, batch in enumerate(batches):
            reqs = batch.get("reqs")
            if reqs is None:  # the caller left them out already
                continue
            if reqs is self._last_reqs or reqs == self._last_reqs:
                if kept is None:
                    kept = list(batches)
                kept[k] = {key: v for key, v in batch.items() if key != "reqs"}
            else:
                self._last_reqs = reqs
        return record if kept is None else {**record, "batches": kept}

    def flush_if_due(self, now: float) -> None:
        if self._buffer and now - self._last_flush >= FLUSH_INTERVAL_S:
            self.flush()

    def flush(self, *, end_frame: bool = False) -> None:
        """Put everything written on disk, decodable; end the frame when asked
        or when it is full."""
        if self._buffer:
            if self._frame is None:
                self._frame = self._compressor.compressobj()
                self._frame_raw = 0
            block = pack_block(self._buffer, self._buffer_records)
            out = self._frame.compress(block)
            self._frame_raw += len(block)
            self._buffer.clear()
            self._buffer_records = 0
            end_frame = end_frame or self._frame_raw >= FRAME_BYTES
            out += self._frame.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH if end_frame
                                     else zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            if end_frame:
                self._frame = None
            self._file.write(out)
            self._file.flush()
        elif end_frame and self._frame is not None:
            self._file.write(self._frame.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
            self._frame = None
            self._file.flush()
        self._last_flush = time.monotonic()

    def close(self, end: dict) -> None:
        assert end.get("t") == END
        self.write(end)
        self.flush(end_frame=True)
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None


def pack_block(packed_records: bytes, count: int) -> bytes:
    """One block: its byte length (a msgpack uint), then the msgpack array of
    `count` records already packed one after another in `packed_records`."""
    packer = msgpack.Packer()
    array = packer.pack_array_header(count) + packed_records
    return packer.pack(len(array)) + array


def end_record(*, complete: bool, reason: Optional[str], iterations: int,
               forwards: int, requests: int, seconds: Optional[float] = None,
               recorder_seconds: Optional[float] = None) -> dict[str, Any]:
    end = {"t": END, "complete": complete, "reason": reason,
           "iterations": iterations, "forwards": forwards, "requests": requests}
    if seconds is not None:
        end["seconds"] = seconds  # loop time from the first iteration to the last
    if recorder_seconds is not None:
        end["recorder_seconds"] = recorder_seconds  # of which in the recorder's own code
    return end


def seal_incomplete(path: str, reason: str) -> dict:
    """Close a trace whose writer stopped without its end record (crash,
    Ctrl-C, engine death): keep every record that decodes, rewrite the torn
    last frame as a complete one, and append an end record marked incomplete
    with the reason. Returns the end record now in the file. Raises
    TraceError when not even the header made it to disk."""
    from sgl_replay.trace.reader import TraceError, TraceReader

    with TraceReader(path, keep_torn=True) as reader:
        iterations = forwards = requests = 0
        try:
            for record in reader.iterations():
                iterations = record.i + 1
                for batch in record.batches:
                    forwards = batch.fwd + 1
                requests += sum(1 for x in record.inputs if x["type"] == "generate")
        except TraceError:
            pass
        if reader.end is not None:
            return reader.end
        keep, tail = reader.good_bytes, reader.torn_records
    end = end_record(complete=False, reason=reason, iterations=iterations,
                     forwards=forwards, requests=requests)
    records = [*tail, end]
    raw = pack_block(b"".join(msgspec.msgpack.encode(r) for r in records), len(records))
    with open(path, "r+b") as f:
        f.truncate(keep)
        f.seek(keep)
        f.write(zstandard.ZstdCompressor(level=COMPRESSION_LEVEL, write_checksum=True).compress(raw))
        f.flush()
        os.fsync(f.fileno())
    return end
