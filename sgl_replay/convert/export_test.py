"""Write a trace as a pytest file for SGLang's own scripted-runtime harness
(`sgl-replay export-test TRACE -o test_NAME.py`).

The file drives the trace's inputs at the iterations they were recorded at
through sglang.test.scripted_runtime (ScriptedHttpServer, ctx.start_req,
ctx.abort, ...) on the engine configuration that reproduces the trace (the
embedded tiny GPT-2, written by the test itself), and asserts what the trace
recorded: the forward batches of every iteration (mode, requests in order,
cached tokens of extend batches), the finishes (iteration, reason, output
length) and the retractions. It imports only sglang and pytest.
"""

from __future__ import annotations

import math
import os
import pprint
import re
from typing import Any, Optional

from sgl_replay.runs.replay import engine_config_for
from msgspec import UNSET

from sgl_replay.trace.format import (GENERATE_EXTRAS, REPLAYABLE_INPUTS, AbortInput, ContinueInput, FlushInput,
                                     GenerateInput, Input, PauseInput, unpack_ids)
from sgl_replay.trace.reader import TraceError, TraceReader

# sampling keys ctx.start_req takes (ignore_eos=False is the API's default)
_START_REQ_SAMPLING = {"max_new_tokens", "ignore_eos", "stop_token_ids", "temperature"}


def _const(rid: str) -> str:
    name = re.sub(r"[^0-9A-Za-z]+", "_", rid).strip("_").upper() or "REQ"
    return "PROMPT_" + (name if not name[0].isdigit() else "R" + name)


def _is_literal(value: Any) -> bool:
    kind = type(value)
    if kind in (str, bytes, int, bool) or value is None:
        return True
    if kind is float:
        return math.isfinite(value)  # repr(nan) is a name, not a literal
    if kind in (list, tuple):
        return all(_is_literal(v) for v in value)
    if kind is dict:
        return all(_is_literal(k) and _is_literal(v) for k, v in value.items())
    return False


def _literal(value: Any, what: str) -> str:
    """`value` as Python source: its repr, which reads back as a literal.
    The exported file is code, and every value in it that comes from the
    trace (untrusted) goes through here or is a number the reader checked;
    anything repr cannot write as a literal is bad input."""
    try:
        plain = _is_literal(value)
    except RecursionError:
        plain = False
    if not plain:
        raise TraceError(f"{what}: {str(value)[:80]!r} is not a plain value; it cannot be exported")
    return repr(value)


def _input_line(i: int, item: Input, prompts: dict[str, str]) -> str:
    if type(item) is GenerateInput:
        rid = item.rid
        if item.input_ids is None:
            raise TraceError(f"iteration {i}: generate input {rid!r} has no input_ids (an exported "
                             f"test sends token ids); it cannot be exported")
        ids = unpack_ids(item.input_ids)
        sampling = dict(item.sampling)
        where = f"iteration {i}: generate input {rid!r}"
        extra = {k: v for k in GENERATE_EXTRAS if (v := getattr(item, k)) is not UNSET}
        uniform = ids and all(t == ids[0] for t in ids)
        simple = (uniform and set(sampling) <= _START_REQ_SAMPLING and item.stream
                  and set(extra) <= {"priority"})
        if simple:
            args = [f"rid={rid!r}", f"prompt_len={len(ids)}", f"prompt_token={ids[0]}"]
            args += [f"{k}={_literal(v, where)}" for k, v in sampling.items()]  # k: _START_REQ_SAMPLING's
            args += [f"{k}={_literal(v, where)}" for k, v in extra.items()]
            return f"    ({i}, start_req({', '.join(args)})),"
        const = _const(rid)
        while const in prompts.values() and prompts.get(rid) != const:
            const += "_"
        prompts[rid] = const
        args = [repr(rid), const, f"sampling={_literal(sampling, where)}"]
        if not item.stream:
            args.append("stream=False")
        args += [f"{k}={_literal(v, where)}" for k, v in extra.items()]
        return f"    ({i}, generate({', '.join(args)})),"
    if type(item) is AbortInput:
        return f"    ({i}, abort_all())," if item.all else f"    ({i}, abort({item.rid!r})),"
    if type(item) is PauseInput:
        return f"    ({i}, pause(mode={item.mode!r})),"
    if type(item) is ContinueInput:
        return f"    ({i}, resume(torch_empty_cache={item.torch_empty_cache!r})),"
    if type(item) is FlushInput:
        return f"    ({i}, flush_cache()),"
    raise ValueError(f"input {item.kind!r} cannot be exported")


def _runs(batches: list[tuple]) -> list[tuple]:
    """Consecutive iterations running the same decode batch fold into one row
    (first, last, mode, rids, cached); the test folds what it observes the same way."""
    out: list[list] = []
    for i, mode, rids, cached in batches:
        last = out[-1] if out else None
        if (last is not None and mode == "decode" and last[2] == "decode" and last[3] == rids
                and last[1] == i - 1):
            last[1] = i
        else:
            out.append([i, i, mode, rids, cached])
    return [tuple(r) for r in out]


