"""A trace's requests as a public serving-trace file: Mooncake JSONL
(`timestamp`, `input_length`, `output_length`, `hash_ids`) or a plain CSV
(`arrival_ms`, `prompt_tokens`, `completion_tokens`). Reads the trace only.

- Arrival, in ms from the first request (as Mooncake's files count): the
  recorded time of the iteration that pulled it, where the recording kept
  times (its inputs came by the wall clock: a capture, serve mode, --clock
  wall); else on the virtual clock, (iteration - the first request's
  iteration) * iteration_ms, iteration_ms being the recording's own when it
  imported a public trace, else 10 ms. An iteration_ms given asks for the
  virtual clock.
- Lengths: the prompt's token count, and the output length of the request's
  finish record. Requests that never finished in the trace are left out
  (counted).
- hash_ids: the prompt cut into `block_size`-token blocks (the last one may be
  shorter); a block's id stands for the whole prefix through that block, so
  equal prefixes get equal ids. Ids are numbered from 0 in order of first
  appearance.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Optional

from sgl_replay.scheduler.public_traces import DEFAULT_BLOCK_SIZE, DEFAULT_ITERATION_MS
from sgl_replay.trace.format import unpack_ids
from sgl_replay.trace.reader import TraceReader

FORMATS = ("mooncake", "csv")


@dataclass
class ExportedRow:
    rid: str
    iteration: int
    input_ids: list[int]
    output_len: Optional[int] = None
    ms: Optional[float] = None  # recorded time of the iteration, if the recording kept it


@dataclass
class Exported:
    rows: int
    unfinished: int
    iteration_ms: Optional[float]  # None: arrival from recorded times


def trace_requests(path: str) -> tuple[list[ExportedRow], Optional[float]]:
    """Every generate input of a trace, in arrival order, with its output
    length from its finish; and the recording's iteration_ms, if it had one."""
    rows: list[ExportedRow] = []
    with TraceReader(path) as reader:
        workload = reader.header.workload
        iteration_ms = None
        if workload is not None and workload.kind == "public" and workload.options:
            iteration_ms = workload.options.get("iteration_ms")
        for record in reader.iterations():
            for item in record.inputs:
                if item.get("type") == "generate":
                    ids = item.get("input_ids")
                    rows.append(ExportedRow(item["rid"], record.i, unpack_ids(ids) if ids else [],
                                            ms=record.ms))
            for finished in record.finished:
                req, output_len = finished[0], finished[2]
                if 0 <= req < len(rows) and rows[req].output_len is None:
                    rows[req].output_len = int(output_len)
    return rows, iteration_ms


def hash_chains(prompts: list[list[int]], block_size: int) -> list[list[int]]:
    """Chained block ids: equal prefixes (through a block) get equal ids,
    numbered in order of first appearance."""
    ids: dict[tuple[int, bytes], int] = {}
    out = []
    for prompt in prompts:
        chain, parent = [], -1
        for start in range(0, len(prompt), block_size):
            key = (parent, bytes(memoryview(_as_array(prompt[start:start + block_size]))))
            parent = ids.setdefault(key, len(ids))
            chain.append(parent)
        out.append(chain)
    return out


def _as_array(tokens: list[int]):
    from array import array

    return array("l", tokens)


def _number(x: float):
    return int(x) if float(x).is_integer() else round(x, 6)


def export(trace: str, output: str, *, fmt: str = "mooncake", block_size: int = DEFAULT_BLOCK_SIZE,
           iteration_ms: Optional[float] = None) -> Exported:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    if block_size < 1:
        raise ValueError("--block-size must be at least 1")
    rows, recorded_ms = trace_requests(trace)
    done = [r for r in rows if r.output_len is not None]
    if iteration_ms is None and done and all(r.ms is not None for r in done):
        step = None
        arrivals = [r.ms - done[0].ms for r in done]
    else:
        step = iteration_ms if iteration_ms is not None else (recorded_ms or DEFAULT_ITERATION_MS)
        arrivals = [(r.iteration - done[0].iteration) * step for r in done]
    chains = hash_chains([r.input_ids for r in done], block_size) if fmt == "mooncake" else None
    directory = os.path.dirname(os.path.abspath(output))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(output) + ".")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            if fmt == "mooncake":
                for row, chain, arrival in zip(done, chains, arrivals):
                    f.write(json.dumps({"timestamp": _number(arrival),
                                        "input_length": len(row.input_ids),
                                        "output_length": row.output_len, "hash_ids": chain}) + "\n")
            else:
                writer = csv.writer(f)
                writer.writerow(["arrival_ms", "prompt_tokens", "completion_tokens"])
                for row, arrival in zip(done, arrivals):
                    writer.writerow([_number(arrival), len(row.input_ids), row.output_len])
        os.replace(tmp, output)
    except BaseException:
        os.unlink(tmp)
        raise
    return Exported(rows=len(done), unfinished=len(rows) - len(done), iteration_ms=step)
