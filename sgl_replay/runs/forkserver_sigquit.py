"""Imported by the engine child's forkserver only (FORKSERVER_PRELOAD in
sgl_replay.runs.child). A failing sglang worker SIGQUITs its parent: for a
spawned worker the server process, whose handler stops the whole tree; a
forked worker's parent is the forkserver, which passes the signal on."""

import os
import signal


def _pass_on(signum, frame) -> None:
    os.kill(os.getppid(), signal.SIGQUIT)


signal.signal(signal.SIGQUIT, _pass_on)
