"""A trace that can be shared: every token id replaced (`sgl-replay redact`).

What a scheduler does with tokens is compare them: the radix cache matches
prompts (and the outputs cached after them) token by token, and a request
finishes on an EOS or stop token id. So the replacement keeps exactly that
and nothing else. Every request's sequence (its prompt, then its recorded
output where a capture kept one) is a path in a trie; each trie node gets a
synthetic id, the k-th distinct child of a node the k-th id of the
vocabulary that is not reserved. Two sequences then share exactly as long a
prefix as before, at token granularity, and every length is kept. Reserved
ids stay themselves: 0..2, the model's EOS ids and every stop_token_id a
request asked for. Output ids recorded by a capture are replaced together
with their prompts (a later prompt that continues an earlier conversation
still shares them), and their finish records' hashes are recomputed; a recording whose
outputs came from the token oracle keeps them (the oracle answers by rid and
position, not by content). Credential settings in the header are written as
<redacted> once more (older traces), and the header says `redacted`. rids,
stop strings and other request fields are kept.

Two passes over the trace: the first collects every sequence (the token ids
are what the trie holds), the second rewrites the records as they stream.
A field of the wrong shape in a record is a TraceError, like any bad trace.
"""

from __future__ import annotations

import bisect
import os
import tempfile
from typing import Iterator

import msgspec

from sgl_replay.scheduler.header import redact as redact_setting, redact_argv
from sgl_replay.trace.format import Header, Iteration, hash_ids, pack_ids, unpack_ids
from sgl_replay.trace.reader import TraceError, TraceReader
from sgl_replay.trace.writer import TraceWriter

EMBEDDED_VOCAB = 1024  # the embedded model's, for a trace whose header names none


class TokenTrie:
    """Original sequences -> synthetic ones with the same prefix relation."""

    def __init__(self, vocab_size: int, reserved: set[int]) -> None:
        self.vocab_size = vocab_size
        self.reserved = reserved
        self._reserved_sorted = sorted(reserved)
        self.nodes: dict[tuple[int, int], tuple[int, int]] = {}  # (node, original) -> (node, synthetic)
        self.children: dict[int, int] = {}  # node -> distinct non-reserved children so far

    def _kth_free(self, k: int) -> int:
        """The k-th (from 0) id that is not reserved: the least t with k + 1
        free ids in 0..t (no vocabulary-sized list: a header names any size)."""
        lo, hi = k, k + len(self._reserved_sorted)
        while lo < hi:
            mid = (lo + hi) // 2
            if mid + 1 - bisect.bisect_right(self._reserved_sorted, mid) > k:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def map(self, ids: list[int]) -> list[int]:
        out, node = [], -1
        for token in ids:
            key = (node, token)
            hit = self.nodes.get(key)
            if hit is None:
                if token in self.reserved:
                    synthetic = token
                else:
                    k = self.children.get(node, 0)
                    synthetic = self._kth_free(k)
                    if synthetic >= self.vocab_size:
                        raise TraceError(f"cannot redact: more than {k} different tokens follow one "
                                         f"prefix (the vocabulary's unreserved ids)")
                    self.children[node] = k + 1
                hit = self.nodes[key] = (len(self.nodes), synthetic)
            node = hit[0]
            out.append(hit[1])
        return out


# What a field of the wrong shape in a hostile record raises here.
_BAD_RECORD = (ValueError, TypeError, KeyError, AttributeError, IndexError)


