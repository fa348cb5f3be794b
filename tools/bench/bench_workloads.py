"""Workloads for the benchmarks (scripted-runtime scripts, run in the scheduler)."""

from __future__ import annotations

import random

from sgl_replay.record.workloads import drain


def decode_heavy(ctx, n: int = 256):
    """n concurrent requests, short prompts, 128 new tokens each."""
    for i in range(n):
        ctx.start_req(rid=f"dh-{i}", prompt_len=32, max_new_tokens=128, ignore_eos=True)
    yield from drain(ctx)


def prefill_heavy(ctx, n: int = 48):
    """Long prompts, two new tokens: mostly chunked extend batches."""
    rng = random.Random(1)
    for i in range(n):
        ctx.start_req(rid=f"ph-{i}", prompt_len=rng.randint(600, 1200), prompt_token=3 + i,
                      max_new_tokens=2, ignore_eos=True)
    yield from drain(ctx)


def concurrent_64(ctx):
    for i in range(64):
        ctx.start_req(rid=f"c64-{i}", prompt_len=48, max_new_tokens=96, ignore_eos=True)
    yield from drain(ctx)


def concurrent_64_timed(ctx):
    """concurrent_64, timing itself: appends {"iterations", "seconds"} to the
    file named by SGLREPLAY_BENCH_RESULTS (the same code whether recorded or not)."""
    import json
    import os
    import time

    started = time.perf_counter()
    iterations = 0
    for _ in concurrent_64(ctx):
        iterations += 1
        yield
    with open(os.environ["SGLREPLAY_BENCH_RESULTS"], "a") as f:
        f.write(json.dumps({"iterations": iterations, "seconds": time.perf_counter() - started}) + "\n")
