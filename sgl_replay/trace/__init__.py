from sgl_replay.trace.format import FORMAT_VERSION
from sgl_replay.trace.reader import TraceError, TraceReader
from sgl_replay.trace.writer import TraceWriter, seal_incomplete

__all__ = ["FORMAT_VERSION", "TraceError", "TraceReader", "TraceWriter", "seal_incomplete"]
