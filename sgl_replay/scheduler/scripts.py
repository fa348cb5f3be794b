"""The scripts sgl-replay runs inside the scheduler process, one loop
iteration per `yield` (sglang's scripted runtime drives them):

    record   checks the recorder is really in the loop, opens the trace, drives
             the workload to its end and closes the trace, complete or not;
    replay   feeds a trace's inputs back at the iterations they were pulled,
             while the recorder writes what happens now.

A replay feeds each input through the real path: an HTTP call to the engine's
own server, which the tokenizer manager turns into the object the scheduler
pulls (as the harness's start_req and abort do). The script waits until the
object sits in the recv proxy before it yields, so the scheduler pulls it in
the same iteration as in the recording, and in the same order.
"""

from __future__ import annotations

import logging
import time
from typing import Generator, Optional

import msgspec

from sgl_replay.job import Job
from sgl_replay.scheduler import inputs as input_codec
from sgl_replay.scheduler import oracle, skip_model, timed, workloads
from sgl_replay.scheduler.header import build_header
from sgl_replay.scheduler.poster import shared_poster
from sgl_replay.scheduler.recorder import active_probe
from sgl_replay.timing.model import ModelledClock, from_builtins
from sgl_replay.timing.turns import client_hops, follow_ups
from sgl_replay.trace.format import REPLAYABLE_INPUTS, AbortInput, GenerateInput, Input
from sgl_replay.trace.reader import TraceReader
from sgl_replay.traffic import specs

logger = logging.getLogger(__name__)

# An input that does not arrive in this long was dropped on the way (the
# tokenizer manager drops an abort for a request that already finished);
# the diff will show it missing from the replay.
ARRIVAL_TIMEOUT_S = 5.0
# After the last recorded iteration the loop keeps turning until the HTTP
# calls of this replay have their answers, so that nothing of it is still in
# the tokenizer manager when the next run reuses the same rids.
RESPONSES_DRAIN_S = 60.0


def record(ctx, job: Job) -> Generator:
    probe = active_probe(ctx.scheduler)
    assert job.workload is not None  # a recording's job names its workload (runs/record.py)
    workload = workloads.generator(ctx, job.workload)
    yield from probe.settle()
    clock = ModelledClock(from_builtins(job.cost)) if job.cost is not None else None
    probe.start(job.path, build_header(ctx.scheduler, job), wall_clock=specs.by_wall_clock(job.workload),
                clock=clock)
    try:
        yield from workload
    except Exception as e:
        probe.stop(complete=False, reason=f"workload raised {type(e).__name__}: {e}")
        raise
    probe.stop(complete=True)


def replay(ctx, job: Job) -> Generator:
    probe = active_probe(ctx.scheduler)
    server_args = ctx.scheduler.server_args
    base_url = f"http://{server_args.host}:{server_args.port}"
    poster = shared_poster()
    assert job.trace is not None  # a replay's job names its trace (runs/replay.py)
    rids, forced = _read_rids_and_outputs(job.trace)
    yield from probe.settle(rids)
    skip = bool((job.source.overrides or {}).get("skip_model"))
    with TraceReader(job.trace) as recorded, oracle.use(forced), skip_model.skipped(skip):
        job = msgspec.structs.replace(job, workload=recorded.header.workload)
        clock = ModelledClock(from_builtins(job.cost)) if job.cost is not None else None
        probe.start(job.path, build_header(ctx.scheduler, job), clock=clock)
        try:
            if clock is not None:
                follows = {}
                if forced and job.trace is not None:  # a capture: its chats' next turns wait for their answers
                    with TraceReader(job.trace) as again:
                        follows = follow_ups(again.iterations())
                limit = (job.source.overrides or {}).get("max_in_flight")
                limit = limit if isinstance(limit, int) and limit > 0 else None
                hops = {}
                if limit is not None and job.trace is not None:
                    with TraceReader(job.trace) as again:
                        hops = client_hops(again.iterations(), limit)
                release = _Release(probe, follows, limit, hops)
                yield from timed.run(ctx, clock, _timed_inputs(recorded),
                                     lambda item, us: _feed_timed(probe, poster, base_url, item, us),
                                     release=release if follows or release.limit else None)
            else:
                for record in recorded.iterations():
                    while probe.recording.next_i < record.i:  # type: ignore[union-attr]  # set until probe.stop()
                        yield
                    for item in record.inputs:
                        feed(probe, poster, base_url, item)
                while probe.recording.next_i < recorded.end.iterations:  # type: ignore[union-attr]  # as above; end: read whole
                    yield
        except Exception as e:
            probe.stop(complete=False, reason=f"replay stopped: {type(e).__name__}: {e}")
            raise
    probe.stop(complete=True)
    deadline = time.monotonic() + RESPONSES_DRAIN_S
    while poster.pending and time.monotonic() < deadline:
        yield
    probe.mark_traffic_end(rids)


