"""What-if sweeps: a timed trace replayed on the modelled clock once per
configuration of a grid (the engine's scheduling arguments, and the client's
in-flight limit), in parallel, and ranked by a latency figure.

A task is one engine configuration with every grid row that shares it (rows
that differ only in max_in_flight, a client-side setting): one engine start
(25-60 s on a small CPU) per task, not per row. A task carries the trace's
bytes and the cost model, so a Ray worker on another machine needs only
sgl-replay; it returns each row's figures and observed trace, and the
driver diffs every row against the baseline row (the recorded configuration,
whose fidelity against the recording is reported too).

The tasks run on a local process pool (`workers`) or as Ray tasks on an
existing cluster or a local Ray instance (`ray_address`): sgl-replay keeps
no queue or RPC of its own. A task whose worker or engine dies is tried once
more; a second failure is a failed row and the sweep goes on.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import math
import multiprocessing
import os
import socket
import tempfile
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import msgspec

from sgl_replay.diff import Options, diff
from sgl_replay.runs.capture import CaptureFailed
from sgl_replay.runs.check import read_header
from sgl_replay.runs.errors import BadEngineArgs, EngineError
from sgl_replay.runs.pool import EnginePool
from sgl_replay.runs.replay import engine_config_for, replay_trace
from sgl_replay.timing import latency
from sgl_replay.timing.model import CostModel
from sgl_replay.trace.format import SCHEDULING_ARG_LIMITS, SCHEDULING_ARGS, Header
from sgl_replay.trace.reader import TraceError, TraceReader, chain_paths
from sgl_replay.views.whatif import page, versus

# Grid keys: the scheduling arguments a replay may set, and the client's.
CLIENT_KEYS: dict[str, type] = {"max_in_flight": int}
GRID_KEYS: dict[str, type] = {**SCHEDULING_ARGS, **CLIENT_KEYS}
MAX_CONFIGS = 1024  # a grid's rows; more is a typo's product, not a sweep
# What one engine's process tree holds at peak, replaying a GPU capture of a
# 128K-vocabulary model (its proportional set size: 2.9 GiB measured by
# tools/bench/whatif_throughput.py; sglang's three processes each map torch):
# a pool's default size keeps this much available per worker.
ENGINE_MEMORY_BYTES = 3 * 2**30
RAY_CONNECT_TIMEOUT_S = 5.0
ATTEMPTS = 2  # a task is tried once more after its worker or engine died


class WhatifError(Exception):
    """Bad usage or input: one line, exit 2, nothing written."""


@dataclass(frozen=True)
class Config:
    """One row of the grid: engine arguments on top of the recorded ones,
    and the client's in-flight limit (None: every request at its time)."""

    engine_args: tuple[tuple[str, Any], ...] = ()
    max_in_flight: Optional[int] = None

    @property
    def label(self) -> str:
        parts = [f"{k}={_text(v)}" for k, v in self.engine_args]
        if self.max_in_flight is not None:
            parts.append(f"max_in_flight={self.max_in_flight}")
        return " ".join(parts) or "recorded"


BASELINE = Config()


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def parse_grid(pairs: Sequence[str], *, max_in_flight: Optional[int] = None) -> list[Config]:
    """The rows of `--grid KEY=V1,V2 ...` (their product), the baseline
    first; `max_in_flight`: every row's client limit unless the grid sets it."""
    if not pairs:
        raise WhatifError("an empty grid: give at least one --grid KEY=V1,V2,...")
    axes: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise WhatifError(f"--grid wants KEY=V1,V2,..., got {pair!r}")
        if key not in GRID_KEYS:
            raise WhatifError(f"--grid {key}: not a key a sweep can vary; choose from "
                              f"{', '.join(sorted(GRID_KEYS))}")
        if key in axes:
            raise WhatifError(f"--grid {key} given twice; list its values once: {key}=V1,V2")
        texts = [t.strip() for t in raw.split(",")]
        if not any(texts) or not all(texts):
            raise WhatifError(f"--grid {key}: an empty value in {raw!r}")
        axes[key] = [_value(key, t) for t in texts]
    rows = math.prod(len(v) for v in axes.values())
    if rows > MAX_CONFIGS:
        raise WhatifError(f"the grid has {rows} configurations, more than a sweep takes ({MAX_CONFIGS})")
    configs = [BASELINE if max_in_flight is None else Config(max_in_flight=max_in_flight)]
    for values in itertools.product(*axes.values()):
        chosen = dict(zip(axes, values))
        config = Config(tuple((k, v) for k, v in chosen.items() if k not in CLIENT_KEYS),
                        chosen.get("max_in_flight", max_in_flight))
        if config not in configs:
            configs.append(config)
    return configs