def _collect(trace: str) -> tuple[Header, object, dict, dict, set]:
    """First pass: header, end, every prompt and recorded output by request
    number, and the ids that requests stop on."""
    prompts: dict[int, list[int]] = {}  # request number -> original prompt
    outputs: dict[int, list[int]] = {}  # request number -> original output (captures)
    stops: set[int] = set()
    with TraceReader(trace) as reader:
        for record in reader.iterations():
            try:
                for item in record.inputs:
                    if item.get("type") == "generate":
                        ids = item.get("input_ids")
                        prompts[len(prompts)] = unpack_ids(ids) if ids is not None else []
                        stop = (item.get("sampling") or {}).get("stop_token_ids") or ()
                        stops.update(t for t in stop if isinstance(t, int))
                for req, packed in record.outputs:
                    if req not in prompts:
                        raise ValueError(f"output of request {req}, which has no input")
                    outputs[req] = unpack_ids(packed)
            except _BAD_RECORD as e:
                raise TraceError(f"{trace}: iteration {record.i}: {type(e).__name__}: {e}") from None
        return reader.header, reader.end, prompts, outputs, stops


def _reserved(header: Header, stops: set[int]) -> set[int]:
    reserved = {0, 1, 2, *stops}
    reserved.update(header.model.eos_token_ids or ())
    config = header.model.config or {}
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        value = config.get(key)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int):
                reserved.add(v)
    return reserved


def _redacted_header(header: Header) -> Header:
    def settings(values: dict) -> dict:
        return {k: redact_setting(k, v) for k, v in values.items()}

    return msgspec.structs.replace(
        header, engine_args=settings(header.engine_args), server_args=settings(header.server_args),
        env=settings(header.env), env_inherited=settings(header.env_inherited),
        argv=redact_argv(header.argv) if header.argv else header.argv, segment=None, redacted=True)


def redact(trace: str, output: str) -> dict:
    """Write `trace` (a file, or a segment chain) redacted to `output`,
    atomically. Returns counts: requests, tokens, outputs."""
    header, end, prompts, outputs, stops = _collect(trace)
    if end is None:
        raise TraceError(f"{trace}: has no end record (seal it first: sgl-replay seal)")
    vocab = header.model.vocab_size or (header.model.config or {}).get("vocab_size") or EMBEDDED_VOCAB
    if type(vocab) is not int or vocab <= 3:
        raise TraceError(f"{trace}: the header's vocabulary size {vocab!r} is not a usable one")
    trie = TokenTrie(vocab, _reserved(header, stops))
    new_prompts: dict[int, list[int]] = {}
    new_outputs: dict[int, list[int]] = {}
    for req, prompt in prompts.items():  # arrival order: the numbering does not depend on dict order
        full = trie.map(prompt + outputs.get(req, []))
        new_prompts[req] = full[:len(prompt)]
        if req in outputs:
            new_outputs[req] = full[len(prompt):]
    directory = os.path.dirname(os.path.abspath(output))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(output) + ".")
    os.close(fd)
    try:
        writer = TraceWriter(tmp, _redacted_header(header))
        try:
            with TraceReader(trace) as reader:
                for record in _rewritten(trace, reader.iterations(), new_prompts, new_outputs):
                    writer.write(record)
        finally:
            writer.close(end)
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {"requests": len(prompts), "tokens": sum(map(len, prompts.values())) + sum(map(len, outputs.values())),
            "outputs": len(outputs)}


def _rewritten(trace: str, records: Iterator[Iteration], prompts: dict[int, list[int]],
               outputs: dict[int, list[int]]) -> Iterator[Iteration]:
    req = 0
    for record in records:
        changes: dict = {}
        try:
            if any(item.get("type") == "generate" for item in record.inputs):
                inputs = []
                for item in record.inputs:
                    if item.get("type") == "generate":
                        if item.get("input_ids") is not None:
                            item = {**item, "input_ids": pack_ids(prompts[req])}
                        req += 1
                    inputs.append(item)
                changes["inputs"] = inputs
            if record.outputs:
                changes["outputs"] = [[n, pack_ids(outputs[n])] for n, _ in record.outputs]
            if any(f[0] in outputs for f in record.finished):
                changes["finished"] = [[n, reason, length, hash_ids(outputs[n]) if n in outputs else digest]
                                       for n, reason, length, digest in record.finished]
        except _BAD_RECORD as e:
            raise TraceError(f"{trace}: iteration {record.i}: {type(e).__name__}: {e}") from None
        yield msgspec.structs.replace(record, **changes) if changes else record
