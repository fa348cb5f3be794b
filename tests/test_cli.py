"""The command line: exit codes, one-line errors, and traces that survive
failures. Runs the real `sgl-replay` executable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import TESTS, cli_env, interruptible, read
from sgl_replay.traffic.specs import parse as parse_workload
from sgl_replay.runs.engine import EngineConfig
from sgl_replay.runs.record import record_workload

SGL_REPLAY = [sys.executable, "-m", "sgl_replay.cli"]
HANG_GUARD_S = 240  # a command that outlives this is hung, whatever the machine


def run(*args, cwd=TESTS, timeout=HANG_GUARD_S) -> subprocess.CompletedProcess:
    return subprocess.run([*SGL_REPLAY, *map(str, args)], cwd=cwd, env=cli_env(), text=True,
                          capture_output=True, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The error line: ours, or click's for a malformed command line."""
    errors = [l for l in proc.stderr.splitlines() if l.startswith(("sgl-replay: error:", "Error: "))]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


# ------------------------------------------------------------ no engine needed
def test_unknown_workload_is_a_usage_error(tmp_path):
    proc = run("record", "no_such_workload", "-o", tmp_path / "x.sglt", timeout=60)
    assert proc.returncode == 2
    assert "unknown workload 'no_such_workload'" in one_error_line(proc)
    assert not (tmp_path / "x.sglt").exists()


@pytest.mark.parametrize("target,why", [("missing-dir/x.sglt", "does not exist"), (".", "is a directory")])
def test_unwritable_output_fails_before_the_engine_starts(tmp_path, target, why):
    proc = run("record", "chunked_prefill", "-o", tmp_path / target, timeout=60)
    assert proc.returncode == 2 and why in one_error_line(proc)


def test_bad_engine_arg_syntax(tmp_path):
    proc = run("record", "chunked_prefill", "-o", tmp_path / "x.sglt", "--engine-arg", "novalue",
               timeout=60)
    assert proc.returncode == 2 and "KEY=VALUE" in one_error_line(proc)


def test_diff_of_truncated_trace_names_frame_and_offset(recorded, tmp_path):
    trace = recorded("kv_pressure")
    data = Path(trace).read_bytes()
    cut = tmp_path / "cut.sglt"
    cut.write_bytes(data[: len(data) - 100])
    proc = run("diff", trace, cut, timeout=60)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "cut.sglt: frame" in line and "at byte" in line


