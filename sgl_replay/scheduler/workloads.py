"""Workloads: scripted-runtime scripts, each a generator that takes sglang's
ScriptedContext and yields once per scheduler loop iteration, exactly like the
scripts of SGLang's own scripted tests. They run inside the scheduler
process; a recording captures what they made the scheduler pull.

A workload is named by a spec: a built-in name, `serve` (HTTP traffic from any
client), or `module:function` (a user's script). `parse` is the one reader of
that spec; the parent side calls it to fill the trace header's Workload,
`generator` turns that Workload into the running script here.

Each built-in carries the engine arguments its shape needs (a small chunk
size, a small KV pool...); arguments given on the command line win.

This module imports nothing of sglang, so the CLI can list workloads quickly.
"""

from __future__ import annotations

import importlib
import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Optional

from sgl_replay.scheduler import public_traces
from sgl_replay.trace.format import Workload as WorkloadSpec

DRAIN_MAX_ITERS = 100_000  # a workload that never drains is a bug, not a wait


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    fn: Callable[..., Generator]
    engine_args: dict = field(default_factory=dict)


def drain(ctx) -> Generator:
    """Yield until the scheduler has nothing queued, chunked, running or in flight."""
    yield  # let the scheduler pull what the script just sent
    for _ in range(DRAIN_MAX_ITERS):
        if ctx.is_fully_idle:
            return
        yield
    raise RuntimeError(f"workload did not drain within {DRAIN_MAX_ITERS} iterations")


def until(ctx, condition: Callable[[], bool], *, what: str) -> Generator:
    for _ in range(DRAIN_MAX_ITERS):
        if condition():
            return
        yield
    raise RuntimeError(f"workload waited {DRAIN_MAX_ITERS} iterations for {what}")


def output_len(handle) -> int:
    req = handle.req
    return len(req.output_ids) if req is not None else 0


# ------------------------------------------------------------------ workloads
def chunked_prefill(ctx) -> Generator:
    ctx.start_req(rid="long-0", prompt_len=700, max_new_tokens=4, ignore_eos=True)
    yield from drain(ctx)


def prefix_reuse(ctx) -> Generator:
    # The second and third prompts begin with the first one: the radix cache
    # serves that prefix instead of recomputing it.
    ctx.start_req(rid="prefix-a", prompt_len=128, prompt_token=7, max_new_tokens=4, ignore_eos=True)
    yield from drain(ctx)
    ctx.start_req(rid="prefix-b", prompt_len=200, prompt_token=7, max_new_tokens=4, ignore_eos=True)
    yield from drain(ctx)
    ctx.start_req(rid="prefix-c", prompt_len=200, prompt_token=7, max_new_tokens=4, ignore_eos=True)
    yield from drain(ctx)


def concurrent_decode(ctx, n: int = 64, seed: int = 0) -> Generator:
    rng = random.Random(seed)
    for i in range(n):
        ctx.start_req(rid=f"decode-{i}", prompt_len=rng.randint(20, 320),
                      max_new_tokens=rng.randint(8, 31), ignore_eos=True)
    yield from drain(ctx)


def abort_mid_decode(ctx) -> Generator:
    handles = [ctx.start_req(rid=f"abort-{i}", prompt_len=32, max_new_tokens=48, ignore_eos=True)
               for i in range(4)]
    victim = handles[1]
    yield from until(ctx, lambda: output_len(victim) >= 6, what="the victim to decode")
    ctx.abort(victim)
    yield from drain(ctx)


def _pause_then_continue(ctx, mode: str) -> Generator:
    handles = [ctx.start_req(rid=f"pause-{i}", prompt_len=40, max_new_tokens=32, ignore_eos=True)
               for i in range(4)]
    yield from until(ctx, lambda: all(output_len(h) >= 4 for h in handles), what="decoding")
    ctx.pause_generation(mode=mode)
    for _ in range(5):
        yield
    ctx.continue_generation()
    yield from drain(ctx)


def pause_retract(ctx) -> Generator:
    yield from _pause_then_continue(ctx, "retract")


