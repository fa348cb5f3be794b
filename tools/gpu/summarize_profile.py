"""Here, after tools/gpu/profile_capture.py ran on the device: the share of
the recorded server's scheduler thread that sgl-replay's code took, from
py-spy's raw stacks, and the recorder's own timing from the trace's end.

    python tools/gpu/summarize_profile.py FILES_AT [-o results.json]

A sample is the scheduler thread's when its stack passes through sglang's
event loop; it is sgl-replay's when a frame below the loop is in sgl_replay
(the hook around the whole loop does not count). Leaves name the innermost
frame of those samples (sglang's or torch's code the recorder called shows
as itself: Tensor.__len__ inside available_size).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re

from sgl_replay.trace import TraceReader

LOOPS = ("event_loop_overlap", "event_loop_normal")
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for frame in stack.split(";"):
        m = _FRAME.match(frame.strip())
        out.append((m["name"], m["file"]) if m else (frame.strip(), ""))
    return out


def summarize_stacks(path: str) -> dict:
    thread = recorder = 0
    leaves: collections.Counter = collections.Counter()
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            fs = frames(stack)
            loop = next((k for k, (name, _) in enumerate(fs) if name.split(".")[-1] in LOOPS), None)
            if loop is None:
                continue
            thread += int(count)
            if any("sgl_replay" in file for _, file in fs[loop + 1:]):
                recorder += int(count)
                leaves[fs[-1][0]] += int(count)
    return {"scheduler_thread_samples": thread, "recorder_samples": recorder,
            "recorder_share": round(recorder / thread, 4) if thread else None,
            "recorder_leaves": dict(leaves.most_common())}


def trace_end(path: str) -> dict:
    with TraceReader(path) as reader:
        busy_iterations = sum(1 for rec in reader.iterations() if rec.batches)
        end = reader.end
    out = {"busy_seconds": end.busy_seconds, "busy_recorder_seconds": end.busy_recorder_seconds,
           "busy_iterations": busy_iterations}
    if end.busy_seconds and end.busy_recorder_seconds is not None and busy_iterations:
        out["busy_share"] = round(end.busy_recorder_seconds / end.busy_seconds, 5)
        out["us_per_busy_iteration"] = round(end.busy_recorder_seconds / busy_iterations * 1e6, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files_at")
    parser.add_argument("-o", "--output")
    args = parser.parse_args()
    result: dict = {}
    for name in ("all", "gil"):
        spy = os.path.join(args.files_at, f"spy-{name}.txt")
        if os.path.exists(spy):
            result[name] = summarize_stacks(spy)
    trace = os.path.join(args.files_at, "long.sglt")
    if os.path.exists(trace):
        result["trace_end"] = trace_end(trace)
    figures = os.path.join(args.files_at, "figures.json")
    if os.path.exists(figures):
        with open(figures) as f:
            result["bench"] = json.load(f)
    text = json.dumps(result, indent=1)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
