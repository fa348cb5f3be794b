"""Streaming trace writer: msgpack records in zstd frames, flushed in blocks.

A frame holds up to FRAME_BYTES of records and keeps one compression
context, so small records compress against everything before them in the
frame. The records between two flushes make one block: its byte length, then
a msgpack array of them (the reader decodes a block in one call). Every flush
also ends a zstd block: what was written up to there is decodable from the
file at once, and every frame's end is fsynced. A crash loses at most the
records not yet flushed (FLUSH_INTERVAL_S of a run at most); `seal_incomplete`
re-closes the torn last frame, writing a new file and renaming it over the
old, so that sealing interrupted or out of space loses nothing. A write error
(a full disk: ENOSPC, EFBIG) surfaces as OSError from write/flush/close, and
the writer takes no more records: what was flushed before stays readable. A
finished trace is plain zstd (`zstd -d`).

A capture inside a user's server writes in the background (`background=True`):
the scheduler loop only packs records; compression, file writes, fsyncs and
sealing run on a thread of the writer's own (zstd and the file calls release
the GIL), so a slow or failing disk never stalls serving. A backlog past
MAX_BACKLOG_BYTES fails the writer rather than hold memory or wait.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any, BinaryIO, Optional, Union

import msgpack
import msgspec
import zstandard

from sgl_replay.trace.format import FORMAT_VERSION, End, GenerateInput, Header, Iteration
from sgl_replay.trace.reader import MAX_BLOCK_BYTES, TraceError, TraceReader

logger = logging.getLogger(__name__)

FRAME_BYTES = 1 << 22  # uncompressed bytes per frame (one compression context)
BLOCK_BYTES = 1 << 16  # flush at least this often, by size...
FLUSH_INTERVAL_S = 0.5  # ...and by time: a slow run still reaches the disk this often
COMPRESSION_LEVEL = 3
MAX_BACKLOG_BYTES = 64 << 20  # packed bytes a background writer may have waiting for the disk
# The most a record may take: a block of it alone (array header, at most 5
# bytes) stays within what the reader accepts.
MAX_RECORD_BYTES = MAX_BLOCK_BYTES - 5


class TraceWriter:
    def __init__(self, path: str, header: Header, *, level: int = COMPRESSION_LEVEL,
                 background: bool = False) -> None:
        self.path = path
        self._file: Optional[BinaryIO] = open(path, "wb")
        # the checksum makes a corrupt frame fail loudly at its end, not decode to garbage
        self._compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
        self._encoder = msgspec.msgpack.Encoder()  # msgpack's bytes, a few times faster than msgpack.Packer
        self._buffer = bytearray()  # the block's records, packed
        self._buffer_records = 0
        self._frame: Optional[zstandard.ZstdCompressionObj] = None  # the open frame's compressor
        self._frame_raw = 0
        self._last_flush: Optional[float] = None  # on the clock flush_if_due is given
        self._last_reqs: Optional[list[int]] = None  # the previous forward batch's "reqs"
        self._failed: Optional[OSError] = None  # the error that stopped this writer taking records
        self._disk_error: Optional[OSError] = None  # ... when it was the disk's: nothing more is written
        self.raw_bytes = 0
        self.file_bytes = 0  # compressed bytes handed to the file
        self._disk: Optional[_DiskThread] = _DiskThread(self) if background else None
        # The header travels alone in the first frame: `show` reads it without
        # decompressing the body. The layout is this writer's: so is the version.
        self.write(msgspec.to_builtins(msgspec.structs.replace(header, format=FORMAT_VERSION)))
        self.flush(end_frame=True)

    def write(self, record: Union[dict[str, Any], Iteration]) -> None:
        """Append a record: a map as the recorder builds it, or a record as a
        reader yields it. A batch whose "reqs" equal the previous batch's
        is written without them (most decode steps); the reader fills them
        back in. The caller's record is not changed."""
        if self._failed is not None:
            raise OSError(f"trace {self.path}: writing stopped at an earlier error: {self._failed}")
        plain = msgspec.to_builtins(record, builtin_types=(bytes,)) if isinstance(record, Iteration) else record
        batches = plain.get("batches")
        if batches:
            plain = self._leave_out_repeated_reqs(plain, batches)
        packed = self._encoder.encode(plain)
        if len(packed) > MAX_RECORD_BYTES:
            raise ValueError(f"a record of {len(packed)} bytes: a trace block holds at most "
                             f"{MAX_RECORD_BYTES}")
        if len(self._buffer) + len(packed) > MAX_RECORD_BYTES:
            self.flush()
        self._buffer += packed
        self._buffer_records += 1
        self.raw_bytes += len(packed)
        if len(self._buffer) >= BLOCK_BYTES:
            self.flush()

    def _leave_out_repeated_reqs(self, record: dict[str, Any], batches: list[dict[str, Any]]) -> dict[str, Any]:
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
        """Flush once FLUSH_INTERVAL_S has passed on the caller's clock since
        the last time this did (a timed replay passes its modelled clock, so
        where its blocks end, and so its bytes, depend on nothing of this
        machine's)."""
        if self._last_flush is None:
            self._last_flush = now
        elif self._buffer and now - self._last_flush >= FLUSH_INTERVAL_S:
            self.flush()
            self._last_flush = now

    def flush(self, *, end_frame: bool = False) -> None:
        """Put everything written on disk, decodable; end the frame when asked
        or when it is full, and fsync then (not at every flush: this runs in
        the scheduler loop). In the background: hand it to the disk thread."""
        if self._failed is not None:
            raise OSError(f"trace {self.path}: writing stopped at an earlier error: {self._failed}")
        block = None
        if self._buffer:
            block = pack_block(self._buffer, self._buffer_records)
            self._frame_raw += len(block)
            self._buffer.clear()
            self._buffer_records = 0
            end_frame = end_frame or self._frame_raw >= FRAME_BYTES
        if end_frame:
            self._frame_raw = 0
        if block is None and not end_frame:
            return
        if self._disk is None:
            self._emit(block, end_frame)
        elif self._disk.backlog + len(block or b"") > MAX_BACKLOG_BYTES:
            self._failed = OSError(f"the disk is not keeping up: {self._disk.backlog / 2**20:.1f} MiB of "
                                   f"trace waiting to be written")
            raise self._failed
        else:
            self._disk.put(("block", block, end_frame))

    def _emit(self, block: Optional[bytes], end_frame: bool) -> None:
        """Compress, write and (at a frame's end) fsync: inline, or on the
        disk thread."""
        if self._disk_error is not None:
            raise OSError(f"trace {self.path}: writing stopped at an earlier error: {self._disk_error}")
        out = b""
        if block:
            if self._frame is None:
                self._frame = self._compressor.compressobj()
            out = self._frame.compress(block)
            out += self._frame.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH if end_frame
                                     else zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        elif end_frame and self._frame is not None:
            out = self._frame.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        else:
            end_frame = False  # no frame open: nothing to end
        if end_frame:
            self._frame = None
        if out:
            assert self._file is not None  # closed only after its last frame is written
            try:
                self._file.write(out)
                self.file_bytes += len(out)
                self._file.flush()
                if end_frame:
                    os.fsync(self._file.fileno())
            except OSError as e:
                # part of `out` may be on disk: anything written after it
                # would not decode, so this writer stops here
                self._disk_error = e
                if self._failed is None:
                    self._failed = e
                raise

    def close(self, end: End, *, wait: bool = True) -> None:
        """Write the end record, end the frame, fsync (flush does at a frame's
        end) and close; the file is closed even when writing fails. In the
        background, `wait=False` returns at once: the disk thread finishes
        (and seals the trace if the disk fails it)."""
        if self._disk is not None:
            self.write(msgspec.to_builtins(end))
            self.flush(end_frame=True)
            self._disk.put(("close", None, False))
            self._disk.stop(wait)
            if wait and self._failed is not None:
                raise self._failed
            return
        try:
            self.write(msgspec.to_builtins(end))
            self.flush(end_frame=True)
        finally:
            self._close_file()

    def abandon(self, reason: str, *, wait: bool = True) -> None:
        """The recording ends here without its end record (the writer failed,
        or the recorder did): close the file and seal what reached the disk
        as incomplete, with `reason`. In the background, `wait=False` returns
        at once: the disk thread writes what was queued, then seals."""
        if self._disk is not None:
            self._disk.put(("abandon", reason, False))
            self._disk.stop(wait)
            return
        self._close_file()
        seal_incomplete(self.path, reason)

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None


