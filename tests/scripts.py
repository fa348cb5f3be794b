"""Scripted-runtime scripts used by the tests (run inside the scheduler)."""

from __future__ import annotations

import json

from sgl_replay.scheduler.workloads import concurrent_decode, drain


def plain_harness_batches(ctx, out_path: str):
    """In an engine started by sglang's own harness: prove the sgl-replay
    plugin stayed out of the loop, run a workload, and write the harness's own
    batch log (its ScriptedBatchRecords) for the test to compare."""
    from sgl_replay.scheduler import recorder

    hook = ctx.scheduler.scripted_scheduler_hook
    facts = {
        "hook_class": type(hook).__name__,
        "proxy_class": type(ctx.scheduler.recv_from_tokenizer).__name__,
        "probe": recorder.PROBE is not None,
    }
    yield from concurrent_decode(ctx)
    facts["batches"] = [[r.mode, list(r.rids)] for r in hook._batch_log]
    with open(out_path, "w") as f:
        json.dump(facts, f)


def raises_after_two_iterations(ctx):
    ctx.start_req(rid="doomed-0", prompt_len=16, max_new_tokens=64, ignore_eos=True)
    yield
    yield
    raise ValueError("the workload script gave up")


def long_decode(ctx):
    """Enough iterations to kill the engine part way."""
    for i in range(4):
        ctx.start_req(rid=f"slow-{i}", prompt_len=32, max_new_tokens=2000, ignore_eos=True)
    yield from drain(ctx)


def kv_pressure_32(ctx):
    """kv_pressure's shape with 32 requests (tools/bench/minimize.py runs it
    in a 2,048-token KV pool, twice kv_pressure's): they stop at EOS, so the
    scheduler admits on its estimate and retracts."""
    for i in range(32):
        ctx.start_req(rid=f"kv32-{i}", prompt_len=48, max_new_tokens=120)
    yield from drain(ctx)
