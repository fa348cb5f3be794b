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

Two passes over the trace: the first collects the recorded outputs and the
stop ids, the second maps each prompt (with its output) through the trie as
the records stream, and rewrites them. Memory: 4 bytes per distinct prefix
token and per recorded output token, at most MAX_TRIE_TOKENS of each.
A field of the wrong shape in a record is a TraceError, like any bad trace.
"""

from __future__ import annotations

import bisect
import os
import tempfile
from typing import Optional

import msgspec

from sgl_replay.credentials import redact as redact_setting, redact_argv
from sgl_replay.trace.format import End, GenerateInput, Header, Iteration, hash_ids, pack_ids, unpack_ids
from sgl_replay.trace.reader import TraceError, TraceReader
from sgl_replay.trace.writer import TraceWriter

EMBEDDED_VOCAB = 1024  # the embedded model's, for a trace whose header names none


# The trie keeps 4 bytes per distinct prefix token; a trace with more
# (prompts and recorded outputs) is refused rather than exhaust memory.
MAX_TRIE_TOKENS = 1 << 28


class TokenTrie:
    """Original sequences -> synthetic ones with the same prefix relation.

    A radix tree over packed ids (int32 little-endian, as traces keep them):
    each node's edge is a span of one bytearray, so memory is 4 bytes per
    distinct prefix token plus a node per branch. Within an edge every token
    is its predecessor's only child so far: its synthetic id is the first
    free one (a reserved id stays itself). A node's k-th distinct
    non-reserved child, in order of first appearance, gets the k-th free id.
    Splitting an edge keeps every synthetic id already given out."""

    def __init__(self, vocab_size: int, reserved: set[int], max_tokens: Optional[int] = None) -> None:
        self.vocab_size = vocab_size
        self.reserved = reserved
        self._reserved_sorted = sorted(reserved)
        self.max_bytes = 4 * (max_tokens or MAX_TRIE_TOKENS)
        self.first_free = self._kth_free(0)
        self.store = bytearray()
        # per node: its edge's byte span in store, the synthetic id of the
        # edge's first token, its children by first original token, and its
        # distinct non-reserved children so far; node 0 is the root
        self.span: list[list[int]] = [[0, 0]]
        self.head: list[int] = [-1]
        self.children: list[dict[int, int]] = [{}]
        self.free_children: list[int] = [0]

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
        if lo >= self.vocab_size:
            raise TraceError(f"cannot redact: more than {k} different tokens follow one "
                             f"prefix (the vocabulary's unreserved ids)")
        return lo

    def _node(self, start: int, end: int, head: int, children: dict, free: int) -> int:
        self.span.append([start, end])
        self.head.append(head)
        self.children.append(children)
        self.free_children.append(free)
        return len(self.span) - 1

    def _synthetic_head(self, parent: int, token: int) -> int:
        if token in self.reserved:
            return token
        k = self.free_children[parent]
        self.free_children[parent] = k + 1
        return self._kth_free(k)

    def _inner(self, packed: bytes) -> list[int]:
        """Synthetic ids of tokens inside an edge."""
        reserved, free = self.reserved, self.first_free
        return [t if t in reserved else free for t in unpack_ids(packed)]

    def map(self, packed: bytes) -> list[int]:
        out: list[int] = []
        node, pos, n = 0, 0, len(packed)
        while pos < n:
            token = _token(packed, pos)
            child = self.children[node].get(token)
            if child is None:  # a new branch: the rest of the sequence is its edge
                start = len(self.store)
                if start + n - pos > self.max_bytes:
                    raise TraceError(f"cannot redact: more than {self.max_bytes // 4} distinct prefix "
                                     f"tokens (prompts and outputs) to keep apart")
                self.store += packed[pos:]
                head = self._synthetic_head(node, token)
                self.children[node][token] = self._node(start, len(self.store), head, {}, 0)
                out.append(head)
                out += self._inner(packed[pos + 4:])
                return out
            start, end = self.span[child]
            m = _common_bytes(self.store, start, end, packed, pos)
            out.append(self.head[child])
            out += self._inner(packed[pos + 4:pos + m])
            pos += m
            if start + m < end and pos < n:  # parts inside the edge: split it there
                rest = _token(self.store, start + m)
                free = 0 if rest in self.reserved else 1
                mid = self._node(start, start + m, self.head[child], {rest: child}, free)
                self.children[node][token] = mid
                self.span[child][0] = start + m
                self.head[child] = rest if rest in self.reserved else self.first_free
                child = mid
            node = child
        return out


def _token(packed, offset: int) -> int:
    return int.from_bytes(packed[offset:offset + 4], "little", signed=True)


def _common_bytes(store: bytearray, start: int, end: int, packed: bytes, pos: int) -> int:
    """Length in bytes (a multiple of 4) of the common prefix of
    store[start:end] and packed[pos:]."""
    limit = min(end - start, len(packed) - pos)
    done, step = 0, 4096
    with memoryview(store) as view:  # released before the store grows again
        while done < limit:
            size = min(step, limit - done)
            if view[start + done:start + done + size] == packed[pos + done:pos + done + size]:
                done += size
                continue
            while size > 4:  # the first differing 4-byte token within this chunk
                half = (size // 8) * 4
                if view[start + done:start + done + half] == packed[pos + done:pos + done + half]:
                    done += half
                    size -= half
                else:
                    size = half
            break
    return done


# What a field of the wrong shape in a hostile record raises here.
_BAD_RECORD = (ValueError, TypeError, KeyError, AttributeError, IndexError)


def _collect(trace: str) -> tuple[Header, Optional[End], dict[int, bytes], set[int]]:
    """First pass: header, end, every recorded output (packed) by request
    number, and the ids that requests stop on."""
    outputs: dict[int, bytes] = {}  # request number -> original output ids (captures)
    held = 0
    stops: set[int] = set()
    requests = 0
    with TraceReader(trace) as reader:
        for record in reader.iterations():
            try:
                for item in record.inputs:
                    if type(item) is GenerateInput:
                        requests += 1
                        stop = item.sampling.get("stop_token_ids") or ()
                        stops.update(t for t in stop if isinstance(t, int))
                for req, packed in record.outputs:
                    if not 0 <= req < requests:
                        raise ValueError(f"output of request {req}, which has no input")
                    if not isinstance(packed, bytes) or len(packed) % 4:
                        raise ValueError(f"output of request {req} is not packed token ids")
                    held += len(packed)
                    if held > 4 * MAX_TRIE_TOKENS:
                        raise TraceError(f"{trace}: cannot redact: more than {MAX_TRIE_TOKENS} "
                                         f"recorded output tokens")
                    outputs[req] = packed
            except _BAD_RECORD as e:
                raise TraceError(f"{trace}: iteration {record.i}: {type(e).__name__}: {e}") from None
        return reader.header, reader.end, outputs, stops


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
    header, end, outputs, stops = _collect(trace)
    if end is None:
        raise TraceError(f"{trace}: has no end record (seal it first: sgl-replay seal)")
    vocab = header.model.vocab_size or (header.model.config or {}).get("vocab_size") or EMBEDDED_VOCAB
    if type(vocab) is not int or vocab <= 3:
        raise TraceError(f"{trace}: the header's vocabulary size {vocab!r} is not a usable one")
    rewrite = _Rewrite(trace, TokenTrie(vocab, _reserved(header, stops)), outputs)
    directory = os.path.dirname(os.path.abspath(output))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(output) + ".")
    os.close(fd)
    try:
        writer = TraceWriter(tmp, _redacted_header(header))
        try:
            with TraceReader(trace) as reader:
                for record in reader.iterations():
                    writer.write(rewrite.record(record))
        finally:
            writer.close(end)
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {"requests": rewrite.requests, "tokens": rewrite.tokens, "outputs": len(outputs)}


class _Rewrite:
    """Second pass: each request's prompt, followed by its recorded output,
    mapped through the trie in arrival order (so the numbering is the
    trace's own); the new output kept, packed, until its records come."""

    def __init__(self, trace: str, trie: TokenTrie, outputs: dict[int, bytes]) -> None:
        self.trace, self.trie, self.outputs = trace, trie, outputs
        self.new_outputs: dict[int, tuple[bytes, int]] = {}  # request -> (packed ids, hash)
        self.requests = self.tokens = 0

    def _prompt(self, packed: bytes) -> bytes:
        req = self.requests
        output = self.outputs.get(req)
        full = self.trie.map(packed + output if output is not None else packed)
        self.tokens += len(full)
        prompt_len = len(packed) // 4
        if output is not None:
            ids = full[prompt_len:]
            self.new_outputs[req] = (pack_ids(ids), hash_ids(ids))
        return pack_ids(full[:prompt_len])

    def record(self, record: Iteration) -> Iteration:
        changes: dict = {}
        try:
            if any(type(item) is GenerateInput for item in record.inputs):
                inputs = []
                for item in record.inputs:
                    if type(item) is GenerateInput:
                        packed = item.input_ids
                        new = self._prompt(packed if packed is not None else b"")
                        if packed is not None:
                            item = msgspec.structs.replace(item, input_ids=new)
                        self.requests += 1
                    inputs.append(item)
                changes["inputs"] = inputs
            if record.outputs:
                changes["outputs"] = [[n, self.new_outputs[n][0]] for n, _ in record.outputs]
            if any(f[0] in self.new_outputs for f in record.finished):
                changes["finished"] = [(n, reason, length, self.new_outputs[n][1] if n in self.new_outputs
                                        else digest) for n, reason, length, digest in record.finished]
        except _BAD_RECORD as e:
            raise TraceError(f"{self.trace}: iteration {record.i}: {type(e).__name__}: {e}") from None
        return msgspec.structs.replace(record, **changes) if changes else record
