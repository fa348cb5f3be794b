"""Shrink a trace that diverges on a suspect configuration to a small trace
that still does: delta debugging (ddmin) over the trace's inputs.

Units are a trace's requests (a request's abort goes with it) and its other
control inputs (pause, continue, flush, abort-all: one unit each). A
candidate is a subset of units, run as a script (sgl_replay.scheduler.subset)
that feeds those inputs at the iterations they were recorded at, RECORDED on
the baseline engine (the trace's own configuration), and that recording is
then checked on the suspect engine (the same, plus --engine-arg, --engine-env
and --engine-path). A candidate is kept when it diverges with the same kinds
of first difference (DiffResult.first.kinds) as the whole trace did. Both
engines come from one EnginePool: started once, shared by every candidate.

The result is the baseline recording of the smallest diverging subset: an
ordinary trace, `same` on the baseline, diverging on the suspect.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import msgspec

from sgl_replay.diff import Options
from sgl_replay.runs.capture import CaptureFailed, run_capture
from sgl_replay.runs.check import Outcome, Verdict, check, read_header
from sgl_replay.runs.pool import EnginePool
from sgl_replay.runs.replay import engine_config_for
from sgl_replay.trace.format import REPLAYABLE_INPUTS, AbortInput, GenerateInput, Source, Workload
from sgl_replay.trace.reader import TraceError, TraceReader

SUBSET_SCRIPT = "sgl_replay.scheduler.subset:record_subset"
CANDIDATE_TIMEOUT_S = 900.0
MATCHES = ("kinds", "any")  # keep a candidate on the same first-difference kinds, or on any divergence


class NotDiverging(Exception):
    """The whole trace does not diverge on the suspect configuration."""


@dataclass(frozen=True)
class Unit:
    name: str  # a rid, or "pause@12" ...
    items: tuple[tuple[int, int, dict], ...]  # (iteration, order in the trace, input)
    request: bool


@dataclass
class MinimizeResult:
    output: str
    units_before: int
    units_after: int
    requests_before: int
    requests_after: int
    steps: int
    candidates: int  # recorded and checked (cache hits not counted)
    seconds: float
    kinds: tuple[str, ...]  # the first-difference kinds kept
    kept: list[str] = field(default_factory=list)  # the units of the result
    baseline: Optional[Verdict] = None  # the result checked on the baseline (verify)
    suspect: Optional[Verdict] = None  # ... and on the suspect


def units_of(trace: str) -> tuple[list[Unit], int]:
    """The trace's units in order of first appearance, and its iteration count."""
    with TraceReader(trace) as reader:
        if reader.header.workload is not None and reader.header.workload.kind == "capture":
            raise TraceError("a capture of a plain server forces its recorded output tokens, which a "
                             "scripted recording cannot carry; minimize a replay of it instead "
                             "(sgl-replay replay CAPTURE -o R.sglt)")
        by_name: dict[str, list] = {}
        requests: set[str] = set()
        order = 0
        for record in reader.iterations():
            for item in record.inputs:
                if type(item) is GenerateInput:
                    name = item.rid
                    requests.add(name)
                elif type(item) is AbortInput and not item.all and item.rid in requests:
                    name = item.rid
                elif isinstance(item, REPLAYABLE_INPUTS):
                    name = f"{item.kind}@{record.i}#{order}"
                else:
                    continue  # not replayable: not fed to a candidate either
                by_name.setdefault(name, []).append((record.i, order, item))
                order += 1
        iterations = reader.end.iterations if reader.end is not None else 0
    return [Unit(name, tuple(items), name in requests) for name, items in by_name.items()], iterations


def write_plan(units: Sequence[Unit], path: str, max_iterations: int) -> None:
    items = sorted((x for u in units for x in u.items), key=lambda x: (x[0], x[1]))
    steps: list[list] = []
    for i, _, item in items:
        if not steps or steps[-1][0] != i:
            steps.append([i, []])
        steps[-1][1].append(item)
    with open(path, "wb") as f:
        f.write(msgspec.msgpack.encode({"iterations": steps, "max_iterations": max_iterations}))


