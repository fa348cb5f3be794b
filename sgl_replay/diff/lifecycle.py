"""Each request's life as one trace tells it, kept while streaming: a row per
request (memory grows with requests, never with iterations)."""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields, replace
from typing import Any, Optional

from sgl_replay.trace.format import GenerateInput, Iteration


@dataclass(slots=True)
class Lifecycle:
    rid: str
    arrival: Optional[int] = None  # iteration its generate input was pulled
    first_scheduled: Optional[int] = None  # first extend batch it ran in
    first_token: Optional[int] = None  # first extend batch that ended its prefill
    finish: Optional[int] = None
    reason: Optional[str] = None
    output_len: Optional[int] = None
    retractions: int = 0
    cached: int = 0  # cached-prefix tokens when first scheduled

    def values(self) -> tuple[Any, ...]:
        """The columns after the rid, in order."""
        return astuple(self)[1:]

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))[1:]


class Lifecycles:
    """The rows of one trace, and its request table (number -> rid)."""

    __slots__ = ("rids", "rows")

    def __init__(self) -> None:
        self.rids: list[str] = []
        self.rows: dict[str, Lifecycle] = {}

    def copy(self) -> "Lifecycles":
        other = Lifecycles()
        other.rids = list(self.rids)
        other.rows = {rid: replace(row) for rid, row in self.rows.items()}
        return other

    def absorb(self, record: Iteration) -> None:
        """Decode batches hold no news for lifecycles: only inputs, extend
        batches, finishes and retractions are looked at."""
        i = record.i
        rids, rows = self.rids, self.rows
        for item in record.inputs:
            if type(item) is GenerateInput:
                rids.append(item.rid)
                rows[item.rid] = Lifecycle(item.rid, arrival=i)
        for batch in record.batches:
            if batch.cached is None:  # present with "new" (the reader checks it)
                continue
            for n, cached in zip(batch.reqs, batch.cached):
                row = rows[rids[n]]
                if row.first_scheduled is None:
                    row.first_scheduled = i
                    row.cached = cached
                if n != batch.chunked and row.first_token is None:
                    row.first_token = i
        for n, reason, length, _ in record.finished:
            row = rows[rids[n]]
            row.finish, row.reason, row.output_len = i, reason, length
        for n in record.retracted:
            rows[rids[n]].retractions += 1


def paired(a: Lifecycles, b: Lifecycles) -> tuple[tuple[str, Optional[Lifecycle], Optional[Lifecycle]], ...]:
    """(rid, A's row, B's row) for every request of either side, A's first."""
    order = dict.fromkeys(list(a.rows) + list(b.rows))
    return tuple((rid, a.rows.get(rid), b.rows.get(rid)) for rid in order)
