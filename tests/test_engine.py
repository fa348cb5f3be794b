"""The engine's lifecycle on its own: a worker that dies during start-up."""

from __future__ import annotations

import os
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
    # engines other tests keep alive in this session have schedulers too:
    # only a scheduler that appears after this point is ours to kill
    elders = {p.pid for p in _schedulers()}

    def kill_the_scheduler_when_it_appears() -> None:
        deadline = time.monotonic() + START_GUARD_S
        while time.monotonic() < deadline and not killed:
            for p in _schedulers():
                if p.pid not in elders:
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
    log = message.split("(log: ", 1)[1].split(")", 1)[0]
    assert os.path.getsize(log) > 0  # a dead engine's log is kept, not cleaned up


def _schedulers() -> list[psutil.Process]:
    """sglang scheduler processes below this test process."""
    out = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "sglang::scheduler" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:  # gone between listing and reading
            pass
    return out


def test_http_port_taken_before_the_server_binds_it_starts_again_on_another(monkeypatch):
    """The port is picked free, then bound by the server only at the end of
    its start-up; another process can take it meanwhile (seen in this suite).
    Here the first port handed out is one the test holds."""
    import socket

    import sgl_replay.engine as engine_module

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    original, handed, picked = engine_module._free_port, [held.getsockname()[1]], []

    def the_held_port_first() -> int:
        picked.append(handed.pop() if handed else original())
        return picked[-1]

    monkeypatch.setattr(engine_module, "_free_port", the_held_port_first)
    try:
        with Engine.start(EngineConfig.embedded(), timeout_s=START_GUARD_S) as engine:
            assert picked[0] == held.getsockname()[1] and engine.http_port == picked[-1] != picked[0]
            assert engine.alive()
    finally:
        held.close()
