"""Capture of a plain sglang server: `SGLREPLAY_RECORD_DIR=DIR python -m
sglang.launch_server ...` records its scheduler, with no scripted runtime and
no code change.

The plugin (scheduler/plugin.py) calls `register` in every sglang process;
only a scheduler process (one whose start-up runs `run_scheduler_process`)
registers hooks, read-only, on the scheduler's own methods:

    BEFORE Scheduler.ingest_requests         close iteration i-1, open i (the
                                             scripted runtime's step() runs at
                                             the same point: the same numbering)
    BEFORE Scheduler.process_input_requests  the objects this iteration pulled,
                                             before the scheduler touches them
    AFTER  Scheduler.run_batch               every forward batch (forward_iter set)
    BEFORE Scheduler.on_idle                 the iteration found nothing to run
                                             and no result to process
    AROUND Scheduler.run_event_loop          the loop's end closes the trace:
                                             complete on a graceful shutdown
                                             (SIGTERM/SIGINT of the server sends
                                             the scheduler a ShutdownReq),
                                             incomplete when the loop raised

Finishes and retractions are read at iteration end from the Req objects, as
in the scripted recorder (scheduler/recorder.py's Recording does all the
work; this module only calls it from these hooks). With overlap scheduling a
batch's results are processed in the next iteration, which end_iteration sees
there, as it does under the scripted runtime.

Only the driver rank (pp_rank, attn_tp_rank and attn_cp_rank 0, sglang's own
test) writes, to DIR/<YYYYmmdd-HHMMSS>-<pid>.0000.sglt; other ranks' hooks do
one test and return. The file rotates (.0001.sglt, ...) when it reaches
SGLREPLAY_SEGMENT_BYTES or has been open SGLREPLAY_SEGMENT_SECONDS: each file
is a trace of its own, and the chain (`sgl-replay check DIR`) replays as one
run. SGLREPLAY_MAX_BYTES caps what one recording writes: past it, the
recording stops (one log line) and the server goes on. The recorder never harms serving: any exception in it, an
unwritable directory, a full disk or a record it cannot encode stops the
recording (the trace closed or sealed as incomplete, one log line) and the
server keeps serving. Hooks whose targets this sglang lacks are not
registered at all (one log line).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import FrameType
from typing import Optional

from sgl_replay.scheduler.recorder import Probe, Recording
from sgl_replay.trace.format import Segment, segment_name

logger = logging.getLogger(__name__)

SEGMENT_BYTES_ENV = "SGLREPLAY_SEGMENT_BYTES"
SEGMENT_SECONDS_ENV = "SGLREPLAY_SEGMENT_SECONDS"
MAX_BYTES_ENV = "SGLREPLAY_MAX_BYTES"
DEFAULT_SEGMENT_BYTES = 256 << 20
# Tests only: "raise@N" makes the recorder raise at the end of iteration N,
# "oserror@N" makes it fail as a full disk would (ENOSPC from the writer).
FAULT_ENV = "SGLREPLAY_CAPTURE_FAULT"

_SCHEDULER = "sglang.srt.managers.scheduler.Scheduler"
# name -> (target, hook type name)
TARGETS = {
    "ingest": (f"{_SCHEDULER}.ingest_requests", "BEFORE"),
    "inputs": (f"{_SCHEDULER}.process_input_requests", "BEFORE"),
    "batch": (f"{_SCHEDULER}.run_batch", "AFTER"),
    "idle": (f"{_SCHEDULER}.on_idle", "BEFORE"),
    "loop": (f"{_SCHEDULER}.run_event_loop", "AROUND"),
}
# What the recorder reads on the scheduler besides the hooked methods.
SCHEDULER_ATTRIBUTES = ("waiting_queue", "running_batch", "token_to_kv_pool_allocator",
                        "req_to_token_pool", "chunked_req", "forward_ct", "last_batch",
                        "_engine_paused", "model_config")

# Objects a plain server's scheduler pulls that change nothing it schedules
# and that a replay does not send (queries, GC, the shutdown itself, which the
# end record states): left out of a capture's inputs. Anything else that is
# not a replayable input is recorded as {"type": "other", "name"}.
NOT_INPUTS = frozenset({
    "GetInternalStateReq", "GetLoadReqInput", "GetLoadsReqInput", "FreezeGCReq", "ShutdownReq",
    "GetWeightsByNameReqInput", "ProfileReq", "ExpertDistributionReq", "DumperControlReqInput",
})

# This process's capture: None until the first loop iteration decides, then
# a Capture (the driver rank) or _OFF.
_capture = None
_OFF = object()


def _env_int(name: str, default: int) -> int:
    """A size or time from the environment; a bad value is logged and the
    default used (the recorder never stops a server from starting)."""
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw else default
        if value < 0:
            raise ValueError
        return value
    except ValueError:
        logger.warning("sgl-replay: %s=%r is not a whole number >= 0; using %d", name, raw, default)
        return default


def in_scheduler_process() -> bool:
    """Whether sglang is loading plugins for a scheduler process (its
    `run_scheduler_process` is on the stack): sglang loads plugins in every
    process, and only the scheduler needs these hooks."""
    frame: Optional[FrameType] = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "run_scheduler_process":
            return True
        frame = frame.f_back
    return False


def missing_targets() -> list[str]:
    """Hook targets (and method owners) this sglang lacks."""
    import importlib

    missing = []
    for target, _ in TARGETS.values():
        module_name, cls_name, attr = target.rsplit(".", 2)
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError):
            missing.append(f"{module_name}.{cls_name}")
            break
        if not callable(getattr(cls, attr, None)):
            missing.append(target)
    return missing


def register(record_dir: str) -> bool:
    """Register the capture hooks (in a scheduler process only); False when
    they were not registered."""
    if not in_scheduler_process():
        return False
    import sglang

    missing = missing_targets()
    if missing:
        logger.warning("sgl-replay: sglang %s not supported: %s missing; not recording",
                       getattr(sglang, "__version__", "?"), missing[0])
        return False
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    global _record_dir
    _record_dir = record_dir
    hooks = {"ingest": _before_ingest, "inputs": _before_inputs, "batch": _after_run_batch,
             "idle": _before_on_idle, "loop": _around_loop}
    for name, (target, kind) in TARGETS.items():
        HookRegistry.register(target, hooks[name], getattr(HookType, kind))
    return True


_record_dir = ""


# ---------------------------------------------------------------- the hooks
# Each costs one global read and a test when not recording; none raises.
def _before_ingest(scheduler, *args, **kwargs):
    capture = _capture
    if capture is None:
        capture = _start(scheduler)
    if capture is not _OFF and capture.recording is not None:
        capture.step()
    return None


def _before_inputs(scheduler, recv_reqs=None, *args, **kwargs):
    capture = _capture
    if recv_reqs and capture is not None and capture is not _OFF and capture.recording is not None:
        capture.guard(capture.on_inputs, recv_reqs)
    return None


def _after_run_batch(result, scheduler, batch=None, *args, **kwargs):
    capture = _capture
    if capture is not None and capture is not _OFF and capture.recording is not None:
        capture.guard(capture.recording.on_batch, batch)
    return None


def _before_on_idle(scheduler, *args, **kwargs):
    capture = _capture
    if capture is not None and capture is not _OFF and capture.recording is not None:
        capture.recording.on_idle()
    return None


def _around_loop(original, scheduler, *args, **kwargs):
    try:
        result = original(scheduler, *args, **kwargs)
    except BaseException as e:
        capture = _capture
        if capture is not None and capture is not _OFF:
            capture.finish(complete=False, reason=f"scheduler loop raised {type(e).__name__}: {e}"[:500])
        raise
    capture = _capture
    if capture is not None and capture is not _OFF:
        capture.finish(complete=True, reason=None)
    return result


def _start(scheduler):
    """First loop iteration: the driver rank opens the trace; any other rank,
    or a failure to open it, turns capture off in this process."""
    global _capture
    _capture = _OFF
    try:
        from sglang.srt.runtime_context import get_parallel

        p = get_parallel()
        if not (p.pp_rank == 0 and p.attn_tp_rank == 0 and p.attn_cp_rank == 0):
            return _OFF
        absent = [a for a in SCHEDULER_ATTRIBUTES if not hasattr(scheduler, a)]
        if absent:
            import sglang

            logger.warning("sgl-replay: sglang %s not supported: Scheduler.%s missing; not recording",
                           sglang.__version__, absent[0])
            return _OFF
        capture = Capture(scheduler, _record_dir)
    except Exception as e:  # noqa: BLE001 — never raise into the scheduler loop
        logger.error("sgl-replay: cannot record to %s: %s: %s; not recording (the server is unaffected)",
                     _record_dir, type(e).__name__, e)
        return _OFF
    _capture = capture
    return capture


class Capture(Probe):
    """The recording of a plain server's scheduler loop, from its first
    iteration to the loop's end (or the recorder's first failure)."""

    def __init__(self, scheduler, record_dir: str) -> None:
        from sgl_replay.scheduler.header import build_header

        super().__init__(scheduler, proxy=None)
        os.makedirs(record_dir, exist_ok=True)
        self.directory = os.path.abspath(record_dir)
        run = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.path = os.path.join(self.directory, segment_name(run, 0))
        header = build_header(scheduler, None)
        header.segment = Segment(run=run)
        self.header = header
        self.segment_bytes = _env_int(SEGMENT_BYTES_ENV, DEFAULT_SEGMENT_BYTES)
        self.segment_seconds = _env_int(SEGMENT_SECONDS_ENV, 0)
        self.max_bytes = _env_int(MAX_BYTES_ENV, 0)
        self.earlier_bytes = 0  # what the chain's closed files hold
        self.recording = Recording(scheduler, self.path, header, capture=True)
        self._rotate_at = time.monotonic() + self.segment_seconds if self.segment_seconds else float("inf")
        self._open = False  # an iteration is open (begun, not ended)
        # Loop and recorder time of the iterations that ran a forward batch:
        # an idle loop spins, and every spin costs the recorder a little, so
        # the share over the whole run says more about idleness than about
        # recording. [loop seconds, recorder seconds]; the mark where the
        # current iteration's window began.
        self.busy = [0.0, 0.0]
        self._mark = (time.perf_counter(), 0.0)
        fault = os.environ.get(FAULT_ENV, "")
        self._fault = (fault.partition("@")[0], int(fault.partition("@")[2])) if "@" in fault else None
        note = f" (not replayable: {'; '.join(header.not_replayable)})" if header.not_replayable else ""
        logger.info("sgl-replay: recording this scheduler to %s%s", self.path, note)

    def step(self) -> None:
        """Between two loop iterations: close the one that ran, open the next."""
        rec = self.recording
        if self._open and rec is not None:  # open only while recording
            if self.scheduler._engine_paused:
                rec.on_idle()  # a paused engine's loop spins without running anything
            self._open = False
            ran_batch = bool(rec._batches)
            self.guard(rec.end_iteration if self._fault is None else self._faulty_end)
            now = time.perf_counter()
            if ran_batch:
                self.busy[0] += now - self._mark[0]
                self.busy[1] += self.own_seconds - self._mark[1]
            self._mark = (now, self.own_seconds)
            rec = self.recording
            if rec is not None and (self.segment_bytes and rec.writer.file_bytes >= self.segment_bytes
                                    or self.max_bytes and self.earlier_bytes + rec.writer.file_bytes >= self.max_bytes
                                    or time.monotonic() >= self._rotate_at):
                self.guard(self._next_file)
        rec = self.recording
        if rec is not None:
            self.guard(rec.begin_iteration)
            self._open = self.recording is not None

    def _next_file(self) -> None:
        """Stop at the size cap, or go on in the chain's next file."""
        rec, segment = self.recording, self.header.segment
        assert rec is not None and segment is not None  # called while recording a chain
        written = self.earlier_bytes + rec.writer.file_bytes
        if self.max_bytes and written >= self.max_bytes:
            self.finish(complete=False, reason=f"size cap: {written} bytes written, {MAX_BYTES_ENV}={self.max_bytes}; "
                                               f"not recording any more, the server keeps serving", wait=False)
            return
        index = segment.index + 1
        self.header.segment = Segment(run=segment.run, index=index)
        path = os.path.join(self.directory, segment_name(segment.run, index))
        self.earlier_bytes += rec.writer.file_bytes
        rec.rotate(path, self.header)
        self.path = path
        if self.segment_seconds:
            self._rotate_at = time.monotonic() + self.segment_seconds

    def _faulty_end(self) -> None:
        rec = self.recording
        assert self._fault is not None and rec is not None  # the end of an iteration, with a fault set
        kind, at = self._fault
        if rec.i == at:
            if kind == "oserror":
                import errno

                writer = rec.writer
                writer._failed = writer._disk_error = OSError(errno.ENOSPC, "No space left on device (injected)")
            else:
                raise RuntimeError(f"injected recorder fault at iteration {at}")
        rec.end_iteration()

    def on_inputs(self, recv_reqs) -> None:
        assert self.recording is not None  # the hook calls this only while recording
        on_input = self.recording.on_input
        for obj in recv_reqs:
            if type(obj).__name__ not in NOT_INPUTS:
                on_input(obj)

    def finish(self, *, complete: bool, reason: Optional[str], wait: bool = True) -> None:
        """End the open iteration and close the trace. At the loop's end this
        waits for the disk (the process exits next); the size cap does not."""
        rec = self.recording
        if rec is None:
            return
        if self._open:
            self._open = False
            self.guard(rec.end_iteration)
            if self.recording is None:
                return
        self.recording = None
        try:
            end = rec.close(complete=complete, reason=reason, recorder_seconds=self.own_seconds,
                            busy=(self.busy[0], self.busy[1]), wait=wait)
        except Exception:  # noqa: BLE001
            import traceback

            self.failure = traceback.format_exc()
            self.failed(rec, wait=wait)
            return
        (logger.info if complete else logger.warning)(
                    "sgl-replay: trace %s closed%s: %d iterations, %d forward batches, %d requests",
                    self.path, "" if complete else f" as incomplete ({reason})",
                    end.iterations, end.forwards, end.requests)

    def failed(self, rec: Optional[Recording], wait: bool = False) -> None:
        """The recorder raised: close the trace as incomplete, or have what
        reached the disk sealed (a full disk fails the close), and stop
        recording; the server goes on. Unless at the loop's end, neither
        waits for the disk: the writer's thread finishes (and logs a seal)."""
        why = self.failure.strip().splitlines()[-1] if self.failure and self.failure.strip() else "unknown"
        reason = f"recorder failed: {why}"[:500]
        state = "closed as incomplete"
        if rec is not None:
            try:
                rec.close(complete=False, reason=reason, recorder_seconds=self.own_seconds,
                          busy=(self.busy[0], self.busy[1]), wait=wait)
            except Exception:  # noqa: BLE001
                state = "sealed as incomplete" if wait else "to be sealed as incomplete"
                try:
                    rec.writer.abandon(reason, wait=wait)
                except Exception as e:  # noqa: BLE001
                    state = f"left unsealed ({type(e).__name__}: {e})"
        self.recording = None
        logger.error("sgl-replay: recording stopped, %s; trace %s %s; the server keeps serving",
                     reason, self.path, state)
