"""Replay, from the side of the process that starts the engine: rebuild the
engine a trace was recorded on, then run the feeder script in it."""

from __future__ import annotations

import os
from typing import Any, Optional

from sgl_replay.engine import DEFAULT_ENGINE_ARGS, Engine, EngineConfig
from sgl_replay.record.runner import run_capture

# Pool sizes the scheduler derives from the device's memory unless told: a
# replay on another machine pins them to what the recording had, so the
# scheduler sees the same budget.
_PINNED_POOLS = ("max_total_tokens", "max_running_requests", "max_prefill_tokens",
                 "chunked_prefill_size", "page_size")

# What a device needs to run at all; a --device override brings its own.
DEVICE_ARGS: dict[str, dict[str, Any]] = {
    "cpu": {"device": "cpu", "attention_backend": "torch_native", "disable_cuda_graph": True},
    "cuda": {"device": "cuda", "attention_backend": "triton"},
}


def engine_config_for(header: dict, *, device: Optional[str] = None,
                      engine_args: Optional[dict] = None) -> EngineConfig:
    """The engine configuration that reproduces `header`'s run, with the
    caller's device and engine-argument overrides on top."""
    args = dict(header["engine_args"])
    if device is not None and device != args.get("device"):
        args.update(DEVICE_ARGS.get(device, {"device": device}))
    for name in _PINNED_POOLS:
        recorded = header["pools"].get(name)
        if name not in args:
            args[name] = -1 if (name == "chunked_prefill_size" and recorded is None) else recorded
    args = {k: v for k, v in args.items() if v is not None}
    args.update(engine_args or {})
    model_config = header["model"].get("config")
    if model_config is not None:
        args.pop("model_path", None)
    return EngineConfig(engine_args=args, env=dict(header["env"]), model_config=model_config)


def replay_trace(engine: Engine, trace: str, out: str, *, overrides: Optional[dict] = None) -> dict:
    """Replay `trace` on `engine`, writing what happened to `out`; returns the
    observed trace's end record."""
    job = {"trace": os.path.abspath(trace),
           "source": {"kind": "replay", "trace": os.path.abspath(trace), "overrides": overrides or {}}}
    return run_capture(engine, "sgl_replay.replay.feeder:replay", job, out)


__all__ = ["DEFAULT_ENGINE_ARGS", "engine_config_for", "replay_trace"]
