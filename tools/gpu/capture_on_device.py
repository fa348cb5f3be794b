"""On the lent GPU machine (tools/gpu/capture_on_device.sh runs it): plain
`python -m sglang.launch_server` servers with SGLREPLAY_RECORD_DIR set, a
production-sized vocabulary (GPT-2 architecture, 128,256 ids, bf16, dummy
weights), CUDA graphs and the overlap schedule on, real sampling
(temperature 1.0 in every request's sampling params), driven by sglang's own
bench_serving with shared prefixes.

Five servers share the GPU, started together:
    short    recording; a short burst (a golden CI replays on CPU)
    kv       recording; a 4,096-token KV pool, schedule_conservativeness 0.3
             and EOS honoured, so that the scheduler over-admits and retracts
             (a golden CI replays on CPU)
    sat      recording; max_running_requests 32 and 64 requests always in
             flight, for at least 60 s: saturated (the replay-speed trace)
    long     recording, and plain, the same configuration without it: the
             overhead pairs (rounds alternate which goes first)
Traces, bench results and one JSON line of figures go to OUT.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

from sgl_replay.runs.embedded_model import write_model_dir

MODEL = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 256, "n_head": 4,
         "n_layer": 2, "n_positions": 8192, "n_ctx": 8192, "vocab_size": 128256,
         "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}
SERVER_ARGS = ["--load-format", "dummy", "--attention-backend", "triton", "--sampling-backend", "pytorch",
               "--dtype", "bfloat16", "--mem-fraction-static", "0.15", "--random-seed", "0"]
READY_S = 400


def start(name: str, port: int, model: str, out: str, extra: list[str], record: bool) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("SGLREPLAY_RECORD_DIR", None)
    if record:
        env["SGLREPLAY_RECORD_DIR"] = os.path.join(out, name)
    log = open(f"/tmp/{name}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "sglang.launch_server", "--model-path", model,
                             "--host", "127.0.0.1", "--port", str(port), *SERVER_ARGS, *extra],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_ready(port: int, proc: subprocess.Popen, name: str) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} died: {open(f'/tmp/{name}.log').read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{name} not ready in {READY_S}s")


def bench(port: int, model: str, out_file: str, *, groups: int, per_group: int, rate: float,
          system_len: int = 512, question_len: int = 64, output_len: int = 128, seed: int = 1,
          concurrency: int = 0, honour_eos: bool = False, random_ids: bool = False) -> dict:
    cmd = [sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang",
           "--base-url", f"http://127.0.0.1:{port}", "--tokenizer", model, "--model", model,
           "--request-rate", str(rate), "--seed", str(seed),
           "--temperature", "1.0", "--disable-tqdm", "--output-file", out_file]
    if random_ids:  # no prompt text to build and tokenize: the client starts in seconds
        cmd += ["--dataset-name", "random-ids", "--tokenize-prompt", "--num-prompts", str(groups * per_group),
                "--random-input-len", str(system_len + question_len), "--random-output-len", str(output_len),
                "--random-range-ratio", "1.0"]
    else:
        cmd += ["--dataset-name", "generated-shared-prefix", "--tokenize-prompt",
                "--gsp-num-groups", str(groups), "--gsp-prompts-per-group", str(per_group),
                "--gsp-system-prompt-len", str(system_len), "--gsp-question-len", str(question_len),
                "--gsp-output-len", str(output_len)]
    # (bench_serving's --temperature goes into sampling_params; a top-level
    # "temperature" in --extra-request-body is ignored by the server, which
    # then samples greedily)
    if concurrency:
        cmd += ["--max-concurrency", str(concurrency)]
    if honour_eos:
        cmd.append("--disable-ignore-eos")
    log = out_file + ".log"
    with open(log, "wb") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=400).returncode
    if code != 0:
        tail = [l for l in open(log, errors="replace").read().splitlines() if "regex" not in l][-30:]
        raise RuntimeError(f"bench_serving exit {code}:\n" + "\n".join(tail))
    with open(out_file) as f:
        return json.loads(f.read().strip().splitlines()[-1])


def trace_figures(path: str) -> dict:
    """What `sgl-replay stats` says of a trace (retractions, recorder share)."""
    done = subprocess.run([sys.executable, "-m", "sgl_replay.cli", "stats", path, "--json"],
                          capture_output=True, text=True, timeout=120)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": (done.stdout + done.stderr)[-500:]}


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server process, as a service manager stops it: the
    server drains and tells its scheduler to shut down, and the recorder
    closes its trace (a SIGTERM to the scheduler itself kills it outright)."""
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def captures(model: str, procs: dict) -> dict:
    """The short, KV-pressure and saturation recordings."""
    figures = {"short": bench(30003, model, "/tmp/short.jsonl", groups=4, per_group=8, rate=32),
               "kv": bench(30004, model, "/tmp/kv.jsonl", groups=4, per_group=12, rate=64, honour_eos=True)}
    # Saturation: measure the drain rate with 64 in flight, then send enough
    # for 65 s of it
    calib = bench(30005, model, "/tmp/sat-calib.jsonl", groups=4, per_group=64, rate=float("inf"),
                  concurrency=64, seed=5)
    per_group = max(8, int(calib["request_throughput"] * 65 / 16))
    sat_started = time.monotonic()
    figures["sat"] = bench(30005, model, "/tmp/sat.jsonl", groups=16, per_group=per_group,
                           rate=float("inf"), concurrency=64, seed=3)
    figures["sat_wall_s"] = round(time.monotonic() - sat_started, 1)
    stop(procs["sat"])  # its trace ends with the saturation
    return figures


