"""Progress of the long steps (a replay, a recording, a bisect step) on a
terminal: one tqdm line on stderr, cleared when the step ends. Nothing is
shown unless the command line asked for it (`enable`, from sgl_replay.cli)
and stderr is a terminal, so library callers, tests and piped output see
exactly what they saw without it. Runs in the process that drives the
engine; the scheduler side never prints.

A capture's progress is read from the size of the trace being written,
against the recorded trace's size for a replay (its trace holds the same
records when it is faithful): no message from the scheduler, nothing to keep
in step with it.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

REFRESH_S = 0.5  # how often the line is redrawn

_enabled = False


def enable() -> None:
    """Show progress from now on, where stderr is a terminal."""
    global _enabled
    _enabled = True


def shown() -> bool:
    return _enabled and sys.stderr.isatty()


@contextmanager
def bar(desc: str, *, path: Optional[str] = None, against: Optional[str] = None) -> Iterator[None]:
    """While the block runs: `desc` and the time so far; with `path` (a
    trace being written), its size, out of the size of the trace `against`
    (the recorded trace a replay follows) when given."""
    if not shown():
        yield
        return
    from tqdm import tqdm

    total = _trace_bytes(against) if path and against else None
    line = tqdm(desc=desc, total=total, unit="B", unit_scale=True,
                leave=False, file=sys.stderr, dynamic_ncols=True,
                bar_format=None if path else "{desc} {elapsed}")
    stop = threading.Event()

    def follow() -> None:
        while not stop.wait(REFRESH_S):
            if path is not None:
                try:
                    size = os.path.getsize(path)
                except OSError:  # not created yet, or renamed into place
                    continue
                line.update(size - line.n)
            else:
                line.refresh()

    thread = threading.Thread(target=follow, name="sgl-replay-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        line.close()


def _trace_bytes(trace: str) -> Optional[int]:
    """A trace's size on disk, every link of a chain counted (None if it
    cannot be read: the bar then shows the bytes written alone)."""
    from sgl_replay.trace.reader import TraceError, chain_paths

    try:
        return sum(os.path.getsize(p) for p in chain_paths(trace))
    except (OSError, TraceError):
        return None


@contextmanager
def counter(desc: str, total: int) -> Iterator[Callable[[str], None]]:
    """While the block runs: `desc`, n of `total` done and the time so far;
    the block calls what it is given with a few words on each item done."""
    if not shown():
        yield lambda note: None
        return
    from tqdm import tqdm

    line = tqdm(desc=desc, total=total, unit="", leave=False, file=sys.stderr, dynamic_ncols=True)

    def advance(note: str) -> None:
        line.set_postfix_str(note[:40], refresh=False)
        line.update(1)

    try:
        yield advance
    finally:
        line.close()