def _value(key: str, text: str) -> Any:
    kind = GRID_KEYS[key]
    value: Any = text
    if kind is not str:
        try:
            value = json.loads(text)
        except ValueError:
            pass
    if kind is float and type(value) is int:
        value = float(value)
    ok = type(value) is kind
    if ok and isinstance(value, float):
        ok = math.isfinite(value)
    if ok and isinstance(value, str):
        ok = len(value) <= 64
    if not ok:
        raise WhatifError(f"--grid {key}: {text!r} is not {'an' if kind is int else 'a'} {kind.__name__}")
    if isinstance(value, int) and kind is int:
        lowest, limit = (1 if key in CLIENT_KEYS else -1), SCHEDULING_ARG_LIMITS.get(key, 1 << 31)
        if not lowest <= value <= limit:
            raise WhatifError(f"--grid {key}: {value} is out of range ({lowest} to {limit})")
    return value


# ------------------------------------------------------------------ a task
@dataclass(frozen=True)
class Task:
    """One engine configuration and the rows it replays (what a worker is
    sent, with the trace's files beside it)."""

    engine_args: tuple[tuple[str, Any], ...]
    configs: tuple[Config, ...]
    cost: dict[str, Any]
    device: Optional[str] = None
    skip_model: bool = False
    timeout_s: Optional[float] = None


@dataclass
class Row:
    config: Config
    summary: Optional[dict[str, Any]] = None  # timing/latency.py's summary of the replay
    peak_queue: Optional[int] = None  # the most requests waiting at once
    retractions: Optional[int] = None
    iterations: Optional[int] = None
    seconds: float = 0.0  # the replay's own wall time, engine start apart
    failed: Optional[str] = None  # why the row has no figures
    trace: Optional[bytes] = field(default=None, repr=False)  # the observed trace (a task's result)
    divergence: Optional[str] = None  # from the baseline: None same, else where
    fidelity: Optional[dict[str, Any]] = None  # the baseline against the recording


def tasks_of(configs: Sequence[Config], cost: CostModel, header: Header, *, device: Optional[str] = None,
             skip_model: bool = False, timeout_s: Optional[float] = None) -> list[Task]:
    """The configurations grouped by the engine they replay on (a grid value
    equal to the recorded one shares the baseline's), in grid order.
    TraceError where the trace asks for more than a replay allows."""
    groups: dict[str, list[Config]] = {}
    for config in configs:
        engine = engine_config_for(header, device=device, engine_args=dict(config.engine_args))
        groups.setdefault(engine.key(), []).append(config)
    plain = msgspec.to_builtins(cost)
    return [Task(rows[0].engine_args, tuple(rows), plain, device, skip_model, timeout_s) for rows in groups.values()]


def run_task(files: dict[str, bytes], task: Task) -> list[Row]:
    """Replay the task's rows on one engine (a worker's job, in its own
    process): the trace's files written to a scratch directory, each row's
    observed trace and figures returned."""
    with tempfile.TemporaryDirectory(prefix="sgl-replay-whatif-") as tmp:
        recording = os.path.join(tmp, "recording")
        os.mkdir(recording)
        for name, data in files.items():
            with open(os.path.join(recording, os.path.basename(name)), "wb") as f:
                f.write(data)
        trace = recording if len(files) > 1 else os.path.join(recording, os.path.basename(next(iter(files))))
        engine_args = dict(task.engine_args)
        cost = msgspec.convert(task.cost, CostModel)
        pool = EnginePool(max_live=1)
        rows = []
        try:
            # what cannot run is the rows' verdict; a dead engine or worker
            # (raised) is worth another try
            try:
                with TraceReader(trace) as reader:
                    config = engine_config_for(reader.header, device=task.device, engine_args=engine_args)
                engine = pool.get(config)
            except (TraceError, BadEngineArgs) as e:
                return _failed(task, _why(e))
            for k, row_config in enumerate(task.configs):
                out = os.path.join(tmp, f"row-{k}.sglt")
                overrides: dict[str, Any] = {"device": task.device, "engine_args": engine_args}
                if task.skip_model:
                    overrides["skip_model"] = True
                if row_config.max_in_flight is not None:
                    overrides["max_in_flight"] = row_config.max_in_flight
                started = time.monotonic()
                replay_trace(engine, trace, out, overrides=overrides, timeout_s=task.timeout_s, cost=cost)
                row = _figures(row_config, out)
                row.seconds = time.monotonic() - started
                rows.append(row)
        finally:
            pool.close()
        return rows


