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
  equal prefixes get equal ids. The default block is the one the recording's
  public-trace import used, scaled by its token_scale (its prompts were cut
  at those boundaries, so prompts that shared blocks there share them here),
  else Mooncake's 512. Ids are numbered from 0 in order of first
  appearance. Read in one pass: no prompt is held.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

from sgl_replay.trace.format import GenerateInput, Header
from sgl_replay.trace.reader import TraceReader
from sgl_replay.traffic.public_traces import DEFAULT_BLOCK_SIZE, DEFAULT_ITERATION_MS

FORMATS = ("mooncake", "csv")


@dataclass
class ExportedRow:
    rid: str
    iteration: int
    input_len: int
    chain: list[int]  # the prompt's block ids, as BlockIds numbered them
    output_len: Optional[int] = None
    ms: Optional[float] = None  # recorded time of the iteration, if the recording kept it


@dataclass
class Exported:
    rows: int
    unfinished: int
    iteration_ms: Optional[float]  # None: arrival from recorded times


class BlockIds:
    """Chained block ids of packed prompts (int32, as traces keep them): a
    block's id stands for the whole prefix through that block. A prefix is
    keyed by a 128-bit digest chained over its blocks, so memory grows with
    the distinct blocks of the trace, not with its tokens."""

    def __init__(self, block_size: int) -> None:
        self.step = 4 * block_size
        self.ids: dict[bytes, int] = {}

    def chain(self, packed: bytes) -> list[int]:
        out, key = [], b""
        for start in range(0, len(packed), self.step):
            key = hashlib.blake2b(key + packed[start:start + self.step], digest_size=16).digest()
            out.append(self.ids.setdefault(key, len(self.ids)))
        return out


def default_block_size(header: Header) -> int:
    """The block of the public trace the recording imported, scaled as its
    prompts were (rounded half up as the import's block boundaries are, at
    least 1); 512 for any other recording, or options that are not numbers."""
    workload = header.workload
    if workload is None or workload.kind != "public" or not workload.options:
        return DEFAULT_BLOCK_SIZE
    options = workload.options
    try:
        scaled = (Fraction(str(options.get("block_size", DEFAULT_BLOCK_SIZE)))
                  * Fraction(str(options.get("token_scale", 1))))
    except (ValueError, ZeroDivisionError):  # a header is untrusted input
        return DEFAULT_BLOCK_SIZE
    return max(1, int(scaled + Fraction(1, 2)))


def in_order_of_first_appearance(chains: list[list[int]]) -> list[list[int]]:
    """The same ids renumbered from 0 in order of first appearance."""
    ids: dict[int, int] = {}
    return [[ids.setdefault(h, len(ids)) for h in chain] for chain in chains]


def trace_requests(path: str, block_size: Optional[int] = None) -> tuple[list[ExportedRow], Optional[float]]:
    """Every generate input of a trace, in arrival order, with its output
    length from its finish and (given a block size) its prompt's block ids;
    and the recording's iteration_ms, if it had one. Prompts are not kept."""
    rows: list[ExportedRow] = []
    blocks = BlockIds(block_size) if block_size else None
    with TraceReader(path) as reader:
        workload = reader.header.workload
        iteration_ms = None
        if workload is not None and workload.kind == "public" and workload.options:
            iteration_ms = workload.options.get("iteration_ms")
        for record in reader.iterations():
            arrivals = record.arrivals if len(record.arrivals) == len(record.inputs) else None
            for k, item in enumerate(record.inputs):
                if type(item) is GenerateInput:
                    ids = item.input_ids or b""
                    rows.append(ExportedRow(item.rid, record.i, len(ids) // 4,
                                            blocks.chain(ids) if blocks else [],
                                            ms=arrivals[k] if arrivals is not None else record.ms))
            for finished in record.finished:
                req, output_len = finished[0], finished[2]
                if 0 <= req < len(rows) and rows[req].output_len is None:
                    rows[req].output_len = int(output_len)
    return rows, iteration_ms


def _number(x: float):
    return int(x) if float(x).is_integer() else round(x, 6)


def export(trace: str, output: str, *, fmt: str = "mooncake", block_size: Optional[int] = None,
           iteration_ms: Optional[float] = None) -> Exported:
    """`block_size` None: default_block_size of the trace's header."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    if block_size is None:
        with TraceReader(trace) as reader:
            block_size = default_block_size(reader.header)
    if block_size < 1:
        raise ValueError("--block-size must be at least 1")
    rows, recorded_ms = trace_requests(trace, block_size if fmt == "mooncake" else None)
    done = [r for r in rows if r.output_len is not None]
    times = [r.ms for r in done if r.ms is not None]
    if iteration_ms is None and done and len(times) == len(done):
        step = None
        arrivals = [t - times[0] for t in times]
    else:
        step = iteration_ms if iteration_ms is not None else (recorded_ms or DEFAULT_ITERATION_MS)
        arrivals = [(r.iteration - done[0].iteration) * step for r in done]
    chains = in_order_of_first_appearance([r.chain for r in done])
    directory = os.path.dirname(os.path.abspath(output))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(output) + ".")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            if fmt == "mooncake":
                for row, chain, arrival in zip(done, chains, arrivals):
                    f.write(json.dumps({"timestamp": _number(arrival),
                                        "input_length": row.input_len,
                                        "output_length": row.output_len, "hash_ids": chain}) + "\n")
            else:
                writer = csv.writer(f)
                writer.writerow(["arrival_ms", "prompt_tokens", "completion_tokens"])
                for row, arrival in zip(done, arrivals):
                    writer.writerow([_number(arrival), row.input_len, row.output_len])
        os.replace(tmp, output)
    except BaseException:
        os.unlink(tmp)
        raise
    return Exported(rows=len(done), unfinished=len(rows) - len(done), iteration_ms=step)
