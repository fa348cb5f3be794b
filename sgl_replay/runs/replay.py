"""Replaying a trace, from the process that drives the engine: the engine
configuration that reproduces a trace's run, and the replay capture on it.

A trace is untrusted input: the engine is built from sgl-replay's own
embedded configuration, the device the caller asks for, and only the
settings of the header that decide scheduling (trace/format.py's
SCHEDULING_ARGS and SCHEDULING_ENV); the caller's --engine-arg go on top.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Optional

import msgspec

from sgl_replay.job import REDACTED, REPLAY_SCRIPT
from sgl_replay.runs.capture import run_capture
from sgl_replay.runs.embedded_model import EMBEDDED_MODEL_CONFIG, embedded_config_for
from sgl_replay.runs.engine import DEVICE_ARGS, Engine, EngineConfig, device_args
from sgl_replay.timing.model import CostModel
from sgl_replay.trace.format import (SCHEDULING_ARG_LIMITS, SCHEDULING_ARGS, SCHEDULING_ENV, End, Header,
                                     Source)
from sgl_replay.trace.reader import TraceError

# Pool sizes the scheduler derives from the device's memory unless told: a
# replay on another machine pins them to what the recording had, so the
# scheduler sees the same budget.
_PINNED_POOLS = ("max_total_tokens", "max_running_requests", "max_prefill_tokens",
                 "chunked_prefill_size", "page_size")
# What the environment text of each type may be (sglang's EnvBool words).
_ENV_TEXT = {int: re.compile(r"-?[0-9]{1,19}"), float: re.compile(r"-?([0-9]{1,20}(\.[0-9]{0,20})?|\.[0-9]{1,20})"
                                                                   r"([eE][-+]?[0-9]{1,2})?"),
             bool: re.compile(r"(?i:true|1|yes|y|false|0|no|n)"), str: re.compile(r"[A-Za-z0-9_.+-]{0,64}")}
# Request slots sglang gives the token table when max_running_requests is
# not set (its CPU ceiling; a replay pins the recorded value when there is one).
_DEFAULT_REQUEST_SLOTS = 4096
# The share of this machine's memory a replay's model may ask for.
_MODEL_MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay takes from a header, and what it leaves out."""

    engine_args: dict[str, Any]
    env: dict[str, str]
    ignored_args: tuple[str, ...]
    ignored_env: tuple[str, ...]


def replay_plan(header: Header) -> ReplayPlan:
    """TraceError for an allow-listed setting whose value is not of its type."""
    args = {k: v for k, v in header.engine_args.items() if k in SCHEDULING_ARGS and v != REDACTED}
    for name, value in args.items():
        if not _of_type(value, SCHEDULING_ARGS[name]):
            raise TraceError(f"the trace's engine argument {name} is {repr(value)[:40]}, not "
                             f"{SCHEDULING_ARGS[name].__name__}")
    for name in _PINNED_POOLS:
        recorded = getattr(header.pools, name)
        if name not in args:
            args[name] = -1 if (name == "chunked_prefill_size" and recorded is None) else recorded
    args = {k: v for k, v in args.items() if v is not None}
    recorded_env = {**header.env_inherited, **header.env}
    env = {k: v for k, v in recorded_env.items() if k in SCHEDULING_ENV and v != REDACTED}
    for name, value in env.items():
        if not (type(value) is str and _ENV_TEXT[SCHEDULING_ENV[name]].fullmatch(value)):
            raise TraceError(f"the trace's engine environment has {name}={repr(value)[:40]}, not "
                             f"{SCHEDULING_ENV[name].__name__} text")
    return ReplayPlan(args, env,
                      tuple(sorted(k for k in header.engine_args if k not in args)),
                      tuple(sorted(k for k in recorded_env if k not in env)))


def _of_type(value: Any, kind: type) -> bool:
    if value is None:
        return True
    if kind is float and type(value) in (int, float):
        return math.isfinite(value)
    if type(value) is not kind:
        return False
    return not isinstance(value, str) or len(value) <= 64


