"""What is compared, and how a difference is said: one small comparator per
kind of consequence, selected by `--level` and `--ignore` the way vcrpy's
`match_on` selects matchers.

A comparator takes the compared part of both records (plain values, from
`project`), the iteration number and a function naming a request, and
returns its reasons in words, one per request where it can; an empty list
means no difference of its kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import msgspec

from sgl_replay.trace.format import Iteration, State

LEVELS = ("composition", "full")

# Kinds of consequence, as the top-level fields of an iteration record.
KINDS = ("inputs", "batches", "state", "finished", "retracted")

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
_FINISHED_FIELDS = ("finished.reason", "finished.length", "finished.hash")

Name = Callable[[Any], str]  # a request reference (a number, or already a rid) -> its rid
Projected = dict[str, Any]  # the compared part of a record, as plain values (`project`)


@dataclass(frozen=True)
class Options:
    level: str = "full"
    ignore: frozenset[str] = frozenset()
    force: bool = False

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"unknown level {self.level!r}; choose from {', '.join(LEVELS)}")
        unknown = sorted(set(self.ignore) - IGNORABLE)
        if unknown:
            raise ValueError(f"cannot ignore {', '.join(unknown)}; ignorable fields: "
                             f"{', '.join(sorted(IGNORABLE))}")

    @property
    def dropped(self) -> frozenset[str]:
        """Every field left out, the level's and --ignore's."""
        return frozenset(self.ignore) | (_COMPOSITION_IGNORES if self.level == "composition" else frozenset())

    @property
    def compared(self) -> tuple[str, ...]:
        """The kinds of consequence whose comparators run."""
        return tuple(k for k in KINDS if k not in self.dropped)


# ------------------------------------------------------------------ projection
def project(record: Optional[Iteration], dropped: frozenset[str], rids: Optional[list[str]], i: int,
            state: Optional[State]) -> Projected:
    """The part of a record that is compared, as plain values. `rids` maps
    request numbers to rids (needed when the two traces number their
    requests differently); a missing record is an idle iteration: nothing
    pulled, nothing ran, sizes as they were (`state`)."""
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
        if "finished" in out:  # lists, whether the record held tuples (read) or lists (built)
            keep = [f not in dropped for f in _FINISHED_FIELDS]
            out["finished"] = [list(f[:1]) + [v for v, k in zip(f[1:], keep) if k] for f in out["finished"]]
    if "state" not in dropped and state is not None:
        out["state"] = {k: v for k, v in msgspec.structs.asdict(state).items() if f"state.{k}" not in dropped}
    return out


def _rename(plain: Projected, name: Name) -> None:
    """Request numbers in a record's plain copy to rids, in place."""
    for b in plain.get("batches", ()):
        b["reqs"] = [name(n) for n in b["reqs"]]
        if "chunked" in b:
            b["chunked"] = name(b["chunked"])
    if "finished" in plain:
        plain["finished"] = [(name(f[0]), *f[1:]) for f in plain["finished"]]
    if "retracted" in plain:
        plain["retracted"] = [name(n) for n in plain["retracted"]]


# ------------------------------------------------------------------ comparators
def inputs(pa: Projected, pb: Projected, i: int, name: Name) -> list[str]:
    out: list[str] = []
    keys_a = [_input_key(x) for x in pa.get("inputs", ())]
    keys_b = [_input_key(x) for x in pb.get("inputs", ())]
    if keys_a != keys_b:
        out += [f"{key} pulled at iteration {i} in A, not in B" for key in keys_a if key not in keys_b]
        out += [f"{key} pulled at iteration {i} in B, not in A" for key in keys_b if key not in keys_a]
        if not out:
            if sorted(keys_a) == sorted(keys_b):
                out.append(f"inputs pulled at iteration {i} in another order: A {keys_a}, B {keys_b}")
            else:
                out.append(f"inputs at iteration {i} differ in content")
    elif pa.get("inputs") != pb.get("inputs"):
        out.append(f"inputs at iteration {i} carry other prompts or sampling parameters")
    return out


