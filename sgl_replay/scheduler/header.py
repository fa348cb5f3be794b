"""The trace header, built inside the scheduler process at the start of every
capture (recording or replay): versions, device, every server argument, the
engine environment, what sglang resolved at start-up, model and pool sizes,
and what ran."""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
from typing import Any, Optional

from sgl_replay.credentials import redact, redact_argv
from sgl_replay.job import Job
from sgl_replay.trace.format import (SCHEDULING_ENV, Device, Header, Model, Pools, Resolved, Source,
                                     Versions, Workload)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


def _device(server_args) -> Device:
    import torch

    kind = (server_args.device or ("cuda" if torch.cuda.is_available() else "cpu")).split(":")[0]
    info = {"type": kind, "attention_backend": server_args.attention_backend,
            "torch": str(torch.__version__)}
    if kind == "cuda" and torch.cuda.is_available():
        info["name"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        info["driver"] = _nvidia_driver()
    else:
        info["name"] = platform.processor() or platform.machine()
        info["cpus"] = os.cpu_count()
    return Device(**info)


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
    """ServerArgs' fields (an instance or the class): a msgspec Struct in
    sglang 0.5.23, a dataclass before."""
    if dataclasses.is_dataclass(server_args):
        return [f.name for f in dataclasses.fields(server_args)]
    import msgspec

    return [f.name for f in msgspec.structs.fields(server_args)]


def _resolved(scheduler) -> Resolved:
    from sglang.srt.runtime_context import get_exec

    return Resolved(sampling_backend=get_exec().kernel.sampling_backend,
                    overlap_schedule=bool(scheduler.enable_overlap))


def _defaults(server_args) -> dict[str, Any]:
    """ServerArgs' field defaults (a msgspec Struct in 0.5.23, a dataclass before)."""
    if dataclasses.is_dataclass(server_args):
        fields: list[tuple[str, Any, Any]] = [(f.name, f.default, f.default_factory)
                                              for f in dataclasses.fields(server_args)]
        missing: object = dataclasses.MISSING
    else:
        import msgspec

        fields = [(f.name, f.default, f.default_factory) for f in msgspec.structs.fields(server_args)]
        missing = msgspec.NODEFAULT
    out = {}
    for name, default, factory in fields:
        if default is not missing:
            out[name] = default
        elif factory is not missing:
            out[name] = factory()
    return out


# A capture of a plain server: what makes its run impossible to replay on the
# embedded engine, as (ServerArgs field, value that is fine, why).
_UNREPLAYABLE_ARGS = (
    ("speculative_algorithm", None, "speculative decoding (verify and draft batches, several tokens a step)"),
    ("attn_dp_size", 1, "data-parallel attention (several schedulers, idle batches, MLP sync)"),
    ("enable_dp_attention", False, "data-parallel attention (several schedulers, idle batches, MLP sync)"),
    ("dp_size", 1, "data parallelism (each replica's scheduler records only its share)"),
    ("disaggregation_mode", "null", "prefill/decode disaggregation"),
    ("enable_pd_role_switch", False, "prefill/decode role switching"),
    ("enable_pdmux", False, "PD multiplexing"),
    ("pp_size", 1, "pipeline parallelism (its own loop)"),
    ("attn_cp_size", 1, "context-parallel attention"),
    ("dcp_size", 1, "decode context parallelism"),
    ("nnodes", 1, "several nodes"),
    ("enable_lora", False, "LoRA adapters"),
    ("lora_paths", None, "LoRA adapters"),
    ("enable_multimodal", False, "multimodal inputs (not recorded)"),
    ("dllm_algorithm", None, "diffusion LM decoding"),
    ("enable_hierarchical_cache", False, "hierarchical cache (asynchronous, timing-dependent I/O)"),
    ("hicache_storage_backend", None, "hierarchical cache storage (asynchronous, timing-dependent I/O)"),
    ("enable_lmcache", False, "LMCache (asynchronous, timing-dependent I/O)"),
    ("enable_overlap_mlx", False, "MLX overlap loop"),
)
_UNREPLAYABLE_ENV = (
    ("SGLANG_RUST_SERVER", "the Rust ingress ring (inputs not seen by this recorder)"),
    ("SGLANG_REQ_WAITING_TIMEOUT", "wall-clock waiting timeouts (aborts made inside the scheduler)"),
    ("SGLANG_REQ_RUNNING_TIMEOUT", "wall-clock running timeouts (aborts made inside the scheduler)"),
)


def not_replayable(server_args, environ=os.environ) -> list[str]:
    """Why a capture of a server with these settings cannot be replayed."""
    reasons: list[str] = []
    for name, fine, why in _UNREPLAYABLE_ARGS:
        value = getattr(server_args, name, fine)
        if isinstance(fine, bool):
            on = bool(value)
        elif isinstance(fine, int):
            on = isinstance(value, int) and value > fine
        else:  # None or a string meaning "off"
            on = value not in (fine, None, "", [], {}, "null", "none")
        if on and not any(r.startswith(why) for r in reasons):
            reasons.append(f"{why}: {name}={_plain(value)!r}")
    device = str(getattr(server_args, "device", "") or "")
    if device.startswith("mlx") or device == "mps":
        reasons.append(f"the MLX loop: device={device!r}")
    for name, why in _UNREPLAYABLE_ENV:
        value = environ.get(name)
        if value not in (None, "", "0", "false", "False"):
            reasons.append(f"{why}: {name}={value}")
    return reasons


def _argv_of_server() -> Optional[list[str]]:
    """The command line that started the server (the scheduler's parent),
    settings that carry credentials redacted."""
    try:
        import psutil

        argv = list(psutil.Process().parent().cmdline())
    except Exception:  # noqa: BLE001 — informational only
        return None
    return redact_argv(argv)


def _eos_token_ids(scheduler) -> list[int]:
    """Every token id that ends a request on this server (schedule_batch's
    finish check: the model's EOS ids, the tokenizer's EOS and additional
    stop token ids)."""
    ids = set(getattr(scheduler.model_config, "hf_eos_token_id", None) or ())
    tokenizer = getattr(scheduler, "tokenizer", None)
    if tokenizer is not None:
        if isinstance(getattr(tokenizer, "eos_token_id", None), int):
            ids.add(tokenizer.eos_token_id)
        ids.update(getattr(tokenizer, "additional_stop_token_ids", None) or ())
    return sorted(int(i) for i in ids)


def build_header(scheduler, job: Optional[Job]) -> Header:
    """The header of a capture: `job` from the process that started the
    engine, or None for a capture of a plain server (sglang.launch_server
    with SGLREPLAY_RECORD_DIR: no parent, so what the parent would hand over
    comes from the server itself)."""
    import sglang
    import torch

    from sgl_replay import __version__

    server_args = scheduler.server_args
    every_arg = {name: redact(name, _plain(getattr(server_args, name, None)))
                 for name in _field_names(server_args) if not name.startswith("_")}
    if job is None:
        defaults = _defaults(server_args)
        engine_args = {k: v for k, v in every_arg.items() if k in defaults and v != _plain(defaults[k])}
        env = {k: v for k, v in os.environ.items() if k in SCHEDULING_ENV}
        model_config = scheduler.model_config
        model = Model(path=server_args.model_path, vocab_size=int(model_config.vocab_size),
                      context_length=int(model_config.context_len),
                      eos_token_ids=_eos_token_ids(scheduler))
        workload = Workload(kind="capture", name="sglang.launch_server",
                            description="live traffic of a plain sglang server")
        job = Job(path="", source=Source(kind="record"), engine_args=engine_args, env=env,
                  workload=workload, argv=_argv_of_server())
        unreplayable = not_replayable(server_args)
    else:
        model = Model(config=job.model_config, path=server_args.model_path)
        unreplayable = []
        # the HTTP port sgl-replay picked for its own engine: nothing of the
        # run, and it would make two runs of the same trace differ
        every_arg.pop("port", None)
    inherited = {k: redact(k, v) for k, v in os.environ.items()
                 if k.startswith("SGLANG_") and k not in job.env and k not in _NOT_KNOBS
                 and not k.startswith("SGLANG_TEST_SCRIPTED_RUNTIME")}
    return Header(
        versions=Versions(sgl_replay=__version__, sglang=sglang.__version__,
                          torch=str(torch.__version__), python=platform.python_version()),
        device=_device(server_args),
        engine_args={k: redact(k, v) for k, v in job.engine_args.items()},
        server_args=every_arg,
        env={k: redact(k, v) for k, v in job.env.items()},
        env_inherited=inherited,
        resolved=_resolved(scheduler),
        model=model,
        pools=Pools(
            max_total_tokens=scheduler.max_total_num_tokens,
            max_running_requests=scheduler.max_running_requests,
            max_prefill_tokens=scheduler.max_prefill_tokens,
            chunked_prefill_size=scheduler.chunked_prefill_size,
            page_size=scheduler.page_size,
            req_pool_size=scheduler.req_to_token_pool.size,
        ),
        workload=job.workload,
        source=job.source,
        argv=job.argv,
        platform={"python": sys.version.split()[0], "machine": platform.machine()},
        not_replayable=unreplayable,
    )
