"""Test-only sglang plugin: scheduler behaviour changes planted through
sglang's HookRegistry, the way a regression in a scheduler change would show.

Inert unless SCHED_TWEAKS_FILE names a file. The file holds the active tweak
("off" when empty or absent), re-read when it changes, so one engine can run
a baseline and every tweak in turn:

  reverse_waiting     reverse the waiting queue after the policy sorted it
  cap_prefill_2       admit at most 2 requests into one prefill batch
  reverse_retraction  retract the most-preferred request first, not the least
  flaky               reverse_waiting in every second run (a run starts when a
                      request id comes back as a new request: the next replay
                      of the same trace), like a nondeterministic bug
  raise_at_start      (read once, when the engine starts) the scheduler raises
                      while it initializes, as a broken revision would
  model_raises        the embedded GPT-2's transformer raises if it runs (a
                      replay with the model skipped must not run it)

With SCHED_TWEAKS_WITNESS set, it also appends, for every scheduler loop
iteration that received requests, the iteration number (its own count of
process_input_requests calls) and the rids, as the scheduler saw them.
"""

import json
import os

_state = {"mtime": None, "mode": "off", "calls": 0, "runs": 0, "rids": set()}


def _mode() -> str:
    path = os.environ["SCHED_TWEAKS_FILE"]
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return "off"
    if mtime != _state["mtime"]:
        with open(path) as f:
            _state["mode"] = f.read().strip() or "off"
        _state["mtime"] = mtime
    return _state["mode"]


def _count_runs(waiting_queue) -> None:
    """Count replays by request ids, not by the clock: a loaded machine can
    pause a run for longer than any gap between runs."""
    for req in waiting_queue:
        if getattr(req, "_sched_tweaks_seen", False):  # a retracted request comes back as itself
            continue
        if _state["runs"] == 0 or req.rid in _state["rids"]:
            _state["runs"] += 1
            _state["rids"] = set()
        req._sched_tweaks_seen = True
        _state["rids"].add(req.rid)


def _calc_priority(original, self, waiting_queue, *args, **kwargs):
    result = original(self, waiting_queue, *args, **kwargs)
    _count_runs(waiting_queue)
    mode = _mode()
    if mode == "reverse_waiting" or (mode == "flaky" and _state["runs"] % 2 == 0):
        waiting_queue.reverse()
    return result


def _add_one_req(original, self, req, *args, **kwargs):
    if _mode() == "cap_prefill_2" and len(self.can_run_list) >= 2:
        from sglang.srt.managers.schedule_policy import AddReqResult

        return AddReqResult.OTHER
    return original(self, req, *args, **kwargs)


def _retraction_order(original, reqs):
    order = original(reqs)
    if _mode() == "reverse_retraction":
        order = list(reversed(order))
    return order


def _witness(self, recv_reqs, *args, **kwargs):
    _state["calls"] += 1
    rids = [r.rid for r in recv_reqs if type(r).__name__ == "TokenizedGenerateReqInput"]
    if rids:
        with open(os.environ["SCHED_TWEAKS_WITNESS"], "a") as f:
            f.write(json.dumps({"call": _state["calls"], "rids": rids}) + "\n")


def _model_forward(self, *args, **kwargs):
    if _mode() == "model_raises":
        raise RuntimeError("sched_tweaks: the model ran")


def _raise_at_start(self, *args, **kwargs):
    raise RuntimeError("sched_tweaks: planted start-up failure")


def register():
    if not os.environ.get("SCHED_TWEAKS_FILE"):
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    base = "sglang.srt.managers"
    HookRegistry.register(f"{base}.schedule_policy.SchedulePolicy.calc_priority", _calc_priority,
                          HookType.AROUND)
    HookRegistry.register(f"{base}.schedule_policy.PrefillAdder.add_one_req", _add_one_req,
                          HookType.AROUND)
    HookRegistry.register(f"{base}.schedule_batch.ScheduleBatch._get_decode_retraction_order",
                          _retraction_order, HookType.AROUND)
    HookRegistry.register("sglang.srt.models.gpt2.GPT2Model.forward", _model_forward, HookType.BEFORE)
    if _mode() == "raise_at_start":
        HookRegistry.register(f"{base}.scheduler.Scheduler.maybe_init_scripted_scheduler_hook",
                              _raise_at_start, HookType.BEFORE)
    if os.environ.get("SCHED_TWEAKS_WITNESS"):
        HookRegistry.register(f"{base}.scheduler.Scheduler.process_input_requests", _witness,
                              HookType.BEFORE)