def _figures(config: Config, observed: str) -> Row:
    peak, retractions = 0, 0
    with TraceReader(observed) as reader:
        records = list(reader.iterations())
        header = reader.header
    for record in records:
        if record.state is not None:
            peak = max(peak, record.state.waiting)
        retractions += len(record.retracted)
    summary = latency.from_records(header, records).summary()
    with open(observed, "rb") as f:
        data = f.read()
    return Row(config, summary, peak, retractions, len(records), trace=data)


# ------------------------------------------------------------------ the sweep
@dataclass
class Sweep:
    trace: str
    rank: str
    rows: list[Row]
    recorded: dict[str, Any]  # the recording's latency summary
    runner: str  # "pool of N" | "ray ..."

    def ranked(self) -> list[Row]:
        """By the rank figure, best first; rows without it last, in grid order."""
        def key(row: Row) -> tuple[int, float]:
            value = latency.figure(row.summary, self.rank) if row.summary is not None else None
            if value is None:
                return (1, 0.0)
            return (0, -value if self.rank == "throughput" else value)

        return sorted(self.rows, key=key)


def trace_files(trace: str) -> dict[str, bytes]:
    """The recording's files by name (every link of a chain)."""
    out = {}
    for path in chain_paths(trace):
        with open(path, "rb") as f:
            out[os.path.basename(path)] = f.read()
    return out


def sweep(trace: str, configs: Sequence[Config], cost: CostModel, *, rank: str = "ttft_p90",
          workers: Optional[int] = None, ray_address: Optional[str] = None, device: Optional[str] = None,
          skip_model: bool = False, timeout_s: Optional[float] = None,
          on_row: Callable[[Row], None] = lambda row: None) -> Sweep:
    """Run every configuration (configs[0] is the baseline) on the pool
    (default) or on Ray (`ray_address`: "" starts a local instance), and
    diff each row against the baseline. `on_row` is called as rows finish."""
    if rank not in latency.FIGURES:
        raise WhatifError(f"--rank {rank}: choose from {', '.join(sorted(latency.FIGURES))}")
    recorded = latency.of_trace(trace).summary()  # a trace without times fails here, before any engine
    tasks = tasks_of(configs, cost, read_header(trace), device=device, skip_model=skip_model, timeout_s=timeout_s)
    files = trace_files(trace)
    if ray_address is None:
        size = workers or default_workers(len(tasks))
        results, runner = _on_pool(files, tasks, size, on_row), f"a process pool of {size}"
    else:
        results, runner = _on_ray(files, tasks, ray_address, on_row), f"Ray ({ray_address or 'local'})"
    rows = [results[c] for c in configs]
    _against_baseline(trace, rows, recorded)
    return Sweep(trace, rank, rows, recorded, runner)


