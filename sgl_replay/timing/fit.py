"""Fitting a cost model (timing/model.py) to the iterations of timed
recordings, by non-negative least squares (numpy and scipy, which sglang
depends on too).

A sample is an iteration whose length the trace tells: it ran a batch or
processed one's result, the iteration before it is in the trace too (a gap
in the numbering is the loop idling) and it did not begin idle (then its
start is not the previous iteration's end). The iterations that launch a
prefill batch and the others are fitted apart (CostModel.prefill_coef_ms).
One sample in five, by position, is held out: the model is fitted on the
rest, its error on those is what `sgl-replay cost` prints and the file
keeps, and then it is fitted again on all of them.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

from sgl_replay.timing.model import FEATURES, FORMAT, KIND, CostModel, Fit, Source, Tracker, _LOOP, _PREFILL, _PREV
from sgl_replay.trace.format import Header
from sgl_replay.trace.reader import TraceError, TraceReader

HELD_OUT_EVERY = 5
# An iteration this many times longer than the model gives its batch is not
# its batch's cost (_solve), and at most this many rounds find them.
OUTLIER_X = 3.0
OUTLIER_ROUNDS = 10
# Fewer samples than this say little about a model of len(FEATURES) terms.
MIN_SAMPLES = 4 * len(FEATURES)


def samples(path: str) -> tuple[Header, list[list[float]], list[float]]:
    """(header, feature rows, iteration lengths in ms) of one timed trace."""
    xs: list[list[float]] = []
    ys: list[float] = []
    with TraceReader(path) as reader:
        header = reader.header
        if header.timing is None:
            raise TraceError(f"{path}: no iteration times: recorded with --clock wall, serve, or a capture?")
        tracker = Tracker()
        prev_i, prev_ms = -2, None
        for record in reader.iterations():
            tracker.inputs(record.inputs)
            follows = prev_i == record.i - 1 and not record.after_idle
            x = tracker.iteration([(b.mode, b.reqs or (), b.new, b.cached, b.chunked) for b in record.batches],
                                  record.finished, follows=follows)
            ms = record.ms
            if (follows and prev_ms is not None and ms is not None and (record.batches or any(x[_PREV:_LOOP]))):
                y = ms - prev_ms
                if math.isfinite(y) and y > 0:
                    xs.append(x)
                    ys.append(y)
            prev_i, prev_ms = record.i, ms
    return header, xs, ys


def _nnls(X, y):
    """Least squares with every coefficient at least 0 (scipy's NNLS): each
    term is work that can only take time, so a model that extrapolates to a
    batch larger than any it saw cannot predict it faster than a smaller one."""
    import numpy as np
    from scipy.optimize import nnls

    scale = np.abs(X).max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(X / scale, y, maxiter=50 * X.shape[1])
    return coef / scale


def _solve(xs, ys) -> tuple[Any, int]:
    """The coefficients, and how many samples were left out as events of
    their own: an iteration over OUTLIER_X times what the model fitted on
    the others gives its batch (a Triton kernel compiled on first use, a
    CUDA graph captured at start-up, a pause of the host or of Python's
    collector) says nothing of the next one like it, and a few of them
    outweigh thousands of real ones in a least-squares fit. Fitted again
    without them until none is left. On the H100 recordings of
    timed-replay.md that is under 1% of the iterations; the slower tail
    below it stays in, so the model fits the mean and the modelled clock
    keeps the recorded pace."""
    import numpy as np

    X, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    keep = np.ones(len(y), dtype=bool)
    floor = float(np.percentile(y, 1))
    for _ in range(OUTLIER_ROUNDS):
        coef = _nnls(X[keep], y[keep])
        again = y <= OUTLIER_X * np.maximum(X @ coef, floor)
        if (again == keep).all():
            break
        keep = again
    return coef, int((~keep).sum())


def _solve_modes(xs, ys) -> tuple[Any, Any, int]:
    """(coefficients of the iterations that launch no prefill batch, of
    those that launch one, samples left out): each kind fitted on its own
    iterations (CostModel.prefill_coef_ms), or both on all where one kind
    has fewer than MIN_SAMPLES."""
    import numpy as np

    X, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    prefill = X[:, _PREFILL] > 0
    if min(int(prefill.sum()), int((~prefill).sum())) < MIN_SAMPLES:
        coef, out = _solve(X, y)
        return coef, coef, out
    other, out_o = _solve(X[~prefill], y[~prefill])
    pre, out_p = _solve(X[prefill], y[prefill])
    return other, pre, out_o + out_p


def _errors(coefs, floor: float, xs, ys) -> Fit:
    import numpy as np

    X, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    other, pre = coefs
    pred = np.clip(np.where(X[:, _PREFILL] > 0, X @ pre, X @ other), floor, None)
    rel = np.abs(pred - y) / y * 100
    return Fit(heldout_iterations=len(ys), median_abs_pct=round(float(np.median(rel)), 3),
               p90_abs_pct=round(float(np.percentile(rel, 90)), 3),
               total_pct=round(float((pred.sum() - y.sum()) / y.sum() * 100), 3))


def fit(paths: list[str]) -> CostModel:
    """A cost model fitted on the timed traces `paths` (TraceError if one
    kept no time or they hold too few iterations)."""
    import numpy as np

    xs: list[list[float]] = []
    ys: list[float] = []
    headers: list[Header] = []
    for path in paths:
        header, x, y = samples(path)
        headers.append(header)
        xs += x
        ys += y
    if len(ys) < MIN_SAMPLES:
        raise TraceError(f"only {len(ys)} timed busy iterations in {', '.join(paths)}: too few to fit "
                         f"a cost model (at least {MIN_SAMPLES})")
    held = [k % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 for k in range(len(ys))]
    train_x = [x for x, h in zip(xs, held) if not h]
    train_y = [y for y, h in zip(ys, held) if not h]
    floor = float(np.percentile(ys, 1))
    heldout = _errors(_solve_modes(train_x, train_y)[:2], floor,
                      [x for x, h in zip(xs, held) if h], [y for y, h in zip(ys, held) if h])
    other, pre, outliers = _solve_modes(xs, ys)
    heldout.outliers = outliers
    return CostModel(kind=KIND, format=FORMAT, features=list(FEATURES),
                     coef_ms=[round(float(c), 9) for c in other], floor_ms=round(floor, 6),
                     source=_source(headers[0], paths, len(ys)), fit=heldout,
                     prefill_coef_ms=[round(float(c), 9) for c in pre])


def _source(header: Header, paths: list[str], n: int) -> Source:
    config = header.model.config or {}
    overlap = header.resolved.overlap_schedule
    # sgl-replay's embedded model lives in a temporary directory: name it by its shape
    model = (f"embedded {config.get('model_type')} n_embd {config.get('n_embd')} n_layer {config.get('n_layer')} "
             f"vocab {config.get('vocab_size')}" if config else header.model.path)
    return Source(device=header.device.type, device_name=header.device.name, model=model,
                  dtype=str(header.server_args.get("dtype") or config.get("torch_dtype") or "") or None,
                  sglang=header.versions.sglang, overlap_schedule=overlap,
                  traces=[os.path.basename(p) for p in paths], iterations=n)


def mismatch(model: CostModel, header: Header) -> Optional[str]:
    """A note when `model` was fitted on another device, model or dtype than
    `header`'s run, else None."""
    mine = _source(header, [], 0)
    differs = [f"{name} {getattr(model.source, name)!s} vs {getattr(mine, name)!s}"
               for name in ("device", "device_name", "model", "dtype")
               if getattr(model.source, name) is not None and getattr(mine, name) is not None
               and getattr(model.source, name) != getattr(mine, name)]
    return f"the cost model was fitted on another run: {'; '.join(differs)}" if differs else None


def cost_for(trace: str, header: Header, cost_path: Optional[str]) -> tuple[CostModel, list[str]]:
    """The cost model a timed replay of `trace` runs on: the file
    `cost_path` (CostModelError if it is not one), else one fitted on the
    trace itself; and notes for the user."""
    from sgl_replay.timing.latency import check_times
    from sgl_replay.timing.model import load

    if header.timing is None:
        raise TraceError(f"{trace}: no iteration times: recorded with --clock wall, serve, or a capture?")
    with TraceReader(trace) as reader:  # the scheduler side feeds by these times: bad ones are bad input here
        for record in reader.iterations():
            check_times(record)
    if cost_path is not None:
        model = load(cost_path)
        note = mismatch(model, header)
        return model, [note] if note else []
    if header.timing.clock == "modeled" and header.timing.cost is not None:
        from sgl_replay.timing.model import from_builtins

        return from_builtins(header.timing.cost), ["cost model: the one the trace was recorded with"]
    model = fit([trace])
    return model, [f"cost model fitted on the trace itself ({model.fit.median_abs_pct}% median error "
                   f"on held-out iterations)"]
