"""What the process that starts an engine hands to sgl-replay's code inside
that engine's scheduler, and the names both sides must agree on.

Imported on both sides of the process boundary (sgl_replay.runs in the
parent, sgl_replay.scheduler inside sglang's scheduler process): it imports
nothing of sgl-replay but the trace format, and nothing of sglang.
"""

from __future__ import annotations

from typing import Any, Optional

import msgspec

from sgl_replay.trace.format import Source, Workload

# Set in the environment of the engines sgl-replay starts: the plugin, which
# sglang loads in every one of its processes on the machine, acts only there.
# (Not SGL_*: sglang renames that prefix to SGLANG_* with a warning.)
ACTIVE_ENV = "SGLREPLAY_ACTIVE"

# What the header holds in place of a credential (a trace gets shared); a
# replay leaves such a setting out.
REDACTED = "<redacted>"

# The scripts the scheduler runs for a capture, as sglang's harness names them.
RECORD_SCRIPT = "sgl_replay.scheduler.scripts:record"
REPLAY_SCRIPT = "sgl_replay.scheduler.scripts:replay"


class Job(msgspec.Struct, frozen=True):
    """One capture (a recording or a replay), as the script in the scheduler
    receives it. Built by sgl_replay.runs.capture only."""

    path: str  # where the scheduler writes the trace; the parent renames it when done
    source: Source
    engine_args: dict[str, Any]  # as the parent gave them to the engine (the header keeps them)
    env: dict[str, Any]  # engine environment knobs the parent set
    model_config: Optional[dict[str, Any]] = None  # config.json of the embedded model
    workload: Optional[Workload] = None  # a recording: what to run
    trace: Optional[str] = None  # a replay: the trace whose inputs to feed back
    argv: Optional[list[str]] = None  # the command line that asked for it
    # A run on the modelled clock (a timed replay, or a public trace recorded
    # with --clock modeled): the cost model, as plain values.
    cost: Optional[dict[str, Any]] = None
