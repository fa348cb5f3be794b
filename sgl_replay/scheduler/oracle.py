"""Forcing a capture's recorded output tokens during its replay.

A capture of a plain server sampled for real; its trace holds every finished
request's output token ids ("outputs"). The embedded engine samples with
sglang's token oracle, which asks `oracle.expected_tokens(generalized_req_ids,
positions)` for each row: the rid's blake2b-8 hash (sglang's
`_stable_hash_str_to_i64`) and the absolute position of the new token, so
output_ids[k] of a request with a prompt of n tokens is asked for at n + k
(prefill, decode and the re-prefill after a retraction alike).

In engines sgl-replay starts, an AFTER hook on sglang's
`install_token_oracle_from_env` puts a RecordedOracle in front of the hash
oracle it installed. Its table is empty (the hash oracle answers everything,
as before) except while the replay script replays a capture (`use`); keys it
does not hold (warmup, health checks, non-final prefill chunks, requests that
had not finished when the capture ended) fall back to the hash oracle.
"""

from __future__ import annotations

import hashlib
from typing import Optional

INSTALL_TARGET = "sglang.srt.kv_canary.token_oracle.install.install_token_oracle_from_env"

# The RecordedOracle installed in this process, if any.
ORACLE: Optional["RecordedOracle"] = None


def rid_hash(rid: str) -> int:
    """sglang's per-request id for the token oracle (forward_batch_info.py)."""
    return int.from_bytes(hashlib.blake2b(rid.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


class RecordedOracle:
    """(rid hash, position) -> recorded token; the fallback oracle elsewhere."""

    def __init__(self, fallback) -> None:
        self.fallback = fallback
        self.table: dict[tuple[int, int], int] = {}

    def expected_tokens(self, *, generalized_req_ids, positions):
        out = self.fallback.expected_tokens(generalized_req_ids=generalized_req_ids, positions=positions)
        table = self.table
        if not table:
            return out
        ids, pos = generalized_req_ids.tolist(), positions.tolist()
        hits = [(k, t) for k, t in enumerate(map(table.get, zip(ids, pos))) if t is not None]
        if hits:
            out = out.clone()
            for k, t in hits:
                out[k] = t
        return out


def after_install(result, *args, **kwargs):
    """AFTER hook on install_token_oracle_from_env: wrap the oracle."""
    global ORACLE
    if result is not None and not isinstance(result.oracle, RecordedOracle):
        ORACLE = RecordedOracle(result.oracle)
        result.oracle = ORACLE
    return result


def table_of(trace_records, prompt_lens: dict[int, tuple[str, int]]) -> dict[tuple[int, int], int]:
    """The forced tokens of a capture: `prompt_lens` maps request numbers to
    (rid, prompt length); `trace_records` are (req, packed output ids)."""
    from sgl_replay.trace.format import unpack_ids

    table: dict[tuple[int, int], int] = {}
    for req, packed in trace_records:
        rid, n = prompt_lens[req]
        h = rid_hash(rid)
        for k, token in enumerate(unpack_ids(packed)):
            table[(h, n + k)] = token
    return table


class use:
    """`with use(table):` the oracle forces `table` (a replay of a capture)."""

    def __init__(self, table: dict) -> None:
        self.table = table

    def __enter__(self) -> None:
        if self.table:
            if ORACLE is None:
                raise RuntimeError("sgl-replay: this trace's recorded output tokens need the token oracle "
                                   "(sampling_backend token_oracle), which this engine does not use")
            ORACLE.table = self.table

    def __exit__(self, *exc) -> None:
        if ORACLE is not None:
            ORACLE.table = {}