def pause_in_place(ctx) -> Generator:
    yield from _pause_then_continue(ctx, "in_place")


def kv_pressure(ctx) -> Generator:
    # 16 requests that may need 16 * (48 + 120) tokens of KV in a 1024-token
    # pool. They stop at EOS (the token oracle decides where), so the
    # scheduler admits on its new-token estimate rather than on the worst case
    # (ignore_eos would reserve it all) and must retract to keep decoding.
    for i in range(16):
        ctx.start_req(rid=f"kv-{i}", prompt_len=48, max_new_tokens=120)
    yield from drain(ctx)


def priority(ctx) -> Generator:
    # Two slots, both busy with low-priority work; then a low- and a
    # high-priority request arrive together, the low one first. When low-0
    # frees its slot, the high-priority request takes it.
    for i, new_tokens in enumerate((12, 24)):
        ctx.start_req(rid=f"low-{i}", prompt_len=32, max_new_tokens=new_tokens, priority=0,
                      ignore_eos=True)
    yield from until(ctx, lambda: ctx.batch_composition()["running"] != [], what="running")
    for _ in range(3):
        yield
    ctx.start_req(rid="low-2", prompt_len=32, max_new_tokens=8, priority=0, ignore_eos=True)
    ctx.start_req(rid="high-0", prompt_len=32, max_new_tokens=8, priority=10, ignore_eos=True)
    yield from drain(ctx)


def running_cap(ctx) -> Generator:
    for i in range(12):
        ctx.start_req(rid=f"cap-{i}", prompt_len=24 + 8 * i, max_new_tokens=12, ignore_eos=True)
    yield from drain(ctx)


def flush_between_waves(ctx) -> Generator:
    for wave in range(3):
        for i in range(4):
            ctx.start_req(rid=f"wave{wave}-{i}", prompt_len=64, prompt_token=9,
                          max_new_tokens=6, ignore_eos=True)
        yield from drain(ctx)
        if wave < 2:
            ctx.flush_cache()
            yield


# Workloads share engine settings where their shapes allow, so that a test
# suite or a golden run starts few engines: the default (chunk 256), a small
# KV pool, and two slots with priority scheduling.
KV_PRESSURE_ARGS = {"max_total_tokens": 1024}
TWO_SLOTS_ARGS = {"enable_priority_scheduling": True, "default_priority_value": 0,
                  "max_running_requests": 2}

BUILTIN: dict[str, Workload] = {w.name: w for w in (
    Workload("chunked_prefill", "one 700-token prompt through 256-token chunked prefill",
             chunked_prefill),
    Workload("prefix_reuse", "three prompts sharing a 128-token prefix; the radix cache serves it",
             prefix_reuse),
    Workload("concurrent_decode", "64 concurrent requests, prompts 20..320, 8..31 new tokens",
             concurrent_decode),
    Workload("abort_mid_decode", "four decoding requests, one aborted after 6 tokens",
             abort_mid_decode),
    Workload("pause_retract", "four decoding requests paused (retract) for 5 iterations, then continued",
             pause_retract),
    Workload("pause_in_place", "four decoding requests paused (in_place) for 5 iterations, then continued",
             pause_in_place),
    Workload("kv_pressure", "16 requests that outgrow a 1024-token KV pool and force retraction",
             kv_pressure, KV_PRESSURE_ARGS),
    Workload("priority", "priority scheduling with two slots: a high-priority request overtakes",
             priority, TWO_SLOTS_ARGS),
    Workload("running_cap", "12 requests through max_running_requests=2", running_cap,
             TWO_SLOTS_ARGS),
    Workload("flush_between_waves", "three waves of four requests with flush_cache between them",
             flush_between_waves),
)}


IDLE_SLEEP_S = 0.002  # an idle serve loop sleeps this long per iteration instead of spinning


