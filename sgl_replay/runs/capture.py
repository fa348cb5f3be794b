"""Recording, from the side of the process that started the engine.

The scheduler writes the trace to OUT.partial; this side renames it to OUT
once the script is over, and when the script, the engine or the user stops it
early, seals the partial trace (every whole frame kept, an end record saying
why) before renaming it. A trace that was already on disk at OUT is replaced
only once the new one exists.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Optional

from sgl_replay.engine import Engine, EngineDied, EngineError, ScriptFailed
from sgl_replay.trace.reader import TraceError
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


def run_capture(engine: Engine, script: str, job: dict, out: str) -> dict:
    """Run a capturing script (record or replay) that writes `out`; return the
    trace's end record."""
    partial = partial_path(out)
    if os.path.exists(partial):
        os.unlink(partial)
    job = {**job, "path": partial, "engine_args": engine.config.engine_args,
           "env": engine.config.env, "model_config": engine.config.model_config}
    try:
        engine.run_script(script, job)
    except ScriptFailed as e:
        raise CaptureFailed(e.args[0], _seal(partial, out, e.args[0])) from e
    except EngineDied:
        kept = _seal(partial, out, "engine died")
        where = ""
        if kept is not None:
            from sgl_replay.trace.reader import TraceReader

            with TraceReader(kept) as r:
                for _ in r.iterations():
                    pass
                where = f" at iteration {r.end['iterations']}"
        raise EngineDiedDuringCapture(f"engine died{where}: {engine.last_error_line()}", kept) from None
    except EngineError:
        raise
    except BaseException:  # Ctrl-C: stop the writer before sealing what it wrote
        engine.stop()
        _seal(partial, out, "interrupted")
        raise
    os.replace(partial, out)
    from sgl_replay.trace.reader import TraceReader

    with TraceReader(out) as r:
        for _ in r.iterations():
            pass
        return r.end


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


CLIENT_START_TIMEOUT_S = 60.0


def record_workload(engine: Engine, workload: dict, out: str, *, argv=None,
                    client: Optional[Callable[[str], None]] = None) -> dict:
    """Record `workload` on `engine` into `out`. For a serve workload,
    `client(base_url)` runs in a thread once the recording has started (the
    trace file exists) and sends whatever HTTP traffic it likes."""
    job = {"workload": workload, "source": {"kind": "record"}, "argv": argv}
    if client is None:
        return run_capture(engine, "sgl_replay.record.session:record", job, out)
    failures: list[BaseException] = []
    partial = partial_path(out)

    def run_client() -> None:
        deadline = time.monotonic() + CLIENT_START_TIMEOUT_S
        while not os.path.exists(partial) and time.monotonic() < deadline:
            time.sleep(0.005)
        try:
            client(engine.base_url)
        except BaseException as e:  # noqa: BLE001 — reported after the recording
            failures.append(e)

    thread = threading.Thread(target=run_client, name="sgl-replay-client", daemon=True)
    if os.path.exists(partial):
        os.unlink(partial)
    thread.start()
    try:
        end = run_capture(engine, "sgl_replay.record.session:record", job, out)
    finally:
        thread.join(timeout=CLIENT_START_TIMEOUT_S)
    if failures:
        raise CaptureFailed(f"client failed: {failures[0]!r}", out) from failures[0]
    return end
