"""Progress of long steps: one line on stderr where it is a terminal and the
command line asked for it; nothing anywhere else. No engine."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

from conftest import cli_env
from sgl_replay.runs import progress

FOLLOW = """
import sys, time
from sgl_replay.runs import progress
progress.enable()
with open(sys.argv[2], "wb") as f:
    f.write(b"r" * 4096)  # the recorded trace
with progress.bar("replay", path=sys.argv[1], against=sys.argv[2]):
    with open(sys.argv[1], "wb") as f:
        f.write(b"x" * 2048)
    time.sleep(3 * progress.REFRESH_S)
print("done", file=sys.stderr)
"""


def test_nothing_is_written_where_stderr_is_not_a_terminal(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(progress, "_enabled", True)
    growing = tmp_path / "t.sglt.partial"
    with progress.bar("replay", path=str(growing), against=__file__):
        growing.write_bytes(b"x" * 2048)
    with progress.bar("step 1: checking abc"):
        pass
    assert capfd.readouterr() == ("", "")


def test_a_terminal_sees_the_step_and_the_bytes_written(tmp_path):
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's size
    try:
        proc = subprocess.run([sys.executable, "-c", FOLLOW, str(tmp_path / "t.sglt.partial"),
                               str(tmp_path / "recorded.sglt")], env=cli_env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=child, timeout=60)
        os.close(child)
        shown = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(main)
    text = shown.decode(errors="replace")
    assert proc.returncode == 0, text
    # the step, the bytes written against the recorded trace's; the line cleared at the end
    assert "replay:" in text and "2.05k/4.10k" in text and "50%" in text
    cleared, last = text.rstrip().rsplit("\r", 2)[-2:]
    assert cleared.strip() == "" and last == "done"