class _DiskThread:
    """A background writer's thread: runs its compression, writes, fsyncs,
    close and sealing in order, off the scheduler loop. Errors stay in the
    writer (`_failed`): the loop sees them at its next write, and a close
    or abandon that finds one seals the trace."""

    def __init__(self, writer: TraceWriter) -> None:
        self.writer = writer
        self.backlog = 0  # packed bytes queued, not yet written
        self._lock = threading.Lock()
        # ("block", packed bytes or None, end frame) | ("close", None, False) | ("abandon", reason, False); None: stop
        self._queue: queue.SimpleQueue[Optional[tuple[str, Any, bool]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sgl-replay-writer", daemon=True)
        self._thread.start()

    def put(self, job: tuple[str, Any, bool]) -> None:
        if job[0] == "block" and job[1]:
            with self._lock:
                self.backlog += len(job[1])
        self._queue.put(job)

    def stop(self, wait: bool) -> None:
        self._queue.put(None)
        if wait:
            self._thread.join()

    def _run(self) -> None:
        writer = self.writer
        while True:
            job = self._queue.get()
            if job is None:
                return
            kind, data, end_frame = job
            try:
                if kind == "block":
                    try:
                        if writer._disk_error is None:
                            writer._emit(data, end_frame)
                    finally:
                        with self._lock:
                            self.backlog -= len(data or b"")
                    continue
                writer._close_file()
                if kind == "abandon" or writer._disk_error is not None:
                    error = writer._disk_error
                    reason = data or f"recorder failed: {type(error).__name__}: {error}"
                    seal_incomplete(writer.path, reason[:500])
                    logger.warning("sgl-replay: trace %s sealed as incomplete (%s)", writer.path, reason)
            except Exception as e:  # noqa: BLE001 — kept for the loop, which stops recording
                if writer._disk_error is None:
                    writer._disk_error = e if isinstance(e, OSError) else OSError(f"{type(e).__name__}: {e}")
                if writer._failed is None:
                    writer._failed = writer._disk_error
                if kind != "block":
                    logger.error("sgl-replay: trace %s left unsealed: %s: %s", writer.path, type(e).__name__, e)


def pack_block(packed_records: Union[bytes, bytearray], count: int) -> bytes:
    """One block: its byte length (a msgpack uint), then the msgpack array of
    `count` records already packed one after another in `packed_records`."""
    packer = msgpack.Packer()
    array: bytes = packer.pack_array_header(count) + packed_records
    length: bytes = packer.pack(len(array))
    return length + array


def seal_incomplete(path: str, reason: str) -> End:
    """Close a trace whose writer stopped without its end record (crash,
    Ctrl-C, engine death, full disk): keep every record that reads, rewrite
    the torn last frame as a complete one, and append an end record marked
    incomplete with the reason (unless the end record itself was read).
    Returns the end record now in the file.

    Idempotent: a trace that reads whole (complete, or sealed before) is left
    alone and its end record returned. Anything after the first unreadable
    byte is dropped: a torn block, a corrupt frame and what follows it,
    bytes after the end record, end counts that disagree with the records
    (then replaced by counts that agree).

    The sealed trace is written to `path` + ".sealing", fsynced, checked by
    reading it back, renamed over `path`, and the directory fsynced: an
    interruption or a full disk (OSError) leaves `path` as it was. Raises
    TraceError when not even the header is readable, or the trace is of
    format 1 or 2 (only this writer's format is sealed)."""
    return _seal(path, reason)


def _seal(path: str, reason: Optional[str]) -> End:
    """seal_incomplete; a reason of None: the reader's error, what was wrong."""
    with TraceReader(path, keep_torn=True) as reader:
        last_i = last_fwd = -1
        requests = 0
        try:
            for record in reader.iterations():
                last_i = record.i
                if record.batches:
                    last_fwd = record.batches[-1].fwd
                requests += sum(type(x) is GenerateInput for x in record.inputs)
        except TraceError as e:
            problem = e
        else:
            assert reader.end is not None  # a trace reads whole only up to its end record
            return reader.end
        if reader.format != FORMAT_VERSION:
            raise TraceError(f"{path}: a format {reader.format} trace cannot be sealed "
                             f"(only format {FORMAT_VERSION}): {problem}")
        keep, tail = reader.good_bytes, reader.torn_records
        end = reader.end
        if end is None:
            if reason is None:
                reason = "sealed: " + str(problem).removeprefix(f"{path}: ")
            end = End(complete=False, reason=reason, iterations=last_i + 1, forwards=last_fwd + 1,
                      requests=requests)
            tail = [*tail, end]
    _replace_with(path, keep, tail)
    return end


def repair(path: str) -> End:
    """What `sgl-replay seal FILE` runs: seal_incomplete, with a reason that
    says what was wrong, e.g. "sealed: frame 3 at byte 81920: truncated
    (file ends mid-frame)". Same errors; a trace that reads whole is left
    alone."""
    return _seal(path, None)


def _replace_with(path: str, keep: int, tail: list[Union[Iteration, End]]) -> None:
    """Replace `path` by its first `keep` bytes, then a frame of `tail`'s
    records, without ever leaving a half-written file at `path`."""
    sealing = path + ".sealing"
    try:
        with open(path, "rb") as source, open(sealing, "wb") as out:
            left = keep
            while left:
                chunk = source.read(min(left, 1 << 20))
                if not chunk:
                    raise TraceError(f"{path}: changed while being sealed")
                out.write(chunk)
                left -= len(chunk)
            if tail:
                raw = pack_block(b"".join(msgspec.msgpack.encode(r) for r in tail), len(tail))
                out.write(zstandard.ZstdCompressor(level=COMPRESSION_LEVEL, write_checksum=True).compress(raw))
            out.flush()
            os.fsync(out.fileno())
        with TraceReader(sealing) as check:  # a bug here must not replace a trace
            for _ in check.iterations():
                pass
        os.replace(sealing, path)
    except BaseException:
        if os.path.exists(sealing):
            os.unlink(sealing)
        raise
    _fsync_directory(os.path.dirname(os.path.abspath(path)))


def _fsync_directory(directory: str) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
