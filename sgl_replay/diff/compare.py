"""Compare two traces: pure, streaming, no engine, no sglang, no file I/O.

Two traces go in (anything with `header`, `iterations()` and, once those are
read, `end`: a TraceReader, or a synthetic trace in a test); a frozen
DiffResult comes out:

  1. the headers: differences that make the runs "not comparable" (another
     model, other engine environment knobs), and notes on the rest;
  2. the first iteration whose records differ, with a few iterations of
     context from both sides and a per-request explanation;
  3. after that, realigned by request id: how many iterations differ in each
     kind of consequence, and a per-request lifecycle from both sides.

Memory holds one iteration per side, the context window and one lifecycle
row per request, whatever the trace length.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Protocol

import msgspec

from sgl_replay.trace.format import Iteration, State

LEVELS = ("composition", "full")
CONTEXT_ITERATIONS = 3

# What each level compares, by top-level field of an iteration record.
# "composition": which inputs were pulled when, what ran in which forward
# batch, and when requests finished or were retracted. "full" adds the pool
# and queue sizes after each iteration and the output token hashes.
_COMPOSITION_IGNORES = frozenset({"state", "finished.hash"})

# Fields --ignore accepts, named as the trace format names them.
IGNORABLE = frozenset({
    "inputs", "inputs.input_ids", "inputs.sampling", "batches", "batches.new",
    "batches.cached", "batches.tokens", "batches.chunked", "batches.mode", "state",
    "state.waiting", "state.running", "state.kv_free", "state.req_free",
    "finished", "finished.reason", "finished.length", "finished.hash", "retracted",
})
_KINDS = ("inputs", "batches", "state", "finished", "retracted")


class Trace(Protocol):
    header: dict
    end: Optional[dict]

    def iterations(self) -> Iterator[Iteration]: ...


@dataclass(frozen=True)
class Options:
    level: str = "full"
    ignore: frozenset = frozenset()
    force: bool = False

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"unknown level {self.level!r}; choose from {', '.join(LEVELS)}")
        unknown = sorted(set(self.ignore) - IGNORABLE)
        if unknown:
            raise ValueError(f"cannot ignore {', '.join(unknown)}; ignorable fields: "
                             f"{', '.join(sorted(IGNORABLE))}")

    @property
    def dropped(self) -> frozenset:
        return frozenset(self.ignore) | (_COMPOSITION_IGNORES if self.level == "composition" else frozenset())


@dataclass(frozen=True)
class Lifecycle:
    rid: str
    arrival: Optional[int] = None
    first_scheduled: Optional[int] = None
    first_token: Optional[int] = None
    finish: Optional[int] = None
    reason: Optional[str] = None
    output_len: Optional[int] = None
    retractions: int = 0
    cached: int = 0

    COLUMNS = ("arrival", "first_scheduled", "first_token", "finish", "reason",
               "output_len", "retractions", "cached")

    def values(self) -> tuple:
        return tuple(getattr(self, c) for c in self.COLUMNS)


@dataclass(frozen=True)
class FirstDivergence:
    iteration: int
    reasons: tuple[str, ...]  # per request, in words
    kinds: tuple[str, ...]  # which fields differ
    a: Optional[Iteration]  # the two records (None: idle on that side)
    b: Optional[Iteration]
    context_a: tuple[Iteration, ...]  # the records just before, each side
    context_b: tuple[Iteration, ...]
    names_a: tuple[str, ...]  # request number -> rid, as far as needed
    names_b: tuple[str, ...]


@dataclass(frozen=True)
class DiffResult:
    verdict: str  # "same" | "diverged" | "not comparable" | "empty"
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
    end_a: Optional[dict]
    end_b: Optional[dict]

    @property
    def same(self) -> bool:
        return self.verdict == "same"


# ------------------------------------------------------------------ headers
def compare_headers(a: dict, b: dict) -> tuple[list[str], list[str]]:
    """(reasons the runs are not comparable, notes on other differences)."""
    blocking, notes = [], []
    if (a.get("model") or {}).get("config") != (b.get("model") or {}).get("config"):
        blocking.append("different model config")
    elif (a.get("model") or {}).get("config") is None and a["model"].get("path") != b["model"].get("path"):
        blocking.append(f"different model: {a['model'].get('path')} vs {b['model'].get('path')}")
    for key in sorted(set(a.get("env", {})) | set(b.get("env", {}))):
        va, vb = a.get("env", {}).get(key), b.get("env", {}).get(key)
        if va != vb:
            blocking.append(f"engine environment {key}: {va!r} vs {vb!r}")
    if a.get("resolved", {}).get("sampling_backend") != b.get("resolved", {}).get("sampling_backend"):
        blocking.append("different sampling backend: "
                        f"{a.get('resolved', {}).get('sampling_backend')} vs "
                        f"{b.get('resolved', {}).get('sampling_backend')}")
    oa, ob = a.get("resolved", {}).get("overlap_schedule"), b.get("resolved", {}).get("overlap_schedule")
    if oa != ob:
        notes.append(f"overlap schedule: {oa} vs {ob} (finishes show one iteration later with it on)")
    da, db = a.get("device", {}), b.get("device", {})
    if (da.get("type"), da.get("name")) != (db.get("type"), db.get("name")):
        notes.append(f"device: {da.get('type')} {da.get('name')} vs {db.get('type')} {db.get('name')}")
    for key in ("sglang", "torch"):
        va, vb = a.get("versions", {}).get(key), b.get("versions", {}).get(key)
        if va != vb:
            notes.append(f"{key} version: {va} vs {vb}")
    args_a, args_b = a.get("engine_args", {}), b.get("engine_args", {})
    pools_a, pools_b = a.get("pools", {}), b.get("pools", {})
    for key in sorted(set(args_a) | set(args_b)):
        if key in ("model_path", "port", "host"):
            continue
        va, vb = args_a.get(key, pools_a.get(key)), args_b.get(key, pools_b.get(key))
        if va != vb:  # a replay pins pool sizes the recording let sglang derive: same value, no note
            notes.append(f"engine arg {key}: {args_a.get(key)!r} vs {args_b.get(key)!r}")
    for key in sorted(set(a.get("pools", {})) | set(b.get("pools", {}))):
        va, vb = a.get("pools", {}).get(key), b.get("pools", {}).get(key)
        if va != vb:
            notes.append(f"pool {key}: {va} vs {vb}")
    return blocking, notes


# ------------------------------------------------------------------ records
class _Side:
    """One trace's running state while streaming: its request table, the last
    records for context, the last state, and per-request lifecycles (a short
    list per request: memory grows with requests, never with iterations)."""

    __slots__ = ("rids", "context", "state", "life", "iterations", "forwards")

    def __init__(self) -> None:
        self.rids: list[str] = []
        self.context: deque = deque(maxlen=CONTEXT_ITERATIONS)
        self.state: Optional[State] = None
        self.life: dict[str, list] = {}
        self.iterations = 0
        self.forwards = 0

    def fork(self) -> "_Side":
        """A copy to go on separately from here (the traces just parted)."""
        other = _Side()
        other.rids = list(self.rids)
        other.context = deque(self.context, maxlen=CONTEXT_ITERATIONS)
        other.state = self.state
        other.life = {rid: list(row) for rid, row in self.life.items()}
        other.iterations, other.forwards = self.iterations, self.forwards
        return other

    def absorb(self, record: Iteration) -> None:
        """Update the request table and lifecycles from one record. Decode
        batches hold no news for lifecycles, so only inputs, extend batches,
        finishes and retractions are looked at."""
        i = record.i
        rids, life = self.rids, self.life
        for item in record.inputs:
            if item["type"] == "generate":
                rids.append(item["rid"])
                # the columns of Lifecycle, in order
                life[item["rid"]] = [i, None, None, None, None, None, 0, 0]
        batches = record.batches
        if batches:
            self.forwards += len(batches)
            for batch in batches:
                if batch.new is None:
                    continue
                chunked = batch.chunked
                for n, cached in zip(batch.reqs, batch.cached):
                    row = life[rids[n]]
                    if row[1] is None:
                        row[1] = i
                        row[7] = cached
                    if n != chunked and row[2] is None:
                        row[2] = i
        for n, reason, length, _ in record.finished:
            row = life[rids[n]]
            row[3], row[4], row[5] = i, reason, length
        for n in record.retracted:
            life[rids[n]][6] += 1
        if record.state is not None:
            self.state = record.state
        self.iterations += 1


def _project(record: Optional[Iteration], dropped: frozenset, rids: Optional[list], i: int,
             state: Optional[State]) -> dict:
    """The part of a record that is compared, as plain values. `rids` maps
    request numbers to rids (needed when the two traces number their
    requests differently); a missing record is an idle iteration: nothing
    pulled, nothing ran, sizes as they were."""
    out: dict[str, Any] = {"i": i}
    if record is not None:
        state = record.state
        plain = msgspec.to_builtins(record, builtin_types=(bytes,))
        if rids is not None:
            _rename(plain, lambda n: rids[n] if n is not None and n < len(rids) else n)
        for kind in ("inputs", "batches", "finished", "retracted"):
            if kind in plain and kind not in dropped:
                out[kind] = plain[kind]
        if "inputs" in out and ("inputs.input_ids" in dropped or "inputs.sampling" in dropped):
            out["inputs"] = [{k: v for k, v in item.items() if f"inputs.{k}" not in dropped}
                             for item in out["inputs"]]
        if "batches" in out and any(f.startswith("batches.") for f in dropped):
            out["batches"] = [{k: v for k, v in b.items() if f"batches.{k}" not in dropped}
                              for b in out["batches"]]
        if "finished" in out and any(f.startswith("finished.") for f in dropped):
            keep = [f not in dropped for f in ("finished.reason", "finished.length", "finished.hash")]
            out["finished"] = [f[:1] + [v for v, k in zip(f[1:], keep) if k] for f in out["finished"]]
    if "state" not in dropped and state is not None:
        out["state"] = {k: v for k, v in msgspec.structs.asdict(state).items() if f"state.{k}" not in dropped}
    return out


def _rename(plain: dict, name) -> None:
    """Request numbers in a record's plain copy to rids, in place."""
    for b in plain.get("batches", ()):
        b["reqs"] = [name(n) for n in b["reqs"]]
        if "chunked" in b:
            b["chunked"] = name(b["chunked"])
    for f in plain.get("finished", ()):
        f[0] = name(f[0])
    if "retracted" in plain:
        plain["retracted"] = [name(n) for n in plain["retracted"]]


