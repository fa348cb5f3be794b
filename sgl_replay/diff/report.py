"""A DiffResult as text for people or JSON for machines."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Iterator, Optional

import msgspec

from sgl_replay.diff.lifecycle import Lifecycle
from sgl_replay.diff.lockstep import DiffResult
from sgl_replay.diff.outcome import Outcome
from sgl_replay.trace.format import unpack_ids
from sgl_replay.trace.text import iteration_lines, names_from

LIFECYCLE_ROWS_SHOWN = 20
REASONS_SHOWN = 12


def text_lines(result: DiffResult, label_a: str = "A", label_b: str = "B") -> Iterator[str]:
    yield f"A = {label_a}"
    yield f"B = {label_b}"
    for note in result.header_notes:
        yield f"note: {note}"
    if result.verdict is Outcome.NOT_COMPARABLE:
        yield "not comparable:"
        for reason in result.not_comparable:
            yield f"  - {reason}"
        yield "(compare anyway with --force)"
        return
    for reason in result.not_comparable:
        yield f"warning (--force): {reason}"
    scope = f"level {result.level}" + (f", ignoring {', '.join(result.ignored)}" if result.ignored else "")
    if result.verdict is Outcome.EMPTY:
        yield f"nothing compared ({scope}): neither trace holds a single loop iteration"
        return
    if result.verdict is Outcome.SAME:
        yield (f"same: {result.iterations_compared} recorded iterations and "
               f"{result.forwards_compared} forward batches match ({scope})")
        return
    first = result.first
    assert first is not None  # a DIVERGED result has its first divergence
    yield f"diverged at iteration {first.iteration} ({scope}; differs in {', '.join(first.kinds)}):"
    for reason in first.reasons[:REASONS_SHOWN]:
        yield f"  - {reason}"
    if len(first.reasons) > REASONS_SHOWN:
        yield f"  - ... {len(first.reasons) - REASONS_SHOWN} more (--json has them all)"
    name_a, name_b = names_from(first.names_a), names_from(first.names_b)
    for label, context, record, name in (("A", first.context_a, first.a, name_a),
                                         ("B", first.context_b, first.b, name_b)):
        yield ""
        yield f"{label}, the iterations before and at the divergence:"
        for rec in context:
            for line in iteration_lines(rec, name):
                yield "    " + line
        if record is not None:
            for k, line in enumerate(iteration_lines(record, name)):
                yield ("  > " if k == 0 else "    ") + line
        else:
            yield f"  > iter {first.iteration}: (idle: nothing pulled, nothing ran)"
    yield ""
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(result.kinds.items())) or "none"
    yield (f"from iteration {first.iteration} on, realigned by request id: "
           f"{result.differing_iterations} iterations differ ({kinds})")
    changed = [(rid, la, lb) for rid, la, lb in result.lifecycles if _values(la) != _values(lb)]
    yield f"requests with a different lifecycle: {len(changed)} of {len(result.lifecycles)}"
    if changed:
        yield from _lifecycle_table(changed[:LIFECYCLE_ROWS_SHOWN])
        if len(changed) > LIFECYCLE_ROWS_SHOWN:
            yield f"  ... {len(changed) - LIFECYCLE_ROWS_SHOWN} more (--json has them all)"


def _values(life: Optional[Lifecycle]) -> tuple[Any, ...]:
    return life.values() if life is not None else ()


def _lifecycle_table(rows: list[tuple[str, Optional[Lifecycle], Optional[Lifecycle]]]) -> Iterator[str]:
    headers = ("rid", "side") + Lifecycle.columns()
    table = []
    for rid, la, lb in rows:
        for side, life in (("A", la), ("B", lb)):
            cells = [rid if side == "A" else "", side]
            cells += (["-" if v is None else str(v) for v in life.values()] if life
                      else ["absent"] + [""] * (len(Lifecycle.columns()) - 1))
            table.append(cells)
    widths = [max(len(h), *(len(r[k]) for r in table)) for k, h in enumerate(headers)]
    yield "  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    for cells in table:
        yield "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths))


def to_json(result: DiffResult, label_a: str = "A", label_b: str = "B") -> str:
    return json.dumps(to_plain(result, label_a, label_b))


def to_plain(result: DiffResult, label_a: str = "A", label_b: str = "B") -> dict[str, Any]:
    """The result as JSON-ready values."""
    data = asdict(result)
    data["a"], data["b"] = label_a, label_b
    data["lifecycles"] = [
        {"rid": rid, "a": asdict(la) if la else None, "b": asdict(lb) if lb else None}
        for rid, la, lb in result.lifecycles]
    if result.first is not None:
        first = data["first"]
        first.pop("names_a")
        first.pop("names_b")
    plain: dict[str, Any] = json.loads(json.dumps(data, default=_plain))
    return plain


def _plain(value: object) -> Any:
    """JSON for what json cannot write: token ids as numbers, records as maps."""
    if isinstance(value, bytes):
        return unpack_ids(value)
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value, builtin_types=(bytes,))
    return str(value)
