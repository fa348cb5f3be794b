"""How well a timed replay predicts serving latency, measured against real
recordings of the same traffic.

    capture  Two plain `python -m sglang.launch_server` servers, one after
             the other, with SGLREPLAY_RECORD_DIR set and one scheduling
             argument changed (A: --chunked-prefill-size 256, B: 64), each
             driven by the same traffic from sglang's own bench_serving
             (the same seed: the same prompts, lengths and arrival times):
             first below saturation (a fixed request rate), then at
             saturation (a fixed number of requests always in flight).
             --device cuda (on the lent GPU: OUT=... SCRIPT=tools/bench/timed_prediction.py
             SCRIPT_ARGS=capture tools/gpu/capture_on_device.sh --device cuda)
             uses the README's GPU configuration (GPT-2 architecture,
             128,256-token vocabulary, bf16, CUDA graphs, overlap schedule);
             --device cpu the embedded model on this machine.
    predict  Here, on the CPU: fit the cost model on A only (`sgl-replay
             cost`), replay A's trace on the modelled clock with A's
             arguments (fidelity) and with B's (the prediction), model
             skipped, and compare each with the real recording of that
             configuration (`sgl-replay latency`), per traffic phase. Also
             times the plain replay and the modelled replay of A side by side.

    python tools/bench/timed_prediction.py capture --out DIR [--device cpu]
    python tools/bench/timed_prediction.py predict DIR
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gpu"))
from capture_on_device import stop, wait_ready  # noqa: E402  (a sibling tool, not a package)

CONFIGS = {"a": ["--chunked-prefill-size", "256"], "b": ["--chunked-prefill-size", "64"]}
# The GPU configuration of tools/gpu/capture_on_device.py.
GPU_MODEL = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 256, "n_head": 4,
             "n_layer": 2, "n_positions": 8192, "n_ctx": 8192, "vocab_size": 128256,
             "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}
GPU_ARGS = ["--load-format", "dummy", "--attention-backend", "triton", "--sampling-backend", "pytorch",
            "--dtype", "bfloat16", "--mem-fraction-static", "0.15", "--random-seed", "0",
            "--max-total-tokens", "200000", "--max-running-requests", "64"]
# Per device: (prompt tokens, output tokens, (requests, rate/s) below
# saturation, (requests, in flight) at saturation)
TRAFFIC = {"cuda": (576, 64, (300, 10.0), (600, 64)), "cpu": (192, 16, (40, 2.0), (48, 12))}
PHASE_GAP_S = 3.0  # the pause between the traffic phases


# ------------------------------------------------------------------ capture
def server_args(device: str) -> tuple[str, list[str]]:
    from sgl_replay.runs.embedded_model import EMBEDDED_MODEL_CONFIG, write_model_dir
    from sgl_replay.runs.engine import DEFAULT_ENGINE_ARGS

    if device == "cuda":
        return write_model_dir(GPU_MODEL), GPU_ARGS
    args = []
    for key, value in DEFAULT_ENGINE_ARGS.items():
        if key in ("skip_tokenizer_init", "sampling_backend"):
            continue
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [] if value is False or value is None else [flag, str(value)]
    return write_model_dir(EMBEDDED_MODEL_CONFIG), args + ["--sampling-backend", "pytorch"]


def bench(port: int, model: str, out: str, *, n: int, rate: float, concurrency: int, device: str, seed: int) -> dict:
    prompt, output, _, _ = TRAFFIC[device]
    cmd = [sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang", "--base-url",
           f"http://127.0.0.1:{port}", "--model", model, "--tokenizer", model, "--dataset-name", "random-ids",
           "--tokenize-prompt", "--num-prompts", str(n), "--random-input-len", str(prompt),
           "--random-output-len", str(output), "--random-range-ratio", "0.5", "--request-rate", str(rate),
           "--temperature", "1.0", "--seed", str(seed), "--disable-tqdm", "--warmup-requests", "1",
           "--output-file", out]
    if concurrency:
        cmd += ["--max-concurrency", str(concurrency)]
    with open(out + ".log", "wb") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=600).returncode
    if code != 0:
        raise RuntimeError(f"bench_serving exit {code}: {Path(out + '.log').read_text()[-2000:]}")
    return json.loads(Path(out).read_text().strip().splitlines()[-1])


def capture(out: str, device: str) -> None:
    """Traces to OUT/a and OUT/b, bench_serving's figures to OUT/bench.json;
    server logs to /tmp, raw client output to a scratch folder (the device tool brings
    back 8 files at most)."""
    os.makedirs(out, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="timed-prediction-")
    model, base = server_args(device)
    _, _, below, saturated = TRAFFIC[device]
    figures = {}
    for k, (name, extra) in enumerate(CONFIGS.items()):
        port = 31000 + k
        env = {**os.environ, "SGLREPLAY_RECORD_DIR": os.path.join(out, name),
               "SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND": "python"}
        log = open(f"/tmp/{name}.log", "wb")  # where capture_on_device's wait_ready looks
        proc = subprocess.Popen([sys.executable, "-m", "sglang.launch_server", "--model-path", model,
                                 "--host", "127.0.0.1", "--port", str(port), *base, *extra],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_ready(port, proc, name)
            # a throw-away round first: Triton compiles on first use
            bench(port, model, os.path.join(scratch, f"{name}-warm.jsonl"), n=32, rate=float("inf"), concurrency=16,
                  device=device, seed=99)
            time.sleep(PHASE_GAP_S)
            figures[name] = {
                "below": bench(port, model, os.path.join(scratch, f"{name}-below.jsonl"), n=below[0], rate=below[1],
                               concurrency=0, device=device, seed=1)}
            time.sleep(PHASE_GAP_S)
            figures[name]["saturated"] = bench(port, model, os.path.join(scratch, f"{name}-saturated.jsonl"),
                                               n=saturated[0], rate=float("inf"), concurrency=saturated[1],
                                               device=device, seed=2)
        finally:
            stop(proc)
        print(name, {p: {k: round(v, 2) for k, v in f.items() if k in (
            "request_throughput", "output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms")}
            for p, f in figures[name].items()}, flush=True)
    Path(out, "bench.json").write_text(json.dumps(figures))


# ------------------------------------------------------------------ predict
def trace_of(out: str, name: str) -> str:
    found = sorted(glob.glob(os.path.join(out, name, "*.sglt")))
    if not found:
        raise SystemExit(f"no trace under {os.path.join(out, name)}")
    return found[0] if len(found) == 1 else os.path.join(out, name)


def phases(path: str, sizes: dict[str, int]) -> dict[str, dict]:
    """Latency summaries of the traffic phases and of the whole trace. In
    arrival order the trace ends with the below-saturation phase's requests,
    the saturated phase's warm-up request, then its requests (`sizes`)."""
    from sgl_replay.timing import latency

    times = latency.of_trace(path)
    ordered = sorted(times.requests, key=lambda r: r.arrival)
    saturated = ordered[len(ordered) - sizes["saturated"]:]
    below = ordered[len(ordered) - sizes["saturated"] - 1 - sizes["below"]:len(ordered) - sizes["saturated"] - 1]
    out = {"all": times.summary()}
    for name, part in (("below", below), ("saturated", saturated)):
        out[name] = latency.Latency(part, clock=times.clock).summary()
    return out


