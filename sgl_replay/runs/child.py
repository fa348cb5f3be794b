"""The engine's own main process (`python -m sgl_replay.runs.child SPEC`,
started by sgl_replay.runs.engine): sglang's HTTP server with the server
arguments of SPEC, a JSON file. Once the server's warmup thread is done, the
child creates SPEC's `warmed` file."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

EXIT_BAD_ENGINE_ARGS = 3  # the child's exit status when ServerArgs rejects its kwargs


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the one that started it dies, however
    it died; sglang's server then takes its own children down."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent was already gone
        sys.exit(1)


def main(spec_path: str) -> None:
    """The engine process: build ServerArgs (a rejection exits with
    EXIT_BAD_ENGINE_ARGS and one line) and run sglang's HTTP server."""
    _die_with_parent()
    spec = json.loads(Path(spec_path).read_text())
    # As sglang's own Engine does: plugins before ServerArgs, so that their
    # hooks on argument resolution apply (launch_server loads them too late).
    from sglang.srt.plugins import load_plugins

    load_plugins()
    from sglang.srt.server_args import ServerArgs

    try:
        server_args = ServerArgs(**spec["server_args"])
    except Exception as e:  # noqa: BLE001 — any rejection is the user's argument
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"{type(e).__name__}: {message}", flush=True)
        sys.exit(EXIT_BAD_ENGINE_ARGS)
    from sglang.srt.entrypoints import http_server

    if spec.get("warmed"):
        _say_when_warmed(http_server, Path(spec["warmed"]))
    http_server.launch_server(server_args)


def _say_when_warmed(http_server, marker: Path) -> None:
    """Create `marker` when the server's warmup thread has finished: its
    warmup request, then its /freeze_gc call, whose FreezeGCReq the scheduler
    pulls in the next iteration it runs. Until then a script could start
    before that pull and record it as an input of its own; the engine waits
    for the marker before it calls itself ready."""
    warmup = getattr(http_server, "_wait_and_warmup", None)
    if warmup is None:  # a server without that thread: nothing to wait for
        marker.touch()
        return

    def wait_and_warmup(*args, **kwargs):
        try:
            return warmup(*args, **kwargs)
        finally:
            marker.touch()

    # launch_server looks the thread's target up when it starts the thread.
    http_server._wait_and_warmup = wait_and_warmup


if __name__ == "__main__":
    main(sys.argv[1])