def engine_config_for(header: Header, *, device: Optional[str] = None,
                      engine_args: Optional[dict] = None) -> EngineConfig:
    """The engine configuration that reproduces `header`'s run: the embedded
    engine on `device` (default: the recorded device type, if sgl-replay
    knows it and this machine has it, else cpu) with the header's scheduling settings, and the
    caller's engine-argument overrides on top. TraceError when the header
    asks for more than a replay allows."""
    if header.not_replayable:
        raise TraceError(f"not replayable: {'; '.join(header.not_replayable)}")
    if header.segment is not None and header.segment.index > 0:
        # its batches name requests that arrived in earlier links
        raise TraceError(f"link {header.segment.index} of recording {header.segment.run}: a replay starts at "
                         f"the recording's first link (pass the directory, or DIR/{header.segment.run})")
    plan = replay_plan(header)
    for name, limit in SCHEDULING_ARG_LIMITS.items():
        value = plan.engine_args.get(name)
        if isinstance(value, (int, float)) and value > limit and name not in (engine_args or {}):
            raise TraceError(f"the trace asks for {name}={value}, more than a replay allows ({limit}); "
                             f"pass --engine-arg {name}=N to replay with another value")
    # the recorded device where this machine has one (a GPU trace on a laptop replays on CPU)
    recorded_device = header.device.type if header.device.type in DEVICE_ARGS else "cpu"
    if recorded_device == "cuda" and not os.path.exists("/proc/driver/nvidia/version"):
        recorded_device = "cpu"
    args = {**device_args(device or recorded_device), **plan.engine_args, **(engine_args or {})}
    config = EngineConfig.embedded(engine_args=args, env=plan.env)
    return EngineConfig(engine_args=config.engine_args, env=config.env,
                        model_config=_model_config(header, config.engine_args))


def _model_config(header: Header, engine_args: dict) -> dict:
    """The embedded model's config.json for the trace: sgl-replay's own model
    (EMBEDDED_MODEL_CONFIG: architecture, width, layers, dtype), with only
    what the trace's token ids and positions need taken from the trace: the
    vocabulary size, the context length and the EOS ids (as recorded on the
    embedded model, or a captured model's). TraceError for values that are
    not ids, or a model too large for this machine's memory."""
    recorded = embedded_config_for(header.model)
    config = dict(EMBEDDED_MODEL_CONFIG)
    vocab, context, eos = (recorded.get(key, config[key]) for key in ("vocab_size", "n_positions", "eos_token_id"))
    if not (_count(vocab) and vocab >= 3):  # the embedded tokenizer's <unk>, <s>, </s>
        raise TraceError(f"the trace's model has vocab_size={repr(vocab)[:40]} (a count of 3 or more)")
    if not _count(context):
        raise TraceError(f"the trace's model has context length {repr(context)[:40]} (a count)")
    ids = eos if type(eos) is list and 0 < len(eos) <= 64 else [eos]
    if not all(_count(i, zero=True) and i < vocab for i in ids):
        raise TraceError(f"the trace's model has eos_token_id={repr(eos)[:80]} (ids below vocab_size={vocab})")
    slots = engine_args.get("max_running_requests")
    slots = slots if _count(slots) else _DEFAULT_REQUEST_SLOTS
    # float32 token and position embeddings (the rest of the model is small),
    # and sglang's token table: a row of int32 per request slot, context long
    needed = 4 * ((vocab + context) * config["n_embd"] + slots * (context + 4))
    budget = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * _MODEL_MEMORY_SHARE)
    if needed > budget:
        raise TraceError(f"the trace's model (vocabulary {vocab}, context {context}, {slots} request slots) "
                         f"needs about {needed / 2**30:.1f} GiB, more than a replay may take here "
                         f"({budget / 2**30:.1f} GiB); pass --engine-arg max_running_requests=N for fewer slots")
    config.update(vocab_size=vocab, n_positions=context, n_ctx=context, eos_token_id=eos)
    return config


def _count(value: Any, *, zero: bool = False) -> bool:
    return type(value) is int and value >= (0 if zero else 1)


def replay_trace(engine: Engine, trace: str, out: str, *, overrides: Optional[dict] = None,
                 timeout_s: Optional[float] = None, cost: Optional[CostModel] = None) -> End:
    """Replay `trace` on `engine`, writing what happens to `out`; returns the
    observed trace's end record. Past `timeout_s` the replay stops, sealed.
    With `cost`, on the modelled clock: each input arrives at its recorded
    time and the clock advances by `cost`'s length of each iteration
    (overrides["max_in_flight"]: a closed-loop client's limit)."""
    trace = os.path.abspath(trace)
    source = Source(kind="replay", trace=trace, overrides=overrides or {})
    return run_capture(engine, REPLAY_SCRIPT, out, source=source, trace=trace, timeout_s=timeout_s,
                       cost=None if cost is None else msgspec.to_builtins(cost))
