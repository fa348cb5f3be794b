"""sglang plugin entry point (group `sglang.srt.plugins`), in every sglang process.

sglang loads every installed plugin in every one of its processes, so this one
does nothing unless
- the engine was started by sgl-replay (ACTIVE_ENV). Then it registers AFTER
  hooks: once the scheduler has built its scripted-runtime hook and recv
  proxy, and before its request receiver takes references to them, the
  recorder wraps both; the token oracle gets a stand-in that forces a
  capture's recorded output tokens while one is replayed (scheduler/oracle.py);
  the model's forward can be skipped while a replay asks for it (scheduler/skip_model.py);
- or SGLREPLAY_RECORD_DIR is set on a plain server (`python -m
  sglang.launch_server ...`): scheduler/capture.py records its scheduler.
"""

from __future__ import annotations

import os

from sgl_replay.job import ACTIVE_ENV

# The directory a plain server records its scheduler into (scheduler/capture.py).
RECORD_DIR_ENV = "SGLREPLAY_RECORD_DIR"

HOOK_TARGET = "sglang.srt.managers.scheduler.Scheduler.maybe_init_scripted_scheduler_hook"
# sglang 0.5.23 forces sampling_backend="pytorch" on CPU even when the caller
# asked for "token_oracle" (a valid choice once the oracle env is set). Random
# sampling would make output tokens, and with them every EOS-bound request's
# length, differ run to run and device to device.
CPU_BACKENDS_TARGET = "sglang.srt.arg_groups.platform_hook.handle_cpu_backends"


def register() -> None:
    if os.environ.get(ACTIVE_ENV) != "1":
        record_dir = os.environ.get(RECORD_DIR_ENV)
        if record_dir:
            from sgl_replay.scheduler import capture

            capture.register(record_dir)
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from sgl_replay.scheduler import oracle, skip_model

    HookRegistry.register(HOOK_TARGET, _after_scripted_hook_init, HookType.AFTER)
    HookRegistry.register(CPU_BACKENDS_TARGET, _keep_token_oracle, HookType.AFTER)
    HookRegistry.register(oracle.INSTALL_TARGET, oracle.after_install, HookType.AFTER)
    HookRegistry.register(skip_model.TARGET, skip_model.around_forward, HookType.AROUND)


def _keep_token_oracle(result, server_args, *args, **kwargs):
    if getattr(server_args, "sampling_backend", None) == "token_oracle":
        from sglang.srt.arg_groups.overrides import declare_resolution

        declare_resolution(server_args, "sgl_replay_keep_token_oracle", sampling_backend="token_oracle")
    return result


def _after_scripted_hook_init(result, scheduler, *args, **kwargs):
    from sgl_replay.scheduler.recorder import install

    install(scheduler)
    return result