def default_workers(tasks: int, *, cores: Optional[int] = None, available: Optional[int] = None) -> int:
    """One worker per core while each can keep ENGINE_MEMORY_BYTES of the
    memory available now, never more than there are tasks."""
    cores = cores or len(os.sched_getaffinity(0))
    available = _available_memory() if available is None else available
    return max(1, min(cores, available // ENGINE_MEMORY_BYTES, tasks))


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _failed(task: Task, why: str) -> list[Row]:
    return [Row(config, failed=why) for config in task.configs]


def _why(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"[:300]


def _on_pool(files: dict[str, bytes], tasks: list[Task], workers: int,
             on_row: Callable[[Row], None]) -> dict[Config, Row]:
    """concurrent.futures' process pool (spawned workers: an engine's
    process tree does not fork well); a task whose worker died or whose
    engine failed goes round once more in a fresh pool."""
    results: dict[Config, Row] = {}
    attempts = {k: 0 for k in range(len(tasks))}
    pending = list(range(len(tasks)))
    while pending:
        again = []
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(pending)),
                                                    mp_context=context) as pool:
            futures = {pool.submit(run_task, files, tasks[k]): k for k in pending}
            for future in concurrent.futures.as_completed(futures):
                k = futures[future]
                attempts[k] += 1
                try:
                    rows = future.result()
                except (EngineError, CaptureFailed, BrokenProcessPool) as e:
                    if attempts[k] < ATTEMPTS:
                        again.append(k)
                        continue
                    rows = _failed(tasks[k], _why(e))
                for row in rows:
                    results[row.config] = row
                    on_row(row)
        pending = again
    return results


def _on_ray(files: dict[str, bytes], tasks: list[Task], address: str,
            on_row: Callable[[Row], None]) -> dict[Config, Row]:
    """One Ray task per engine configuration: the trace put in the object
    store once, results taken as they finish; Ray retries a task whose
    worker died, or whose engine failed, once."""
    try:
        import ray
    except ImportError:
        raise WhatifError("--ray needs Ray: pip install 'sgl-replay[ray]'") from None
    if address:
        check_ray_address(address)
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING,
                 object_store_memory=max(78 * 2**20, 4 * sum(len(d) for d in files.values())))
    results: dict[Config, Row] = {}
    try:
        # Ray's stubs type retry_exceptions as a bool; it takes the classes to retry too
        remote = ray.remote(num_cpus=1, max_retries=ATTEMPTS - 1,  # type: ignore[call-overload]
                            retry_exceptions=[EngineError, CaptureFailed])(run_task)
        shared = ray.put(files)
        pending = {remote.remote(shared, task): task for task in tasks}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(ready[0])
            try:
                rows = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 — a task's failure is its rows' verdict; the sweep goes on
                rows = _failed(task, _why(getattr(e, "cause", None) or e))
            for row in rows:
                results[row.config] = row
                on_row(row)
    finally:
        ray.shutdown()
    return results


def check_ray_address(address: str) -> None:
    """WhatifError for an address that does not answer: one line now, not
    a minute of Ray's own retries."""
    host_port = address.split("://", 1)[-1]
    host, sep, port = host_port.rpartition(":")
    if not sep or not port.isdigit():
        raise WhatifError(f"--ray {address}: want HOST:PORT (or ray://HOST:PORT)")
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise WhatifError(f"--ray {address}: no Ray cluster answers there ({e.strerror or e})") from None


def _against_baseline(trace: str, rows: list[Row], recorded: dict[str, Any]) -> None:
    """Each row's first divergence from the baseline's schedule, and the
    baseline's fidelity against the recording."""
    with tempfile.TemporaryDirectory(prefix="sgl-replay-whatif-") as tmp:
        paths = {}
        for k, row in enumerate(rows):
            if row.trace is not None:
                paths[k] = os.path.join(tmp, f"row-{k}.sglt")
                with open(paths[k], "wb") as f:
                    f.write(row.trace)
        if 0 not in paths:
            return
        base = rows[0]
        assert base.summary is not None
        with TraceReader(trace) as a, TraceReader(paths[0]) as b:
            schedule = diff(a, b, Options(level="composition"))
        base.fidelity = {**latency.compare(recorded, base.summary), "schedule": _where(schedule)}
        for k, path in paths.items():
            if k == 0:
                continue
            with TraceReader(paths[0]) as a, TraceReader(path) as b:
                rows[k].divergence = _where(diff(a, b, Options(level="composition")))


def _where(result: Any) -> Optional[str]:
    if result.same:
        return None
    if result.first is not None:
        return f"iteration {result.first.iteration}"
    return str(result.verdict)


# ------------------------------------------------------------------ output
COLUMNS = ("ttft_p50", "ttft_p90", "ttft_p99", "itl_p50", "itl_p90", "e2e_p50", "e2e_p90", "queue_p90")