def _merge(a: Iterator[Iteration], b: Iterator[Iteration]
           ) -> Iterator[tuple[int, Optional[Iteration], Optional[Iteration]]]:
    """Pair records by iteration number; None where a side was idle."""
    ra, rb = next(a, None), next(b, None)
    while ra is not None or rb is not None:
        ia = ra.i if ra is not None else None
        ib = rb.i if rb is not None else None
        if ia == ib:
            yield ia, ra, rb
            ra, rb = next(a, None), next(b, None)
        elif ib is None or (ia is not None and ia < ib):
            yield ia, ra, None
            ra = next(a, None)
        else:
            yield ib, None, rb
            rb = next(b, None)


def diff(a: Trace, b: Trace, options: Options = Options()) -> DiffResult:
    blocking, notes = compare_headers(a.header, b.header)
    if blocking and not options.force:
        return DiffResult("not comparable", options.level, tuple(sorted(options.ignore)),
                          tuple(blocking), tuple(notes), 0, 0, None, {}, 0, (), None, None)
    dropped = options.dropped
    sa = _Side()
    sb: Optional[_Side] = None  # while None the traces run in lockstep: sa stands for both
    first: Optional[FirstDivergence] = None
    kinds = {k: 0 for k in _KINDS}
    differing = 0
    agree = True  # both traces gave every request number the same rid so far
    checked = 0  # request numbers verified to agree
    for i, ra, rb in _merge(a.iterations(), b.iterations()):
        if sb is None:
            if ra == rb:  # the common case: identical records, one side's bookkeeping
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
            differ = [k for k in _KINDS if getattr(ra, k) != getattr(rb, k)]
        else:
            pa = _project(ra, dropped, None if agree else sa.rids, i, before_a)
            pb = _project(rb, dropped, None if agree else sb.rids, i, before_b)
            differ = [k for k in _KINDS if pa.get(k) != pb.get(k)]
        if differ:
            differing += 1
            for k in differ:
                kinds[k] += 1
            if first is None:
                if pa is None:
                    pa = _project(ra, dropped, None, i, before_a)
                    pb = _project(rb, dropped, None, i, before_b)
                first = FirstDivergence(
                    iteration=i, reasons=tuple(explain(pa, pb, i, _namer(sa.rids if agree else None))),
                    kinds=tuple(differ),
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
            iteration=max((end_a or {}).get("iterations", 0), (end_b or {}).get("iterations", 0)),
            reasons=tuple(end_differs), kinds=("end",), a=None, b=None,
            context_a=tuple(sa.context), context_b=tuple(sb.context),
            names_a=tuple(sa.rids), names_b=tuple(sb.rids))
    lifecycles = _lifecycles(sa, sb) if first is not None else ()
    if first is not None:
        verdict = "diverged"
    elif sa.iterations == 0 and sb.iterations == 0:
        verdict = "empty"
    else:
        verdict = "same"
    return DiffResult(verdict, options.level, tuple(sorted(options.ignore)), tuple(blocking),
                      tuple(notes), max(sa.iterations, sb.iterations), max(sa.forwards, sb.forwards),
                      first, {k: v for k, v in kinds.items() if v}, differing, lifecycles, end_a, end_b)


