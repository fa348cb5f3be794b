"""The script sgl-replay runs inside the scheduler to record a workload, and
the trace header every recording (or replay) starts with.

`record` is what `Engine.run_script("sgl_replay.record.session:record", job)`
runs: it checks the recorder is really in the loop, opens the trace, drives
the workload generator to its end and closes the trace, complete or not.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import platform
import sys
from typing import Any, Generator

from sgl_replay.record.recorder import active_probe
from sgl_replay.record.workloads import BUILTIN, serve
from sgl_replay.trace.format import HEADER


def record(ctx, job: dict) -> Generator:
    probe = active_probe(ctx.scheduler)
    workload = _workload_generator(ctx, job["workload"])
    yield from probe.settle()
    probe.start(job["path"], build_header(ctx.scheduler, job))
    try:
        yield from workload
    except Exception as e:
        probe.stop(complete=False, reason=f"workload raised {type(e).__name__}: {e}")
        raise
    probe.stop(complete=True)


def _workload_generator(ctx, spec: dict) -> Generator:
    kind = spec["kind"]
    if kind == "builtin":
        return BUILTIN[spec["name"]].fn(ctx)
    if kind == "serve":
        return serve(ctx, duration_s=spec.get("duration_s"), idle_s=spec.get("idle_s"))
    if kind == "script":
        module_name, _, fn_name = spec["name"].partition(":")
        fn: Any = importlib.import_module(module_name)
        for part in fn_name.split("."):
            fn = getattr(fn, part)
        return fn(ctx)
    raise ValueError(f"unknown workload kind {kind!r}")


# ------------------------------------------------------------------ header
def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


def _device(server_args) -> dict:
    import torch

    kind = (server_args.device or "cpu").split(":")[0]
    info = {"type": kind, "attention_backend": server_args.attention_backend,
            "torch": torch.__version__}
    if kind == "cuda" and torch.cuda.is_available():
        info["name"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        info["driver"] = _nvidia_driver()
    else:
        info["name"] = platform.processor() or platform.machine()
        info["cpus"] = os.cpu_count()
    return info


def _nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # noqa: BLE001 — informational only; ask nvidia-smi instead
        pass
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        return out.splitlines()[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


# Set per run, not a knob.
_NOT_KNOBS = {"SGLANG_RUN_ID"}


def _field_names(server_args) -> list[str]:
    # ServerArgs is a msgspec Struct in sglang 0.5.23, a dataclass before.
    if dataclasses.is_dataclass(server_args):
        return [f.name for f in dataclasses.fields(server_args)]
    return list(type(server_args).__struct_fields__)


def _resolved(scheduler) -> dict:
    """Settings sglang resolved at start-up that decide scheduling or tokens."""
    from sglang.srt.runtime_context import get_exec

    return {"sampling_backend": get_exec().kernel.sampling_backend,
            "overlap_schedule": bool(scheduler.enable_overlap)}


def build_header(scheduler, job: dict) -> dict:
    import sglang
    import torch

    from sgl_replay import __version__

    server_args = scheduler.server_args
    every_arg = {name: _plain(getattr(server_args, name, None)) for name in _field_names(server_args)
                 if not name.startswith("_")}
    inherited = {k: v for k, v in os.environ.items()
                 if k.startswith("SGLANG_") and k not in job["env"] and k not in _NOT_KNOBS
                 and not k.startswith("SGLANG_TEST_SCRIPTED_RUNTIME")}
    return {
        "t": HEADER,  # the writer adds the format version
        "versions": {"sgl_replay": __version__, "sglang": sglang.__version__,
                     "torch": torch.__version__, "python": platform.python_version()},
        "device": _device(server_args),
        "engine_args": job["engine_args"],
        "server_args": every_arg,
        "env": job["env"],
        "env_inherited": inherited,
        "resolved": _resolved(scheduler),
        "model": {"config": job.get("model_config"), "path": server_args.model_path},
        "pools": {
            "max_total_tokens": scheduler.max_total_num_tokens,
            "max_running_requests": scheduler.max_running_requests,
            "max_prefill_tokens": scheduler.max_prefill_tokens,
            "chunked_prefill_size": scheduler.chunked_prefill_size,
            "page_size": scheduler.page_size,
            "req_pool_size": scheduler.req_to_token_pool.size,
        },
        "workload": job["workload"],
        "source": job["source"],
        "argv": job.get("argv"),
        "platform": {"python": sys.version.split()[0], "machine": platform.machine()},
    }
