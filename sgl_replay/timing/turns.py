"""Conversations in a capture: a request whose prompt begins with an earlier
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
