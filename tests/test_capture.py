"""Capture of a plain sglang server (`SGLREPLAY_RECORD_DIR=DIR python -m
sglang.launch_server ...`), driven by sglang's own bench_serving with real
sampling, then replayed on the embedded engine with zero divergence.

One plain recording server serves the live tests of this module (an engine
start is ~40 s on 2 cores); the failure paths that need no server are
checked on the recorder directly, and one more server checks that an
injected recorder fault leaves serving alone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import pytest

from sgl_replay.convert.export import export, trace_requests
from sgl_replay.runs.check import check
from sgl_replay.runs.embedded_model import EMBEDDED_MODEL_CONFIG, write_model_dir
from sgl_replay.runs.engine import DEFAULT_ENGINE_ARGS
from sgl_replay.runs.replay import engine_config_for, replay_trace
from sgl_replay.timing import latency
from sgl_replay.timing.model import FEATURES, FORMAT, KIND, CostModel
from sgl_replay.trace.format import unpack_ids
from sgl_replay.trace.format import End
from sgl_replay.trace.reader import TraceReader

if TYPE_CHECKING:
    from sgl_replay.scheduler import capture

# A recording of a public trace (the Mooncake slice at 1/32 of its lengths),
# exported as Mooncake JSONL for sglang's bench_serving to send.
MOONCAKE_GOLDEN = Path(__file__).parent.parent / "traces" / "mooncake_prefix_reuse.sglt"
READY_MARKER = "The server is fired up and ready to roll"
READY_TIMEOUT_S = 300
# The server's start: the embedded engine's arguments, but a tokenizer and
# real sampling (the client asks for temperature 1.0).
SERVER_ARGS = {k: v for k, v in DEFAULT_ENGINE_ARGS.items() if k not in ("skip_tokenizer_init", "sampling_backend")}
SERVER_ARGS["sampling_backend"] = "pytorch"
SERVER_ENV = {"SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND": "python", "PYTHONUNBUFFERED": "1"}
# Client-measured latency minus the capture's, per request: a token is
# stamped at the end of the loop iteration that sent it, a little after it
# left the scheduler, so the client may see it up to GAP_BELOW_MS sooner;
# the HTTP, tokenizer and detokenizer hops (on 2 cores shared by the
# server's three processes and the client) are at most OUTSIDE_SHARE of
# what the client measures plus OUTSIDE_FLOOR_MS, at the median (measured:
# 5 ms of a 12 ms TTFT on a quiet machine, 474 ms of 3.3 s on a loaded one).
GAP_BELOW_MS, OUTSIDE_SHARE, OUTSIDE_FLOOR_MS = 30.0, 0.5, 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(args: dict) -> list[str]:
    out = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is not False and value is not None:
            out += [flag, str(value)]
    return out


class Server:
    """A plain `python -m sglang.launch_server` in a session of its own."""

    def __init__(self, tmp: Path, name: str, env: dict) -> None:
        self.model = write_model_dir(EMBEDDED_MODEL_CONFIG)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"{name}.log"
        args = {"model_path": self.model, **SERVER_ARGS, "host": "127.0.0.1", "port": self.port}
        full_env = {**os.environ, **SERVER_ENV, **env}
        for key in ("SGLREPLAY_ACTIVE",):
            full_env.pop(key, None)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "sglang.launch_server", *_cli(args)],
                                         stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                         start_new_session=True, cwd=str(tmp))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while READY_MARKER not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"server did not start; log {self.log}:\n{self.text()[-3000:]}")
            time.sleep(0.5)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def generate(self, body: dict, timeout: float = 60) -> dict:
        request = urllib.request.Request(self.url + "/generate", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as a service manager stops a server: sglang drains, sends
        its schedulers a ShutdownReq, and the recorder closes the trace."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _bench(server: Server, out: Path, *, prompts: int = 64, rate: float = 16, seed: int = 1) -> dict:
    """sglang's own benchmark client against the server: random token-id
    prompts of exact lengths, real sampling, EOS honoured (finishes vary)."""
    cmd = [sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang", "--base-url", server.url,
           "--model", server.model, "--tokenizer", server.model, "--dataset-name", "random-ids",
           "--tokenize-prompt", "--num-prompts", str(prompts), "--random-input-len", "96",
           "--random-output-len", "48", "--random-range-ratio", "0.2", "--request-rate", str(rate),
           "--temperature", "1.0", "--disable-ignore-eos", "--seed", str(seed), "--disable-tqdm",
           "--warmup-requests", "1", "--output-file", str(out), "--output-details"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text().strip().splitlines()[-1])


def _bench_mooncake(server: Server, trace: Path, out: Path) -> dict:
    """bench_serving's own Mooncake mode on a trace file: each row sent at its
    timestamp with its output length (ignore_eos), the prompt built by
    bench_serving from the row's hash_ids."""
    rows = len(trace.read_text().splitlines())
    cmd = [sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang", "--base-url", server.url,
           "--model", server.model, "--tokenizer", server.model, "--dataset-name", "mooncake",
           "--dataset-path", str(trace), "--num-prompts", str(rows), "--disable-tqdm",
           "--output-file", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text().strip().splitlines()[-1])


