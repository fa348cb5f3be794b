"""Inside the scheduler: driving a run on the modelled clock.

Each input arrives at its recorded time on a virtual clock that the
recording advances by the cost model's length of every loop iteration the
scheduler ran (timing/model.py, ModelledClock). At the script's turn (the
top of an iteration, the previous one's length already added) every input
whose time has come is fed through the real path, in recorded order, and
the scheduler pulls them in this iteration. When the scheduler has nothing
queued, running or in flight, the clock jumps to the next arrival: idle
time costs no loop iterations. The run is a pure function of the inputs,
their times, the cost model and the engine's configuration.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from typing import Generator, Optional, TypeVar

from sgl_replay.timing.model import ModelledClock

# After the last input, the loop turns until the scheduler is idle; a run
# that never gets there is reported, not waited on.
DRAIN_MAX_ITERS = 1_000_000

Input = TypeVar("Input")  # what is fed: a recorded input, a public trace's request


def run(ctx, clock: ModelledClock, events: Iterable[tuple[int, Input]],
        feed: Callable[[Input, int], None],
        release: Optional[Callable[[Input, int], Optional[int]]] = None) -> Generator:
    """Feed `events` ((arrival in us, input), in recorded order) by `clock`,
    then drain. `feed(input, arrival_us)` sends one input and returns once
    the scheduler will pull it in this iteration. `release(input,
    arrival_us)`, if given, may put an input later (a chat's next turn waits
    for its earlier turn's answer: the time to send it, or None while that
    answer is not there yet); inputs due at the same time go in recorded
    order."""
    upcoming: Iterator[tuple[int, Input]] = iter(events)
    nxt = next(upcoming, None)
    seq = 0
    due: list[tuple[int, int, Input]] = []  # (time to send, recorded order, input)
    held: list[tuple[int, int, Input]] = []  # (recorded time, recorded order, input)
    while nxt is not None or due or held:
        while nxt is not None and nxt[0] <= clock.now_us:
            held.append((nxt[0], seq, nxt[1]))
            seq += 1
            nxt = next(upcoming, None)
        still = []
        for at, k, item in held:
            when = at if release is None else release(item, at)
            if when is None:
                still.append((at, k, item))
            else:
                heapq.heappush(due, (when, k, item))
        held = still
        if ctx.is_fully_idle and (not due or due[0][0] > clock.now_us):
            nexts = [t for t in (nxt[0] if nxt is not None else None, due[0][0] if due else None) if t is not None]
            if nexts:
                clock.wait_until(min(nexts))
                continue  # what came due with the jump goes in this same turn
        while due and due[0][0] <= clock.now_us:
            when, _, item = heapq.heappop(due)
            feed(item, when)
        yield
    yield  # the scheduler pulls what was fed last
    for _ in range(DRAIN_MAX_ITERS):
        if ctx.is_fully_idle:
            return
        yield
    raise RuntimeError(f"the run did not drain within {DRAIN_MAX_ITERS} iterations of its last input")
