"""sgl-replay: deterministic record/replay and trace-diff for the SGLang scheduler.

record -> trace -> replay -> diff, split by the process each part runs in:
    sgl_replay.scheduler  inside sglang's scheduler: plugin, recorder, workloads, scripts
    sgl_replay.runs       the process that drives the engine: record, replay, check
    sgl_replay.trace      the trace file (both sides): streaming msgpack in zstd frames
    sgl_replay.diff       comparing two traces, no engine needed
    sgl_replay.views      a trace as a Perfetto timeline, a diff as an HTML report
"""

__version__ = "0.1.0"
from sgl_replay.trace.format import FORMAT_VERSION
from sgl_replay.trace.reader import TraceError, TraceReader
from sgl_replay.trace.writer import TraceWriter, repair, seal_incomplete

__all__ = ["FORMAT_VERSION", "TraceError", "TraceReader", "TraceWriter", "repair", "seal_incomplete"]