def serve(ctx, duration_s: float | None = None, idle_s: float | None = None) -> Generator:
    """Serve whatever HTTP traffic arrives, for `duration_s`, or until the
    engine has been idle for `idle_s` after serving at least one request.
    Every iteration is a real loop iteration; idle ones are not written."""
    import time

    start = time.monotonic()
    last_busy = None
    while True:
        yield
        now = time.monotonic()
        if ctx.is_fully_idle:
            time.sleep(IDLE_SLEEP_S)
        else:
            last_busy = now
        if duration_s is not None and now - start >= duration_s:
            return
        if idle_s is not None and last_busy is not None and now - last_busy >= idle_s:
            return


# ------------------------------------------------------------------ specs
def parse(spec: str, *, duration_s: Optional[float] = None, idle_s: Optional[float] = None,
          description: Optional[str] = None, options: Optional[dict] = None) -> WorkloadSpec:
    """The Workload a spec names; ValueError (a one-line message) when it
    names none, or when serve's limits are missing or given to another kind.

    `mooncake:FILE`, `azure:FILE` and `burstgpt:FILE` (optionally
    `?limit=20&token_scale=0.02...`) name a public serving trace: the file is
    read and checked here (a malformed row is the ValueError); `options`
    (limit, start_ms, time_scale, token_scale, block_size, iteration_ms,
    clock) win over the spec's."""
    public = public_traces.split_spec(spec)
    if public is not None:
        if duration_s is not None or idle_s is not None:
            raise ValueError("a duration and an idle timeout apply to `serve` only")
        fmt, path, spec_options = public
        given = {**spec_options, **{k: v for k, v in (options or {}).items() if v is not None}}
        imported = public_traces.load(fmt, os.path.abspath(path), given)
        return WorkloadSpec(kind="public", name=spec, path=imported.path, sha256=imported.sha256,
                            options=imported.options,
                            description=description or public_traces.description(imported))
    if options:
        kinds = ", ".join(f"{f}:FILE" for f in public_traces.FORMATS)
        raise ValueError(f"trace import options apply to {kinds} only")
    if spec == "serve":
        if duration_s is None and idle_s is None:
            raise ValueError("serve needs a duration and/or an idle timeout")
        return WorkloadSpec(kind="serve", duration_s=duration_s, idle_s=idle_s, description=description)
    if duration_s is not None or idle_s is not None:
        raise ValueError("a duration and an idle timeout apply to `serve` only")
    if spec in BUILTIN:
        return WorkloadSpec(kind="builtin", name=spec, description=description or BUILTIN[spec].description)
    module, sep, attr = spec.partition(":")
    if sep and module and attr:
        return WorkloadSpec(kind="script", name=spec, description=description)
    raise ValueError(f"unknown workload {spec!r}; built-in workloads: {', '.join(BUILTIN)}; "
                     f"or `serve`, or module:function, or mooncake:FILE, azure:FILE, burstgpt:FILE")


def engine_args_of(workload: WorkloadSpec) -> dict:
    """The engine arguments a built-in's shape needs (none for the others)."""
    return dict(BUILTIN[workload.name].engine_args) if workload.kind == "builtin" and workload.name else {}


def resolve(dotted: str) -> Any:
    """`module:attr.attr` to the object it names (scripts, serve clients)."""
    module, _, attr = dotted.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def by_wall_clock(workload: WorkloadSpec) -> bool:
    """Whether `workload`'s inputs arrive when the wall clock says (serve
    mode, a public trace with clock "wall"), not at scripted iterations."""
    return workload.kind == "serve" or (workload.kind == "public" and (workload.options or {}).get("clock") == "wall")


def generator(ctx, workload: WorkloadSpec) -> Generator:
    """The running script for `workload`, inside the scheduler."""
    if workload.kind == "builtin" and workload.name:
        return BUILTIN[workload.name].fn(ctx)
    if workload.kind == "serve":
        return serve(ctx, duration_s=workload.duration_s, idle_s=workload.idle_s)
    if workload.kind == "script" and workload.name:
        return resolve(workload.name)(ctx)
    if workload.kind == "public":
        return public_traces.run(ctx, workload)
    raise ValueError(f"unknown workload kind {workload.kind!r}")
