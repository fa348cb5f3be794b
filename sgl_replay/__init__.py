"""sgl-replay: deterministic record/replay and trace-diff for the SGLang scheduler.

record -> trace -> replay -> diff:
    sgl_replay.record   the recorder inside the scheduler, workloads, `record()`
    sgl_replay.trace    the trace file: streaming msgpack in zstd frames
    sgl_replay.replay   feeding a trace's inputs back at the same iterations
    sgl_replay.diff     comparing two traces, no engine needed
"""

__version__ = "0.1.0"