def test_seal_repairs_a_cut_trace_and_keeps_every_whole_record(recorded, tmp_path):
    trace = recorded("kv_pressure")
    _, whole, _ = read(trace)
    data = Path(trace).read_bytes()
    cut = tmp_path / "cut.sglt"
    cut.write_bytes(data[: len(data) - 100])
    proc = run("seal", cut, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "INCOMPLETE: sealed: " in proc.stdout
    _, body, end = read(str(cut))
    assert not end.complete and 0 < len(body) <= len(whole)
    assert body == whole[:len(body)]
    assert run("diff", trace, cut, timeout=60).returncode == 1  # readable, and not the same run
    assert run("seal", cut, timeout=60).stdout == proc.stdout  # sealing twice changes nothing


def test_check_of_corrupt_trace_exits_2_without_starting_an_engine(tmp_path):
    bad = tmp_path / "bad.sglt"
    bad.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 64)
    # the engine is started by subprocess.Popen (runs/engine.py): an audit hook sees any start
    code = ("import sys, runpy; started = []; status = None"
            "\nsys.addaudithook(lambda event, args: started.append(args) if event == 'subprocess.Popen' else None)"
            "\nsys.argv = ['sgl-replay', 'check', %r]"
            "\ntry:\n runpy.run_module('sgl_replay.cli', run_name='__main__')\nexcept SystemExit as e: status = e.code"
            "\nassert not started, f'started {started}'\nsys.exit(status)") % str(bad)
    proc = subprocess.run([sys.executable, "-c", code], cwd=TESTS, env=cli_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "bad.sglt" in one_error_line(proc)


def test_diff_exit_codes_and_json(recorded, tmp_path):
    import json

    a, b = recorded("pause_retract"), recorded("pause_in_place")
    same = run("diff", a, a, timeout=60)
    assert same.returncode == 0 and "same:" in same.stdout
    differ = run("diff", a, b, "--json", timeout=60)
    assert differ.returncode == 1
    report = json.loads(differ.stdout)
    assert report["verdict"] == "diverged" and report["first"]["reasons"]
    composition = run("diff", a, a, "--level", "composition", "--ignore", "finished.reason", timeout=60)
    assert composition.returncode == 0
    bad = run("diff", a, a, "--ignore", "bogus", timeout=60)
    assert bad.returncode == 2 and "cannot ignore bogus" in one_error_line(bad)


def test_show_and_stats_read_without_sglang(recorded):
    """show/stats never import sglang (they must run where it is not installed)."""
    code = ("import sys, runpy; sys.argv = ['sgl-replay', 'stats', %r];"
            "\ntry:\n runpy.run_module('sgl_replay.cli', run_name='__main__')\nexcept SystemExit: pass"
            "\nassert 'sglang' not in sys.modules, 'sglang was imported'") % recorded("kv_pressure")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "retractions" in proc.stdout and "compression_ratio" in proc.stdout
    shown = run("show", recorded("kv_pressure"), "--rid", "kv-3", timeout=60)
    assert shown.returncode == 0
    body = [l for l in shown.stdout.splitlines() if l.startswith("  ")]
    assert body and all("kv-3" in l or l.startswith("  after") for l in body)


# ------------------------------------------------------------ with an engine
def test_bad_engine_argument_is_one_line_exit_2(tmp_path):
    proc = run("record", "chunked_prefill", "-o", tmp_path / "x.sglt",
               "--engine-arg", "no_such_server_arg=1")
    assert proc.returncode == 2
    assert "bad engine argument" in one_error_line(proc) and "no_such_server_arg" in proc.stderr


def test_engine_dying_during_startup_is_reported_with_exit_125(tmp_path):
    """A model directory sglang cannot load: the engine dies while starting.
    The tool says so with the log's last lines instead of waiting out
    sglang's 300 s handshake."""
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["NoSuchArchForCausalLM"], "model_type": "nope"}')
    proc = run("record", "chunked_prefill", "-o", tmp_path / "x.sglt", "--model-path", model)
    assert proc.returncode == 125, proc.stderr
    assert "died during start-up" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) > 2  # the log's last lines come along
    assert not (tmp_path / "x.sglt").exists()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _wait_for_iterations(partial: Path, at_least: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.exists() and partial.stat().st_size > 0:
            try:
                from sgl_replay.trace import TraceError, TraceReader

                with TraceReader(str(partial)) as r:
                    n = 0
                    try:
                        for _ in r.iterations():
                            n += 1
                    except TraceError:
                        pass
                if n >= at_least:
                    return
            except Exception:  # noqa: BLE001 — the header may not be on disk yet
                pass
        time.sleep(0.2)
    raise AssertionError(f"no {at_least} iterations in {partial}: {proc.poll()}")


def test_ctrl_c_during_record_keeps_a_sealed_trace_and_stops_the_engine(tmp_path):
    out = tmp_path / "interrupted.sglt"
    env = {**cli_env(), "TMPDIR": str(tmp_path)}  # where the engine's work directory goes
    proc = subprocess.Popen([*SGL_REPLAY, "record", "scripts:long_decode", "-o", str(out)],
                            cwd=TESTS, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=interruptible)
    _wait_for_iterations(Path(str(out) + ".partial"), 20, proc)
    engine_procs = _descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    _, body, end = read(str(out))
    assert end.complete is False and end.reason == "interrupted"
    assert len(body) >= 20 and end.iterations >= 20
    gone, alive = psutil.wait_procs(engine_procs, timeout=10)
    assert not alive, f"engine processes left behind: {alive}"
    assert not list(tmp_path.glob("sgl-replay-engine-*")), "a stopped engine's work directory was left behind"


def test_engine_death_during_replay_is_reported_and_the_observed_trace_kept(engines, tmp_path):
    trace = str(tmp_path / "long.sglt")
    record_workload(engines.get(EngineConfig.embedded()), parse_workload("scripts:long_decode"),
                    trace)
    observed = tmp_path / "observed.sglt"
    env = {**cli_env(), "TMPDIR": str(tmp_path)}  # where the engine's work directory goes
    proc = subprocess.Popen([*SGL_REPLAY, "replay", trace, "-o", str(observed)], cwd=TESTS,
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_iterations(Path(str(observed) + ".partial"), 50, proc)
    schedulers = [p for p in _descendants(proc.pid) if "scheduler" in " ".join(p.cmdline() + [p.name()]).lower()]
    assert schedulers, [p.cmdline() for p in _descendants(proc.pid)]
    for p in schedulers:
        p.kill()
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 1, err
    line = one_error_line(subprocess.CompletedProcess([], 1, "", err))
    assert "engine died at iteration" in line
    assert list(tmp_path.glob("sgl-replay-engine-*/engine.log")), "a dead engine's log was not kept"
    _, body, end = read(str(observed))
    assert end.complete is False and len(body) >= 50


def test_check_reports_a_changed_knob_with_exit_1(recorded, tmp_path):
    proc = run("check", recorded("chunked_prefill"), "--engine-arg", "chunked_prefill_size=128")
    assert proc.returncode == 1, proc.stderr
    assert "diverged at iteration 0" in proc.stdout
    assert "note: engine arg chunked_prefill_size: 256 vs 128" in proc.stdout


def test_check_repeat_reports_mixed_results_as_inconclusive(tweaks, tweak_baseline):
    """A planted nondeterministic scheduler change (the test-only plugin's
    'flaky' mode: every second run differs): `check --repeat 2` says
    inconclusive and exits 125, which git bisect run reads as skip."""
    config, mode, _ = tweaks
    mode.write_text("flaky")
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS / "plugins"), env["PYTHONPATH"]])
    env.update(config.env)  # the plugin's switch: a replay never takes it from the trace
    try:
        proc = subprocess.run([*SGL_REPLAY, "check", tweak_baseline, "--repeat", "2"], cwd=TESTS, env=env,
                              text=True, capture_output=True, timeout=HANG_GUARD_S)
    finally:
        mode.write_text("off")
    assert proc.returncode == 125, proc.stdout + proc.stderr
    assert "diverged in 1 of 2 replays (inconclusive)" in proc.stdout + proc.stderr