def table(result: Sweep) -> list[dict[str, Any]]:
    """The ranked rows as plain values (the CSV's and the JSON's rows):
    figures on the modelled clock only, so two runs of one sweep give the
    same table on any runner."""
    out = []
    base = result.rows[0].summary
    for place, row in enumerate(result.ranked(), 1):
        s = row.summary
        entry: dict[str, Any] = {"rank": place, "config": row.config.label,
                                 "baseline": row.config is result.rows[0].config}
        entry.update({f"{name}_ms": (latency.figure(s, name) if s else None) for name in COLUMNS})
        entry["throughput_tok_s"] = s["throughput_tok_s"] if s else None
        entry["finished"] = s["finished"] if s else None
        entry["peak_queue"] = row.peak_queue
        entry["retractions"] = row.retractions
        entry[f"{result.rank}_vs_baseline_pct"] = (
            latency.worse_pct(base, s, result.rank) if s and base else None)
        entry["schedule_vs_baseline"] = ("-" if entry["baseline"] else
                                         None if s is None else (row.divergence or "same"))
        entry["failed"] = row.failed
        out.append(entry)
    return out


def fidelity_line(result: Sweep) -> str:
    f = result.rows[0].fidelity
    if f is None:
        return "baseline: no replay to compare with the recording"
    schedule = "same batches" if f["schedule"] is None else f"batches diverge at {f['schedule']}"
    return (f"baseline (recorded configuration) against the recording: {schedule}; per-request TTFT "
            f"median error {_pct(f['ttft_median_abs_pct'])}, p90 TTFT {_pct(f['ttft_p90_abs_pct'])}, "
            f"throughput {_pct(f['throughput_pct'])}")


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.1f}%"


def text_lines(result: Sweep) -> Iterator[str]:
    rows = table(result)
    head = ["#", "config", "TTFT p50", "p90", "p99", "ITL p90", "E2E p90", "tok/s", "peak q", "retr",
            f"{result.rank} vs base", "schedule vs base"]
    body = []
    for r in rows:
        if r["failed"]:
            body.append([str(r["rank"]), r["config"], f"failed: {r['failed']}"])
            continue
        body.append([str(r["rank"]), r["config"] + (" (baseline)" if r["baseline"] else ""),
                     *(_ms(r[f"{n}_ms"]) for n in ("ttft_p50", "ttft_p90", "ttft_p99", "itl_p90", "e2e_p90")),
                     "-" if r["throughput_tok_s"] is None else f"{r['throughput_tok_s']:.1f}",
                     str(r["peak_queue"]), str(r["retractions"]),
                     versus(r, result.rank), r["schedule_vs_baseline"]])
    widths = [max(len(line[k]) for line in [head, *[b for b in body if len(b) == len(head)]])
              for k in range(len(head))]
    yield f"{len(result.rows)} configurations of {result.trace} on {result.runner}, ranked by {result.rank} " \
          f"(ms on the modelled clock)"
    yield "  ".join(h.ljust(w) for h, w in zip(head, widths))
    for line in body:
        yield "  ".join(c.ljust(w) for c, w in zip(line, widths)) if len(line) == len(head) else "  ".join(line)
    yield fidelity_line(result)


def _ms(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.1f}"


def write(result: Sweep, path: str) -> None:
    """The table as .csv, .json or .html (by the name), written whole or not
    at all."""
    kind = os.path.splitext(path)[1].lower()
    if kind == ".csv":
        import csv
        import io

        rows = table(result)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        data = buf.getvalue().encode()
    elif kind == ".json":
        data = json.dumps({"trace": result.trace, "rank": result.rank, "recorded": _no_requests(result.recorded),
                           "fidelity": result.rows[0].fidelity, "rows": table(result)}, indent=1).encode()
    elif kind in (".html", ".htm"):
        data = page(result.trace, result.runner, result.rank, table(result), fidelity_line(result)).encode()
    else:
        raise WhatifError(f"-o {path}: write .csv, .json or .html")
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def check_output(path: Optional[str]) -> None:
    """Bad output names fail before any engine starts."""
    if path is not None and os.path.splitext(path)[1].lower() not in (".csv", ".json", ".html", ".htm"):
        raise WhatifError(f"-o {path}: write .csv, .json or .html")


def _no_requests(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "per_request"}
