"""The trace file, used on both sides of the process boundary: format.py
(typed records), writer.py, reader.py, text.py."""

from sgl_replay.trace.format import FORMAT_VERSION
from sgl_replay.trace.reader import TraceError, TraceReader
from sgl_replay.trace.writer import TraceWriter, repair, seal_incomplete

__all__ = ["FORMAT_VERSION", "TraceError", "TraceReader", "TraceWriter", "repair", "seal_incomplete"]
