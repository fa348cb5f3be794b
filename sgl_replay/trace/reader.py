"""Streaming trace reader. Memory stays at one frame, whatever the trace length.

Loading a trace never runs code: msgpack maps of plain values, nothing else.
"""

from __future__ import annotations

import os
from typing import Iterator, Optional

import msgpack
import zstandard

from sgl_replay.trace.format import END, FORMAT_VERSION, HEADER, ITER, READABLE_VERSIONS, pack_ids

READ_CHUNK = 1 << 14  # compressed bytes per read: bounds what one read decompresses to


class TraceError(Exception):
    """A trace that cannot be read; the message is one line naming where."""


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

    def iterations(self) -> Iterator[dict]:
        """Yield iteration records in order; stop at the end record. Every
        batch comes with its "reqs", filled in where the trace left it out
        because it repeats the previous batch's (the lists are shared: do not
        mutate them). The hot loop of every reader: keep it lean."""
        last_reqs = None
        for record in self._records:
            try:
                kind = record["t"]
            except (TypeError, KeyError, IndexError):
                kind = None
            if kind == ITER:
                if "inputs" in record:  # format 1 (and early 2) wrote input ids as a list
                    for item in record["inputs"]:
                        if type(item.get("input_ids")) is list:
                            item["input_ids"] = pack_ids(item["input_ids"])
                batches = record.get("batches")
                if batches:
                    for batch in batches:
                        reqs = batch.get("reqs")
                        if reqs is not None:
                            last_reqs = reqs
                        elif last_reqs is None:
                            raise TraceError(f"{self.path}: iteration {record.get('i')}: a batch "
                                             f"repeats requests before any were named")
                        else:
                            batch["reqs"] = last_reqs
                yield record
            elif kind == END:
                self.end = record
                return
            else:
                raise TraceError(f"{self.path}: unexpected record {str(record)[:80]}")

    def _iter_records(self) -> Iterator[dict]:
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
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
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
                unpacker.feed(chunk)
                try:
                    if self._keep_torn:
                        for record in unpacker:
                            self.torn_records.append(record)
                            yield record
                    else:
                        yield from unpacker
                except (ValueError, msgpack.ExtraData, msgpack.FormatError,
                        msgpack.StackError) as e:
                    raise TraceError(f"{self.path}: frame {index} at byte {offset}: "
                                     f"bad record data ({e})") from None
                if dobj.eof:
                    break
                data = self._file.read(READ_CHUNK)
                if not data:
                    raise TraceError(f"{self.path}: frame {index} at byte {offset}: "
                                     f"truncated (file ends mid-frame)")
            if unpacker.read_bytes(1):
                raise TraceError(f"{self.path}: frame {index} at byte {offset}: "
                                 f"ends inside a record")
            data = dobj.unused_data or self._file.read(READ_CHUNK)
            offset += fed - len(dobj.unused_data)
            self.good_bytes = offset
            self.frames += 1
            index += 1
