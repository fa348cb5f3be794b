"""Streaming trace reader. Memory stays at one frame, whatever the trace length.

Loading a trace never runs code: msgpack maps of plain values, nothing else.
"""

from __future__ import annotations

import os
from typing import Iterator, Optional

import msgpack
import zstandard

from sgl_replay.trace.format import END, FORMAT_VERSION, HEADER, ITER, READABLE_VERSIONS

READ_CHUNK = 1 << 16


class TraceError(Exception):
    """A trace that cannot be read; the message is one line naming where."""


class TraceReader:
    """Iterate a trace: `header` is read on open, `iterations()` streams the
    body, and `end` holds the end record once the body has been read.

    A torn or corrupt frame raises TraceError naming the frame and its byte
    offset; everything before it has already been yielded.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._file = open(path, "rb")
        except OSError as e:
            raise TraceError(f"cannot open trace {path}: {e.strerror}") from None
        self.file_bytes = os.fstat(self._file.fileno()).st_size
        self.raw_bytes = 0
        self.frames = 0
        self.good_bytes = 0  # end of the last frame whose records all decoded
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

    def iterations(self) -> Iterator[dict]:
        """Yield iteration records in order; stop at the end record. Every
        batch comes with its "reqs", filled in where the trace left it out
        because it repeats the previous batch's (the lists are shared: do not
        mutate them)."""
        last_reqs = None
        for record in self._records:
            kind = record.get("t") if isinstance(record, dict) else None
            if kind == ITER:
                for batch in record.get("batches", ()):
                    reqs = batch.get("reqs")
                    if reqs is None:
                        if last_reqs is None:
                            raise TraceError(f"{self.path}: iteration {record.get('i')}: a batch "
                                             f"repeats requests before any were named")
                        batch["reqs"] = last_reqs
                    else:
                        last_reqs = reqs
                yield record
            elif kind == END:
                self.end = record
                return
            else:
                raise TraceError(f"{self.path}: unexpected record {str(record)[:80]}")

    def _iter_records(self) -> Iterator[dict]:
        for index, offset, end, content in self._iter_frames():
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
            unpacker.feed(content)
            try:
                yield from unpacker
            except (ValueError, msgpack.ExtraData, msgpack.FormatError,
                    msgpack.StackError) as e:
                raise TraceError(f"{self.path}: frame {index} at byte {offset}: "
                                 f"bad record data ({e})") from None
            if unpacker.tell() != len(content):
                raise TraceError(f"{self.path}: frame {index} at byte {offset}: "
                                 f"ends inside a record")
            self.good_bytes = end

    def _iter_frames(self) -> Iterator[tuple[int, int, int, bytes]]:
        dctx = zstandard.ZstdDecompressor()
        pending = b""
        offset = 0
        index = 0
        while True:
            data = pending or self._file.read(READ_CHUNK)
            if not data:
                return
            dobj = dctx.decompressobj()
            parts = []
            fed = 0
            while True:
                try:
                    parts.append(dobj.decompress(data))
                except zstandard.ZstdError as e:
                    raise TraceError(f"{self.path}: frame {index} at byte {offset}: "
                                     f"corrupt ({e})") from None
                fed += len(data)
                if dobj.eof:
                    break
                data = self._file.read(READ_CHUNK)
                if not data:
                    raise TraceError(f"{self.path}: frame {index} at byte {offset}: "
                                     f"truncated (file ends mid-frame)")
            pending = dobj.unused_data
            content = b"".join(parts)
            end = offset + fed - len(pending)
            self.raw_bytes += len(content)
            self.frames += 1
            yield index, offset, end, content
            offset = end
            index += 1
