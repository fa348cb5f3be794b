"""The engine's own main process (`python -m sgl_replay.runs.child SPEC`,
started by sgl_replay.runs.engine): sglang's HTTP server with the server
arguments of SPEC, a JSON file. Once the server's warmup thread is done, the
child creates SPEC's `warmed` file.

On the CPU, sglang's scheduler and detokenizer processes fork from a
multiprocessing forkserver that imports their modules while this process
imports the HTTP server, instead of each importing sglang again after a
spawn: an engine starts about 7 s sooner on 2 cores. Not on a GPU, where a
module that touched CUDA on import would make every fork fail."""

from __future__ import annotations

import functools
import json
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

EXIT_BAD_ENGINE_ARGS = 3  # the child's exit status when ServerArgs rejects its kwargs
# What the forkserver imports before its first fork: the workers' modules.
FORKSERVER_PRELOAD = ["sgl_replay.runs.forkserver_sigquit", "sgl_replay.runs.child",
                      "sglang.srt.managers.scheduler", "sglang.srt.managers.detokenizer_manager"]


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
    preloaded = spec["server_args"].get("device") == "cpu"
    if preloaded:
        multiprocessing.set_forkserver_preload(FORKSERVER_PRELOAD)
        multiprocessing.forkserver.ensure_running()  # imports in parallel with this process
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
    if preloaded:
        # sglang's launch calls multiprocessing.Process for every worker
        multiprocessing.Process = _PreloadedWorker  # type: ignore[misc, assignment]
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


class _PreloadedWorker(multiprocessing.context.ForkServerProcess):
    """A worker process forked from the preloaded forkserver. A fork
    inherits the forkserver's environment, so the worker takes this
    process's environment as it is when the worker starts (sglang sets some
    on the way), as a spawned worker would."""

    @staticmethod
    def _Popen(process_obj):  # noqa: N802 — multiprocessing's name
        process_obj._target = functools.partial(_run_with_environment, dict(os.environ), process_obj._target)
        return multiprocessing.context.ForkServerProcess._Popen(process_obj)


def _run_with_environment(environment: dict, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    import setproctitle

    # setproctitle finds the command line through the environment's original
    # memory: set it up before the environment is replaced, or the worker
    # could not name itself (sglang::scheduler, which the engine watches)
    setproctitle.getproctitle()
    os.environ.clear()
    os.environ.update(environment)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)  # the worker's own, not the forkserver's
    return target(*args, **kwargs)


if __name__ == "__main__":
    main(sys.argv[1])
