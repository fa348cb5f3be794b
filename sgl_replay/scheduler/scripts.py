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

import asyncio
import logging
import threading
import time
from concurrent.futures import Future
from typing import Generator, Optional

import msgspec

from sgl_replay.job import Job
from sgl_replay.scheduler import inputs as input_codec
from sgl_replay.scheduler import oracle, skip_model, workloads
from sgl_replay.scheduler.header import build_header
from sgl_replay.scheduler.recorder import active_probe
from sgl_replay.trace.format import REPLAYABLE_INPUTS
from sgl_replay.trace.reader import TraceReader

logger = logging.getLogger(__name__)

# An input that does not arrive in this long was dropped on the way (the
# tokenizer manager drops an abort for a request that already finished);
# the diff will show it missing from the replay.
ARRIVAL_TIMEOUT_S = 5.0
# After the last recorded iteration the loop keeps turning until the HTTP
# calls of this replay have their answers, so that nothing of it is still in
# the tokenizer manager when the next run reuses the same rids.
RESPONSES_DRAIN_S = 60.0


class Poster:
    """HTTP calls from inside the scheduler process, on a background event
    loop with one long-lived session.

    - The session is never closed under a pending call: the tokenizer manager
      aborts a request whose client went away, by rid, and that abort would
      land in whatever run came next.
    - Every call gets a fresh connection: uvicorn drops keep-alive connections
      idle for 5 s, and a call sent on one that is closing never arrives."""

    def __init__(self) -> None:
        import aiohttp

        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="sgl-replay-poster", daemon=True).start()

        async def make_session():
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                         timeout=aiohttp.ClientTimeout(total=None))

        self._session = asyncio.run_coroutine_threadsafe(make_session(), self._loop).result()
        self._pending: set[Future] = set()
        self.errors: list[str] = []

    def post(self, url: str, body: Optional[dict]) -> None:
        async def call() -> None:
            try:
                async with self._session.post(url, json=body) as response:
                    await response.read()
            except Exception as e:  # noqa: BLE001 — reported with the input that went missing
                self.errors.append(f"{url}: {type(e).__name__}: {e}")

        future = asyncio.run_coroutine_threadsafe(call(), self._loop)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    @property
    def pending(self) -> int:
        return len(self._pending)


_poster: Optional[Poster] = None


def shared_poster() -> Poster:
    global _poster
    if _poster is None:
        _poster = Poster()
    return _poster


def record(ctx, job: Job) -> Generator:
    probe = active_probe(ctx.scheduler)
    assert job.workload is not None  # a recording's job names its workload (runs/record.py)
    workload = workloads.generator(ctx, job.workload)
    yield from probe.settle()
    probe.start(job.path, build_header(ctx.scheduler, job), wall_clock=workloads.by_wall_clock(job.workload))
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
        probe.start(job.path, build_header(ctx.scheduler, job))
        try:
            for record in recorded.iterations():
                while probe.recording.next_i < record.i:  # type: ignore[union-attr]  # set until probe.stop()
                    yield
                for item in record.inputs:
                    _feed(probe, poster, base_url, item)
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
                if x["type"] == "generate":
                    rids.add(x["rid"])
                    ids = x.get("input_ids")
                    prompts[len(prompts)] = (x["rid"], len(ids) // 4 if ids is not None else 0)
            outputs.extend(getattr(record, "outputs", ()))
    return rids, oracle.table_of(outputs, prompts) if outputs else {}


def _feed(probe, poster, base_url: str, item: dict) -> None:
    if item["type"] not in REPLAYABLE_INPUTS:
        logger.warning("sgl-replay: input %s cannot be replayed; skipped", item)
        return
    path, body, arrived = input_codec.to_http(item)
    poster.post(base_url + path, body)
    try:
        probe.proxy.wait_until_arrived(arrived, timeout_s=ARRIVAL_TIMEOUT_S,
                                       description=f"{item['type']} {item.get('rid', '')}")
    except TimeoutError:
        logger.warning("sgl-replay: %s %s did not reach the scheduler%s", item["type"],
                       item.get("rid", ""), f" ({poster.errors[-1]})" if poster.errors else "")
