"""The engine's lifecycle on its own: a worker that dies during start-up."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil
import pytest

from sgl_replay.runs.engine import Engine, EngineConfig
from sgl_replay.runs.errors import EngineError

PLUGINS = str(Path(__file__).parent / "plugins")
START_GUARD_S = 150  # far below sglang's own 300 s handshake wait


def test_scheduler_killed_during_startup_is_reported_not_waited_out():
    """launch_server blocks on its scheduler's pipe when the scheduler dies
    early; the tool notices the named worker is gone. A death that leaves no
    traceback is tried once more, so this kills the scheduler of both starts."""
    killed = []
    # engines other tests keep alive in this session have schedulers too:
    # only a scheduler that appears after this point is ours to kill
    elders = {p.pid for p in _schedulers()}

    def kill_each_scheduler_that_appears() -> None:
        deadline = time.monotonic() + 2 * START_GUARD_S
        while time.monotonic() < deadline and len(killed) < 2:
            for p in _schedulers():
                if p.pid not in elders and p.pid not in killed:
                    p.kill()
                    killed.append(p.pid)
            time.sleep(0.05)

    threading.Thread(target=kill_each_scheduler_that_appears, daemon=True).start()
    with pytest.raises(EngineError) as info:
        Engine.start(EngineConfig.embedded(), timeout_s=START_GUARD_S).stop()
    assert len(killed) == 2, killed  # started again after the first silent death
    message = str(info.value)
    assert "died during start-up" in message, message
    assert "sglang::scheduler" in message or f"worker process (pid {killed[-1]})" in message, message
    log = message.split("(log: ", 1)[1].split(")", 1)[0]
    assert os.path.getsize(log) > 0  # a dead engine's log is kept, not cleaned up


def test_a_scheduler_that_raises_during_startup_is_reported_after_one_start(tmp_path):
    """Only a silent death is tried again: a worker that logged its exception
    failed for a reason a second start would meet too."""
    mode = tmp_path / "mode"
    mode.write_text("raise_at_start")
    seen = set()
    elders = {p.pid for p in _schedulers()}
    stop = threading.Event()

    def watch_schedulers() -> None:
        while not stop.is_set():
            seen.update(p.pid for p in _schedulers() if p.pid not in elders)
            time.sleep(0.05)

    threading.Thread(target=watch_schedulers, daemon=True).start()
    try:
        with pytest.raises(EngineError) as info:
            Engine.start(EngineConfig.embedded(env={"SCHED_TWEAKS_FILE": str(mode)}),
                         timeout_s=START_GUARD_S, extra_sys_path=(PLUGINS,)).stop()
    finally:
        stop.set()
    log = str(info.value).split("(log: ", 1)[1].split(")", 1)[0]
    assert "planted start-up failure" in Path(log).read_text(), info.value
    # the failing worker's SIGQUIT reached the server process, as from a
    # spawned worker (here it forks from the child's forkserver)
    assert "Received sigquit from a child process" in Path(log).read_text()
    assert len(seen) == 1, seen  # one start: not tried again


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
    its start-up; another process can take it meanwhile (tests that start
    engines side by side do).
    Here the first port handed out is one the test holds."""
    import socket

    import sgl_replay.runs.engine as engine_module

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


def test_the_control_channel_is_a_socket_only_this_user_can_reach(engines):
    """The pickled harness messages travel over a unix socket in a 0700
    directory, not a TCP port every local user could connect to."""
    import stat

    import zmq

    engine = engines.get(EngineConfig.embedded())
    endpoint = engine._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    assert endpoint.startswith("ipc://"), endpoint
    directory = Path(endpoint.removeprefix("ipc://")).parent
    mode = stat.S_IMODE(os.stat(directory).st_mode)
    assert mode == 0o700 and os.stat(directory).st_uid == os.getuid()


def test_the_model_cache_is_private(tmp_path, monkeypatch):
    from sgl_replay.runs.embedded_model import EMBEDDED_MODEL_CONFIG, write_model_dir

    monkeypatch.setenv("SGLREPLAY_CACHE", str(tmp_path / "cache"))
    model = Path(write_model_dir(EMBEDDED_MODEL_CONFIG))
    assert (model / "config.json").exists()
    assert os.stat(tmp_path / "cache").st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # whatever the umask did
    monkeypatch.setenv("SGLREPLAY_CACHE", str(shared))
    with pytest.raises(EngineError, match="not a private directory"):
        write_model_dir(EMBEDDED_MODEL_CONFIG)
    planted = tmp_path / "planted"
    planted.symlink_to(tmp_path / "cache")
    monkeypatch.setenv("SGLREPLAY_CACHE", str(planted))
    with pytest.raises(EngineError, match="not a private directory"):
        write_model_dir(EMBEDDED_MODEL_CONFIG)
