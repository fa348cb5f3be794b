"""Human text for a trace's header and records, shared by `show` and the diff
report."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from msgspec import UNSET

from sgl_replay.trace.format import (AbortInput, Batch, End, GenerateInput, Header, Input, Iteration, OtherInput,
                                     PauseInput, State, unpack_ids)

Names = Callable[[int], str]  # request number -> rid


def names_from(table: Sequence[str]) -> Names:
    def name(n: int) -> str:
        return table[n] if n is not None and 0 <= n < len(table) else f"#{n}"
    return name


def input_text(item: Input) -> str:
    match item:
        case GenerateInput():
            ids = unpack_ids(item.input_ids or b"")
            extra = ", ".join(f"{k}={v}" for k, v in sorted(item.sampling.items()))
            prio = f" priority={item.priority}" if item.priority is not UNSET else ""
            return f"generate {item.rid} ({len(ids)} prompt tokens{', ' + extra if extra else ''}){prio}"
        case AbortInput():
            return "abort all" if item.all else f"abort {item.rid}"
        case PauseInput():
            return f"pause ({item.mode})"
        case OtherInput():
            return f"other ({item.name})"
    return item.kind


def batch_text(batch: Batch, name: Names) -> str:
    reqs = batch.reqs
    if batch.new is not None and batch.cached is not None:  # both or neither (the reader checks it)
        parts = []
        for n, new, cached in zip(reqs, batch.new, batch.cached):
            parts.append(f"{name(n)}+{new}" + (f"(cached {cached})" if cached else ""))
    else:
        parts = [name(n) for n in reqs]
    shown = " ".join(parts) if len(parts) <= 12 else " ".join(parts[:12]) + f" ...(+{len(parts) - 12})"
    chunk = f" chunked={name(batch.chunked)}" if batch.chunked is not None else ""
    return f"fwd {batch.fwd} {batch.mode} [{shown}] tokens={batch.tokens}{chunk}"


def state_text(state: State) -> str:
    return (f"waiting={state.waiting} running={state.running} "
            f"kv_free={state.kv_free} req_free={state.req_free}")


def iteration_lines(record: Iteration, name: Names, *, only: Optional[int] = None) -> list[str]:
    """The record as text; with `only` (a request number), just the lines
    about that request, and the sizes after the iteration."""
    lines = [f"iter {record.i}"]
    rid = name(only) if only is not None else None
    for item in record.inputs:
        if only is None or getattr(item, "rid", None) == rid:
            lines.append(f"  pull   {input_text(item)}")
    for batch in record.batches:
        if only is None or only in batch.reqs or batch.chunked == only:
            lines.append(f"  run    {batch_text(batch, name)}")
    for n, reason, length, digest in record.finished:
        if only is None or n == only:
            lines.append(f"  finish {name(n)} {reason} after {length} tokens (output {digest:016x})")
    for n in record.retracted:
        if only is None or n == only:
            lines.append(f"  retract {name(n)}")
    if record.state is not None:
        lines.append(f"  after  {state_text(record.state)}")
    return lines


def touches(record: Iteration, req: int, rid: str) -> bool:
    """Whether the request (number and rid) appears anywhere in the record."""
    if any(getattr(item, "rid", None) == rid for item in record.inputs):
        return True
    for batch in record.batches:
        if req in batch.reqs or batch.chunked == req:
            return True
    if any(f[0] == req for f in record.finished):
        return True
    return req in record.retracted


def header_lines(h: Header) -> list[str]:
    v, d, w, src = h.versions, h.device, h.workload, h.source
    pools = " ".join(f"{k}={getattr(h.pools, k)}" for k in h.pools.__struct_fields__
                     if getattr(h.pools, k) is not None)
    return [
        f"trace format {h.format}  sgl-replay {v.sgl_replay}  sglang {v.sglang}  "
        f"torch {v.torch}  python {v.python}",
        f"device {d.type} {d.name or ''}  attention {d.attention_backend}"
        + (f"  cuda {d.cuda} driver {d.driver}" if d.cuda else ""),
        f"workload {w.kind if w else None} {(w.name if w else None) or ''}"
        + (f": {w.description}" if w and w.description else "")
        + (f"  ({src.kind} of {src.trace})" if src.kind == "replay" else ""),
        f"pools {pools}",
        "model embedded tiny GPT-2" if h.model.config else f"model {h.model.path}",
    ]


def end_line(end: Optional[End]) -> str:
    if end is None:
        return "end: missing (the trace stops without its end record)"
    state = "complete" if end.complete else f"INCOMPLETE: {end.reason}"
    return (f"end: {state}; {end.iterations} loop iterations, {end.forwards} forward batches, "
            f"{end.requests} requests")
