"""Workload specs: what names a workload, and what the parent needs to know
of it before the engine starts.

A workload is named by a spec: a built-in name, `serve` (HTTP traffic from any
client), `module:function` (a user's script), or a public serving trace
(`mooncake:FILE`, `azure:FILE`, `burstgpt:FILE`). `parse` is the one reader of
that spec; the parent side calls it to fill the trace header's Workload, and
sgl_replay.scheduler.workloads turns that Workload into the running script.

Each built-in carries the engine arguments its shape needs (a small chunk
size, a small KV pool...); arguments given on the command line win.

This module imports nothing of sglang, so the CLI can list workloads quickly.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from sgl_replay.trace.format import Workload as WorkloadSpec
from sgl_replay.traffic import public_traces


@dataclass(frozen=True)
class Builtin:
    """A built-in workload as the parent sees it; its script is in
    sgl_replay.scheduler.workloads, under the same name."""
    name: str
    description: str
    engine_args: dict = field(default_factory=dict)


# Workloads share engine settings where their shapes allow, so that a test
# suite or a golden run starts few engines: the default (chunk 256), a small
# KV pool, and two slots with priority scheduling.
KV_PRESSURE_ARGS = {"max_total_tokens": 1024}
TWO_SLOTS_ARGS = {"enable_priority_scheduling": True, "default_priority_value": 0,
                  "max_running_requests": 2}

BUILTIN: dict[str, Builtin] = {w.name: w for w in (
    Builtin("chunked_prefill", "one 700-token prompt through 256-token chunked prefill"),
    Builtin("prefix_reuse", "three prompts sharing a 128-token prefix; the radix cache serves it"),
    Builtin("concurrent_decode", "64 concurrent requests, prompts 20..320, 8..31 new tokens"),
    Builtin("abort_mid_decode", "four decoding requests, one aborted after 6 tokens"),
    Builtin("pause_retract", "four decoding requests paused (retract) for 5 iterations, then continued"),
    Builtin("pause_in_place", "four decoding requests paused (in_place) for 5 iterations, then continued"),
    Builtin("kv_pressure", "16 requests that outgrow a 1024-token KV pool and force retraction",
            KV_PRESSURE_ARGS),
    Builtin("priority", "priority scheduling with two slots: a high-priority request overtakes",
            TWO_SLOTS_ARGS),
    Builtin("running_cap", "12 requests through max_running_requests=2", TWO_SLOTS_ARGS),
    Builtin("flush_between_waves", "three waves of four requests with flush_cache between them"),
)}


def parse(spec: str, *, duration_s: Optional[float] = None, idle_s: Optional[float] = None,
          description: Optional[str] = None, options: Optional[dict] = None) -> WorkloadSpec:
    """The Workload a spec names; ValueError (a one-line message) when it
    names none, or when serve's limits are missing or given to another kind.

    `mooncake:FILE`, `azure:FILE` and `burstgpt:FILE` (optionally
    `?limit=20&token_scale=0.02...`) name a public serving trace: the file is
    read and checked here (a malformed row is the ValueError); `options`
    (limit, start_ms, time_scale, token_scale, block_size, iteration_ms,
    clock) win over the spec's."""
    public = public_traces.split_spec(spec)
    if public is not None:
        if duration_s is not None or idle_s is not None:
            raise ValueError("a duration and an idle timeout apply to `serve` only")
        fmt, path, spec_options = public
        given = {**spec_options, **{k: v for k, v in (options or {}).items() if v is not None}}
        imported = public_traces.load(fmt, os.path.abspath(path), given)
        return WorkloadSpec(kind="public", name=spec, path=imported.path, sha256=imported.sha256,
                            options=imported.options,
                            description=description or public_traces.description(imported))
    if options:
        kinds = ", ".join(f"{f}:FILE" for f in public_traces.FORMATS)
        raise ValueError(f"trace import options apply to {kinds} only")
    if spec == "serve":
        if duration_s is None and idle_s is None:
            raise ValueError("serve needs a duration and/or an idle timeout")
        return WorkloadSpec(kind="serve", duration_s=duration_s, idle_s=idle_s, description=description)
    if duration_s is not None or idle_s is not None:
        raise ValueError("a duration and an idle timeout apply to `serve` only")
    if spec in BUILTIN:
        return WorkloadSpec(kind="builtin", name=spec, description=description or BUILTIN[spec].description)
    module, sep, attr = spec.partition(":")
    if sep and module and attr:
        return WorkloadSpec(kind="script", name=spec, description=description)
    raise ValueError(f"unknown workload {spec!r}; built-in workloads: {', '.join(BUILTIN)}; "
                     f"or `serve`, or module:function, or mooncake:FILE, azure:FILE, burstgpt:FILE")


def engine_args_of(workload: WorkloadSpec) -> dict:
    """The engine arguments a built-in's shape needs (none for the others)."""
    return dict(BUILTIN[workload.name].engine_args) if workload.kind == "builtin" and workload.name else {}


def resolve(dotted: str) -> Any:
    """`module:attr.attr` to the object it names (scripts, serve clients)."""
    module, _, attr = dotted.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def by_wall_clock(workload: WorkloadSpec) -> bool:
    """Whether `workload`'s inputs arrive when the wall clock says (serve
    mode, a public trace with clock "wall"), not at scripted iterations."""
    return workload.kind == "serve" or (workload.kind == "public" and (workload.options or {}).get("clock") == "wall")