def control_rounds(model: str, servers: dict, started: float, args) -> list:
    """Saturating load (64 requests always in flight) on each server in
    turn, the order rotating every round: recorded against plain beside
    plain against plain (the noise floor of the comparison)."""
    names = list(servers)
    keys = ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms", "duration")
    rounds = []
    for k in range(args.pairs):
        if time.monotonic() - started > args.budget_s:
            break
        order = names[k % len(names):] + names[:k % len(names)]
        result = {}
        for name in order:
            r = bench(servers[name][0], model, f"/tmp/ctl-{k}-{name}.jsonl", groups=16, per_group=40,
                      rate=float("inf"), concurrency=64, seed=100 + k, random_ids=args.random_ids)
            result[name] = {key: r.get(key) for key in keys}
        rounds.append(result)
        print(json.dumps(result), flush=True)
    return rounds


def affinities(procs: dict) -> dict:
    """CPUs each server's processes may run on (sglang may pin its
    scheduler; servers sharing one GPU would then share those cores)."""
    out = {}
    for name, proc in procs.items():
        seen = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[2]) != proc.pid:  # process group: the server's session
                    continue
                with open(f"/proc/{entry}/comm") as f:
                    comm = f.read().strip()
                cpus = sorted(os.sched_getaffinity(int(entry)))
                seen.append(f"{comm}:{cpus[0]}-{cpus[-1]}({len(cpus)})")
            except (OSError, IndexError, ValueError):
                continue
        out[name] = seen
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--budget-s", type=float, default=440, help="no new overhead pair after this long")
    parser.add_argument("--pairs-only", action="store_true", help="only the long and plain servers' pairs")
    parser.add_argument("--control", action="store_true",
                        help="saturating rounds over three servers, one recording and two plain "
                             "(recorded against plain beside the noise floor, plain against plain)")
    parser.add_argument("--random-ids", action="store_true",
                        help="control rounds with random token ids instead of shared prefixes")
    parser.add_argument("--warm-saturated", action="store_true",
                        help="warm every server up with one saturating round (not counted)")
    args = parser.parse_args()
    out = args.out
    model = write_model_dir(MODEL)
    pool = ["--max-total-tokens", "200000"]
    servers = {"short": (30003, pool, True),
               "kv": (30004, ["--max-total-tokens", "4096", "--schedule-conservativeness", "0.3"], True),
               "sat": (30005, [*pool, "--max-running-requests", "32"], True),
               "long": (30001, pool, True), "plain": (30002, pool, False)}
    if args.pairs_only or args.control:
        servers = {name: servers[name] for name in ("long", "plain")}
    if args.control:
        servers["plain2"] = (30006, pool, False)
    procs = {name: start(name, port, model, out, extra, record)
             for name, (port, extra, record) in servers.items()}
    figures: dict = {}
    try:
        started = time.monotonic()
        for name, (port, _, _) in servers.items():
            wait_ready(port, procs[name], name)
        figures["ready_s"] = round(time.monotonic() - started, 1)
        # Triton compiles on first use: warm every server up (unrecorded
        # traffic lands in the traces too; it is part of the run)
        for name, (port, _, _) in servers.items():
            if args.warm_saturated:  # every batch size the rounds reach, compiled and captured once
                bench(port, model, f"/tmp/warm-{name}.jsonl", groups=16, per_group=16, rate=float("inf"),
                      concurrency=64, seed=7, random_ids=args.random_ids)
            else:
                bench(port, model, f"/tmp/warm-{name}.jsonl", groups=2, per_group=4, rate=100, seed=7)
        if not (args.pairs_only or args.control):
            figures.update(captures(model, procs))
        if args.control:
            figures["cpus"] = os.cpu_count()
            figures["affinity"] = affinities(procs)
            rounds = figures["rounds"] = control_rounds(model, servers, started, args)
            for a, b in (("long", "plain"), ("plain2", "plain"), ("long", "plain2")):
                ratios = [r[a]["output_throughput"] / r[b]["output_throughput"] for r in rounds]
                figures[f"ratio_{a}_over_{b}"] = [round(x, 4) for x in ratios]
                figures[f"ratio_{a}_over_{b}_median"] = round(statistics.median(ratios), 4) if ratios else None
            raise SystemExit(0)
        pairs = []
        for k in range(args.pairs):
            if time.monotonic() - started > args.budget_s:
                break
            order = [("long", 30001), ("plain", 30002)] if k % 2 == 0 else [("plain", 30002), ("long", 30001)]
            result = {}
            for name, port in order:
                result[name] = bench(port, model, f"/tmp/pair-{k}-{name}.jsonl", groups=16, per_group=24,
                                     rate=64, seed=100 + k)
            pairs.append(result)
        keys = ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms",
                "completed", "duration")
        figures["pairs"] = [{side: {k: r[side].get(k) for k in keys} for side in r} for r in pairs]
        ratios = [p["long"]["output_throughput"] / p["plain"]["output_throughput"] for p in pairs] or [float("nan")]
        figures["throughput_ratio_median"] = round(statistics.median(ratios), 4)
        figures["throughput_ratios"] = [round(r, 4) for r in ratios]
    except SystemExit:
        pass
    except BaseException as e:  # noqa: BLE001 — keep what was recorded (a timeout is SIGINT), say what failed
        figures["error"] = str(e)[-3000:]
    finally:
        for proc in procs.values():
            stop(proc)
        with open(os.path.join(out, "logs.txt"), "w") as f:
            for name in servers:
                text = open(f"/tmp/{name}.log", errors="replace").read()
                lines = [l for l in text.splitlines() if "sgl-replay" in l or "Error" in l or "error" in l]
                f.write(f"== {name}\n" + "\n".join(lines[-40:]) + "\n" + "\n".join(text.splitlines()[-15:]) + "\n")
    for name in ("long", "short", "kv", "sat"):
        traces = sorted(glob.glob(os.path.join(out, name, "*.sglt")))
        figures[f"{name}_traces"] = [os.path.basename(t) for t in traces]
        if traces:
            shutil.move(traces[-1], os.path.join(out, f"{name}.sglt"))
            figures[f"{name}_stats"] = trace_figures(os.path.join(out, f"{name}.sglt"))
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    figures["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True).stdout.strip()
    with open(os.path.join(out, "figures.json"), "w") as f:
        json.dump(figures, f, indent=1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
