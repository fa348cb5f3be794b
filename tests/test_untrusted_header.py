"""A replay takes from a trace only the settings that decide scheduling: a
crafted header cannot set the engine's environment, model, plugins or
memory. No engine needed: these check the configuration a replay would start."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from sgl_replay.runs.embedded_model import EMBEDDED_MODEL_CONFIG
from sgl_replay.runs.engine import DEFAULT_ENGINE_ARGS, DEFAULT_ENGINE_ENV
from sgl_replay.runs.replay import engine_config_for, replay_plan
from sgl_replay.trace import TraceReader
from sgl_replay.trace.format import Header
from sgl_replay.trace.reader import TraceError


def golden_header() -> Header:
    with TraceReader(str(Path(__file__).parent.parent / "traces" / "kv_pressure_retraction.sglt")) as reader:
        return reader.header


def crafted(**changes) -> Header:
    return msgspec.structs.replace(golden_header(), **changes)


def test_a_golden_replays_with_its_own_scheduling_settings():
    header = golden_header()
    config = engine_config_for(header)
    assert config.engine_args["max_total_tokens"] == 1024
    assert config.model_config == header.model.config
    assert config.env == DEFAULT_ENGINE_ENV


def test_a_crafted_header_sets_nothing_outside_the_allow_list():
    header = golden_header()
    hostile_args = {**header.engine_args, "model_path": "https://evil.example/model",
                    "trust_remote_code": True, "load_format": "auto", "tokenizer_path": "/etc",
                    "enable_custom_logit_processor": True, "schedule_policy": "lpm"}
    hostile_env = {**header.env, "LD_PRELOAD": "/tmp/evil.so", "PYTHONPATH": "/tmp/evil",
                   "SGLANG_PLUGINS": "evil", "SGLANG_RETRACT_DECODE_STEPS": "7",
                   "SGLANG_INIT_NEW_TOKEN_RATIO": "$(rm -rf /)"}
    config = engine_config_for(crafted(engine_args=hostile_args, env=hostile_env))
    for key in ("trust_remote_code", "tokenizer_path", "enable_custom_logit_processor"):
        assert key not in config.engine_args
    assert config.engine_args["load_format"] == DEFAULT_ENGINE_ARGS["load_format"] == "dummy"
    assert "model_path" not in config.engine_args and config.model_config is not None
    assert config.engine_args["schedule_policy"] == "lpm"  # scheduling: applied
    assert config.env == {**DEFAULT_ENGINE_ENV, "SGLANG_RETRACT_DECODE_STEPS": "7"}
    plan = replay_plan(crafted(engine_args=hostile_args, env=hostile_env))
    assert {"LD_PRELOAD", "PYTHONPATH", "SGLANG_PLUGINS", "SGLANG_INIT_NEW_TOKEN_RATIO"} <= set(plan.ignored_env)
    assert {"model_path", "trust_remote_code", "load_format"} <= set(plan.ignored_args)


def test_a_header_asking_for_too_much_memory_is_bad_input():
    header = golden_header()
    huge = crafted(engine_args={**header.engine_args, "max_total_tokens": 10**12})
    with pytest.raises(TraceError, match="max_total_tokens=1000000000000, more than a replay allows"):
        engine_config_for(huge)
    # the user may still ask for it
    assert engine_config_for(huge, engine_args={"max_total_tokens": 2048}).engine_args["max_total_tokens"] == 2048
    big_model = {**EMBEDDED_MODEL_CONFIG, "n_embd": 1 << 20}
    with pytest.raises(TraceError, match="n_embd"):
        engine_config_for(crafted(model=msgspec.structs.replace(header.model, config=big_model)))
    other_arch = {**EMBEDDED_MODEL_CONFIG, "architectures": ["LlamaForCausalLM"], "auto_map": {"x": "y"}}
    with pytest.raises(TraceError, match="not one sgl-replay writes"):
        engine_config_for(crafted(model=msgspec.structs.replace(header.model, config=other_arch)))


def test_a_trace_marked_not_replayable_is_refused():
    with pytest.raises(TraceError, match="not replayable: speculative decoding"):
        engine_config_for(crafted(not_replayable=["speculative decoding (speculative_algorithm=EAGLE)"]))
