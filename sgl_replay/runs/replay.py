"""Replaying a trace, from the process that drives the engine: the engine
configuration that reproduces a trace's run, and the replay capture on it.

A trace is untrusted input: the engine is built from sgl-replay's own
embedded configuration, the device the caller asks for, and only the
settings of the header that decide scheduling (trace/format.py's
SCHEDULING_ARGS and SCHEDULING_ENV); the caller's --engine-arg go on top.
"""

from __future__ import annotations

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
_ENV_VALUE = re.compile(r"[A-Za-z0-9_.+-]{0,64}")
# The embedded model's config keys a trace may set, with their ceilings.
_MODEL_LIMITS = {"n_embd": 4096, "n_head": 64, "n_layer": 16, "n_positions": 1 << 20, "n_ctx": 1 << 20,
                 "vocab_size": 1 << 20, "bos_token_id": 1 << 20, "eos_token_id": 1 << 20}


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay takes from a header, and what it leaves out."""

    engine_args: dict[str, Any]
    env: dict[str, str]
    ignored_args: tuple[str, ...]
    ignored_env: tuple[str, ...]


def replay_plan(header: Header) -> ReplayPlan:
    args = {k: v for k, v in header.engine_args.items()
            if k in SCHEDULING_ARGS and v != REDACTED and _plain_scalar(v)}
    for name in _PINNED_POOLS:
        recorded = getattr(header.pools, name)
        if name not in args:
            args[name] = -1 if (name == "chunked_prefill_size" and recorded is None) else recorded
    args = {k: v for k, v in args.items() if v is not None}
    recorded_env = {**header.env_inherited, **header.env}
    env = {k: v for k, v in recorded_env.items()
           if k in SCHEDULING_ENV and isinstance(v, str) and _ENV_VALUE.fullmatch(v)}
    return ReplayPlan(args, env,
                      tuple(sorted(k for k in header.engine_args if k not in args)),
                      tuple(sorted(k for k in recorded_env if k not in env)))


def _plain_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float)) or (
        isinstance(value, str) and len(value) <= 64)


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
                        model_config=_model_config(header))


def _model_config(header: Header) -> dict:
    """The embedded model's config.json for the trace (as recorded, or sized
    to a captured model's vocabulary and context), checked to be one that
    sgl-replay writes: a GPT-2 architecture of bounded size."""
    recorded = embedded_config_for(header.model)
    unknown = set(recorded) - set(EMBEDDED_MODEL_CONFIG)
    if unknown or recorded.get("architectures") != EMBEDDED_MODEL_CONFIG["architectures"]:
        raise TraceError(f"the trace's model config is not one sgl-replay writes "
                         f"({', '.join(sorted(unknown)) or recorded.get('architectures')})")
    for key, limit in _MODEL_LIMITS.items():
        value = recorded.get(key, 0)
        values = value if key == "eos_token_id" and isinstance(value, list) and len(value) <= 64 else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= limit for v in values):
            raise TraceError(f"the trace's model config has {key}={value!r} (at most {limit})")
    if recorded.get("model_type") != EMBEDDED_MODEL_CONFIG["model_type"]:
        raise TraceError(f"the trace's model config has model_type={recorded.get('model_type')!r}")
    if recorded.get("torch_dtype") not in ("float32", "bfloat16", "float16"):
        raise TraceError(f"the trace's model config has torch_dtype={recorded.get('torch_dtype')!r}")
    return dict(recorded)


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
