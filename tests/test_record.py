"""Recording on the real engine: each built-in workload against facts its
shape guarantees, determinism, and the plugin's manners."""

from __future__ import annotations

import json
import math
import random

import msgspec
import pytest

from conftest import builtin_config, forwards, read, rid_table
from sgl_replay.traffic.specs import parse as parse_workload
from sgl_replay.runs.engine import EngineConfig
from sgl_replay.runs.capture import CaptureFailed
from sgl_replay.runs.record import record_workload
from sgl_replay.trace.format import FORMAT_VERSION


def lifecycle(body):
    """rid -> facts gathered from the trace."""
    rids = rid_table(body)
    out = {rid: {"extends": [], "decodes": 0, "retracted": [], "finish": None, "pulled": None}
           for rid in rids}
    for rec in body:
        for item in rec.inputs:
            if item.kind == "generate":
                out[item.rid]["pulled"] = rec.i
        for b in rec.batches:
            for k, n in enumerate(b.reqs):
                row = out[rids[n]]
                if b.new is not None:
                    row["extends"].append({"i": rec.i, "new": b.new[k], "cached": b.cached[k],
                                           "chunked": b.chunked == n})
                else:
                    row["decodes"] += 1
        for n, reason, length, _ in rec.finished:
            out[rids[n]]["finish"] = {"i": rec.i, "reason": reason, "length": length}
        for n in rec.retracted:
            out[rids[n]]["retracted"].append(rec.i)
    return out