def predict(out: str) -> None:
    from sgl_replay.runs.check import read_header
    from sgl_replay.runs.pool import EnginePool
    from sgl_replay.runs.replay import engine_config_for, replay_trace
    from sgl_replay.timing import latency
    from sgl_replay.timing.fit import fit

    a = trace_of(out, "a")
    model = fit([a])
    Path(out, "cost-a.json").write_bytes(model.to_json())
    print(f"cost model fitted on A: {model.source.iterations} iterations, held-out median error "
          f"{model.fit.median_abs_pct}%, p90 {model.fit.p90_abs_pct}%, total time {model.fit.total_pct:+}%")
    header = read_header(a)
    bench = json.loads(Path(out, "bench.json").read_text())
    sizes = {phase: int(bench["a"][phase]["completed"]) for phase in ("below", "saturated")}
    # bench_serving keeps this many in flight at saturation: a closed loop
    in_flight = TRAFFIC["cuda" if header.device.type == "cuda" else "cpu"][3][1]
    recorded_s = header_seconds(a)
    pool = EnginePool(max_live=1)
    rows = []
    try:
        for target, args in (("a", CONFIGS["a"]), ("b", CONFIGS["b"])):
            engine_args = {args[0].lstrip("-").replace("-", "_"): int(args[1])}
            engine = pool.get(engine_config_for(header, engine_args=engine_args))
            if target == "a":  # the plain replay, timed beside the modelled one
                started = time.monotonic()
                replay_trace(engine, a, os.path.join(out, "a-plain-replay.sglt"), overrides={"skip_model": True})
                plain_s = time.monotonic() - started
                # a replay reusing rids waits out sglang's stream-abort window first: not timed
                time.sleep(2.5)
            predicted = os.path.join(out, f"predicted-{target}.sglt")
            started = time.monotonic()
            replay_trace(engine, a, predicted, cost=model, overrides={
                "skip_model": True, "engine_args": engine_args, "max_in_flight": in_flight})
            modelled_s = time.monotonic() - started
            real = phases(trace_of(out, target), sizes)
            guess = phases(predicted, sizes)
            for phase in ("below", "saturated", "all"):
                error = latency.compare(real[phase], guess[phase])
                rows.append((target, phase, real[phase], guess[phase], error))
            if target == "a":
                print(f"replay speed on this machine, A ({recorded_s:.1f} s recorded): plain {plain_s:.1f} s "
                      f"({plain_s / recorded_s:.2f}x), modelled {modelled_s:.1f} s ({modelled_s / recorded_s:.2f}x)")
    finally:
        pool.close()
    print("| predicted | phase | requests | TTFT p50 real / predicted (ms) | TTFT median abs error | "
          "TTFT p90 error | E2E median abs error | throughput error |")
    print("|---|---|---|---|---|---|---|---|")
    for target, phase, real, guess, e in rows:
        print(f"| {target.upper()} from A | {phase} | {e['requests_compared']} | {real['ttft_ms']['p50']} / "
              f"{guess['ttft_ms']['p50']} | {e['ttft_median_abs_pct']}% | {e['ttft_p90_pct']}% | "
              f"{e['e2e_median_abs_pct']}% | {e['throughput_pct']}% |")
    Path(out, "prediction.json").write_text(json.dumps(
        [{"target": t, "phase": p, "error": e, "real": {k: v for k, v in r.items() if k != "per_request"},
          "predicted": {k: v for k, v in g.items() if k != "per_request"}} for t, p, r, g, e in rows]))


def header_seconds(path: str) -> float:
    from sgl_replay.trace import TraceReader

    with TraceReader(path) as reader:
        for _ in reader.iterations():
            pass
        return float(reader.end.seconds or 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("capture")
    c.add_argument("--out", required=True)
    c.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p = sub.add_parser("predict")
    p.add_argument("out")
    args = parser.parse_args()
    if args.command == "capture":
        capture(args.out, args.device)
    else:
        predict(args.out)


if __name__ == "__main__":
    main()
