"""Streaming trace writer: msgpack records packed into independent zstd frames.

Every frame is complete on disk before the next one starts, so a crash loses
at most the records still buffered (at most FLUSH_INTERVAL_S of a run), and
what was written stays readable by TraceReader and by plain `zstd -d`.
"""

from __future__ import annotations

import os
import time
from typing import Any, BinaryIO, Optional

import msgpack
import zstandard

from sgl_replay.trace.format import END, HEADER

FRAME_BYTES = 1 << 18  # uncompressed bytes per frame: big enough to compress well
FLUSH_INTERVAL_S = 0.5  # a slow run still reaches the disk this often
COMPRESSION_LEVEL = 3


class TraceWriter:
    def __init__(self, path: str, header: dict, *, level: int = COMPRESSION_LEVEL) -> None:
        assert header.get("t") == HEADER
        self.path = path
        self._file: Optional[BinaryIO] = open(path, "wb")
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._packer = msgpack.Packer(use_bin_type=True)
        self._buffer = bytearray()
        self._last_flush = time.monotonic()
        self.raw_bytes = 0
        # The header travels alone in the first frame: `show` reads it without
        # decompressing the body.
        self.write(header)
        self.flush()

    def write(self, record: dict) -> None:
        packed = self._packer.pack(record)
        self._buffer += packed
        self.raw_bytes += len(packed)
        if len(self._buffer) >= FRAME_BYTES:
            self.flush()

    def flush_if_due(self, now: float) -> None:
        if self._buffer and now - self._last_flush >= FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._file.write(self._compressor.compress(bytes(self._buffer)))
            self._file.flush()
            self._buffer.clear()
        self._last_flush = time.monotonic()

    def close(self, end: dict) -> None:
        assert end.get("t") == END
        self.write(end)
        self.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None


def end_record(*, complete: bool, reason: Optional[str], iterations: int,
               forwards: int, requests: int, seconds: Optional[float] = None) -> dict[str, Any]:
    end = {"t": END, "complete": complete, "reason": reason,
           "iterations": iterations, "forwards": forwards, "requests": requests}
    if seconds is not None:
        end["seconds"] = seconds  # loop time from the first iteration to the last
    return end


def seal_incomplete(path: str, reason: str) -> dict:
    """Close a trace whose writer stopped without its end record (crash,
    Ctrl-C, engine death): keep every frame that decodes, drop a torn tail,
    and append an end record marked incomplete with the reason. Returns the
    end record now in the file. Raises TraceError when not even the header
    made it to disk."""
    from sgl_replay.trace.reader import TraceError, TraceReader

    with TraceReader(path) as reader:
        iterations = forwards = requests = 0
        try:
            for record in reader.iterations():
                iterations = record["i"] + 1
                for batch in record.get("batches", ()):
                    forwards = batch["fwd"] + 1
                requests += sum(1 for x in record.get("inputs", ()) if x["type"] == "generate")
        except TraceError:
            pass
        if reader.end is not None:
            return reader.end
        keep = reader.good_bytes
    end = end_record(complete=False, reason=reason, iterations=iterations,
                     forwards=forwards, requests=requests)
    with open(path, "r+b") as f:
        f.truncate(keep)
        f.seek(keep)
        f.write(zstandard.ZstdCompressor(level=COMPRESSION_LEVEL).compress(
            msgpack.packb(end, use_bin_type=True)))
        f.flush()
        os.fsync(f.fileno())
    return end
