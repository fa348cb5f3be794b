"""What a trace file holds, named by sgl-replay and by nothing of sglang's.

A trace is a sequence of independent zstd frames; concatenated, their contents
are a stream of blocks, each its byte length (a msgpack uint) then a msgpack
array of records (maps). The header is the first frame's only block.

    header   {"t": "header", "format": 3, versions, device, engine_args,
              server_args, env, model, pools, workload, source}
    iter     {"t": "iter", "i": loop iteration, and only what happened:
              "inputs":    objects the scheduler pulled, in pull order
              "batches":   forward batches launched, in launch order
              "state":     pool and queue sizes after the iteration
              "finished":  [[req, reason, output_len, output_hash], ...]
              "retracted": [req, ...]}
    end      {"t": "end", "complete": bool, "reason": str | None,
              "iterations": n, "forwards": n, "requests": n, "seconds": loop time,
              "recorder_seconds": of that, time in the recorder's own code}

An iteration in which nothing was pulled, nothing ran and no size changed is
not written: gaps in "i" are idle loop iterations.

Requests are numbered in the order their generate input appears in the trace
("req" below); batches, finishes and retractions refer to those numbers, which
keeps the hot records small and fast to compare. The rid is in the input.

    input    {"type": "generate", "rid", "input_ids" (int32 little-endian bytes:
              one object to decode, not one per token), "sampling" (non-default
              sampling params only), "stream", optional "priority",
              "return_logprob", "logprob_start_len", "top_logprobs_num"}
             {"type": "abort", "rid", "all"}
             {"type": "pause", "mode"}      {"type": "continue"}
             {"type": "flush"}              {"type": "other", "name"}
    batch    {"fwd": forward index in this run, "mode": "extend" | "decode" |
              "mixed" | "idle" ..., "reqs": [req, ...] (left out when the same
              as the previous forward batch's: most decode steps), "tokens": total new
              tokens, and for extend/mixed batches "new": [tokens per req],
              "cached": [cached-prefix tokens per req]; "chunked": req when a
              request is mid chunked prefill}
    state    {"waiting", "running", "kv_free", "req_free"}
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from typing import Optional, Union

import msgspec

FORMAT_VERSION = 3
# Versions this code reads. Version 1 wrote "reqs" in every batch and input
# ids as a list; version 2 leaves "reqs" out when unchanged and packs input
# ids; versions 1 and 2 write records one after another, not in blocks. The
# reader fills "reqs" in and packs version-1 input ids, so an older trace
# reads, replays and diffs as it is.
READABLE_VERSIONS = (1, 2, 3)

SUFFIX = ".sglt"

HEADER = "header"
ITER = "iter"
END = "end"


# The body's records as the reader returns them: typed, so that a block
# decodes straight into them (about 1.4x faster than into dicts, and a field
# of the wrong type is bad record data, not a surprise later; a field this
# code does not know, which a later sgl-replay may add, is skipped). They are
# still msgpack maps with these names: what a trace holds is the field list
# above, not this code. Inputs stay maps: their fields vary with the input's
# type and sglang's version, and they are few.
class Batch(msgspec.Struct, omit_defaults=True):
    fwd: int
    mode: Optional[str]
    tokens: int
    reqs: Optional[list[int]] = None  # None only in the file; the reader fills it in
    new: Optional[list[int]] = None
    cached: Optional[list[int]] = None
    chunked: Optional[int] = None


class State(msgspec.Struct):
    waiting: int
    running: int
    kv_free: int
    req_free: int


class Iteration(msgspec.Struct, tag_field="t", tag=ITER, omit_defaults=True):
    """Absent fields read as an empty tuple (shared, unlike a fresh list per
    record: 10% of decode time); present ones decode as lists."""
    i: int
    inputs: Sequence[dict] = ()
    batches: Sequence[Batch] = ()
    state: Optional[State] = None
    finished: Sequence[list] = ()  # [req, reason, output_len, output_hash]
    retracted: Sequence[int] = ()


class End(msgspec.Struct, tag_field="t", tag=END, omit_defaults=True):
    """The reader hands it on as the map it was written as (`reader.end`)."""
    complete: bool
    reason: Optional[str]
    iterations: int
    forwards: int
    requests: int
    seconds: Optional[float] = None
    recorder_seconds: Optional[float] = None


Record = Union[Iteration, End]

# Input types a replay can feed back through a real path.
REPLAYABLE_INPUTS = ("generate", "abort", "pause", "continue", "flush")


def pack_ids(ids) -> bytes:
    """Token ids as int32 little-endian bytes (the trace's input_ids)."""
    packed = array("i", ids)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def unpack_ids(data: bytes) -> list[int]:
    """The token ids back (the reader already packed format 1's lists)."""
    ids = array("i")
    ids.frombytes(data)
    if sys.byteorder == "big":
        ids.byteswap()
    return ids.tolist()
