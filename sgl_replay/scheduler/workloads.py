"""Workloads: scripted-runtime scripts, each a generator that takes sglang's
ScriptedContext and yields once per scheduler loop iteration, exactly like the
scripts of SGLang's own scripted tests. They run inside the scheduler
process; a recording captures what they made the scheduler pull.

`generator` turns a Workload of the trace header (read from a spec by
sgl_replay.traffic.specs, in the parent) into the running script: a
built-in, `serve`, a user's `module:function`, or a public trace's requests.
"""

from __future__ import annotations

import random
import time
from typing import Callable, Generator

from sgl_replay.scheduler.poster import shared_poster
from sgl_replay.trace.format import Workload as WorkloadSpec
from sgl_replay.traffic import public_traces, specs

DRAIN_MAX_ITERS = 100_000  # a workload that never drains is a bug, not a wait


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


# The script of each built-in (sgl_replay.traffic.specs.BUILTIN says what each
# one is and the engine arguments it needs).
BUILTIN_SCRIPTS: dict[str, Callable[..., Generator]] = {fn.__name__: fn for fn in (
    chunked_prefill, prefix_reuse, concurrent_decode, abort_mid_decode, pause_retract,
    pause_in_place, kv_pressure, priority, running_cap, flush_between_waves)}


IDLE_SLEEP_S = 0.002  # an idle serve loop sleeps this long per iteration instead of spinning
# A public trace by the wall clock: a request that has not reached the
# scheduler this long after the last one was sent is reported missing
WALL_RESPONSES_S = 600.0


def serve(ctx, duration_s: float | None = None, idle_s: float | None = None) -> Generator:
    """Serve whatever HTTP traffic arrives, for `duration_s`, or until the
    engine has been idle for `idle_s` after serving at least one request.
    Every iteration is a real loop iteration; idle ones are not written."""
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


def generator(ctx, workload: WorkloadSpec) -> Generator:
    """The running script for `workload`, inside the scheduler."""
    if workload.kind == "builtin" and workload.name is not None:
        return BUILTIN_SCRIPTS[workload.name](ctx)
    if workload.kind == "serve":
        return serve(ctx, duration_s=workload.duration_s, idle_s=workload.idle_s)
    if workload.kind == "script" and workload.name is not None:
        return specs.resolve(workload.name)(ctx)
    if workload.kind == "public":
        return public_trace(ctx, workload)
    raise ValueError(f"unknown workload kind {workload.kind!r}")


def public_trace(ctx, workload) -> Generator:
    """The scripted workload: each request with its exact prompt at its
    virtual-clock iteration (the recording is a pure function of the file and
    the options), or, with clock "wall", sent over HTTP when the wall clock
    reaches its arrival time, like live traffic: the scheduler pulls it in
    whatever iteration it has reached, or, with clock "modeled", at its time
    on the modelled clock. Then drain."""
    from sglang.test.scripted_runtime.context.http_post import _http_post_and_await_recv_msg

    imported = public_traces.load(workload.options["format"], workload.path, workload.options,
                                  expect_sha256=workload.sha256)
    scheduler = ctx.scheduler
    max_req_len = getattr(scheduler, "max_req_len", None)
    if max_req_len is not None:  # what the parent checked, against the engine as it is
        for r in imported.requests:
            if r.input_len + r.output_len > max_req_len - 1 or r.input_len > max_req_len - 6:
                raise ValueError(f"{imported.path}:{r.line}: {r.input_len} + {r.output_len} tokens "
                                 f"do not fit this engine (max_req_len {max_req_len})")
    def payload(request: public_traces.Request) -> dict:
        return {"input_ids": imported.input_ids(request),
                "sampling_params": {"max_new_tokens": request.output_len, "ignore_eos": True},
                "rid": request.rid, "stream": True}

    if imported.options["clock"] == "wall":
        yield from _public_trace_by_wall_clock(ctx, imported, payload)
        return
    if imported.options["clock"] == "modeled":
        yield from _public_trace_by_modelled_clock(ctx, imported, payload)
        return
    now = 0
    for request in imported.requests:
        while now < request.iteration:
            yield
            now += 1
        rid = request.rid
        _http_post_and_await_recv_msg(ctx, path="/generate", json=payload(request),
                                      predicate=lambda obj, rid=rid: getattr(obj, "rid", None) == rid,
                                      description=f"request with rid {rid!r}")
    yield from drain(ctx)


def _public_trace_by_modelled_clock(ctx, imported: public_traces.Imported, payload) -> Generator:
    """Each request at its arrival time on the recording's modelled clock
    (scheduler/timed.py): a prediction of this traffic's latency on the
    server the cost model was fitted on."""
    from sglang.test.scripted_runtime.context.http_post import _http_post_and_await_recv_msg

    from sgl_replay.scheduler import timed
    from sgl_replay.scheduler.recorder import active_probe

    recording = active_probe(ctx.scheduler).recording
    if recording is None or recording.clock is None:
        raise RuntimeError("clock modeled: the recording has no cost model (record --cost FILE)")

    def feed(request: public_traces.Request, arrival_us: int) -> None:
        _http_post_and_await_recv_msg(ctx, path="/generate", json=payload(request),
                                      predicate=lambda obj, rid=request.rid: getattr(obj, "rid", None) == rid,
                                      description=f"request with rid {request.rid!r}")

    events = ((round(r.arrival_ms * 1000), r) for r in imported.requests)
    yield from timed.run(ctx, recording.clock, events, feed)


def _public_trace_by_wall_clock(ctx, imported: public_traces.Imported, payload) -> Generator:
    """Post each request when the wall clock reaches its arrival time, without
    waiting for it to arrive; turn the loop (sleeping when idle, as serve
    does) until every response is back and the scheduler is idle."""
    server_args = ctx.scheduler.server_args
    url = f"http://{server_args.host}:{server_args.port}/generate"
    poster = shared_poster()
    errors_before = len(poster.errors)
    start = time.monotonic()
    for request in imported.requests:
        due = start + float(request.arrival_ms) / 1000
        while time.monotonic() < due:
            if ctx.is_fully_idle:
                time.sleep(min(IDLE_SLEEP_S, max(0.0, due - time.monotonic())))
            yield
        poster.post(url, payload(request))
    deadline = time.monotonic() + WALL_RESPONSES_S
    while poster.pending or not ctx.is_fully_idle:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{poster.pending} requests still unanswered {WALL_RESPONSES_S:g}s "
                               f"after the last was sent")
        if ctx.is_fully_idle:
            time.sleep(IDLE_SLEEP_S)
        yield
    if len(poster.errors) > errors_before:
        raise RuntimeError(f"{len(poster.errors) - errors_before} requests failed: {poster.errors[-1]}")
    yield from drain(ctx)