def ddmin(units: list, test: Callable[[list, int], bool]) -> tuple[list, int]:
    """Zeller's ddmin: a 1-minimal sublist of `units` for which `test`
    holds (it holds for `units`). `test(candidate, step)`; returns (result, steps)."""
    n, step = 2, 0
    while len(units) >= 2:
        step += 1
        size = len(units)
        chunks = [units[size * k // n:size * (k + 1) // n] for k in range(n)]
        chunks = [c for c in chunks if c]
        reduced = False
        for chunk in chunks:
            if test(chunk, step):
                units, n, reduced = chunk, 2, True
                break
        if not reduced and len(chunks) > 2:
            for k in range(len(chunks)):
                complement = [u for j, c in enumerate(chunks) if j != k for u in c]
                if test(complement, step):
                    units, n, reduced = complement, max(n - 1, 2), True
                    break
        if not reduced:
            if n >= size:
                break
            n = min(size, 2 * n)
    return units, step


def minimize(trace: str, output: str, *, pool: Optional[EnginePool] = None, device: Optional[str] = None,
             engine_args: Optional[dict] = None, engine_env: Optional[dict] = None,
             engine_path: Sequence[str] = (), options: Options = Options(), match: str = "kinds",
             verify: bool = True, progress: Callable[[str], None] = lambda line: None,
             timeout_s: float = CANDIDATE_TIMEOUT_S) -> MinimizeResult:
    """Minimize `trace` against the suspect configuration (the trace's own
    plus `engine_args`, `engine_env`, `engine_path`); write the result to
    `output`. NotDiverging when the whole trace does not diverge there;
    TraceError on a trace that cannot be minimized; EngineError when an
    engine cannot start."""
    if match not in MATCHES:
        raise ValueError(f"unknown match {match!r}; choose from {', '.join(MATCHES)}")
    started = time.monotonic()
    header = read_header(trace)
    units, iterations = units_of(trace)
    requests_before = sum(u.request for u in units)
    own_pool = pool is None
    pool = pool or EnginePool(max_live=2)
    suspect: dict[str, Any] = dict(engine_args=engine_args, engine_env=engine_env, engine_path=tuple(engine_path),
                   device=device, options=options, timeout_s=timeout_s)
    try:
        progress(f"{os.path.basename(trace)}: {requests_before} requests, {len(units) - requests_before} "
                 f"other inputs, {iterations} iterations; checking it on the suspect configuration")
        whole = check(trace, pool=pool, **suspect)
        if whole.outcome in (Outcome.BAD_INPUT, Outcome.COULD_NOT_RUN):
            raise NotDiverging(f"the suspect configuration cannot run it: {whole.message}")
        if whole.outcome is not Outcome.DIVERGED or whole.result is None or whole.result.first is None:
            raise NotDiverging(f"the trace does not diverge on the suspect configuration "
                               f"({whole.outcome.value}); nothing to minimize")
        kinds = tuple(whole.result.first.kinds)
        progress(f"whole trace: diverged at iteration {whole.result.first.iteration} "
                 f"({', '.join(kinds)}); keeping candidates that diverge "
                 + ("the same way" if match == "kinds" else "at all"))
        baseline = pool.get(engine_config_for(header, device=device))
        max_iterations = 2 * iterations + 200
        with tempfile.TemporaryDirectory(prefix="sgl-replay-minimize-") as tmp:
            cache: dict[frozenset, Optional[str]] = {}  # unit names -> the diverging recording
            count = [0]

            def record(candidate: list[Unit]) -> str:
                count[0] += 1
                plan = os.path.join(tmp, f"candidate-{count[0]}.plan")
                out = os.path.join(tmp, f"candidate-{count[0]}.sglt")
                write_plan(candidate, plan, max_iterations)
                n = sum(u.request for u in candidate)
                workload = Workload(kind="minimized", name=os.path.basename(trace),
                                    description=f"minimized from {os.path.basename(trace)}: "
                                                f"{n} of {requests_before} requests, "
                                                f"{len(candidate) - n} other inputs")
                run_capture(baseline, SUBSET_SCRIPT, out, source=Source(kind="record"), workload=workload,
                            trace=plan, timeout_s=timeout_s)
                return out

            def test(candidate: list[Unit], step: int) -> bool:
                key = frozenset(u.name for u in candidate)
                if key in cache:
                    return cache[key] is not None
                t0 = time.monotonic()
                n = sum(u.request for u in candidate)
                try:
                    out = record(candidate)
                except CaptureFailed as e:
                    progress(f"step {step}: candidate {count[0]}: {n} requests, {len(candidate)} units: "
                             f"recording failed ({e}); treated as not diverging")
                    cache[key] = None
                    return False
                verdict = check(out, pool=pool, **suspect)
                first = verdict.result.first if verdict.result is not None else None
                got = tuple(first.kinds) if first is not None else ()
                keep = verdict.outcome is Outcome.DIVERGED and first is not None and (
                    match == "any" or set(got) == set(kinds))
                cache[key] = out if keep else None
                what = (f"diverged at iteration {first.iteration} ({', '.join(got)})" if first is not None
                        else verdict.outcome.value)
                progress(f"step {step}: candidate {count[0]}: {n} requests, {len(candidate)} units -> "
                         f"{what}{' : kept' if keep else ''} ({time.monotonic() - t0:.1f}s)")
                return keep

            result, steps = ddmin(list(units), test)
            key = frozenset(u.name for u in result)
            if key not in cache:  # nothing smaller diverged: record the whole set once
                test(result, steps)
            kept = cache[key]
            if kept is None:
                raise NotDiverging("the whole trace diverges, but its recording on the baseline "
                                   "does not; the trace's own run cannot be reproduced here")
            shutil.copyfile(kept, output)
        res = MinimizeResult(output=output, units_before=len(units), units_after=len(result),
                             requests_before=requests_before, requests_after=sum(u.request for u in result),
                             steps=steps, candidates=count[0], seconds=0.0, kinds=kinds,
                             kept=[u.name for u in result])
        if verify:
            res.baseline = check(output, pool=pool, device=device, options=options, timeout_s=timeout_s)
            res.suspect = check(output, pool=pool, **suspect)
            progress(f"{os.path.basename(output)}: on the baseline {res.baseline.outcome.value}, "
                     f"on the suspect {res.suspect.outcome.value}")
    finally:
        if own_pool:
            pool.close()
    res.seconds = time.monotonic() - started
    progress(f"done: {steps} steps, {res.candidates} candidates, requests {requests_before} -> "
             f"{res.requests_after} (units {len(units)} -> {len(result)}: {', '.join(res.kept)}), "
             f"{res.seconds:.1f}s")
    return res