def _namer(rids: Optional[list]):
    def name(n: Any) -> str:
        if rids is not None and isinstance(n, int) and 0 <= n < len(rids):
            return rids[n]
        return str(n)
    return name


def _end_differences(a: Optional[dict], b: Optional[dict]) -> list[str]:
    out = []
    a, b = a or {}, b or {}
    for side, end in (("A", a), ("B", b)):
        if not end.get("complete", False):
            out.append(f"{side} is incomplete: {end.get('reason') or 'no end record'}")
    if a.get("iterations") != b.get("iterations"):
        out.append(f"A ran {a.get('iterations')} loop iterations, B ran {b.get('iterations')}")
    return out


def _lifecycles(sa: _Side, sb: _Side) -> tuple:
    def lifecycle(rid: str, row: Optional[list]) -> Optional[Lifecycle]:
        return None if row is None else Lifecycle(rid, *row)

    order = dict.fromkeys(list(sa.life) + list(sb.life))
    return tuple((rid, lifecycle(rid, sa.life.get(rid)), lifecycle(rid, sb.life.get(rid)))
                 for rid in order)


# ------------------------------------------------------------------ explain
def explain(pa: dict, pb: dict, i: int, name=str) -> list[str]:
    """Per-request sentences for why two projected records differ; `name`
    turns a request reference (a number, or already a rid) into its rid."""
    out: list[str] = []
    inputs_a = [_input_key(x) for x in pa.get("inputs", ())]
    inputs_b = [_input_key(x) for x in pb.get("inputs", ())]
    if inputs_a != inputs_b:
        for key in inputs_a:
            if key not in inputs_b:
                out.append(f"{key} pulled at iteration {i} in A, not in B")
        for key in inputs_b:
            if key not in inputs_a:
                out.append(f"{key} pulled at iteration {i} in B, not in A")
        if not out:
            full_a, full_b = pa.get("inputs", []), pb.get("inputs", [])
            if sorted(inputs_a) == sorted(inputs_b) and full_a != full_b and inputs_a != inputs_b:
                out.append(f"inputs pulled at iteration {i} in another order: A {inputs_a}, B {inputs_b}")
            else:
                out.append(f"inputs at iteration {i} differ in content")
    elif pa.get("inputs") != pb.get("inputs"):
        out.append(f"inputs at iteration {i} carry other prompts or sampling parameters")
    out += _explain_batches(pa.get("batches", []), pb.get("batches", []), i, name)
    fa = {f[0]: f[1:] for f in pa.get("finished", ())}
    fb = {f[0]: f[1:] for f in pb.get("finished", ())}
    for n in fa.keys() - fb.keys():
        out.append(f"{name(n)} finished ({_finish_words(fa[n])}) at iteration {i} in A, not in B")
    for n in fb.keys() - fa.keys():
        out.append(f"{name(n)} finished ({_finish_words(fb[n])}) at iteration {i} in B, not in A")
    for n in fa.keys() & fb.keys():
        if fa[n] != fb[n]:
            out.append(f"{name(n)} finished at iteration {i} in both, but {_finish_words(fa[n])} "
                       f"in A and {_finish_words(fb[n])} in B")
    ra, rb = set(pa.get("retracted", ())), set(pb.get("retracted", ()))
    for n in ra - rb:
        out.append(f"{name(n)} retracted at iteration {i} in A, not in B")
    for n in rb - ra:
        out.append(f"{name(n)} retracted at iteration {i} in B, not in A")
    sa, sb = pa.get("state"), pb.get("state")
    if sa != sb and sa is not None and sb is not None:
        changed = [f"{k} {sa.get(k)} in A, {sb.get(k)} in B" for k in sa if sa.get(k) != sb.get(k)]
        out.append(f"after iteration {i}: " + "; ".join(changed))
    return out


