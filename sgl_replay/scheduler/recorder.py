"""The recorder, inside the scheduler process.

`install` (called by the plugin's hook) puts two thin stand-ins where the
scheduler loop calls the scripted-runtime objects:

    RecordingHook   around ScriptedSchedulerHook: step() opens and closes a loop
                    iteration around the script's turn; on_run_batch() sees
                    every forward batch before it runs.
    RecordingProxy  around ScriptedTokenizerRecvProxy: recv_pyobj() sees every
                    object the scheduler pulls, in pull order.

Both forward every call unchanged. While no Recording is active they cost one
attribute test per call. Everything the recorder reads is read, never written:
queue lengths, pool free counts, and the Req objects of batches it was shown.

Loop iteration i, as the scheduler runs it:
    hook.step()        -> close iteration i-1 (sizes after it, finishes,
                          retractions); the script runs its turn; open i
    proxy.recv_pyobj() -> inputs of iteration i
    run_batch()        -> on_run_batch: batch of iteration i
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from typing import Any, Generator, Optional

import msgspec

from sgl_replay.scheduler import inputs as input_codec
from sgl_replay.timing.model import ModelledClock
from sgl_replay.trace.format import ITER, AbortInput, End, GenerateInput, Header, Timing, hash_ids, pack_ids
from sgl_replay.trace.writer import TraceWriter

logger = logging.getLogger(__name__)

# The probe installed in this scheduler process (driver rank only), or None.
PROBE: Optional["Probe"] = None

# sglang's HTTP server, 2 s after a streamed /generate response ends, aborts
# that rid if it is in use again (its client-disconnect check). A capture that
# reuses rids sooner on the same engine would have its requests aborted by the
# previous run: such a capture starts this much after those rids' traffic ended.
STREAM_ABORT_GRACE_S = 2.2


class RecorderNotActive(RuntimeError):
    pass


def install(scheduler) -> None:
    global PROBE
    hook = scheduler.scripted_scheduler_hook
    proxy = scheduler.recv_from_tokenizer
    # Only the driver rank runs scripts (the harness's own rule); other ranks
    # receive the driver's inputs by broadcast and are left alone.
    if hook is None or getattr(hook, "_context", None) is None or not hasattr(proxy, "wait_until_arrived"):
        return
    probe = Probe(scheduler, proxy)
    probe.hook = scheduler.scripted_scheduler_hook = RecordingHook(hook, probe)
    probe.proxy_wrapper = scheduler.recv_from_tokenizer = RecordingProxy(proxy, probe)
    PROBE = probe
    logger.info("sgl-replay recorder installed in the scheduler")


def active_probe(scheduler) -> "Probe":
    """The installed probe, after checking that its stand-ins really are the
    objects the scheduler loop calls. A hook that failed to apply (sglang's
    HookRegistry only logs that) makes this raise instead of recording nothing."""
    probe = PROBE
    if probe is None or probe.scheduler is not scheduler:
        raise RecorderNotActive(
            "sgl-replay recorder is not installed in the scheduler: the sglang plugin "
            "'sgl_replay' did not load or its hook did not apply (see the engine log)")
    receiver = scheduler.request_receiver
    if receiver.scripted_scheduler_hook is not probe.hook or receiver.recv_from_tokenizer is not probe.proxy_wrapper:
        raise RecorderNotActive(
            "sgl-replay recorder is installed but the scheduler's request receiver does not "
            "call it (sglang changed where it keeps the scripted hook or recv proxy)")
    return probe


class RecordingHook:
    """Stands in for ScriptedSchedulerHook in the scheduler loop."""

    def __init__(self, inner, probe: "Probe") -> None:
        self._inner = inner
        self._probe = probe

    def step(self) -> None:
        rec = self._probe.recording
        if rec is not None:
            self._probe.guard(rec.end_iteration)
        self._inner.step()  # the script's turn: it may start or stop a recording
        rec = self._probe.recording
        if rec is not None:
            self._probe.guard(rec.begin_iteration)

    def on_run_batch(self, batch) -> None:
        self._inner.on_run_batch(batch)
        rec = self._probe.recording
        if rec is not None:
            self._probe.guard(rec.on_batch, batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class RecordingProxy:
    """Stands in for ScriptedTokenizerRecvProxy in the request receiver."""

    def __init__(self, inner, probe: "Probe") -> None:
        self._inner = inner
        self._probe = probe

    def recv_pyobj(self, flags: int = 0) -> Any:
        obj = self._inner.recv_pyobj(flags)
        rec = self._probe.recording
        if rec is not None:
            self._probe.guard(rec.on_input, obj)
        return obj

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class Probe:
    """Owns the current Recording, if any, and keeps recorder failures out of
    the scheduler: an exception ends the recording and is re-raised to the
    script when it stops, never inside the scheduler loop."""

    def __init__(self, scheduler, proxy) -> None:
        self.scheduler = scheduler
        self.proxy = proxy  # the harness's proxy; its buffer is what arrived
        self.hook: Optional[RecordingHook] = None
        self.proxy_wrapper: Optional[RecordingProxy] = None
        self.recording: Optional[Recording] = None
        self.failure: Optional[str] = None
        self.own_seconds = 0.0  # time the current recording spent in the recorder's code
        # rid -> when the last capture that used it ended its HTTP traffic
        self.recent: dict[str, float] = {}
        # rids of requests that outlived the last capture (the next script's
        # reset aborts them, which ends their streams then)
        self.outlived: set[str] = set()

    def settle(self, rids: Optional[set] = None) -> Generator:
        """Before a capture that will use `rids` (None: not known in advance):
        turn the loop until no stale stream-abort task of an earlier capture
        on this engine can hit one of them."""
        now = time.monotonic()
        for rid in self.outlived:
            self.recent[rid] = now
        self.outlived.clear()
        self.recent = {rid: t for rid, t in self.recent.items() if now - t < STREAM_ABORT_GRACE_S}
        times = self.recent.values() if rids is None else [self.recent[r] for r in rids if r in self.recent]
        until = max(times, default=now - STREAM_ABORT_GRACE_S) + STREAM_ABORT_GRACE_S
        while time.monotonic() < until:
            time.sleep(0.005)
            yield

    def mark_traffic_end(self, rids) -> None:
        now = time.monotonic()
        for rid in rids:
            self.recent[rid] = now

    def start(self, path: str, header: Header, *, wall_clock: bool = False,
              clock: Optional[ModelledClock] = None) -> "Recording":
        assert self.recording is None, "a recording is already active"
        self.failure = None
        self.own_seconds = 0.0
        self.recording = Recording(self.scheduler, path, header, wall_clock=wall_clock, clock=clock)
        return self.recording

    def stop(self, *, complete: bool, reason: Optional[str] = None) -> End:
        rec, self.recording = self.recording, None
        if self.failure is not None:
            complete, reason = False, f"recorder failed: {self.failure.strip().splitlines()[-1]}"
        if rec is None:
            raise RecorderNotActive("no active recording to stop")
        if isinstance(rec, Recording):
            self.mark_traffic_end(rec.req_of_rid)
            self.outlived.update(r.rid for r in rec.live.values())
            self.outlived.update(rec.pending.values())
        end = rec.close(complete=complete, reason=reason, recorder_seconds=self.own_seconds)
        if self.failure is not None:
            raise RuntimeError(f"sgl-replay recorder failed inside the scheduler:\n{self.failure}")
        return end

    def guard(self, fn, *args) -> None:
        """Run one piece of the recorder's per-iteration work: timed (the
        end record says what recording cost), its failure kept."""
        started = time.perf_counter()
        try:
            fn(*args)
            self.own_seconds += time.perf_counter() - started
        except Exception:  # noqa: BLE001 — never raise into the scheduler loop
            self.failure = traceback.format_exc()
            rec, self.recording = self.recording, None
            self.failed(rec)

    def failed(self, rec: Optional["Recording"]) -> None:
        """The recording `rec` raised (self.failure): close it as incomplete.
        A script's stop() then reports the failure."""
        logger.error("sgl-replay recorder failed; recording stops:\n%s", self.failure)
        if rec is not None:
            try:
                rec.close(complete=False, reason="recorder failed")
            except Exception:  # noqa: BLE001
                pass
        # a stand-in with the calls a script's loop makes of a Recording
        self.recording = _FailedRecording(rec)  # type: ignore[assignment]