def batches(pa: Projected, pb: Projected, i: int, name: Name) -> list[str]:
    ba, bb = pa.get("batches", []), pb.get("batches", [])
    if not ba and bb:
        return [f"B ran forward {bb[0].get('fwd')} ({bb[0].get('mode')}) at iteration {i}; A ran nothing"]
    if ba and not bb:
        return [f"A ran forward {ba[0].get('fwd')} ({ba[0].get('mode')}) at iteration {i}; B ran nothing"]
    out = []
    for x, y in zip(ba, bb):
        if x != y:
            out += _batch_reasons(x, y, i, name)
    if len(ba) != len(bb):
        out.append(f"iteration {i} ran {len(ba)} forward batches in A, {len(bb)} in B")
    if not out and ba != bb:
        out.append(f"batch at iteration {i} differs in token counts")
    return out


def _batch_reasons(x: Projected, y: Projected, i: int, name: Name) -> list[str]:
    out = []
    if x.get("mode") != y.get("mode"):
        out.append(f"iteration {i} ran a {x.get('mode')} batch in A, a {y.get('mode')} batch in B")
    rx, ry = x["reqs"], y["reqs"]
    out += [f"{name(n)} ran in A's {x.get('mode')} batch at iteration {i}, not in B's" for n in rx if n not in ry]
    out += [f"{name(n)} ran in B's {y.get('mode')} batch at iteration {i}, not in A's" for n in ry if n not in rx]
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
    return out


def finished(pa: Projected, pb: Projected, i: int, name: Name) -> list[str]:
    fa = {f[0]: f[1:] for f in pa.get("finished", ())}
    fb = {f[0]: f[1:] for f in pb.get("finished", ())}
    out = [f"{name(n)} finished ({_finish_words(fa[n])}) at iteration {i} in A, not in B"
           for n in fa.keys() - fb.keys()]
    out += [f"{name(n)} finished ({_finish_words(fb[n])}) at iteration {i} in B, not in A"
            for n in fb.keys() - fa.keys()]
    out += [f"{name(n)} finished at iteration {i} in both, but {_finish_words(fa[n])} "
            f"in A and {_finish_words(fb[n])} in B" for n in fa.keys() & fb.keys() if fa[n] != fb[n]]
    return out


def retracted(pa: Projected, pb: Projected, i: int, name: Name) -> list[str]:
    ra, rb = set(pa.get("retracted", ())), set(pb.get("retracted", ()))
    return ([f"{name(n)} retracted at iteration {i} in A, not in B" for n in ra - rb]
            + [f"{name(n)} retracted at iteration {i} in B, not in A" for n in rb - ra])


def state(pa: Projected, pb: Projected, i: int, name: Name) -> list[str]:
    sa, sb = pa.get("state"), pb.get("state")
    if sa == sb or sa is None or sb is None:
        return []
    changed = [f"{k} {sa.get(k)} in A, {sb.get(k)} in B" for k in sa if sa.get(k) != sb.get(k)]
    return [f"after iteration {i}: " + "; ".join(changed)]


# In the order their reasons are told: what came in, what ran, what ended, sizes.
COMPARATORS: dict[str, Callable[[Projected, Projected, int, Name], list[str]]] = {
    "inputs": inputs, "batches": batches, "finished": finished, "retracted": retracted, "state": state,
}


def explain(pa: Projected, pb: Projected, i: int, name: Name = str, kinds: tuple[str, ...] = KINDS) -> list[str]:
    """The reasons of the comparators of `kinds` for two projected records."""
    return [reason for kind, compare in COMPARATORS.items() if kind in kinds
            for reason in compare(pa, pb, i, name)]


def _input_key(item: dict[str, Any]) -> str:
    rid = item.get("rid")
    return f"{item['type']} {rid}" if rid else item["type"]


def _finish_words(values: list[Any]) -> str:
    words = [str(v) for v in values[:1]]
    if len(values) > 1:
        words.append(f"{values[1]} tokens")
    if len(values) > 2:
        words.append(f"output {values[2]:016x}")
    return ", ".join(words)


def _ref(n: Any, name: Name) -> str:
    return "none" if n is None else name(n)