def _input_key(item: dict) -> str:
    rid = item.get("rid")
    return f"{item['type']} {rid}" if rid else item["type"]


def _finish_words(values: list) -> str:
    words = [str(v) for v in values[:1]]
    if len(values) > 1:
        words.append(f"{values[1]} tokens")
    if len(values) > 2:
        words.append(f"output {values[2]:016x}")
    return ", ".join(words)


def _explain_batches(ba: list, bb: list, i: int, name) -> list[str]:
    out = []
    if not ba and bb:
        return [f"B ran forward {bb[0].get('fwd')} ({bb[0].get('mode')}) at iteration {i}; A ran nothing"]
    if ba and not bb:
        return [f"A ran forward {ba[0].get('fwd')} ({ba[0].get('mode')}) at iteration {i}; B ran nothing"]
    for x, y in zip(ba, bb):
        if x == y:
            continue
        if x.get("mode") != y.get("mode"):
            out.append(f"iteration {i} ran a {x.get('mode')} batch in A, a {y.get('mode')} batch in B")
        rx, ry = x["reqs"], y["reqs"]
        for n in rx:
            if n not in ry:
                out.append(f"{name(n)} ran in A's {x.get('mode')} batch at iteration {i}, not in B's")
        for n in ry:
            if n not in rx:
                out.append(f"{name(n)} ran in B's {y.get('mode')} batch at iteration {i}, not in A's")
        if sorted(map(str, rx)) == sorted(map(str, ry)) and rx != ry:
            out.append(f"iteration {i} ran the same requests in another order")
        for key, words in (("new", "new tokens"), ("cached", "cached-prefix tokens")):
            if key in x and key in y:
                for n, vx in zip(rx, x[key]):
                    if n in ry:
                        vy = y[key][ry.index(n)]
                        if vx != vy:
                            out.append(f"{name(n)} had {vx} {words} at iteration {i} in A, {vy} in B")
        if x.get("chunked") != y.get("chunked"):
            out.append(f"chunked request at iteration {i}: {_ref(x.get('chunked'), name)} in A, "
                       f"{_ref(y.get('chunked'), name)} in B")
        if x.get("fwd") != y.get("fwd"):
            out.append(f"forward numbering differs: {x.get('fwd')} in A, {y.get('fwd')} in B")
    if len(ba) != len(bb):
        out.append(f"iteration {i} ran {len(ba)} forward batches in A, {len(bb)} in B")
    if not out and ba != bb:
        out.append(f"batch at iteration {i} differs in token counts")
    return out


def _ref(n: Any, name) -> str:
    return "none" if n is None else name(n)