def _read_rids_and_outputs(trace: str) -> tuple[set, dict]:
    """The rids a trace's generate inputs use, and the output tokens its
    replay must force (a capture of a plain server records them)."""
    rids: set = set()
    prompts: dict[int, tuple[str, int]] = {}  # req -> (rid, prompt length)
    outputs: list = []
    with TraceReader(trace) as recorded:
        for record in recorded.iterations():
            for x in record.inputs:
                if type(x) is GenerateInput:
                    rids.add(x.rid)
                    prompts[len(prompts)] = (x.rid, len(x.input_ids) // 4 if x.input_ids is not None else 0)
            outputs.extend(getattr(record, "outputs", ()))
    return rids, oracle.table_of(outputs, prompts) if outputs else {}


def _timed_inputs(recorded: TraceReader):
    """(arrival in us, input) of a timed trace's inputs, in recorded order."""
    for record in recorded.iterations():
        arrivals = record.arrivals
        for k, item in enumerate(record.inputs):
            at = arrivals[k] if k < len(arrivals) else record.ms
            yield round((at or 0.0) * 1000), item


class _Release:
    """When a timed replay may send a request that has reached its recorded
    time (scheduler/timed.py asks; None: not yet):
    - a chat's next turn: its recorded think time after the earlier turn
      finished here, and not while that turn runs;
    - with `limit` (a closed-loop client such as bench_serving
      --max-concurrency keeps that many in flight): not while `limit`
      requests sent here have not finished; a request that the recorded
      client held back for a slot (`hops`: rid -> ms, timing/turns.py)
      goes its recorded hop after the finish that frees its slot here
      (never before its recorded time: when the client meant to send it
      is not in the trace)."""

    def __init__(self, probe, follows: dict, limit: Optional[int], hops: Optional[dict] = None) -> None:
        self.probe = probe
        self.follows = follows
        self.limit = limit
        self.hops = hops or {}
        self.sent = 0

    def __call__(self, item: Input, arrival_us: int) -> Optional[int]:
        if type(item) is not GenerateInput:
            return arrival_us
        rec = self.probe.recording
        when = arrival_us
        earlier = self.follows.get(item.rid)
        if earlier is not None:
            req = rec.req_of_rid.get(earlier[0])
            if req is None or req in rec.live or req in rec.pending:
                return None
            done = rec.finished_at.get(req)
            if done is not None:
                when = max(arrival_us, round((done + earlier[1]) * 1000))
        if self.limit is not None:
            if self.sent - len(rec.finished_at) >= self.limit:
                return None
            hop = self.hops.get(item.rid)
            if hop is not None and self.sent >= self.limit:  # the (sent - limit)-th finish freed its slot
                when = max(when, round((rec.finish_ms[self.sent - self.limit] + hop) * 1000))
            when = max(when, rec.clock.now_us)
        self.sent += 1
        return when


def _feed_timed(probe, poster, base_url: str, item: Input, arrival_us: int) -> None:
    """One input of a timed replay. An abort of a request that already
    finished in this replay (it ran faster than in the recording) has
    nothing to abort: the tokenizer manager would drop it on the way."""
    rec = probe.recording
    if type(item) is AbortInput and not item.all:
        req = rec.req_of_rid.get(item.rid)
        if req is None or (req not in rec.live and req not in rec.pending):
            return
    feed(probe, poster, base_url, item)


def feed(probe, poster, base_url: str, item: Input) -> None:
    """Send one recorded input through the engine's server and wait until it
    sits in the recv proxy (a replay and a subset feed inputs alike)."""
    if not isinstance(item, REPLAYABLE_INPUTS):
        logger.warning("sgl-replay: input %s cannot be replayed; skipped", item)
        return
    path, body, arrived = input_codec.to_http(item)
    poster.post(base_url + path, body)
    try:
        probe.proxy.wait_until_arrived(arrived, timeout_s=ARRIVAL_TIMEOUT_S,
                                       description=f"{item.kind} {getattr(item, 'rid', '')}")
    except TimeoutError:
        logger.warning("sgl-replay: %s %s did not reach the scheduler%s", item.kind,
                       getattr(item, "rid", ""), f" ({poster.errors[-1]})" if poster.errors else "")
