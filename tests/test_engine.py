"""The engine's lifecycle on its own: a worker that dies during start-up."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from sgl_replay.engine import Engine, EngineConfig, EngineError

START_GUARD_S = 150  # far below sglang's own 300 s handshake wait


def test_scheduler_killed_during_startup_is_reported_not_waited_out():
    """launch_server blocks on its scheduler's pipe when the scheduler dies
    early; the tool notices the named worker is gone."""
    killed = []

    def kill_the_scheduler_when_it_appears() -> None:
        deadline = time.monotonic() + START_GUARD_S
        while time.monotonic() < deadline and not killed:
            for p in psutil.process_iter(["cmdline"]):
                if "sglang::scheduler" in " ".join(p.info["cmdline"] or []):
                    p.kill()
                    killed.append(p.pid)
                    return
            time.sleep(0.05)

    threading.Thread(target=kill_the_scheduler_when_it_appears, daemon=True).start()
    with pytest.raises(EngineError) as info:
        Engine.start(EngineConfig.embedded(), timeout_s=START_GUARD_S).stop()
    assert killed, "the scheduler never appeared"
    message = str(info.value)
    assert "died during start-up" in message, message
    assert "sglang::scheduler" in message or f"worker process (pid {killed[0]})" in message, message
