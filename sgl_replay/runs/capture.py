"""A capture (a recording or a replay), from the process that drives the
engine: it hands the scheduler its Job, the scheduler writes the trace to
OUT.partial, and this side renames it to OUT once the script is over. When
the script, the engine or the user stops it early, the partial trace is sealed
(every whole frame kept, an end record saying why) before it is renamed. A
trace that was already on disk at OUT is replaced only once the new one exists.
"""

from __future__ import annotations

import os
from typing import Optional

from sgl_replay.job import Job
from sgl_replay.runs import progress
from sgl_replay.runs.engine import Engine
from sgl_replay.runs.errors import EngineDied, EngineError, ScriptFailed, ScriptTimedOut
from sgl_replay.trace.format import End, Source, Workload
from sgl_replay.trace.reader import TraceError, TraceReader
from sgl_replay.trace.writer import seal_incomplete


class CaptureFailed(Exception):
    """A recording or replay that did not finish. `trace` is the sealed,
    readable trace of what happened before, or None if nothing was written."""

    exit_code = 1

    def __init__(self, message: str, trace: Optional[str]) -> None:
        super().__init__(message)
        self.trace = trace


class EngineDiedDuringCapture(CaptureFailed):
    pass


def check_writable(out: str) -> None:
    """Fail before the engine starts, not after the run, on an output path
    that cannot be written."""
    directory = os.path.dirname(os.path.abspath(out)) or "."
    if os.path.isdir(out):
        raise OSError(f"output {out} is a directory")
    if not os.path.isdir(directory):
        raise OSError(f"output directory {directory} does not exist")
    if not os.access(directory, os.W_OK) or (os.path.exists(out) and not os.access(out, os.W_OK)):
        raise OSError(f"output {out} is not writable")


def partial_path(out: str) -> str:
    return os.path.abspath(out) + ".partial"


def run_capture(engine: Engine, script: str, out: str, *, source: Source,
                workload: Optional[Workload] = None, trace: Optional[str] = None,
                argv: Optional[list[str]] = None, timeout_s: Optional[float] = None,
                cost: Optional[dict] = None) -> End:
    """Run a capturing script (sgl_replay.job's RECORD_SCRIPT or
    REPLAY_SCRIPT) that writes `out`; return the trace's end record. A script
    still running after `timeout_s` is stopped with its engine (the engine
    cannot be told to drop a script) and what it wrote is sealed."""
    partial = partial_path(out)
    if os.path.exists(partial):
        os.unlink(partial)
    job = Job(path=partial, source=source, engine_args=engine.config.engine_args,
              env=engine.config.env, model_config=engine.config.model_config,
              workload=workload, trace=trace, argv=argv, cost=cost)
    replayed = trace if source.kind == "replay" else None  # else a workload's input, or none
    try:
        with progress.bar("replay" if replayed else "record", path=partial, against=replayed):
            engine.run_script(script, job, timeout_s=timeout_s)
    except ScriptTimedOut:
        engine.stop()
        reason = f"deadline passed ({timeout_s:g}s)"
        raise CaptureFailed(f"stopped: {reason}", _seal(partial, out, reason)) from None
    except ScriptFailed as e:
        raise CaptureFailed(e.args[0], _seal(partial, out, e.args[0])) from e
    except EngineDied:
        kept = _seal(partial, out, "engine died")
        where = f" at iteration {_read_end(kept).iterations}" if kept is not None else ""
        raise EngineDiedDuringCapture(f"engine died{where}: {engine.last_error_line()}", kept) from None
    except EngineError:
        raise
    except BaseException:  # Ctrl-C: stop the writer before sealing what it wrote
        engine.stop()
        _seal(partial, out, "interrupted")
        raise
    os.replace(partial, out)
    return _read_end(out)


def _read_end(path: str) -> End:
    with TraceReader(path) as reader:
        for _ in reader.iterations():
            pass
        assert reader.end is not None  # a trace reads whole only up to its end record
        return reader.end


def _seal(partial: str, out: str, reason: str) -> Optional[str]:
    if not os.path.exists(partial):
        return None
    try:
        seal_incomplete(partial, reason)
    except TraceError:
        os.unlink(partial)  # not even a header: nothing worth keeping
        return None
    os.replace(partial, out)
    return out