def _traces(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.sglt"))


# ------------------------------------------------------------------ the capture
@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """A plain recording server, driven by bench_serving (64 requests
    arriving at 16/s, then a recording's Mooncake export in bench_serving's
    Mooncake mode), a multi-turn conversation, an aborted stream, then
    stopped with SIGTERM. Returns (trace, bench result, server log, extras)."""
    tmp = tmp_path_factory.mktemp("capture")
    record_dir = tmp / "traces"
    server = Server(tmp, "server", {"SGLREPLAY_RECORD_DIR": str(record_dir)})
    extras = {}
    try:
        started = time.monotonic()
        result = _bench(server, tmp / "bench.jsonl")
        extras["bench_s"] = time.monotonic() - started
        mooncake = tmp / "mooncake.jsonl"
        # bench_serving's mooncake mode reads every hash id as a 512-token block
        export(str(MOONCAKE_GOLDEN), str(mooncake), block_size=512)
        extras["mooncake"] = (mooncake, _bench_mooncake(server, mooncake, tmp / "bench-mooncake.jsonl"))
        # Multi-turn: the second turn's prompt holds the first turn and its answer.
        first_prompt = list(range(10, 74))
        first = server.generate({"input_ids": first_prompt, "rid": "turn-1",
                                 "sampling_params": {"temperature": 1.0, "max_new_tokens": 16}})
        second_prompt = first_prompt + first["output_ids"] + list(range(200, 232))
        server.generate({"input_ids": second_prompt, "rid": "turn-2",
                         "sampling_params": {"temperature": 1.0, "max_new_tokens": 16}})
        extras["turns"] = (len(first_prompt), len(first["output_ids"]))
        # A client that goes away mid-stream: sglang aborts the request.
        request = urllib.request.Request(server.url + "/generate", data=json.dumps(
            {"input_ids": list(range(300, 340)), "rid": "gone", "stream": True,
             "sampling_params": {"temperature": 1.0, "max_new_tokens": 3000, "ignore_eos": True}}).encode(),
            headers={"Content-Type": "application/json"})
        response = urllib.request.urlopen(request, timeout=60)
        response.readline()
        response.close()
        time.sleep(4)  # sglang aborts ~2 s after the stream ends
        extras["alive_after"] = server.generate({"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 2}})
    finally:
        server.stop()
    traces = _traces(record_dir)
    return traces, result, server.text(), extras, tmp


def test_capture_is_written_and_complete(captured):
    traces, result, log, extras, _ = captured
    assert len(traces) == 1, traces  # the scheduler's driver only
    assert result["completed"] >= 64
    assert f"sgl-replay: recording this scheduler to {traces[0]}" in log
    with TraceReader(str(traces[0])) as reader:
        header = reader.header
        records = list(reader.iterations())
        end = reader.end
    assert end.complete, end
    assert header.workload.kind == "capture" and header.source.kind == "record"
    assert header.model.vocab_size == 1024 and header.model.context_length == 4096
    assert header.model.eos_token_ids == [2]
    assert header.engine_args["sampling_backend"] == "pytorch"
    assert header.not_replayable == []
    # it kept time: every iteration it holds (every one that ran a batch among them) says when it
    # ended, every input when it was pulled
    assert header.timing is not None and header.timing.clock == "wall"
    assert sum(1 for r in records if r.batches) > 100
    assert all(r.ms is not None for r in records) and all(len(r.arrivals) == len(r.inputs) for r in records)
    finished = {f[0]: f for r in records for f in r.finished}
    outputs = {o[0]: unpack_ids(o[1]) for r in records for o in r.outputs}
    assert set(outputs) == set(finished)
    assert all(len(outputs[n]) == finished[n][2] for n in finished)
    reasons = {f[1] for f in finished.values()}
    assert "length" in reasons


def _check(engines, trace: Path, observed: Path) -> tuple[int, dict]:
    """What `sgl-replay check TRACE --json -o OBSERVED` exits with and prints,
    from check() on the session's shared engines (tests/test_cli.py runs the
    command itself): both captures replay on one engine."""
    verdict = check(str(trace), pool=engines, observed=str(observed))
    return int(verdict.exit_code), verdict.to_plain(str(trace), str(observed))


def test_capture_replays_with_zero_divergence(captured, engines):
    """`sgl-replay check` on the capture: the embedded CPU engine sized to the
    recorded vocabulary and context, the recorded tokens forced."""
    traces, *_, tmp = captured
    code, verdict = _check(engines, traces[0], tmp / "replay.sglt")
    assert code == 0 and verdict["verdict"] == "same", "\n".join(verdict["report"]) + (verdict["message"] or "")
    result = verdict["diff"]
    assert result["level"] == "full" and not result["not_comparable"]
    assert result["iterations_compared"] > 100 and result["forwards_compared"] > 50
    # what the headers differ in is said, as notes
    assert any("sampling backend: pytorch vs token_oracle" in n for n in result["header_notes"])


def test_latency_of_the_capture_is_what_bench_serving_measured_less_the_time_outside_the_scheduler(captured):
    """Per request, `sgl-replay latency` of the capture against sglang's own
    bench_serving for the same requests: TTFT, and E2E (its TTFT plus its
    inter-token gaps). The client's figures add the time outside the
    scheduler (HTTP, tokenizer, detokenizer, streaming, and the wait for the
    scheduler's next pull), so the difference is never much below zero and
    is a small part of what the client measured. Requests pair up in send
    order: bench_serving's 64 follow its warm-up request (a copy of its
    first), matched by prompt and output length."""
    traces, result, _, _, _ = captured
    with TraceReader(str(traces[0])) as reader:
        records = list(reader.iterations())
    prompt = {x.rid: len(x.input_ids) // 4 for r in records for x in r.inputs if x.kind == "generate"}
    times = latency.of_trace(str(traces[0])).summary()["per_request"]
    ours = [((prompt[rid], t["output_len"]), t) for rid, t in times.items()]  # in pull order
    sent = list(zip(zip(result["input_lens"], result["output_lens"]), result["ttfts"], result["itls"]))
    assert len(sent) == 64
    start = max(range(len(ours) - len(sent) + 1),
                key=lambda j: sum(ours[j + k][0] == key for k, (key, _, _) in enumerate(sent)))
    pairs = [(ours[start + k][1], ttft, itls) for k, (key, ttft, itls) in enumerate(sent) if ours[start + k][0] == key]
    assert len(pairs) >= 60  # a request or two may be pulled out of send order
    for name, client, mine in (
            ("TTFT", [ttft * 1000 for _, ttft, _ in pairs], [t["ttft_ms"] for t, _, _ in pairs]),
            ("E2E", [(ttft + sum(itls)) * 1000 for _, ttft, itls in pairs], [t["e2e_ms"] for t, _, _ in pairs])):
        gaps = sorted(c - m for c, m in zip(client, mine))
        median_client = sorted(client)[len(client) // 2]
        print(f"{name}: bench_serving median {median_client:.1f} ms; bench_serving - sgl-replay latency: median "
              f"{gaps[len(gaps) // 2]:.1f} ms, from {gaps[0]:.1f} to {gaps[-1]:.1f} ms")
        assert gaps[0] > -GAP_BELOW_MS, gaps
        assert gaps[len(gaps) // 2] < OUTSIDE_SHARE * median_client + OUTSIDE_FLOOR_MS, (gaps, median_client)


def test_multi_turn_reuses_the_cached_prefix(captured):
    traces, _, _, extras, _ = captured
    with TraceReader(str(traces[0])) as reader:
        records = list(reader.iterations())
    reqs = [x.rid for r in records for x in r.inputs if x.kind == "generate"]
    second = reqs.index("turn-2")
    cached = [c for r in records for b in r.batches if b.new for n, c in zip(b.reqs, b.cached) if n == second]
    prompt, answer = extras["turns"]
    assert cached and cached[0] >= prompt  # the first turn's prompt (and answer) came from the cache


def test_a_timed_replay_sends_the_next_turn_only_after_the_answer(captured, engines, tmp_path):
    """The capture on the modelled clock with a cost model far slower than
    the recorded server (every iteration 40 ms): the second turn of the
    conversation holds the first turn's answer, so it goes to the scheduler
    its recorded think time after the first turn finishes in the replay,
    later than it arrived in the recording."""
    traces, *_ = captured
    slow = CostModel(kind=KIND, format=FORMAT, features=list(FEATURES),
                     coef_ms=[40.0] + [0.0] * (len(FEATURES) - 1), floor_ms=40.0)
    with TraceReader(str(traces[0])) as reader:
        header = reader.header
    replayed = str(tmp_path / "slow.sglt")
    replay_trace(engines.get(engine_config_for(header)), str(traces[0]), replayed,
                 overrides={"skip_model": True}, cost=slow)

    def times(path):
        t = {r.rid: r for r in latency.of_trace(path).requests}
        return t["turn-1"], t["turn-2"]

    (rec1, rec2), (rep1, rep2) = times(str(traces[0])), times(replayed)
    think = rec2.arrival - rec1.finish
    assert think > 0 and rep1.finish > rec1.finish
    # sent then, and pulled at the next iteration boundary: within one modelled iteration
    assert rep1.finish + think - 1e-3 <= rep2.arrival <= rep1.finish + think + 40.0 + 1e-3
    assert rep2.arrival > rec2.arrival


def test_a_mooncake_export_is_what_bench_serving_sends_and_it_exports_back(captured, tmp_path):
    """Mooncake out: a recording's Mooncake export drives sglang's own
    bench_serving (--dataset-name mooncake), which sends each row at its
    timestamp with its output length; the capture of that traffic exports
    back to the same rows' output lengths and arrival times."""
    traces, _, _, extras, _ = captured
    sent, result = extras["mooncake"]
    rows = [json.loads(line) for line in sent.read_text().splitlines()]
    assert result["completed"] == len(rows) == 24
    back = tmp_path / "back.jsonl"
    export(str(traces[0]), str(back), block_size=16)
    captured_rows = [json.loads(line) for line in back.read_text().splitlines()]
    # the rows bench_serving sent in its trace run come just before the multi-turn conversation
    rids = [r.rid for r in trace_requests(str(traces[0]))[0]]
    end = rids.index("turn-1")
    mine = captured_rows[end - len(rows):end]
    assert [r["output_length"] for r in mine] == [r["output_length"] for r in rows]
    t0 = mine[0]["timestamp"]
    drift = [abs((m["timestamp"] - t0) - r["timestamp"]) for m, r in zip(mine, rows)]
    assert max(drift) < 1000, drift  # the file spans 4.3 s; here the scheduler pulls each within ~10 ms
    # bench_serving's prompts grow with the row's hash ids (129 words a block)
    by_blocks = {}
    for m, r in zip(mine, rows):
        by_blocks.setdefault(len(r["hash_ids"]), set()).add(m["input_length"])
    assert all(len(lengths) == 1 for lengths in by_blocks.values()), by_blocks
    ordered = [next(iter(by_blocks[k])) for k in sorted(by_blocks)]
    assert ordered == sorted(ordered) and len(set(ordered)) == len(ordered) >= 3


def test_disconnect_is_captured_as_an_abort(captured):
    traces, _, _, extras, _ = captured
    assert extras["alive_after"]["meta_info"]["completion_tokens"] == 2
    with TraceReader(str(traces[0])) as reader:
        records = list(reader.iterations())
    assert any(x.kind == "abort" and x.rid == "gone" for r in records for x in r.inputs)


@pytest.fixture(scope="module")
def captured_again(tmp_path_factory):
    """The same bench_serving traffic (same seed, same prompts) recorded by
    a second server whose trace rotates every ~8 KB."""
    tmp = tmp_path_factory.mktemp("capture-again")
    record_dir = tmp / "traces"
    server = Server(tmp, "server", {"SGLREPLAY_RECORD_DIR": str(record_dir), "SGLREPLAY_SEGMENT_BYTES": "8000"})
    try:
        _bench(server, tmp / "bench.jsonl")
    finally:
        server.stop()
    return record_dir, tmp


def _arrivals_and_lengths(path, n: int) -> tuple[list, list]:
    with TraceReader(str(path)) as reader:
        records = list(reader.iterations())
    arrivals = [r.i for r in records for x in r.inputs if x.kind == "generate"][:n]
    lengths = dict((f[0], f[2]) for r in records for f in r.finished)
    return arrivals, [lengths.get(k) for k in range(n)]


def test_same_traffic_recorded_twice_differs_and_each_replays(captured, captured_again, engines):
    """Real sampling and real timing: the second recording of the same
    traffic differs from the first (arrival iterations or output lengths),
    it came in a chain of files, and the chain replays as one run."""
    traces, *_ = captured
    record_dir, tmp = captured_again
    links = sorted(record_dir.glob("*.sglt"))
    assert len(links) >= 2 and links[0].name.endswith(".0000.sglt")
    assert _arrivals_and_lengths(traces[0], 65) != _arrivals_and_lengths(record_dir, 65)
    code, verdict = _check(engines, record_dir, tmp / "replay.sglt")
    assert code == 0 and verdict["verdict"] == "same", "\n".join(verdict["report"]) + (verdict["message"] or "")
    assert verdict["diff"]["level"] == "full" and verdict["diff"]["forwards_compared"] > 50


# ------------------------------------------------------------------ failures
@pytest.fixture
def small_disk(tmp_path):
    """A 16 KB tmpfs: a disk that fills during a recording (needs root, as CI has)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_stops_recording_not_serving(tmp_path, small_disk):
    """A real server recording onto a disk that fills: one log line says the
    recording stopped and why, every request is still answered, sealing in
    place on the full disk fails cleanly and changes nothing, and the trace
    copied to a disk with room seals whole, its iterations in order."""
    import random

    record_dir = small_disk / "traces"
    server = Server(tmp_path, "full", {"SGLREPLAY_RECORD_DIR": str(record_dir)})
    rng = random.Random(7)
    try:
        for k in range(40):  # random prompts: about 500 compressed bytes each
            reply = server.generate({"input_ids": [rng.randrange(3, 1024) for _ in range(400)], "rid": f"d{k}",
                                     "sampling_params": {"max_new_tokens": 4, "temperature": 1.0}})
            assert reply["meta_info"]["completion_tokens"] >= 1
        log = server.text()
    finally:
        server.stop()
    stopped = [line for line in log.splitlines() if "sgl-replay: recording stopped" in line]
    assert len(stopped) == 1 and "No space left on device" in stopped[0], log[-3000:]
    [trace] = _traces(record_dir)
    torn = trace.read_bytes()
    in_place = subprocess.run([sys.executable, "-m", "sgl_replay.cli", "seal", str(trace)],
                              capture_output=True, text=True, timeout=120)
    assert in_place.returncode == 2 and len(in_place.stderr.strip().splitlines()) == 1, in_place.stderr
    assert trace.read_bytes() == torn
    copy = tmp_path / trace.name
    copy.write_bytes(torn)
    sealed = subprocess.run([sys.executable, "-m", "sgl_replay.cli", "seal", str(copy)],
                            capture_output=True, text=True, timeout=120)
    assert sealed.returncode == 0, sealed.stdout + sealed.stderr
    records, end = _body(copy)
    assert not end.complete and len(records) > 3
    assert [r.i for r in records] == sorted({r.i for r in records})


class _FakeScheduler:
    """What the recorder reads of a scheduler, for the paths that need no engine."""

    class _Pool:
        def available_size(self):
            return 100

    def __init__(self):
        self.waiting_queue, self.running_batch, self.chunked_req, self.last_batch = [], None, None, None
        self.token_to_kv_pool_allocator = self.req_to_token_pool = self._Pool()
        self.forward_ct, self._engine_paused, self.model_config = 0, False, None


def test_an_exception_in_the_recorder_stops_recording_not_the_loop(tmp_path, monkeypatch, caplog):
    from sgl_replay.scheduler import capture, header as header_mod
    from sgl_replay.trace.format import Header

    monkeypatch.setattr(header_mod, "build_header", lambda scheduler, job: Header())
    monkeypatch.setenv(capture.FAULT_ENV, "raise@3")
    fake = _FakeScheduler()
    c = capture.Capture(fake, str(tmp_path))
    for k in range(8):  # the loop's calls after the fault return as before
        fake.waiting_queue = [None] * k
        assert capture.Capture.step(c) is None
    assert c.recording is None
    assert "sgl-replay: recording stopped, recorder failed: RuntimeError: injected recorder fault" in caplog.text
    _join_writer_threads()
    records, end = _body(c.path)
    assert not end.complete and "injected" in end.reason and [r.i for r in records] == [0, 1, 2]


def test_unwritable_dir_turns_capture_off(tmp_path, monkeypatch, caplog):
    from sgl_replay.scheduler import capture

    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setattr(capture, "_record_dir", str(blocked / "traces"))
    monkeypatch.setattr(capture, "_capture", None)
    monkeypatch.setattr("sglang.srt.runtime_context.get_parallel",
                        lambda: type("P", (), {"pp_rank": 0, "attn_tp_rank": 0, "attn_cp_rank": 0})())
    fake = _FakeScheduler()
    assert capture._before_ingest(fake) is None
    assert capture._capture is capture._OFF
    assert "not recording" in caplog.text
    assert capture._before_inputs(fake, [object()]) is None and capture._after_run_batch(None, fake, None) is None


def test_full_disk_seals_the_trace(tmp_path, monkeypatch, caplog):
    from sgl_replay.scheduler import capture, header as header_mod
    from sgl_replay.trace.format import Header

    monkeypatch.setattr(header_mod, "build_header", lambda scheduler, job: Header())
    monkeypatch.setenv(capture.FAULT_ENV, "oserror@3")
    fake = _FakeScheduler()
    c = capture.Capture(fake, str(tmp_path))
    for k in range(6):
        fake.waiting_queue = [None] * k  # a size change: every iteration is written
        c.step()
        time.sleep(0.6)  # past the writer's flush interval: what was written reached the disk
    assert c.recording is None
    _join_writer_threads()  # the writer's thread seals it, off the loop
    assert f"trace {c.path} sealed as incomplete (recorder failed: OSError" in caplog.text
    with TraceReader(c.path) as reader:
        records = list(reader.iterations())
        assert not reader.end.complete and "No space left" in reader.end.reason
    assert [r.i for r in records] == [0, 1, 2]


def test_no_record_dir_registers_nothing(monkeypatch):
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sgl_replay.scheduler import plugin

    monkeypatch.delenv("SGLREPLAY_RECORD_DIR", raising=False)
    monkeypatch.delenv("SGLREPLAY_ACTIVE", raising=False)
    before = {k: list(v) for k, v in HookRegistry._hooks.items()}
    plugin.register()
    assert {k: list(v) for k, v in HookRegistry._hooks.items()} == before


def test_missing_target_is_one_line_and_no_hooks(monkeypatch, caplog):
    from sglang.srt.managers.scheduler import Scheduler
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sgl_replay.scheduler import capture

    monkeypatch.delattr(Scheduler, "on_idle")
    monkeypatch.setattr(capture, "in_scheduler_process", lambda: True)
    before = {k: list(v) for k, v in HookRegistry._hooks.items()}
    assert capture.register("/nonexistent") is False
    assert {k: list(v) for k, v in HookRegistry._hooks.items()} == before
    assert "not supported: sglang.srt.managers.scheduler.Scheduler.on_idle missing; not recording" in caplog.text


# ------------------------------------------------------------------ rotation
def _fake_capture(directory: Path, monkeypatch, steps: int = 60, stamp: str = "20261203-000000",
                  **env) -> "capture.Capture":
    """A Capture of a stand-in scheduler whose sizes change every iteration
    (so each is written), flushed every iteration."""
    from sgl_replay.scheduler import capture, header as header_mod
    from sgl_replay.trace import writer as writer_mod
    from sgl_replay.trace.format import Header

    monkeypatch.setattr(header_mod, "build_header", lambda scheduler, job: Header())
    monkeypatch.setattr(writer_mod, "FLUSH_INTERVAL_S", 0.0)
    monkeypatch.setattr(capture.time, "strftime", lambda fmt: stamp)
    # sizes are counted as the writer's thread writes, and the capture checks
    # them right after it queued the iteration: wait for that write there, so
    # that where files rotate does not depend on thread timing
    queue_block = writer_mod._DiskThread.put

    def put_and_wait(disk, job):
        queue_block(disk, job)
        while disk.backlog:
            time.sleep(0.001)

    monkeypatch.setattr(writer_mod._DiskThread, "put", put_and_wait)
    for key in (capture.SEGMENT_BYTES_ENV, capture.SEGMENT_SECONDS_ENV, capture.MAX_BYTES_ENV):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(getattr(capture, key), str(value))
    fake = _FakeScheduler()
    c = capture.Capture(fake, str(directory))
    for k in range(steps):
        fake.waiting_queue = [None] * (k % 7)
        c.step()
    c.finish(complete=True, reason=None)
    _join_writer_threads()
    return c


def _join_writer_threads() -> None:
    """Wait for writers' disk threads that finish on their own (a rotation's
    or a stopped recording's close)."""
    import threading

    for thread in threading.enumerate():
        if thread.name == "sgl-replay-writer":
            thread.join(10)


def _body(path) -> tuple[list, "End"]:
    with TraceReader(str(path)) as reader:
        return list(reader.iterations()), reader.end


def test_rotated_capture_reads_as_one_chain(tmp_path, monkeypatch):
    _fake_capture(tmp_path / "whole", monkeypatch)
    c = _fake_capture(tmp_path / "rotated", monkeypatch, SEGMENT_BYTES_ENV=400)
    whole, whole_end = _body(next((tmp_path / "whole").glob("*.sglt")))
    links = sorted((tmp_path / "rotated").glob("*.sglt"))
    assert len(links) >= 3 and [p.name for p in links] == [f"{c.header.segment.run}.{k:04d}.sglt"
                                                          for k in range(len(links))]
    for k, link in enumerate(links):  # each file is a trace of its own
        records, end = _body(link)
        last = k == len(links) - 1
        # the records' times vary in size, and so where the files rotate: a
        # rotation after the last iteration leaves the last file only its end
        assert (records or last) and end.complete == last, (k, len(links), end)
        if k < len(links) - 1:
            assert end.reason == f"rotated: continues in {links[k + 1].name}"
    def untimed(records):  # when each iteration ended is this machine's, not the run's
        return [msgspec.structs.replace(r, ms=None, arrivals=()) for r in records]

    assert all(r.ms is not None for r in whole)
    for chain in (tmp_path / "rotated", tmp_path / "rotated" / c.header.segment.run):
        records, end = _body(chain)
        assert untimed(records) == untimed(whole) and end.iterations == whole_end.iterations and end.complete
    # a later link reads alone, but its batches name requests of earlier
    # links: a replay must start at the first
    from sgl_replay.runs.replay import engine_config_for
    from sgl_replay.trace.reader import TraceError

    with TraceReader(str(links[1])) as reader:
        with pytest.raises(TraceError, match="link 1 of recording .* a replay starts at the recording's first link"):
            engine_config_for(reader.header)


def test_rotation_by_time(tmp_path, monkeypatch):
    from sgl_replay.scheduler import capture

    monkeypatch.setattr(capture.time, "monotonic", iter(range(0, 10_000, 1)).__next__)
    _fake_capture(tmp_path, monkeypatch, steps=30, SEGMENT_SECONDS_ENV=10)
    assert len(list(tmp_path.glob("*.sglt"))) >= 2
    records, end = _body(tmp_path)
    assert end.complete and len(records) >= 25


def test_size_cap_stops_the_recording_cleanly(tmp_path, monkeypatch, caplog):
    c = _fake_capture(tmp_path, monkeypatch, steps=200, SEGMENT_BYTES_ENV=400, MAX_BYTES_ENV=1500)
    assert c.recording is None
    assert sum(p.stat().st_size for p in tmp_path.glob("*.sglt")) < 1500 + 1000
    records, end = _body(tmp_path)
    assert not end.complete and end.reason.startswith("size cap: ") and 10 < len(records) < 150
    assert [r.message for r in caplog.records if "size cap" in r.message][0].startswith("sgl-replay: trace ")


def test_a_stalled_disk_never_stalls_the_loop(tmp_path, monkeypatch, caplog):
    """The disk stops answering (every fsync hangs): the loop's iterations go
    on, the backlog grows to its cap, the recording stops with one line and
    the loop still goes on; once the disk answers, the trace is sealed with
    the reason and keeps every record written before the stop."""
    import threading

    from sgl_replay.scheduler import capture, header as header_mod
    from sgl_replay.trace import writer as writer_mod
    from sgl_replay.trace.format import Header

    disk = threading.Event()
    answered_while_stalled = []

    def stalled_fsync(fd):
        answered_while_stalled.append(disk.wait(30))

    monkeypatch.setattr(header_mod, "build_header", lambda scheduler, job: Header())
    monkeypatch.setattr(writer_mod, "FLUSH_INTERVAL_S", 0.0)
    monkeypatch.setattr(writer_mod, "MAX_BACKLOG_BYTES", 4000)
    monkeypatch.setattr(writer_mod.os, "fsync", stalled_fsync)
    fake = _FakeScheduler()
    c = capture.Capture(fake, str(tmp_path))
    steps = 0
    while c.recording is not None and steps < 10_000:
        fake.waiting_queue = [None] * (steps % 7)
        c.step()
        steps += 1
    for _ in range(50):  # the loop goes on after the recording stopped
        c.step()
    assert not disk.is_set() and c.recording is None and 20 < steps < 10_000
    assert "the disk is not keeping up" in caplog.text
    disk.set()
    _join_writer_threads()
    assert all(answered_while_stalled)  # no fsync returned before the disk answered
    records, end = _body(c.path)
    assert not end.complete and "the disk is not keeping up" in end.reason
    assert [r.i for r in records] == list(range(len(records))) and len(records) >= steps - 5


_FILLING_DISK = """
import logging, os, random, resource, signal, sys, threading, time
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
sys.path.insert(0, sys.argv[2])
from test_capture import _FakeScheduler
from sgl_replay.scheduler import capture, header as header_mod
from sgl_replay.trace import writer as writer_mod
from sgl_replay.trace.format import Header
header_mod.build_header = lambda scheduler, job: Header()
writer_mod.FLUSH_INTERVAL_S = 0.0
random.seed(1)
fake = _FakeScheduler()
c = capture.Capture(fake, sys.argv[1])
steps = 0
while c.recording is not None and steps < 200_000:
    # sizes that do not compress away, and change every iteration (each is written)
    fake.waiting_queue = [None] * (2 * random.randrange(2500) + steps % 2)
    c.step()
    steps += 1
    # a server's loop lets go of the GIL every iteration (it waits on the GPU
    # and its sockets); a loop that never did would starve the writer's
    # thread, and the backlog cap would stop the recording first
    time.sleep(0)
for _ in range(100):
    c.step()  # the loop goes on
c.finish(complete=True, reason=None)
for thread in threading.enumerate():
    if thread.name == "sgl-replay-writer":
        thread.join(30)
print("steps", steps, "path", c.path)
"""


def test_a_disk_that_fills_stops_the_recording_and_what_was_written_reads_back(tmp_path):
    """A real write error from the kernel (the file size limit: EFBIG, what a
    full disk's ENOSPC is to the writer): the recording stops with one line,
    the loop goes on; `sgl-replay seal` later (with room) makes the trace
    whole, every record that reached the file kept, numbered without a gap."""
    done = subprocess.run([sys.executable, "-c", _FILLING_DISK, str(tmp_path), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    stopped = [line for line in done.stdout.splitlines() if "sgl-replay: recording stopped" in line]
    assert len(stopped) == 1 and "[Errno 27] File too large" in stopped[0], done.stdout[-2000:]
    steps = int(done.stdout.split("steps ")[1].split()[0])
    assert 50 < steps < 200_000
    trace = Path(done.stdout.split(" path ")[1].split()[0])
    sealed = subprocess.run([sys.executable, "-m", "sgl_replay.cli", "seal", str(trace)],
                            capture_output=True, text=True, timeout=120)
    assert sealed.returncode == 0, sealed.stdout + sealed.stderr
    records, end = _body(trace)
    assert not end.complete and [r.i for r in records] == list(range(len(records)))
    # what reached the file before the limit (the loop ran on while the
    # writer's thread wrote; blocks queued when the disk failed are lost)
    assert 1000 < len(records) <= steps and trace.stat().st_size <= 65536 + 4096


def test_a_broken_chain_is_bad_input(tmp_path, monkeypatch):
    from sgl_replay.trace.reader import TraceError

    _fake_capture(tmp_path / "a", monkeypatch, SEGMENT_BYTES_ENV=400)
    _fake_capture(tmp_path / "b", monkeypatch, steps=70, stamp="20261203-000001", SEGMENT_BYTES_ENV=400)
    a = sorted((tmp_path / "a").glob("*.sglt"))
    b = sorted((tmp_path / "b").glob("*.sglt"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    a[1].rename(a[1].with_suffix(".gone"))  # a gap in the numbers
    with pytest.raises(TraceError, match="link 1 of the recording is missing"):
        _body(tmp_path / "a")
    # another recording's link under this one's name
    run = a[0].name.split(".")[0]
    for link in a[:1] + b[1:]:
        (mixed / link.name.replace(link.name.split(".")[0], run)).write_bytes(link.read_bytes())
    with pytest.raises(TraceError, match="does not continue|link .* where link"):
        _body(mixed)
    (mixed / "other.sglt").write_bytes(b[0].read_bytes())
    with pytest.raises(TraceError, match="holds 2 recordings"):
        _body(mixed)
