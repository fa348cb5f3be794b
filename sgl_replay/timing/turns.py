"""Conversations in a capture, and a closed-loop client's hops.

Conversations: a request whose prompt begins with an earlier
request's prompt and answer (a chat's next turn) could not have been sent
before that answer existed. A timed replay keeps such a request at least its
recorded think time (its arrival minus the earlier answer's finish) after
the earlier request finishes in the replay (scheduler/timed.py).

Only captures of a plain server record answers (their output token ids).
The earlier turn is looked for among the RECENT most recent finished
requests whose sequences begin with the same KEY_TOKENS tokens, which keeps
the search linear in the trace's size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from sgl_replay.trace.format import GenerateInput, Iteration

KEY_TOKENS = 16
RECENT = 64


def follow_ups(records: Iterable[Iteration]) -> dict[str, tuple[str, float]]:
    """rid -> (rid of the earlier turn, think time in ms) for every request
    of a timed capture that continues an earlier one."""
    key_bytes = KEY_TOKENS * 4
    prompts: dict[int, tuple[str, bytes]] = {}  # req -> (rid, prompt ids), until it finishes
    recent: dict[bytes, deque] = {}  # first KEY_TOKENS ids -> (prompt + answer ids, rid, finish ms)
    out: dict[str, tuple[str, float]] = {}
    n = 0
    for record in records:
        arrivals = record.arrivals
        for k, item in enumerate(record.inputs):
            if type(item) is not GenerateInput:
                continue
            ids = item.input_ids or b""
            at = arrivals[k] if k < len(arrivals) else record.ms
            for full, rid, done in reversed(recent.get(ids[:key_bytes], ())):
                if len(full) < len(ids) and ids.startswith(full) and at is not None:
                    out[item.rid] = (rid, max(0.0, at - done))
                    break
            prompts[n] = (item.rid, ids)
            n += 1
        for output in record.outputs:
            if len(output) == 2 and output[0] in prompts and isinstance(output[1], bytes) and record.ms is not None:
                rid, ids = prompts.pop(output[0])
                full = ids + output[1]
                if len(full) >= key_bytes:
                    recent.setdefault(full[:key_bytes], deque(maxlen=RECENT)).append((full, rid, record.ms))
    return out


def client_hops(records: Iterable[Iteration], limit: int) -> dict[str, float]:
    """rid -> its client hop in ms, for every request of a timed recording
    that a closed-loop client keeping at most `limit` requests in flight
    (bench_serving --max-concurrency) held back until a slot freed.

    The k-th request sent can go once k - limit + 1 earlier ones finished:
    the slot it takes is freed by the (k - limit)-th finish. Its hop is its
    arrival minus that finish: the answer's way back to the client (the
    detokenizer, HTTP, the client's own loop) and the new request's way in
    (HTTP, the tokenizer) up to the scheduler's pull, time in which the
    client counts the slot as taken and the scheduler runs without it. A
    request sent later than its freed slot plus the freeing request's own
    run time (arrival to finish) was not waiting for that slot: it went at
    its own time and has no hop."""
    arrivals: list[tuple[str, float]] = []  # (rid, arrival ms) in recorded order
    arrival_of: dict[int, float] = {}  # req -> arrival ms
    finishes: list[tuple[float, float]] = []  # (finish ms, that request's run time) in finish order
    n = 0
    for record in records:
        for k, item in enumerate(record.inputs):
            if type(item) is GenerateInput and k < len(record.arrivals):
                arrivals.append((str(item.rid), record.arrivals[k]))
                arrival_of[n] = record.arrivals[k]
                n += 1
        for f in record.finished:
            if record.ms is not None and f and f[0] in arrival_of:
                finishes.append((record.ms, record.ms - arrival_of[f[0]]))
    out: dict[str, float] = {}
    for k in range(limit, len(arrivals)):
        if k - limit >= len(finishes):
            break
        rid, at = arrivals[k]
        freed, ran = finishes[k - limit]
        if 0 <= at - freed < ran:
            out[rid] = at - freed
    return out