def expected_of(trace: str) -> dict[str, Any]:
    """What the trace recorded, as the exported test asserts it."""
    with TraceReader(trace) as reader:
        header = reader.header
        body = list(reader.iterations())
        end = reader.end
    rids: list[str] = []
    inputs: list[tuple[int, Input]] = []
    batches: list[tuple] = []
    finished: list[tuple] = []
    retracted: list[tuple] = []
    for rec in body:
        for item in rec.inputs:
            if type(item) is GenerateInput:
                rids.append(item.rid)
            if isinstance(item, REPLAYABLE_INPUTS):
                inputs.append((rec.i, item))
        for b in rec.batches:
            names = " ".join(rids[n] for n in b.reqs)
            cached = list(b.cached) if b.mode in ("extend", "mixed") and b.cached is not None else None
            batches.append((rec.i, b.mode, names, cached))
        for n, reason, length, *_ in rec.finished:
            finished.append((rec.i, rids[n], reason, length))
        for n in rec.retracted:
            retracted.append((rec.i, rids[n]))
    return {"header": header, "end": end, "inputs": inputs, "batches": batches,
            "finished": finished, "retracted": retracted, "requests": len(rids)}


def export_test(trace: str, output: str, *, name: Optional[str] = None) -> dict[str, int]:
    """Write the test file; returns figures for the CLI's line."""
    facts = expected_of(trace)
    header, end = facts["header"], facts["end"]
    config = engine_config_for(header)
    engine_kwargs = dict(config.engine_args)
    engine_kwargs.pop("model_path", None)
    prompts: dict[str, str] = {}
    input_lines = [_input_line(i, item, prompts) for i, item in facts["inputs"]]
    prompt_lines = []
    for _, item in facts["inputs"]:
        if type(item) is GenerateInput and item.rid in prompts and item.input_ids is not None:
            prompt_lines.append(f"{prompts[item.rid]} = {unpack_ids(item.input_ids)!r}")
    last_input = max((i for i, _ in facts["inputs"]), default=0)
    iterations = max(end.iterations if end is not None else 0, last_input + 1)
    test_name = name or re.sub(r"\W+", "_", os.path.splitext(os.path.basename(output))[0].removeprefix("test_"))
    workload = header.workload
    described = (f"{workload.name or workload.kind}: {workload.description or ''}".strip(": ")
                 if workload is not None else "unknown workload")
    # what the trace says of itself, as a literal (never in the docstring: text there is code)
    recording = {"trace": os.path.basename(trace), "workload": described,
                 "sglang": header.versions.sglang or "?", "requests": facts["requests"],
                 "inputs": len(input_lines), "iterations": iterations}
    rows = _runs(facts["batches"])

    def block(name: str, rows: list, doc: str) -> str:
        body = "".join(f"    {r!r},\n" for r in rows)
        return f"# {doc}\n{name} = [\n{body}]\n"

    for what, value in (("the header", recording), ("the model config", config.model_config),
                        ("the engine arguments", engine_kwargs), ("the engine environment", config.env)):
        _literal(value, what)  # pformat writes them as repr does
    text = _TEMPLATE.format(
        recording=pprint.pformat(recording, indent=4, width=100, sort_dicts=False), iterations=iterations,
        model_config=pprint.pformat(config.model_config, indent=4, width=100, sort_dicts=False),
        engine_kwargs=pprint.pformat(engine_kwargs, indent=4, width=100),
        engine_env=pprint.pformat(dict(config.env), indent=4, width=100),
        prompts="\n".join(prompt_lines) + ("\n\n" if prompt_lines else ""),
        inputs="\n".join(input_lines),
        batches=block("BATCHES", rows,
                      "(first iteration, last iteration, mode, requests in batch order, cached tokens per "
                      "request of an extend batch)"),
        finished=block("FINISHED", facts["finished"], "(iteration, rid, finish reason, output length)"),
        retracted=block("RETRACTED", facts["retracted"], "(iteration, rid)"),
        test_name=test_name)
    with open(output, "w") as f:
        f.write(text)
    return {"inputs": len(input_lines), "iterations": iterations, "batches": len(facts["batches"])}


