"""A cost model: how long one scheduler loop iteration takes on a recorded
server, as a linear function of what the scheduler put in it.

The unit is the loop iteration, not the kernel: with overlap scheduling an
iteration launches its batch and then waits for the previous batch's result,
so its length depends on both, and CPU work the GPU hides costs nothing
extra. Each iteration is described by a constant, the batch it launched and
the batch launched by the iteration before it (FEATURES). A batch is
described by what the trace says of it: whether it prefills and/or decodes,
how many requests, new tokens, context tokens (each request's tokens in the
KV cache once the batch ran) and new x context tokens (attention's work).

The same code computes the features from a trace (fit.py, latency checks)
and inside a replaying scheduler (the modelled clock), so a model fitted on
a trace is evaluated on exactly the quantities it was fitted on.

A cost model file is untrusted input: plain JSON, decoded into typed fields
and bounded; nothing in it runs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any, Optional

import msgspec

from sgl_replay.trace.format import GenerateInput, Input

KIND = "sgl-replay cost model"
FORMAT = 3
BATCH_FEATURES_V2 = ("prefill", "decode", "reqs", "new_ktok", "ctx_ktok", "attn_mtok")
# "firsts": the requests whose prefill the batch completes (every one of a
# prefill batch but the one it leaves mid chunked prefill): each produces
# its first token and joins the running batch. On the H100 recordings a
# chunk that completes a prefill, and the iteration after it, cost about
# 1 ms more than a chunk in the middle of a prompt; a model without the
# term spreads that over every chunk, which a smaller chunk size multiplies.
BATCH_FEATURES = (*BATCH_FEATURES_V2, "firsts")
# The loop's own work in the iteration, beside the batches: the requests it
# pulled in (and their prompt tokens) and the requests that finished in it
# (their output sent back, their cache released). On a server whose GPU work
# is short these are a large share of an iteration (timed-replay.md, 5).
LOOP_FEATURES = ("inputs", "input_ktok", "finished")
FEATURES_V1 = ("const", *(f"batch_{n}" for n in BATCH_FEATURES_V2), *(f"prev_{n}" for n in BATCH_FEATURES_V2))
FEATURES_V2 = (*FEATURES_V1, *(f"loop_{n}" for n in LOOP_FEATURES))
FEATURES = ("const", *(f"batch_{n}" for n in BATCH_FEATURES), *(f"prev_{n}" for n in BATCH_FEATURES),
            *(f"loop_{n}" for n in LOOP_FEATURES))
# The features of each older format: a file of one is read with the newer
# features' coefficients 0, so it predicts what it predicted.
OLD_FEATURES = {1: FEATURES_V1, 2: FEATURES_V2}
_ZERO = (0.0,) * len(BATCH_FEATURES)
_PREFILL = 1  # batch_prefill: the iteration launched a prefill batch
_PREV = 1 + len(BATCH_FEATURES)  # where the previous batch's features start
_LOOP = _PREV + len(BATCH_FEATURES)  # where the loop's own work starts
# A cost model file holds a few hundred bytes; anything far larger is not one.
MAX_FILE_BYTES = 1 << 20
# An iteration's modelled length is clamped to this range (ms).
MAX_ITERATION_MS = 600_000.0


class CostModelError(ValueError):
    """A cost model file that cannot be used: one line, bad input."""


class Source(msgspec.Struct, omit_defaults=True):
    """Where the model was fitted: what a prediction on other hardware or
    another model would silently get wrong, so a mismatch is a note."""
    device: Optional[str] = None
    device_name: Optional[str] = None
    model: Optional[str] = None
    dtype: Optional[str] = None
    sglang: Optional[str] = None
    overlap_schedule: Optional[bool] = None
    traces: list[str] = msgspec.field(default_factory=list)
    iterations: int = 0


class Fit(msgspec.Struct, omit_defaults=True):
    """Error of the model on iterations it was not fitted on (outliers
    included: the figure says how far a prediction can be off)."""
    heldout_iterations: int = 0
    median_abs_pct: Optional[float] = None
    p90_abs_pct: Optional[float] = None
    total_pct: Optional[float] = None
    outliers: int = 0  # samples of the final fit left out as outliers (timing/fit.py)


class CostModel(msgspec.Struct, omit_defaults=True):
    kind: str
    format: int
    features: list[str]
    coef_ms: list[float]
    floor_ms: float  # the shortest iteration the model predicts
    source: Source = msgspec.field(default_factory=Source)
    fit: Fit = msgspec.field(default_factory=Fit)
    # Format 3: the coefficients of an iteration that launches a prefill
    # batch; coef_ms are then those of every other iteration. A decode step
    # replays a captured CUDA graph and a prefill runs another path, so the
    # same term (a finish, the previous batch's work) costs each its own.
    # None: coef_ms for all (formats 1 and 2).
    prefill_coef_ms: Optional[list[float]] = None

    def iteration_ms(self, x: Sequence[float]) -> float:
        coef = self.prefill_coef_ms if self.prefill_coef_ms is not None and x[_PREFILL] else self.coef_ms
        t = sum(c * v for c, v in zip(coef, x))
        return min(max(t, self.floor_ms), MAX_ITERATION_MS)

    def to_json(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self), indent=2) + b"\n"


def check(model: CostModel) -> CostModel:
    """The model's fields, bounded; CostModelError names the first bad one.
    A model of an older format (1: no loop features, 2: no firsts) is read
    as one whose newer coefficients are 0: it predicts what it predicted."""
    if model.kind != KIND:
        raise CostModelError(f"not an sgl-replay cost model (kind {model.kind[:60]!r})")
    if model.format not in (*OLD_FEATURES, FORMAT):
        raise CostModelError(f"cost model format {model.format}, this sgl-replay reads 1 to {FORMAT}")
    old = OLD_FEATURES.get(model.format)
    if old is not None and model.prefill_coef_ms is not None:
        raise CostModelError(f"cost model format {model.format} has no prefill_coef_ms")
    if old is not None and list(model.features) == list(old) and len(model.coef_ms) == len(old):
        by_name = dict(zip(old, model.coef_ms))
        model = msgspec.structs.replace(model, format=FORMAT, features=list(FEATURES),
                                        coef_ms=[by_name.get(name, 0.0) for name in FEATURES])
    if list(model.features) != list(FEATURES):
        raise CostModelError("cost model of other features than this sgl-replay computes; fit it again "
                             "with `sgl-replay cost`")
    for values in (model.coef_ms, model.prefill_coef_ms):
        if values is not None and (len(values) != len(FEATURES)
                                   or not all(math.isfinite(c) and abs(c) < 1e9 for c in values)):
            raise CostModelError("cost model coefficients are not one finite number per feature")
    if not (math.isfinite(model.floor_ms) and 0 <= model.floor_ms <= MAX_ITERATION_MS):
        raise CostModelError(f"cost model floor_ms={model.floor_ms!r} is out of range")
    return model


def from_builtins(data: Any) -> CostModel:
    """A cost model from plain values (a file's JSON, a trace header's map)."""
    try:
        return check(msgspec.convert(data, CostModel))
    except (msgspec.ValidationError, TypeError) as e:
        raise CostModelError(f"not a cost model: {e}") from None


def load(path: str) -> CostModel:
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise CostModelError(f"{path}: {size} bytes, not a cost model (at most {MAX_FILE_BYTES})")
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise CostModelError(f"{path}: {e.strerror or e}") from None
    try:
        return check(msgspec.json.decode(data, type=CostModel))
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise CostModelError(f"{path}: not a cost model: {e}") from None
    except CostModelError as e:
        raise CostModelError(f"{path}: {e}") from None


# A forward batch as the trace records it: (mode, reqs, new, cached, chunked)
BatchView = tuple[Optional[str], Sequence[int], Optional[Sequence[int]], Optional[Sequence[int]], Optional[int]]


class Tracker:
    """Follows each request's context length through a run (prompt tokens,
    then one more per token-producing batch) and turns each loop iteration
    into its feature vector. Fed the same records a trace holds: inputs,
    batches (mode, reqs, new, cached, chunked) and finishes."""

    def __init__(self) -> None:
        self.length: dict[int, int] = {}  # req -> tokens it has in the KV cache
        self.prompt: dict[int, int] = {}  # req -> prompt tokens, until it first runs
        self.requests = 0
        self.prev: tuple[float, ...] = _ZERO
        self.pulled = self.pulled_tokens = 0  # generate requests pulled in since the last iteration()

    def inputs(self, inputs: Iterable[Input]) -> None:
        for x in inputs:
            if type(x) is GenerateInput:
                self.prompt[self.requests] = n = len(x.input_ids) // 4 if x.input_ids is not None else 0
                self.requests += 1
                self.pulled += 1
                self.pulled_tokens += n

    def batch(self, mode: Optional[str], reqs: Sequence[int], new: Optional[Sequence[int]],
              cached: Optional[Sequence[int]], chunked: Optional[int] = None) -> tuple[float, ...]:
        length = self.length
        if new is not None and cached is not None:
            ctx = attn = 0
            for r, n, c in zip(reqs, new, cached):
                total = n + c
                length[r] = total
                ctx += total
                attn += n * total
            new_tokens = sum(new)
        else:
            ctx = 0
            for r in reqs:
                total = length.get(r, self.prompt.get(r, 0)) + 1
                length[r] = total
                ctx += total
            new_tokens = len(reqs)
            attn = ctx
        prefill = 1.0 if mode in ("extend", "mixed") else 0.0
        decode = 1.0 if mode in ("decode", "mixed") else 0.0
        # a mixed batch's decoding requests are not firsts: their new token is 1
        firsts = (sum(1 for r, n in zip(reqs, new or ()) if r != chunked and (mode == "extend" or n > 1))
                  if prefill else 0)
        return (prefill, decode, float(len(reqs)), new_tokens / 1e3, ctx / 1e3, attn / 1e6, float(firsts))

    def iteration(self, batches: Sequence[BatchView], finished: Iterable[Sequence[Any]] = (), *,
                  follows: bool = True) -> list[float]:
        """The feature vector of one iteration that launched `batches`.
        `follows`: the iteration before it is this tracker's last one (a gap
        in a trace's iteration numbers is iterations that ran no batch)."""
        cur = _ZERO
        for mode, reqs, new, cached, chunked in batches:
            one = self.batch(mode, reqs, new, cached, chunked)
            cur = one if cur is _ZERO else tuple(a + b for a, b in zip(cur, one))
        prev = self.prev if follows else _ZERO
        self.prev = cur
        n_finished = 0
        for done in finished:
            self.length.pop(done[0], None)
            n_finished += 1
        loop = (float(self.pulled), self.pulled_tokens / 1e3, float(n_finished))
        self.pulled = self.pulled_tokens = 0
        return [1.0, *cur, *prev, *loop]


class ModelledClock:
    """The virtual clock of a timed replay: integer microseconds (exact, so
    the same run gives the same bytes), advanced by the cost model's length
    of every iteration the scheduler ran."""

    def __init__(self, model: CostModel) -> None:
        self.model = model
        self.tracker = Tracker()
        self.now_us = 0

    def end_iteration(self, inputs: Sequence[Input], batches: Sequence[dict], finished: Sequence[list]) -> None:
        self.tracker.inputs(inputs)
        x = self.tracker.iteration([(b["mode"], b["reqs"], b.get("new"), b.get("cached"), b.get("chunked"))
                                    for b in batches], finished)
        if batches or any(x[_PREV:_LOOP]):  # launched a batch or processed one's result: not idle
            self.now_us += round(self.model.iteration_ms(x) * 1000)

    def wait_until(self, us: int) -> None:
        """Nothing to run until `us`: the clock jumps there."""
        self.now_us = max(self.now_us, us)

    @property
    def ms(self) -> float:
        return self.now_us / 1000