def test_chunked_prefill_runs_ceil_len_over_chunk_extends(recorded):
    header, body, end = read(recorded("chunked_prefill"))
    chunk = header.pools.chunked_prefill_size
    prompt = 700
    life = lifecycle(body)["long-0"]
    extends = life["extends"]
    assert len(extends) == math.ceil(prompt / chunk)
    # chunked rid is the request itself for every chunk but the last
    assert [e["chunked"] for e in extends] == [True] * (len(extends) - 1) + [False]
    assert [e["new"] for e in extends] == [chunk] * (prompt // chunk) + [prompt % chunk]
    assert [e["cached"] for e in extends] == [chunk * k for k in range(len(extends))]
    assert life["finish"]["reason"] == "length" and life["finish"]["length"] == 4
    assert life["decodes"] == 3  # the first token comes from the last prefill chunk
    assert end.complete and end.forwards == len(forwards(body))
    assert 0 < end.recorder_seconds < end.seconds  # the recorder timed its own work


def test_prefix_reuse_hits_the_radix_cache(recorded):
    _, body, _ = read(recorded("prefix_reuse"))
    life = lifecycle(body)
    assert life["prefix-a"]["extends"][0]["cached"] == 0
    # b's 200-token prompt starts with a's 128 tokens; c repeats b entirely
    assert 128 <= life["prefix-b"]["extends"][0]["cached"] < 200
    assert life["prefix-c"]["extends"][0]["cached"] == 199


def test_concurrent_decode_every_prompt_token_is_computed_or_cached_once(recorded):
    _, body, _ = read(recorded("concurrent_decode"))
    rng = random.Random(0)
    shape = {f"decode-{i}": (rng.randint(20, 320), rng.randint(8, 31)) for i in range(64)}
    life = lifecycle(body)
    assert set(life) == set(shape)
    assert {row["pulled"] for row in life.values()} == {0}
    for rid, (prompt, new_tokens) in shape.items():
        extends = life[rid]["extends"]
        assert extends[0]["cached"] + sum(e["new"] for e in extends) == prompt, rid
        assert life[rid]["finish"]["length"] == new_tokens, rid
        assert life[rid]["decodes"] == new_tokens - 1, rid
    # decode batches run many requests at once
    assert max(len(b.reqs) for b in forwards(body) if b.mode == "decode") > 32


def test_abort_mid_decode_finishes_the_victim_with_abort(recorded):
    _, body, _ = read(recorded("abort_mid_decode"))
    life = lifecycle(body)
    victim = life["abort-1"]["finish"]
    assert victim["reason"] == "abort"
    assert 6 <= victim["length"] < 48
    abort_at = next(rec.i for rec in body for x in rec.inputs if x.kind == "abort")
    assert victim["i"] >= abort_at
    for rid in ("abort-0", "abort-2", "abort-3"):
        assert life[rid]["finish"] == {"i": life[rid]["finish"]["i"], "reason": "length", "length": 48}


def _pause_window(body):
    pause = next(rec.i for rec in body for x in rec.inputs if x.kind == "pause")
    resume = next(rec.i for rec in body for x in rec.inputs if x.kind == "continue")
    return pause, resume


def test_pause_retract_retracts_everything_then_reprefills(recorded):
    _, body, _ = read(recorded("pause_retract"))
    pause, resume = _pause_window(body)
    assert resume > pause
    life = lifecycle(body)
    assert all(row["retracted"] == [pause] for row in life.values())
    assert not [b for rec in body if pause < rec.i < resume for b in rec.batches]
    for row in life.values():
        assert any(e["i"] >= resume for e in row["extends"])  # prefilled again after continue
        assert row["finish"]["reason"] == "length" and row["finish"]["length"] == 32


def test_pause_in_place_keeps_requests_and_resumes_decoding(recorded):
    _, body, _ = read(recorded("pause_in_place"))
    pause, resume = _pause_window(body)
    life = lifecycle(body)
    assert all(row["retracted"] == [] for row in life.values())
    assert not [b for rec in body if pause < rec.i < resume for b in rec.batches]
    assert all(e["i"] < pause for row in life.values() for e in row["extends"])
    assert all(row["finish"]["length"] == 32 for row in life.values())


def test_kv_pressure_forces_retraction(recorded):
    header, body, _ = read(recorded("kv_pressure"))
    assert header.pools.max_total_tokens == 1024
    life = lifecycle(body)
    retracted = [rid for rid, row in life.items() if row["retracted"]]
    assert retracted
    for rid in retracted:  # a retracted request is prefilled again later
        assert max(e["i"] for e in life[rid]["extends"]) > life[rid]["retracted"][0]
    assert all(row["finish"] is not None for row in life.values())
    assert all(rec.state.kv_free >= 0 for rec in body if rec.state is not None)


def test_priority_lets_the_high_priority_request_overtake(recorded):
    _, body, _ = read(recorded("priority"))
    life = lifecycle(body)
    order = [x.rid for rec in body for x in rec.inputs]
    assert order.index("low-2") < order.index("high-0")
    assert life["low-2"]["pulled"] == life["high-0"]["pulled"]
    assert life["high-0"]["extends"][0]["i"] < life["low-2"]["extends"][0]["i"]


def test_running_cap_never_runs_more_than_two(recorded):
    header, body, _ = read(recorded("running_cap"))
    cap = header.pools.max_running_requests
    assert cap == 2
    assert max(len(b.reqs) for b in forwards(body)) == cap
    assert max(rec.state.running for rec in body if rec.state is not None) <= cap
    assert len(lifecycle(body)) == 12


def test_flush_between_waves_empties_the_cache(recorded):
    _, body, _ = read(recorded("flush_between_waves"))
    assert sum(1 for rec in body for x in rec.inputs if x.kind == "flush") == 2
    # every wave repeats the same prompt: only the flushes keep it from the cache
    cached = [e["cached"] for row in lifecycle(body).values() for e in row["extends"]]
    assert cached and all(c == 0 for c in cached)


@pytest.mark.parametrize("name", ["concurrent_decode", "kv_pressure"])
def test_recording_twice_gives_identical_bodies(engines, recorded, tmp_path, name):
    again = str(tmp_path / "again.sglt")
    record_workload(engines.get(builtin_config(name)), parse_workload(name), again)
    _, first, end1 = read(recorded(name))
    _, second, end2 = read(again)
    assert first == second
    for timing in ("seconds", "recorder_seconds"):  # the things that differ between runs
        assert getattr(end1, timing) > 0 and getattr(end2, timing) > 0
    untimed = {"seconds": None, "recorder_seconds": None}
    assert msgspec.structs.replace(end1, **untimed) == msgspec.structs.replace(end2, **untimed)


def test_header_says_how_to_rebuild_the_engine(recorded):
    header, _, _ = read(recorded("kv_pressure"))
    assert header.format == FORMAT_VERSION
    assert header.versions.sglang == "0.5.23"
    assert header.device.type == "cpu"
    assert header.engine_args["max_total_tokens"] == 1024
    assert header.server_args["max_total_tokens"] == 1024
    assert header.env["SGLANG_KV_CANARY_ENABLE_TOKEN_ORACLE"] == "1"
    assert header.resolved.sampling_backend == "token_oracle"
    assert header.model.config["architectures"] == ["GPT2LMHeadModel"]
    assert header.workload.name == "kv_pressure"


def test_a_script_that_raises_leaves_a_sealed_incomplete_trace(engines, tmp_path):
    out = str(tmp_path / "doomed.sglt")
    with pytest.raises(CaptureFailed, match="the workload script gave up") as info:
        record_workload(engines.get(EngineConfig.embedded()),
                        parse_workload("scripts:raises_after_two_iterations"), out)
    assert info.value.trace == out
    _, body, end = read(out)
    assert not end.complete and "ValueError" in end.reason
    assert body[0].inputs[0].rid == "doomed-0"
    # the engine survives a failed script
    record_workload(engines.get(EngineConfig.embedded()), parse_workload("chunked_prefill"),
                    str(tmp_path / "after.sglt"))


def test_recording_without_the_hook_fails_loudly(tmp_path):
    """sglang only logs a hook that fails to apply; the recorder must notice.
    Here sglang's plugin whitelist keeps sgl-replay's plugin out."""
    from sgl_replay.runs.engine import Engine

    config = EngineConfig.embedded(env={"SGLANG_PLUGINS": "nothing-here"})
    out = tmp_path / "empty.sglt"
    with Engine.start(config) as engine:
        with pytest.raises(CaptureFailed, match="recorder is not installed"):
            record_workload(engine, parse_workload("chunked_prefill"), str(out))
    assert not out.exists() and not (tmp_path / "empty.sglt.partial").exists()


def test_plugin_is_inert_in_a_plain_scripted_runtime_engine(recorded, tmp_path, monkeypatch):
    """sglang's own harness, sgl-replay installed but not asked for: the
    scheduler keeps the harness's own hook and proxy, and schedules the same
    batches as the recorded run."""
    import psutil

    from sglang.test.scripted_runtime.http_server import ScriptedHttpServer
    from sgl_replay.runs.embedded_model import EMBEDDED_MODEL_CONFIG, write_model_dir
    from sgl_replay.runs.engine import DEFAULT_ENGINE_ARGS
    from sgl_replay.runs.engine import DEFAULT_ENGINE_ENV

    for key, value in DEFAULT_ENGINE_ENV.items():
        monkeypatch.setenv(key, value)
    args = {k: v for k, v in DEFAULT_ENGINE_ARGS.items() if k != "sampling_backend"}
    server = ScriptedHttpServer.start(model_path=write_model_dir(EMBEDDED_MODEL_CONFIG), **args)
    out = tmp_path / "plain.json"
    try:
        server.execute_script(__import__("scripts").plain_harness_batches, args=(str(out),))
    finally:  # upstream shutdown() waits 60 s; the test does not need to
        proc = psutil.Process(server._server_process.pid)
        for p in [*proc.children(recursive=True), proc]:
            p.kill()
        server._teardown()
    facts = json.loads(out.read_text())
    assert facts["hook_class"] == "ScriptedSchedulerHook"
    assert facts["proxy_class"] == "ScriptedTokenizerRecvProxy"
    assert facts["probe"] is False
    _, body, _ = read(recorded("concurrent_decode"))
    rids = rid_table(body)
    ours = [[b.mode, [rids[n] for n in b.reqs]] for b in forwards(body)]
    assert facts["batches"] == ours


def test_credentials_are_written_redacted():
    """Every ServerArgs field of sglang 0.5.23 that carries a credential, and
    URLs with a user or password, are written as <redacted>."""
    from sglang.srt.server_args import ServerArgs

    from sgl_replay.credentials import redact
    from sgl_replay.job import REDACTED
    from sgl_replay.scheduler.header import _field_names

    secrets = {name for name in _field_names(ServerArgs) if redact(name, "value") == REDACTED}
    assert secrets == {"api_key", "admin_api_key", "ssl_keyfile_password", "watermark_key", "watermark_key_b"}
    assert redact("hicache_storage_backend_extra_config", "redis://user:pw@host:6379") == REDACTED
    assert redact("model_path", "https://host/models/x") == "https://host/models/x"
    assert redact("api_key", None) is None  # nothing set, nothing to hide
