"""Micro-benchmark: the recorder's own work per scheduler loop iteration with
256 running requests (one decode batch per iteration, a finish now and then),
on stand-in scheduler objects with the attributes the recorder reads. No
engine: this isolates sgl-replay's cost from the forward pass.

    python tools/bench/recorder_micro.py [--running 256] [--iterations 20000]

Prints one JSON line last: {"bench": "recorder_micro", "us_per_iteration": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from array import array
from types import SimpleNamespace

from sgl_replay.scheduler.recorder import Recording
from sgl_replay.trace.format import Header


class FakeMode:
    def __init__(self, name: str) -> None:
        self.name = name

    def is_extend(self) -> bool:
        return self.name == "EXTEND"


class FakeAllocator:
    def __init__(self) -> None:
        self.free = 100_000

    def available_size(self) -> int:
        return self.free


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--running", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=20_000)
    args = parser.parse_args()

    reqs = [SimpleNamespace(rid=f"req-{k}", finished_reason=None, retraction_count=0,
                            output_ids=array("q", [7] * 10)) for k in range(args.running)]
    running = SimpleNamespace(reqs=list(reqs))
    scheduler = SimpleNamespace(
        forward_ct=0, chunked_req=None, waiting_queue=[], running_batch=running, last_batch=None,
        token_to_kv_pool_allocator=FakeAllocator(), req_to_token_pool=FakeAllocator())
    path = os.path.join(tempfile.mkdtemp(), "micro.sglt")
    rec = Recording(scheduler, path, Header())
    # the requests arrive and prefill once, as in a real run
    for r in reqs:
        rec.on_input(SimpleNamespace(rid=r.rid))  # an unknown type: recorded as "other"
        rec.req_of_rid[r.rid] = len(rec.req_of_rid)
    extend = SimpleNamespace(reqs=list(reqs), forward_mode=FakeMode("EXTEND"), forward_iter=1,
                             extend_lens=[16] * len(reqs), prefix_lens=[0] * len(reqs),
                             extend_num_tokens=16 * len(reqs))
    rec.begin_iteration()
    rec.on_batch(extend)
    rec.end_iteration()

    class Done:
        def to_json(self):
            return {"type": "length"}

    decode_mode = FakeMode("DECODE")
    next_req = len(reqs)
    started = time.perf_counter()
    for i in range(args.iterations):
        rec.begin_iteration()
        batch = SimpleNamespace(reqs=running.reqs, forward_mode=decode_mode, forward_iter=i + 2)
        rec.on_batch(batch)
        scheduler.token_to_kv_pool_allocator.free -= len(running.reqs)
        if i % 16 == 15:  # a request finishes and another takes its slot
            done = running.reqs.pop(0)
            done.finished_reason = Done()
            fresh = SimpleNamespace(rid=f"req-{next_req}", finished_reason=None, retraction_count=0,
                                    output_ids=array("q", [7] * 10))
            rec.req_of_rid[fresh.rid] = next_req
            rec.live[next_req] = fresh  # as if it had prefilled
            rec._relive()
            next_req += 1
            running.reqs.append(fresh)
        rec.end_iteration()
    elapsed = time.perf_counter() - started
    rec.close(complete=True, reason=None)
    us = elapsed / args.iterations * 1e6
    print(f"{args.running} running requests: {us:.1f} us of recording work per iteration "
          f"({args.iterations} iterations, trace {os.path.getsize(path)} bytes)")
    print(json.dumps({"bench": "recorder_micro", "running": args.running,
                      "iterations": args.iterations, "us_per_iteration": round(us, 2),
                      "target_us": 50}))


if __name__ == "__main__":
    main()
