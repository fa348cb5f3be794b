"""The replay script, inside the scheduler: feed a trace's inputs back at the
iterations they were pulled, while the recorder writes what happens now.

Each input goes through the real path: an HTTP call to the engine's own
server, which the tokenizer manager turns into the object the scheduler pulls
(as the harness's start_req and abort do). The script waits until the object
sits in the recv proxy before it yields, so the scheduler pulls it in the same
iteration as in the recording, and in the same order.
"""

from __future__ import annotations

import logging
from typing import Generator

from sgl_replay.record import inputs as input_codec
from sgl_replay.record.recorder import active_probe
from sgl_replay.record.session import build_header
from sgl_replay.trace.format import REPLAYABLE_INPUTS
from sgl_replay.trace.reader import TraceReader

logger = logging.getLogger(__name__)

# An input that does not arrive in this long was dropped on the way (the
# tokenizer manager drops an abort for a request that already finished);
# the diff will show it missing from the replay.
ARRIVAL_TIMEOUT_S = 5.0


def replay(ctx, job: dict) -> Generator:
    from sglang.test.scripted_runtime.background_http_poster import BackgroundHttpPoster

    probe = active_probe(ctx.scheduler)
    server_args = ctx.scheduler.server_args
    base_url = f"http://{server_args.host}:{server_args.port}"
    poster = BackgroundHttpPoster()
    with TraceReader(job["trace"]) as recorded:
        job = {**job, "workload": recorded.header.get("workload")}
        probe.start(job["path"], build_header(ctx.scheduler, job))
        try:
            for record in recorded.iterations():
                while probe.recording.next_i < record["i"]:
                    yield
                for item in record.get("inputs", ()):
                    _feed(probe, poster, base_url, item)
            while probe.recording.next_i < recorded.end["iterations"]:
                yield
        except Exception as e:
            probe.stop(complete=False, reason=f"replay stopped: {type(e).__name__}: {e}")
            raise
        finally:
            poster.close()
    probe.stop(complete=True)


def _feed(probe, poster, base_url: str, item: dict) -> None:
    if item["type"] not in REPLAYABLE_INPUTS:
        logger.warning("sgl-replay: input %s cannot be replayed; skipped", item)
        return
    path, body, arrived = input_codec.to_http(item)

    async def post() -> None:
        await poster.post(base_url + path, body)

    poster.submit_coro(post())
    try:
        probe.proxy.wait_until_arrived(arrived, timeout_s=ARRIVAL_TIMEOUT_S,
                                       description=f"{item['type']} {item.get('rid', '')}")
    except TimeoutError:
        logger.warning("sgl-replay: %s %s did not reach the scheduler", item["type"], item.get("rid", ""))
