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
request asked for. Output ids recorded by a capture are replaced with their
prompts (a later prompt that continues an earlier conversation still shares
it), and their finish records' hashes are recomputed; a recording whose
outputs came from the token oracle keeps them (the oracle answers by rid and
position, not by content). Credential settings in the header are written as
<redacted> once more (older traces), and the header says `redacted`. rids,
stop strings and other request fields are kept.

Reads the whole trace into memory (its token ids are what the trie holds).
"""

from __future__ import annotations

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
        self.reserved = reserved
        self.free = [t for t in range(vocab_size) if t not in reserved]
        self.nodes: dict[tuple[int, int], tuple[int, int]] = {}  # (node, original) -> (node, synthetic)
        self.children: dict[int, int] = {}  # node -> distinct non-reserved children so far

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
                    if k >= len(self.free):
                        raise TraceError(f"cannot redact: more than {len(self.free)} different tokens follow "
                                         f"one prefix (the vocabulary's unreserved ids)")
                    self.children[node] = k + 1
                    synthetic = self.free[k]
                hit = self.nodes[key] = (len(self.nodes), synthetic)
            node = hit[0]
            out.append(hit[1])
        return out


def _reserved(header: Header, records: list[Iteration]) -> set[int]:
    reserved = {0, 1, 2}
    reserved.update(header.model.eos_token_ids or ())
    config = header.model.config or {}
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        value = config.get(key)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int):
                reserved.add(v)
    for record in records:
        for item in record.inputs:
            if item.get("type") == "generate":
                stop = (item.get("sampling") or {}).get("stop_token_ids") or ()
                reserved.update(t for t in stop if isinstance(t, int))
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
    with TraceReader(trace) as reader:
        records = list(reader.iterations())
        header, end = reader.header, reader.end
    if end is None:
        raise TraceError(f"{trace}: has no end record (seal it first: sgl-replay seal)")
    vocab = header.model.vocab_size or (header.model.config or {}).get("vocab_size") or EMBEDDED_VOCAB
    trie = TokenTrie(int(vocab), _reserved(header, records))
    prompts: dict[int, list[int]] = {}  # request number -> original prompt
    outputs: dict[int, list[int]] = {}  # request number -> original output (captures)
    for record in records:
        for item in record.inputs:
            if item.get("type") == "generate":
                ids = item.get("input_ids")
                prompts[len(prompts)] = unpack_ids(ids) if ids is not None else []
        for req, packed in record.outputs:
            outputs[req] = unpack_ids(packed)
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
            for record in _rewritten(records, new_prompts, new_outputs):
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


def _rewritten(records: list[Iteration], prompts: dict[int, list[int]],
               outputs: dict[int, list[int]]) -> Iterator[Iteration]:
    req = 0
    for record in records:
        changes: dict = {}
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
        yield msgspec.structs.replace(record, **changes) if changes else record

