"""Compare two traces iteration by iteration: pure, streaming, no engine, no
sglang, no file I/O.

Two traces go in (anything with `header`, `iterations()` and, once those are
read, `end`: a TraceReader, or a synthetic trace in a test); a frozen
DiffResult comes out:

  1. the headers (diff/headers.py): "not comparable", or notes;
  2. records paired by iteration number and compared in lockstep while they
     agree (one side's bookkeeping stands for both); the first iteration whose
     records differ is explained by the comparators (diff/comparators.py),
     with a few iterations of context from both sides;
  3. after that, realigned by request id: how many iterations differ in each
     kind of consequence, and each request's lifecycle (diff/lifecycle.py).

Memory holds one iteration per side, the context window and one lifecycle
row per request, whatever the trace length.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Protocol

from sgl_replay.diff.comparators import KINDS, Options, explain, project
from sgl_replay.diff.headers import compare_headers
from sgl_replay.diff.lifecycle import Lifecycle, Lifecycles, paired
from sgl_replay.diff.outcome import Outcome
from sgl_replay.trace.format import End, Header, Iteration, State

CONTEXT_ITERATIONS = 3


class Trace(Protocol):
    header: Header
    end: Optional[End]

    def iterations(self) -> Iterator[Iteration]: ...


@dataclass(frozen=True)
class FirstDivergence:
    iteration: int
    reasons: tuple[str, ...]  # per request, in words
    kinds: tuple[str, ...]  # which kinds of consequence differ
    a: Optional[Iteration]  # the two records (None: idle on that side)
    b: Optional[Iteration]
    context_a: tuple[Iteration, ...]  # the records just before, each side
    context_b: tuple[Iteration, ...]
    names_a: tuple[str, ...]  # request number -> rid, as far as needed
    names_b: tuple[str, ...]


@dataclass(frozen=True)
class DiffResult:
    verdict: Outcome  # SAME, DIVERGED, NOT_COMPARABLE or EMPTY
    level: str
    ignored: tuple[str, ...]
    not_comparable: tuple[str, ...]
    header_notes: tuple[str, ...]
    iterations_compared: int
    forwards_compared: int
    first: Optional[FirstDivergence]
    kinds: dict[str, int]  # iterations differing per kind, first divergence on
    differing_iterations: int
    lifecycles: tuple[tuple[str, Optional[Lifecycle], Optional[Lifecycle]], ...]
    end_a: Optional[End]
    end_b: Optional[End]

    @property
    def same(self) -> bool:
        return self.verdict is Outcome.SAME


class _Side:
    """One trace's running state while streaming: its lifecycles and request
    table, the last records for context, the last state."""

    __slots__ = ("life", "context", "state", "iterations", "forwards")

    def __init__(self) -> None:
        self.life = Lifecycles()
        self.context: deque[Iteration] = deque(maxlen=CONTEXT_ITERATIONS)
        self.state: Optional[State] = None
        self.iterations = 0
        self.forwards = 0

    @property
    def rids(self) -> list[str]:
        return self.life.rids

    def fork(self) -> "_Side":
        """A copy to go on separately from here (the traces just parted)."""
        other = _Side()
        other.life = self.life.copy()
        other.context = deque(self.context, maxlen=CONTEXT_ITERATIONS)
        other.state = self.state
        other.iterations, other.forwards = self.iterations, self.forwards
        return other

    def absorb(self, record: Iteration) -> None:
        self.life.absorb(record)
        self.forwards += len(record.batches)
        if record.state is not None:
            self.state = record.state
        self.iterations += 1


def _merge(a: Iterator[Iteration], b: Iterator[Iteration]
           ) -> Iterator[tuple[int, Optional[Iteration], Optional[Iteration]]]:
    """Pair records by iteration number; None where a side was idle."""
    ra, rb = next(a, None), next(b, None)
    while ra is not None or rb is not None:
        if ra is not None and rb is not None and ra.i == rb.i:
            yield ra.i, ra, rb
            ra, rb = next(a, None), next(b, None)
        elif ra is not None and (rb is None or ra.i < rb.i):
            yield ra.i, ra, None
            ra = next(a, None)
        elif rb is not None:
            yield rb.i, None, rb
            rb = next(b, None)


def diff(a: Trace, b: Trace, options: Options = Options()) -> DiffResult:
    blocking, notes = compare_headers(a.header, b.header)
    if blocking and not options.force:
        return DiffResult(Outcome.NOT_COMPARABLE, options.level, tuple(sorted(options.ignore)),
                          tuple(blocking), tuple(notes), 0, 0, None, {}, 0, (), None, None)
    dropped, compared = options.dropped, options.compared
    sa = _Side()
    sb: Optional[_Side] = None  # while None the traces run in lockstep: sa stands for both
    first: Optional[FirstDivergence] = None
    kinds = {k: 0 for k in KINDS}
    differing = 0
    agree = True  # both traces gave every request number the same rid so far
    checked = 0  # request numbers verified to agree
    for i, ra, rb in _merge(a.iterations(), b.iterations()):
        if sb is None:
            if ra is not None and ra == rb:  # the common case: identical records, one side's bookkeeping
                sa.absorb(ra)
                sa.context.append(ra)
                continue
            sb = sa.fork()
            checked = len(sa.rids)
        before_a, before_b = sa.state, sb.state
        if ra is not None:
            sa.absorb(ra)
        if rb is not None:
            sb.absorb(rb)
        common = min(len(sa.rids), len(sb.rids))
        if agree and common > checked:
            agree = sa.rids[checked:common] == sb.rids[checked:common]
            checked = common
        if agree and not dropped and ra is not None and rb is not None:
            pa = pb = None  # compared as they are; projected only to explain
            differ = [k for k in compared if getattr(ra, k) != getattr(rb, k)]
        else:
            pa = project(ra, dropped, None if agree else sa.rids, i, before_a)
            pb = project(rb, dropped, None if agree else sb.rids, i, before_b)
            differ = [k for k in compared if pa.get(k) != pb.get(k)]
        if differ:
            differing += 1
            for k in differ:
                kinds[k] += 1
            if first is None:
                if pa is None or pb is None:
                    pa = project(ra, dropped, None, i, before_a)
                    pb = project(rb, dropped, None, i, before_b)
                first = FirstDivergence(
                    iteration=i, kinds=tuple(differ),
                    reasons=tuple(explain(pa, pb, i, _namer(sa.rids if agree else None), compared)),
                    a=ra, b=rb, context_a=tuple(sa.context), context_b=tuple(sb.context),
                    names_a=tuple(sa.rids), names_b=tuple(sb.rids))
        if first is None:
            if ra is not None:
                sa.context.append(ra)
            if rb is not None:
                sb.context.append(rb)
    if sb is None:
        sb = sa
    end_a, end_b = a.end, b.end
    end_differs = _end_differences(end_a, end_b)
    if end_differs and first is None:
        first = FirstDivergence(
            iteration=max(end_a.iterations if end_a else 0, end_b.iterations if end_b else 0),
            reasons=tuple(end_differs), kinds=("end",), a=None, b=None,
            context_a=tuple(sa.context), context_b=tuple(sb.context),
            names_a=tuple(sa.rids), names_b=tuple(sb.rids))
    lifecycles = paired(sa.life, sb.life) if first is not None else ()
    if first is not None:
        verdict = Outcome.DIVERGED
    elif sa.iterations == 0 and sb.iterations == 0:
        verdict = Outcome.EMPTY
    else:
        verdict = Outcome.SAME
    return DiffResult(verdict, options.level, tuple(sorted(options.ignore)), tuple(blocking),
                      tuple(notes), max(sa.iterations, sb.iterations), max(sa.forwards, sb.forwards),
                      first, {k: v for k, v in kinds.items() if v}, differing, lifecycles, end_a, end_b)


def _namer(rids: Optional[list[str]]) -> Callable[[Any], str]:
    def name(n: Any) -> str:
        if rids is not None and isinstance(n, int) and 0 <= n < len(rids):
            return rids[n]
        return str(n)
    return name


def _end_differences(a: Optional[End], b: Optional[End]) -> list[str]:
    out = []
    for side, end in (("A", a), ("B", b)):
        if end is None or not end.complete:
            out.append(f"{side} is incomplete: {(end.reason if end else None) or 'no end record'}")
    iterations_a = a.iterations if a else None
    iterations_b = b.iterations if b else None
    if iterations_a != iterations_b:
        out.append(f"A ran {iterations_a} loop iterations, B ran {iterations_b}")
    return out
