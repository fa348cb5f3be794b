"""Workloads for the benchmarks (scripted-runtime scripts, run in the scheduler)."""

from __future__ import annotations

import random

from sgl_replay.scheduler.workloads import drain


def decode_heavy(ctx, n: int = 256):
    """n concurrent requests, short prompts, 512 new tokens each."""
    for i in range(n):
        ctx.start_req(rid=f"dh-{i}", prompt_len=32, max_new_tokens=512, ignore_eos=True)
    yield from drain(ctx)


def prefill_heavy(ctx, n: int = 160):
    """Long prompts, two new tokens: mostly chunked extend batches."""
    rng = random.Random(1)
    for i in range(n):
        ctx.start_req(rid=f"ph-{i}", prompt_len=rng.randint(600, 1200), prompt_token=3 + i,
                      max_new_tokens=2, ignore_eos=True)
    yield from drain(ctx)


_runs = iter(range(10**9))


def concurrent_64(ctx):
    # fresh rids every run: sglang's HTTP server aborts a reused rid for 2 s
    # after its last stream ended, and rejects one still in flight
    run = next(_runs)
    for i in range(64):
        ctx.start_req(rid=f"c64-{run}-{i}", prompt_len=48, max_new_tokens=96, ignore_eos=True)
    yield from drain(ctx)


def concurrent_64_timed(ctx):
    """concurrent_64, timing its loop iterations from the first yield (after
    the 64 requests were sent: their HTTP round trips are not loop time) to
    the last: appends {"iterations", "seconds"} to the file named by
    SGLREPLAY_BENCH_RESULTS. The same code whether recorded or not."""
    import json
    import os
    import time

    started = None
    iterations = 0
    for _ in concurrent_64(ctx):
        if started is None:
            started = time.perf_counter()
        iterations += 1
        yield
    with open(os.environ["SGLREPLAY_BENCH_RESULTS"], "a") as f:
        f.write(json.dumps({"iterations": iterations, "seconds": time.perf_counter() - started}) + "\n")


def long_run(ctx):
    """SGLREPLAY_LONG_RUN_REQUESTS requests (default 2000), one arriving every
    26 loop iterations, each 24..56 prompt tokens and 40..90 new tokens: a few
    running at a time, more than 50,000 iterations in all."""
    import os

    rng = random.Random(3)
    n = int(os.environ.get("SGLREPLAY_LONG_RUN_REQUESTS", "2000"))
    for i in range(n):
        ctx.start_req(rid=f"long-{i}", prompt_len=rng.randint(24, 56), prompt_token=3 + i % 900,
                      max_new_tokens=rng.randint(40, 90), ignore_eos=True)
        for _ in range(26):
            yield
    yield from drain(ctx)