_TEMPLATE = '''"""Scheduler regression test exported by sgl-replay from a trace
(RECORDING below says which, and what ran).

SGLang's scripted runtime drives the same inputs into the scheduler at the
same loop iterations as the recording, and the test asserts what the
recording saw: the forward batches of every iteration (mode, requests in
order, cached tokens of extend batches), the finishes and the retractions.
Runs with sglang and pytest only:  python -m pytest <this file>
"""

import json
import os
from pathlib import Path

import pytest

from sglang.test.scripted_runtime.context.http_post import _http_post_and_await_recv_msg
from sglang.test.scripted_runtime import http_server
from sglang.test.scripted_runtime.http_server import ScriptedHttpServer
from sglang.test.scripted_runtime.req_handle import ScriptedReqHandle

RECORDING = {recording}

# The engine that made the recording: a tiny GPT-2 with dummy weights (its
# config.json is written by the test) and token-oracle sampling (output
# tokens are a hash of rid and position, the same on every machine).
MODEL_CONFIG = {model_config}
ENGINE_KWARGS = {engine_kwargs}
ENGINE_ENV = {engine_env}

ITERATIONS = {iterations}  # scheduler loop iterations the recording ran


def start_req(**kwargs):
    return ("start_req", kwargs)


def generate(rid, input_ids, sampling, stream=True, **extra):
    return ("generate", dict(rid=rid, input_ids=input_ids, sampling=sampling, stream=stream, **extra))


def abort(rid):
    return ("abort", dict(rid=rid))


def abort_all():
    return ("abort_all", {{}})


def pause(mode):
    return ("pause", dict(mode=mode))


def resume(torch_empty_cache=False):
    return ("continue", dict(torch_empty_cache=torch_empty_cache))


def flush_cache():
    return ("flush", {{}})


{prompts}# (iteration, input): what the scheduler pulls in that iteration, in order
INPUTS = [
{inputs}
]

{batches}
{finished}
{retracted}

def _send(ctx, kind, args):
    if kind == "start_req":
        ctx.start_req(**args)
    elif kind == "generate":
        payload = {{"input_ids": args["input_ids"], "sampling_params": args["sampling"],
                    "rid": args["rid"], "stream": args["stream"]}}
        payload.update({{k: v for k, v in args.items()
                        if k not in ("input_ids", "sampling", "rid", "stream")}})
        rid = args["rid"]
        _http_post_and_await_recv_msg(ctx, path="/generate", json=payload,
                                      predicate=lambda obj: getattr(obj, "rid", None) == rid,
                                      description=f"request with rid {{rid!r}}")
    elif kind == "abort":
        ctx.abort(ScriptedReqHandle(rid=args["rid"], context=ctx))
    elif kind == "abort_all":
        ctx.abort_all()
    elif kind == "pause":
        ctx.pause_generation(mode=args["mode"])
    elif kind == "continue":
        ctx.continue_generation(torch_empty_cache=args["torch_empty_cache"])
    elif kind == "flush":
        ctx.flush_cache()


def _fold(batches):
    out = []
    for i, mode, rids, cached in batches:
        last = out[-1] if out else None
        if last is not None and mode == "decode" and last[2] == "decode" and last[3] == rids and last[1] == i - 1:
            last[1] = i
        else:
            out.append([i, i, mode, rids, cached])
    return [tuple(r) for r in out]


def run_recorded_inputs(ctx, out_path):
    """The script (runs in the scheduler, one loop iteration per yield): feed
    INPUTS at their iterations, and write what each iteration did to out_path."""
    scheduler = ctx.scheduler
    log = scheduler.scripted_scheduler_hook._batch_log
    by_iteration = {{}}
    for i, (kind, args) in INPUTS:
        by_iteration.setdefault(i, []).append((kind, args))
    reqs, done, retractions = {{}}, set(), {{}}
    batches, finished, retracted = [], [], []
    for i in range(ITERATIONS):
        for kind, args in by_iteration.get(i, ()):
            _send(ctx, kind, args)
            if kind in ("start_req", "generate"):
                reqs[args["rid"]] = None
        seen = len(log)
        yield  # the scheduler runs iteration i
        last = scheduler.last_batch
        for record in log[seen:]:
            cached = None
            if record.mode in ("extend", "mixed") and last is not None and last.forward_iter == record.forward_iter:
                cached = [int(n) for n in last.prefix_lens]
            batches.append((i, record.mode, " ".join(record.rids), cached))
        for rid in reqs:
            if rid in done:
                continue
            req = ctx.find_req_by_rid(rid) or reqs[rid]
            reqs[rid] = req
            if req is None:
                continue
            if req.retraction_count != retractions.get(rid, 0):
                retractions[rid] = req.retraction_count
                retracted.append((i, rid))
            if req.finished_reason is not None:
                reason = req.finished_reason.to_json().get("type", type(req.finished_reason).__name__)
                finished.append((i, rid, reason, len(req.output_ids)))
                done.add(rid)
    Path(out_path).write_text(json.dumps({{"batches": _fold(batches), "finished": finished,
                                          "retracted": retracted}}))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = tmp_path_factory.mktemp("model")
    (model / "config.json").write_text(json.dumps(MODEL_CONFIG))
    saved = dict(os.environ)
    os.environ.update(ENGINE_ENV)
    # the scheduler imports this file to run its script
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join([here] + [p for p in [saved.get("PYTHONPATH")] if p])
    try:
        srv = ScriptedHttpServer.start(model_path=str(model), **ENGINE_KWARGS)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield srv
    http_server.SHUTDOWN_JOIN_TIMEOUT_S = 5.0  # upstream waits 60 s for the server to exit by itself
    srv.shutdown()


def test_{test_name}(server, tmp_path):
    out = tmp_path / "observed.json"
    server.execute_script(run_recorded_inputs, args=(str(out),), timeout_s=600)
    observed = json.loads(out.read_text())
    as_tuples = lambda rows: [tuple(r) for r in rows]
    assert as_tuples(observed["batches"]) == [tuple(r) for r in BATCHES]
    assert as_tuples(observed["finished"]) == FINISHED
    assert as_tuples(observed["retracted"]) == RETRACTED
'''
