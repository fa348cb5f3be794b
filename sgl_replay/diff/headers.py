"""Whether two traces can be compared at all, from their headers: another
model, other scheduling knobs of the engine environment or another sampling
backend make the runs "not comparable"; other differences (device, versions, engine arguments,
pool sizes, the overlap schedule) are notes printed with the diff."""

from __future__ import annotations

from typing import Any

from sgl_replay.trace.format import SCHEDULING_ENV, Header

# Knobs the embedded engine sets for itself: not the capture's business.
EMBEDDED_ENGINE_ENV = ("SGLANG_KV_CANARY_ENABLE_TOKEN_ORACLE", "SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND")
# Engine arguments that name where a run lived, not how it scheduled.
_PLACE_ARGS = ("model_path", "port", "host")


def compare_headers(a: Header, b: Header) -> tuple[list[str], list[str]]:
    """(reasons the runs are not comparable, notes on other differences)."""
    blocking, notes = [], []
    # A capture of a real server replays on the embedded model with its
    # recorded tokens forced through the token oracle: what must match is
    # the vocabulary and context, not the model or the sampler.
    capture = any(h.workload is not None and h.workload.kind == "capture" for h in (a, b))
    if a.model.config is not None and b.model.config is not None:
        if a.model.config != b.model.config:
            blocking.append("different model config")
    elif a.model.config is None and b.model.config is None:
        if a.model.path != b.model.path:
            blocking.append(f"different model: {a.model.path} vs {b.model.path}")
    elif _vocab_and_context(a) != _vocab_and_context(b):
        blocking.append(f"different vocabulary or context: {_vocab_and_context(a)} vs {_vocab_and_context(b)}")
    else:
        notes.append(f"model: {a.model.path or 'embedded'} vs {b.model.path or 'embedded'} (same vocabulary "
                     f"and context)")
    for key in sorted(set(a.env) | set(b.env)):
        va, vb = a.env.get(key), b.env.get(key)
        if va != vb:  # a replay applies only the knobs that decide scheduling
            decides = key in SCHEDULING_ENV and not (capture and key in EMBEDDED_ENGINE_ENV)
            (blocking if decides else notes).append(f"engine environment {key}: {va!r} vs {vb!r}")
    if a.resolved.sampling_backend != b.resolved.sampling_backend:
        words = (f"sampling backend: {a.resolved.sampling_backend} vs {b.resolved.sampling_backend}")
        if capture:
            notes.append(words + " (the captured tokens are forced)")
        else:
            blocking.append("different " + words)
    oa, ob = a.resolved.overlap_schedule, b.resolved.overlap_schedule
    if oa != ob:
        notes.append(f"overlap schedule: {oa} vs {ob} (finishes show one iteration later with it on)")
    da, db = a.device, b.device
    if (da.type, da.name) != (db.type, db.name):
        notes.append(f"device: {da.type} {da.name} vs {db.type} {db.name}")
    for key in ("sglang", "torch"):
        va, vb = getattr(a.versions, key), getattr(b.versions, key)
        if va != vb:
            notes.append(f"{key} version: {va} vs {vb}")
    for key in sorted(set(a.engine_args) | set(b.engine_args)):
        if key in _PLACE_ARGS:
            continue
        # a replay pins pool sizes the recording let sglang derive: same value, no note
        va = a.engine_args.get(key, getattr(a.pools, key, None))
        vb = b.engine_args.get(key, getattr(b.pools, key, None))
        if va != vb:
            notes.append(f"engine arg {key}: {a.engine_args.get(key)!r} vs {b.engine_args.get(key)!r}")
    for key in sorted(a.pools.__struct_fields__):
        va, vb = getattr(a.pools, key), getattr(b.pools, key)
        if va != vb:
            notes.append(f"pool {key}: {va} vs {vb}")
    return blocking, notes


def _vocab_and_context(h: Header) -> tuple[Any, Any]:
    config = h.model.config
    if config is not None:
        return config.get("vocab_size"), config.get("n_positions")
    return h.model.vocab_size, h.model.context_length
