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

from collections.abc import Callable, Iterable, Iterator
from typing import Generator

from sgl_replay.timing.model import ModelledClock

# After the last input, the loop turns until the scheduler is idle; a run
# that never gets there is reported, not waited on.
DRAIN_MAX_ITERS = 1_000_000


def run(ctx, clock: ModelledClock, events: Iterable[tuple[int, dict]],
        feed: Callable[[dict, int], None]) -> Generator:
    """Feed `events` ((arrival in us, input), in recorded order) by `clock`,
    then drain. `feed(input, arrival_us)` sends one input and returns once
    the scheduler will pull it in this iteration."""
    upcoming: Iterator[tuple[int, dict]] = iter(events)
    nxt = next(upcoming, None)
    while nxt is not None:
        if nxt[0] > clock.now_us and ctx.is_fully_idle:
            clock.wait_until(nxt[0])
        while nxt is not None and nxt[0] <= clock.now_us:
            feed(nxt[1], nxt[0])
            nxt = next(upcoming, None)
        yield
    yield  # the scheduler pulls what was fed last
    for _ in range(DRAIN_MAX_ITERS):
        if ctx.is_fully_idle:
            return
        yield
    raise RuntimeError(f"the run did not drain within {DRAIN_MAX_ITERS} iterations of its last input")
