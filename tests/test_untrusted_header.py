"""A replay takes from a trace only the settings that decide scheduling: a
crafted header cannot set the engine's environment, model, plugins or
memory. No engine needed: these check the configuration a replay would start."""

from __future__ import annotations

import re
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
                   "SGLANG_PLUGINS": "evil", "SGLANG_RETRACT_DECODE_STEPS": "7"}
    config = engine_config_for(crafted(engine_args=hostile_args, env=hostile_env))
    for key in ("trust_remote_code", "tokenizer_path", "enable_custom_logit_processor"):
        assert key not in config.engine_args
    assert config.engine_args["load_format"] == DEFAULT_ENGINE_ARGS["load_format"] == "dummy"
    assert "model_path" not in config.engine_args and config.model_config is not None
    assert config.engine_args["schedule_policy"] == "lpm"  # scheduling: applied
    assert config.env == {**DEFAULT_ENGINE_ENV, "SGLANG_RETRACT_DECODE_STEPS": "7"}
    plan = replay_plan(crafted(engine_args=hostile_args, env=hostile_env))
    assert {"LD_PRELOAD", "PYTHONPATH", "SGLANG_PLUGINS"} <= set(plan.ignored_env)
    assert {"model_path", "trust_remote_code", "load_format"} <= set(plan.ignored_args)


def test_a_header_asking_for_too_much_memory_is_bad_input():
    header = golden_header()
    huge = crafted(engine_args={**header.engine_args, "max_total_tokens": 10**12})
    with pytest.raises(TraceError, match="max_total_tokens=1000000000000, more than a replay allows"):
        engine_config_for(huge)
    # the user may still ask for it
    assert engine_config_for(huge, engine_args={"max_total_tokens": 2048}).engine_args["max_total_tokens"] == 2048


@pytest.mark.parametrize("change", [
    {"n_embd": 4096, "n_head": 64, "n_layer": 16},
    {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "auto_map": {"AutoModel": "evil.Model"},
     "torch_dtype": "float64"},
])
def test_the_replay_model_is_sgl_replays_own_whatever_the_trace_says(change):
    """Only the vocabulary size, context length and EOS ids come from the trace."""
    header = golden_header()
    config = {**header.model.config, **change, "vocab_size": 5000, "n_positions": 2048, "n_ctx": 2048,
              "eos_token_id": [2, 7]}
    model = engine_config_for(crafted(model=msgspec.structs.replace(header.model, config=config))).model_config
    assert model == {**EMBEDDED_MODEL_CONFIG, "vocab_size": 5000, "n_positions": 2048, "n_ctx": 2048,
                     "eos_token_id": [2, 7]}


def test_a_captured_gpu_models_vocabulary_and_context_replay():
    """traces/gpu's captures: a 128,256-token vocabulary, 8,192 positions."""
    gpu = str(Path(__file__).parent.parent / "traces" / "gpu" / "h200_capture_short.sglt")
    with TraceReader(gpu) as reader:
        model = engine_config_for(reader.header, device="cpu").model_config
    assert (model["vocab_size"], model["n_positions"], model["n_layer"]) == (128256, 8192, 2)


@pytest.mark.parametrize("model, complaint", [
    ({"vocab_size": 1 << 20, "n_positions": 1 << 26}, "needs about"),  # GiB of embeddings and token table
    ({"vocab_size": "1024"}, "vocab_size='1024'"),
    ({"vocab_size": 1024, "eos_token_id": 5000}, "eos_token_id=5000"),
    ({"n_positions": 0}, "context length 0"),
])
def test_a_model_too_large_or_malformed_is_bad_input(model, complaint):
    header = golden_header()
    config = {**header.model.config, **model}
    with pytest.raises(TraceError, match=complaint):
        engine_config_for(crafted(model=msgspec.structs.replace(header.model, config=config)))


@pytest.mark.parametrize("args, env, complaint", [
    ({"random_seed": "0; touch /tmp/x"}, {}, "engine argument random_seed is '0; touch /tmp/x', not int"),
    ({"max_running_requests": 8.5}, {}, "max_running_requests is 8.5, not int"),
    ({"enable_mixed_chunk": 1}, {}, "enable_mixed_chunk is 1, not bool"),
    ({"schedule_conservativeness": float("nan")}, {}, "schedule_conservativeness is nan, not float"),
    ({}, {"SGLANG_INIT_NEW_TOKEN_RATIO": "$(rm -rf /)"}, "SGLANG_INIT_NEW_TOKEN_RATIO='$(rm -rf /)', not float"),
    ({}, {"SGLANG_RETRACT_DECODE_STEPS": 7}, "SGLANG_RETRACT_DECODE_STEPS=7, not int"),
])
def test_an_allow_listed_setting_of_another_type_is_bad_input(args, env, complaint):
    header = golden_header()
    with pytest.raises(TraceError, match=re.escape(complaint)):
        replay_plan(crafted(engine_args={**header.engine_args, **args}, env={**header.env, **env}))


def test_allow_listed_settings_of_their_type_apply():
    header = golden_header()
    plan = replay_plan(crafted(engine_args={**header.engine_args, "random_seed": 7, "schedule_conservativeness": 1,
                                            "enable_mixed_chunk": True, "default_priority_value": None},
                               env={**header.env, "SGLANG_INIT_NEW_TOKEN_RATIO": "0.5",
                                    "SGLANG_TEST_RETRACT": "True"}))
    assert (plan.engine_args["random_seed"], plan.engine_args["schedule_conservativeness"]) == (7, 1)
    assert plan.engine_args["enable_mixed_chunk"] is True
    assert plan.env["SGLANG_INIT_NEW_TOKEN_RATIO"] == "0.5" and plan.env["SGLANG_TEST_RETRACT"] == "True"


def test_a_trace_marked_not_replayable_is_refused():
    with pytest.raises(TraceError, match="not replayable: speculative decoding"):
        engine_config_for(crafted(not_replayable=["speculative decoding (speculative_algorithm=EAGLE)"]))
