"""Micro-benchmark: the recorder's own work per scheduler loop iteration with
256 running requests (one decode batch per iteration, a finish now and then),
on stand-in scheduler objects with the attributes the recorder reads. No
engine: this isolates sgl-replay's cost from the forward pass.

    python tools/bench/recorder_micro.py [--running 256] [--iterations 20000]
        [--capture --prompt-tokens 2176 --output-tokens 256 --finish-every 4]

--capture measures a plain server's capture instead (output ids kept, the
trace written from the writer thread) with a request pulled (a prompt of
--prompt-tokens ids, packed as the trace keeps it) for every one that
finishes: the saturated H200 capture's mix (one in 4 iterations, 2,176-token
prompts, 256 output tokens) with --running 32 --finish-every 4.

Prints one JSON line last: {"bench": "recorder_micro", "us_per_iteration": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from types import SimpleNamespace

from sgl_replay.scheduler.recorder import Recording
from sgl_replay.trace.format import Header


class TokenizedGenerateReqInput(SimpleNamespace):
    """Stands in for sglang's pulled request (the recorder dispatches on the name)."""


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
    parser.add_argument("--capture", action="store_true")
    parser.add_argument("--prompt-tokens", type=int, default=2176)
    parser.add_argument("--output-tokens", type=int, default=10)
    parser.add_argument("--finish-every", type=int, default=16)
    args = parser.parse_args()
    if args.capture:
        from sglang.srt.sampling.sampling_params import SamplingParams

        sampling = SamplingParams(max_new_tokens=args.output_tokens, temperature=1.0)

    reqs = [SimpleNamespace(rid=f"req-{k}", finished_reason=None, retraction_count=0,
                            output_ids=[7] * args.output_tokens) for k in range(args.running)]
    running = SimpleNamespace(reqs=list(reqs))
    scheduler = SimpleNamespace(
        forward_ct=0, chunked_req=None, waiting_queue=[], running_batch=running, last_batch=None,
        token_to_kv_pool_allocator=FakeAllocator(), req_to_token_pool=FakeAllocator())
    path = os.path.join(tempfile.mkdtemp(), "micro.sglt")
    rec = Recording(scheduler, path, Header(), capture=args.capture)
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
    prompt = list(range(3, 3 + args.prompt_tokens))
    next_req = len(reqs)
    started = time.perf_counter()
    for i in range(args.iterations):
        rec.begin_iteration()
        batch = SimpleNamespace(reqs=running.reqs, forward_mode=decode_mode, forward_iter=i + 2)
        rec.on_batch(batch)
        scheduler.token_to_kv_pool_allocator.free -= len(running.reqs)
        if i % args.finish_every == args.finish_every - 1:  # one finishes, another takes its slot
            done = running.reqs.pop(0)
            done.finished_reason = Done()
            fresh = SimpleNamespace(rid=f"req-{next_req}", finished_reason=None, retraction_count=0,
                                    output_ids=[7] * args.output_tokens)
            if args.capture:  # pulled: what the trace keeps of it is packed now
                rec.on_input(TokenizedGenerateReqInput(
                    rid=fresh.rid, input_ids=prompt,
                    sampling_params=sampling, stream=True, priority=None, return_logprob=False))
            else:
                rec.req_of_rid[fresh.rid] = next_req
            rec.live[next_req] = fresh  # as if it had prefilled
            rec.pending.pop(next_req, None)
            rec._relive()
            next_req += 1
            running.reqs.append(fresh)
        rec.end_iteration()
    elapsed = time.perf_counter() - started
    rec.close(complete=True, reason=None)
    us = elapsed / args.iterations * 1e6
    what = (f", capture: a {args.prompt_tokens}-token prompt pulled every {args.finish_every} iterations"
            if args.capture else "")
    print(f"{args.running} running requests{what}: {us:.1f} us of recording work per iteration "
          f"({args.iterations} iterations, trace {os.path.getsize(path)} bytes)")
    print(json.dumps({"bench": "recorder_micro", "running": args.running, "capture": args.capture,
                      "iterations": args.iterations, "us_per_iteration": round(us, 2),
                      "target_us": 50}))


if __name__ == "__main__":
    main()
