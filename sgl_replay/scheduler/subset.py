"""The script `sgl-replay minimize` records each candidate with: a subset of
a trace's inputs, fed at the iterations they were recorded at, then the loop
turned until the engine is idle. Runs inside the scheduler process.

The plan (written by sgl_replay.runs.minimize, its path in Job.trace) is a
msgpack map: {"iterations": [[i, [input, ...]], ...], "max_iterations": N}.
Inputs are a trace's own input records (generate, abort, pause, continue,
flush) and go through the real path, as a replay feeds them. A candidate
that never drains (a pause without its continue) stops after
`max_iterations`; the recording is complete all the same: it is what ran.
"""

from __future__ import annotations

import time
from typing import Generator

import msgspec

from sgl_replay.job import Job
from sgl_replay.scheduler.header import build_header
from sgl_replay.scheduler.poster import shared_poster
from sgl_replay.scheduler.recorder import active_probe
from sgl_replay.scheduler.scripts import RESPONSES_DRAIN_S, feed
from sgl_replay.trace.format import GenerateInput, Input

SCRIPT = "sgl_replay.scheduler.subset:record_subset"


class Plan(msgspec.Struct):
    iterations: list[tuple[int, list[Input]]]
    max_iterations: int


def record_subset(ctx, job: Job) -> Generator:
    assert job.trace is not None  # the subset's plan (runs/minimize.py)
    with open(job.trace, "rb") as f:
        plan = msgspec.msgpack.decode(f.read(), type=Plan)
    steps = plan.iterations
    limit = plan.max_iterations
    rids = {x.rid for _, items in steps for x in items if type(x) is GenerateInput}
    probe = active_probe(ctx.scheduler)
    server_args = ctx.scheduler.server_args
    base_url = f"http://{server_args.host}:{server_args.port}"
    poster = shared_poster()
    yield from probe.settle(rids)
    job = msgspec.structs.replace(job, trace=None)
    yield from _run(ctx, probe, poster, base_url, job, steps, limit)
    deadline = time.monotonic() + RESPONSES_DRAIN_S
    while poster.pending and time.monotonic() < deadline:
        yield
    probe.mark_traffic_end(rids)


def _run(ctx, probe, poster, base_url, job, steps, limit) -> Generator:
    probe.start(job.path, build_header(ctx.scheduler, job))
    try:
        for i, items in steps:
            while probe.recording.next_i < i:
                yield
            for item in items:
                feed(probe, poster, base_url, item)
        yield  # the last inputs are pulled
        while not ctx.is_fully_idle and probe.recording.next_i < limit:
            yield
    except Exception as e:
        probe.stop(complete=False, reason=f"subset stopped: {type(e).__name__}: {e}")
        raise
    probe.stop(complete=True)
