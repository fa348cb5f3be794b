"""Recording a workload on an engine, from the process that drives it."""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Optional

from sgl_replay.job import RECORD_SCRIPT
from sgl_replay.runs.capture import CaptureFailed, partial_path, run_capture
import msgspec

from sgl_replay.runs.engine import Engine
from sgl_replay.timing.model import CostModel
from sgl_replay.trace.format import End, Source, Workload

CLIENT_START_TIMEOUT_S = 60.0


def record_workload(engine: Engine, workload: Workload, out: str, *,
                    argv: Optional[list[str]] = None,
                    client: Optional[Callable[[str], None]] = None, cost: Optional[CostModel] = None) -> End:
    """Record `workload` on `engine` into `out`. For a serve workload,
    `client(base_url)` runs in a thread once the recording has started (the
    trace file exists) and sends whatever HTTP traffic it likes. `cost`: the
    cost model of a public trace recorded on the modelled clock."""
    def capture() -> End:
        return run_capture(engine, RECORD_SCRIPT, out, source=Source(kind="record"),
                           workload=workload, argv=argv,
                           cost=None if cost is None else msgspec.to_builtins(cost))

    if client is None:
        return capture()
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
        end = capture()
    finally:
        thread.join(timeout=CLIENT_START_TIMEOUT_S)
    if failures:
        raise CaptureFailed(f"client failed: {failures[0]!r}", out) from failures[0]
    return end