class _FailedRecording:
    """Left in place of a recording that failed, so that the script's stop()
    reports the failure; ignores the loop's calls."""

    def __init__(self, rec) -> None:
        self.next_i = rec.next_i if rec is not None else 0

    def begin_iteration(self) -> None:
        self.next_i += 1

    def end_iteration(self) -> None:
        pass

    def on_batch(self, batch) -> None:
        pass

    def on_input(self, obj) -> None:
        pass

    def on_idle(self) -> None:
        pass

    def close(self, *, complete: bool, reason: Optional[str], recorder_seconds: float = 0.0) -> None:
        return None


class Recording:
    """One trace being written: the scheduler loop's iterations from start()
    to stop(), numbered from 0.

    The per-iteration work runs every loop iteration, so its common case
    (a decode step in which nothing finished) is a few flat comprehensions
    and list comparisons, with no Python-level branch per request
    (tools/bench/recorder_micro.py measures it)."""

    def __init__(self, scheduler, path: str, header: Header, *, capture: bool = False,
                 wall_clock: bool = False, clock: Optional[ModelledClock] = None) -> None:
        self.scheduler = scheduler
        # A capture of a plain server (scheduler/capture.py) also writes the
        # output token ids of finished requests and numbers a run of idle
        # iterations as one (its loop spins when idle); nothing else differs.
        self.capture = capture
        # A timed recording writes when each iteration ended ("ms") and when
        # each input arrived ("arrivals"): by the wall clock where inputs
        # come by it (a capture, serve, --clock wall), else by the modelled
        # clock `clock`, which a timed replay advances and reads.
        self.clock = clock
        self.timed = capture or wall_clock or clock is not None
        self.timing = None if not self.timed else Timing(clock="wall") if clock is None else Timing(
            clock="modeled", cost=msgspec.to_builtins(clock.model))
        header = msgspec.structs.replace(header, timing=self.timing)
        self._arrivals: list[float] = []
        self._after_idle = False
        # a timed replay: req -> when it finished, on the modelled clock
        self.finished_at: dict[int, float] = {}
        self.finish_ms: list[float] = []  # ... and those times in the order requests finished
        self._outputs: list = []
        self._idle = False  # this iteration ran no batch and processed no result
        self._idle_run = False  # ... and so did the one before it
        # (in a user's server the disk is written from a thread of its own)
        self.writer = TraceWriter(path, header, background=capture)
        self.path = path
        self.next_i = 0  # number of the next iteration to open
        self.i = -1  # the open iteration (between begin and end)
        self.forwards = 0
        self.fwd_base = scheduler.forward_ct + 1  # run_batch counts before it numbers
        self.started = time.monotonic()
        self.req_of_rid: dict[str, int] = {}
        self.requests = 0
        # Requests that ran and have not finished: req -> Req, and the same as
        # parallel lists (numbers, Reqs, retraction counts last seen).
        self.live: dict[int, Any] = {}
        self._live_nums: list[int] = []
        self._live_reqs: list = []
        self._live_unfinished: list[None] = []
        self._live_retractions: list[int] = []
        # Requests pulled that have not run yet: req -> rid
        self.pending: dict[int, str] = {}
        self.last_state: Optional[tuple] = None
        self._last_reqs: Optional[list] = None  # the previous forward batch's requests
        self._last_req_objs: Optional[list] = None  # ... and their Req objects
        self._inputs: list = []
        self._batches: list = []
        self._saw_abort = False
        # (forwards, requests) as far as the trace holds them: a recording
        # that fails mid-iteration ends with counts its records agree with
        self._written = (0, 0)

    # -- the loop's calls ------------------------------------------------
    def begin_iteration(self) -> None:
        self.i = self.next_i
        self.next_i += 1
        if self.timed:  # the harness's is_fully_idle, read before this iteration pulls anything
            s = self.scheduler
            self._after_idle = (s.chunked_req is None and not s.waiting_queue
                                and (s.running_batch is None or s.running_batch.is_empty())
                                and (s.last_batch is None or s.last_batch.is_empty()))

    def on_idle(self) -> None:
        """A capture: the loop found nothing to run and no result to process
        in this iteration (sglang's on_idle, or a paused engine)."""
        self._idle = True

    def on_input(self, obj: Any) -> None:
        items = input_codec.from_pulled(obj)
        for item in items:
            if type(item) is GenerateInput:
                req = self.requests
                self.requests += 1
                self.req_of_rid[item.rid] = req
                self.pending[req] = item.rid
            elif type(item) is AbortInput:
                self._saw_abort = True
            self._inputs.append(item)
        if self.timed:  # when the scheduler pulled it: where sglang stamps a request's arrival too
            pulled = round((time.monotonic() - self.started) * 1000, 3) if self.clock is None else self.clock.ms
            self._arrivals.extend(pulled for _ in items)

    def on_batch(self, batch) -> None:
        reqs = batch.reqs
        mode = batch.forward_mode
        record = {"fwd": batch.forward_iter - self.fwd_base,
                  "mode": mode.name.lower() if mode is not None else None}
        # The same Req objects in the same order as the previous batch (list
        # equality tests identity first): the same numbers, as the same list,
        # which the writer then leaves out of the trace.
        if reqs == self._last_req_objs and self._last_reqs is not None:  # set together
            nums = self._last_reqs
        else:
            req_of_rid = self.req_of_rid
            nums = [req_of_rid[r.rid] for r in reqs]
            self._last_req_objs = list(reqs)
            self._last_reqs = nums
        record["reqs"] = nums
        if mode is not None and mode.is_extend():
            record["new"] = list(batch.extend_lens)
            record["cached"] = list(batch.prefix_lens)
            record["tokens"] = batch.extend_num_tokens
            live, pending = self.live, self.pending
            fresh = [(n, r) for n, r in zip(nums, reqs) if n not in live]
            for n, r in fresh:
                live[n] = r
                pending.pop(n, None)
            if fresh:
                self._relive()
        else:
            record["tokens"] = len(nums)
        chunked = self.scheduler.chunked_req
        if chunked is not None:
            record["chunked"] = self.req_of_rid.get(chunked.rid)
        self._batches.append(record)
        self.forwards = record["fwd"] + 1

    def end_iteration(self) -> None:
        s = self.scheduler
        running = s.running_batch
        state = (len(s.waiting_queue), len(running.reqs) if running is not None else 0,
                 s.token_to_kv_pool_allocator.available_size(), s.req_to_token_pool.available_size())
        done: list = []
        retracted: list = []
        reqs = self._live_reqs
        # Two flat comprehensions (faster than map/attrgetter on CPython 3.11)
        # compared in C against last time: equal means nothing finished or
        # was retracted, the common case.
        if reqs and ([r.finished_reason for r in reqs] != self._live_unfinished
                     or [r.retraction_count for r in reqs] != self._live_retractions):
            for n, r, seen in zip(self._live_nums, reqs, self._live_retractions):
                if r.finished_reason is not None:
                    done.append(self._finish(n, self.live.pop(n)))
                elif r.retraction_count != seen:
                    retracted.append(n)
            self._relive()
        if self._saw_abort or (self.pending and self._inputs):
            done += self._vanished()
        if self.clock is not None:
            self.clock.end_iteration(self._inputs, self._batches, done)
            for f in done:
                self.finished_at[f[0]] = self.clock.ms
                self.finish_ms.append(self.clock.ms)
        if self._inputs or self._batches or done or retracted or state != self.last_state:
            self._idle_run = False
            record = {"t": ITER, "i": self.i}
            if self.timed:
                record["ms"] = (round((time.monotonic() - self.started) * 1000, 3) if self.clock is None
                                else self.clock.ms)
                if self._after_idle:
                    record["after_idle"] = True
            if self._inputs:
                record["inputs"] = self._inputs
                self._inputs = []
                if self.timed:
                    record["arrivals"] = self._arrivals
                    self._arrivals = []
            if self._batches:
                record["batches"] = self._batches
                self._batches = []
            record["state"] = {"waiting": state[0], "running": state[1],
                               "kv_free": state[2], "req_free": state[3]}
            if done:
                record["finished"] = done
            if retracted:
                record["retracted"] = retracted
            if self._outputs:
                record["outputs"] = self._outputs
                self._outputs = []
            self.writer.write(record)
            self._written = (self.forwards, self.requests)
            self.last_state = state
        elif self.capture:
            if not self._idle:
                self._idle_run = False
            elif self._idle_run:
                self.next_i -= 1  # the same idle stretch: no number of its own
            else:
                self._idle_run = True
        self._idle = False
        self._saw_abort = False
        self.writer.flush_if_due(time.monotonic() if self.clock is None else self.clock.now_us / 1e6)

    # -- helpers ---------------------------------------------------------
    def _relive(self) -> None:
        self._live_nums = list(self.live)
        self._live_reqs = list(self.live.values())
        self._live_unfinished = [None] * len(self._live_reqs)
        self._live_retractions = [r.retraction_count for r in self._live_reqs]

    def _finish(self, n: int, r) -> list:
        reason = r.finished_reason
        name = reason.to_json().get("type", type(reason).__name__) if reason is not None else "abort"
        if self.capture:
            self._outputs.append([n, pack_ids(r.output_ids)])
        return [n, name, len(r.output_ids), hash_ids(r.output_ids)]

    def _vanished(self) -> list:
        """Requests that left the scheduler without finishing through a batch:
        aborted in the waiting queue (sglang pops them without a finish
        reason) or rejected on arrival. Scanned only after iterations that
        pulled inputs."""
        s = self.scheduler
        present = {r.rid for r in s.waiting_queue}
        if self._saw_abort or not present.issuperset(self.pending.values()):
            # a pending request not waiting may have run this iteration (its
            # batch is last_batch): the batches are read only then
            for batch in (s.running_batch, s.last_batch):
                if batch is not None:
                    present.update(r.rid for r in batch.reqs)
            if s.chunked_req is not None:
                present.add(s.chunked_req.rid)
        gone = []
        for n, rid in list(self.pending.items()):
            if rid not in present:
                del self.pending[n]
                gone.append([n, "abort", 0, hash_ids(())])
        if self._saw_abort:
            for n, r in list(self.live.items()):
                if r.rid not in present:
                    del self.live[n]
                    gone.append(self._finish(n, r))
            self._relive()
        return gone

    def rotate(self, path: str, header: Header) -> End:
        """Between two iterations: end this file (an incomplete end record
        that names the next) and go on writing in a new one whose header's
        segment numbers on from here (trace/format.py, Segment)."""
        forwards, requests = self._written
        end = End(complete=False, reason=f"rotated: continues in {os.path.basename(path)}",
                  iterations=self.next_i, forwards=forwards, requests=requests,
                  seconds=round(time.monotonic() - self.started, 6))
        assert header.segment is not None  # a chain's link: rotated by the capture
        segment = msgspec.structs.replace(header.segment, iterations=self.next_i, forwards=forwards,
                                          requests=requests)
        writer = TraceWriter(path, msgspec.structs.replace(header, segment=segment, timing=self.timing),
                             background=self.capture)
        self.writer.close(end, wait=False)
        self.writer, self.path = writer, path
        return end

    def close(self, *, complete: bool, reason: Optional[str], recorder_seconds: Optional[float] = None,
              busy: Optional[tuple[float, float]] = None, wait: bool = True) -> End:
        forwards, requests = self._written
        if self.clock is not None:  # the run's modelled length; nothing of this machine's
            seconds, recorder_seconds = self.clock.ms / 1000, None
        else:
            seconds = round(time.monotonic() - self.started, 6)
        end = End(complete=complete, reason=reason, iterations=self.next_i, forwards=forwards,
                  requests=requests, seconds=seconds,
                  recorder_seconds=None if recorder_seconds is None else round(recorder_seconds, 6),
                  busy_seconds=None if busy is None else round(busy[0], 6),
                  busy_recorder_seconds=None if busy is None else round(busy[1], 6))
        self.writer.close(end, wait=wait)
        return end
