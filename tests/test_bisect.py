"""Bisect on the real engine over a throwaway git repository of an sglang
plugin package: one commit changes scheduling through HookRegistry, another
breaks its import, a last one slows p50 TTFT."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TESTS, cli_env, interruptible
from sgl_replay.runs.engine import EngineConfig
from sgl_replay.runs.record import record_workload
from sgl_replay.traffic.specs import KV_PRESSURE_ARGS, parse
from test_budgets import WORKLOAD
from test_timed import COST

PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "tweakplug"
version = "{version}"

[project.entry-points."sglang.srt.plugins"]
tweakplug = "tweakplug:register"

[tool.setuptools]
py-modules = ["tweakplug"]
"""

INERT = '''"""An sglang plugin that will tune scheduling."""


def register():
    pass
'''

LOGS = '''"""An sglang plugin that will tune scheduling."""
import logging

logger = logging.getLogger(__name__)


def register():
    logger.info("tweakplug loaded")
'''

REVERSES = '''"""An sglang plugin that tunes scheduling: newest waiting requests first."""
import logging

logger = logging.getLogger(__name__)


def _newest_first(original, self, waiting_queue, *args, **kwargs):
    result = original(self, waiting_queue, *args, **kwargs)
    waiting_queue.reverse()
    return result


def register():
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register("sglang.srt.managers.schedule_policy.SchedulePolicy.calc_priority",
                          _newest_first, HookType.AROUND)
    logger.info("tweakplug loaded")
'''

CAPS = '''"""An sglang plugin that tunes scheduling: at most two requests admitted
into one prefill batch."""
import logging

logger = logging.getLogger(__name__)


def _two_per_prefill(original, self, req, *args, **kwargs):
    if len(self.can_run_list) >= 2:
        from sglang.srt.managers.schedule_policy import AddReqResult

        return AddReqResult.OTHER
    return original(self, req, *args, **kwargs)


def register():
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register("sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req",
                          _two_per_prefill, HookType.AROUND)
    logger.info("tweakplug loaded")
'''

# (message, module text, version); git bisect tests the 3rd commit first, so
# the broken one is there: the first step must be skipped. The first six
# commits: the skip, a good step and the bad one (each step is an engine
# start); on the queued Mooncake slice newest-first makes p50 TTFT better,
# the last commit slows it, which a bisect by that figure finds.
HISTORY = [
    ("add tweakplug, an sglang plugin that does nothing yet", INERT, "0.1.0"),
    ("log when the plugin loads", LOGS, "0.1.1"),
    ("refactor the logger (breaks the import)", LOGS.replace("import logging", "import logging as"), "0.1.2"),
    ("fix the import", LOGS, "0.1.3"),
    ("schedule the newest waiting requests first", REVERSES, "0.2.0"),
    ("tidy the hook's name", REVERSES.replace("_newest_first", "_newest_requests_first"), "0.2.1"),
    ("oldest first again; admit at most two requests into a prefill batch", CAPS, "0.3.0"),
]
REGRESSION, BROKEN, SLOW = 4, 2, 6  # indexes into HISTORY


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def plugin_repo(tmp_path) -> tuple[Path, list[str]]:
    repo = tmp_path / "tweakplug"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "dev@example.invalid")
    git(repo, "config", "user.name", "dev")
    shas = []
    for message, module, version in HISTORY:
        (repo / "pyproject.toml").write_text(PYPROJECT.format(version=version))
        (repo / "tweakplug.py").write_text(module)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", message)
        shas.append(git(repo, "rev-parse", "HEAD"))
    (repo / "notes.txt").write_text("uncommitted work the bisect must not touch\n")
    return repo, shas


def repo_state(repo: Path) -> tuple:
    return (git(repo, "rev-parse", "HEAD"), git(repo, "branch", "--show-current"),
            git(repo, "status", "--porcelain"), git(repo, "worktree", "list", "--porcelain").count("worktree "),
            git(repo, "for-each-ref", "refs/bisect"))


def test_bisect_names_the_commit_that_changed_scheduling(recorded, plugin_repo, tmp_path):
    repo, shas = plugin_repo
    before = repo_state(repo)
    trace = recorded("running_cap")
    html = tmp_path / "first_bad.html"
    proc = subprocess.run(
        [sys.executable, "-m", "sgl_replay.cli", "bisect", "--repo", str(repo), "--good", shas[0],
         "--bad", shas[REGRESSION + 1], "--report", str(html), trace], cwd=TESTS, env=cli_env(), capture_output=True,
        text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert f"first bad commit: {shas[REGRESSION]} {HISTORY[REGRESSION][0]}" in proc.stdout
    assert "diverged at iteration 0" in proc.stdout  # with its divergence report
    assert "Diverged at iteration 0" in html.read_text()  # and the first bad commit's HTML report
    steps = [l for l in proc.stderr.splitlines() if l.startswith("step ")]
    assert steps[0].startswith(f"step 1: {shas[BROKEN][:10]}") and ": skip (" in steps[0]
    assert "sglang plugin failed" in steps[0]
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"{len(steps)} steps, 1 skipped ({shas[BROKEN][:10]})")
    assert summary.endswith("s wall time")
    assert repo_state(repo) == before


def test_bisect_interrupted_leaves_the_repository_as_it_was(recorded, plugin_repo):
    repo, shas = plugin_repo
    before = repo_state(repo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sgl_replay.cli", "bisect", "--repo", str(repo), "--good", shas[0],
         "--bad", shas[-1], recorded("running_cap")], cwd=TESTS, env=cli_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=interruptible)
    time.sleep(8)  # inside the first step: installing, or starting its engine
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert repo_state(repo) == before


def test_plain_git_bisect_run_works_with_the_code_on_pythonpath(recorded, plugin_repo, tmp_path):
    """`git bisect run sgl-replay check TRACE` in a checkout whose code the
    engine imports (here from PYTHONPATH, with the plugin's entry point)."""
    repo, shas = plugin_repo
    dist = repo / "tweakplug-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tweakplug\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[sglang.srt.plugins]\ntweakplug = tweakplug:register\n")
    env = cli_env()
    env["PYTHONPATH"] = f"{repo}:{env['PYTHONPATH']}"
    git(repo, "bisect", "start", shas[REGRESSION + 1], shas[REGRESSION - 2])  # a short range: two or three steps
    try:
        proc = subprocess.run(["git", "bisect", "run", sys.executable, "-m", "sgl_replay.cli", "check",
                               recorded("running_cap")], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=900)
    finally:
        git(repo, "bisect", "reset")
    assert f"{shas[REGRESSION]} is the first bad commit" in proc.stdout, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def timed_trace(engines, tmp_path_factory) -> str:
    """The queued Mooncake slice in the 1024-token KV pool (the kv_pressure
    engine), recorded on the modelled clock with COST."""
    out = str(tmp_path_factory.mktemp("timed") / "queued_slice.sglt")
    record_workload(engines.get(EngineConfig.embedded(engine_args=KV_PRESSURE_ARGS)), parse(WORKLOAD), out,
                    cost=COST)
    return out


def test_bisect_by_a_latency_figure_names_the_commit_that_slowed_it(timed_trace, plugin_repo, tmp_path):
    """`bisect --metric ttft_p50 --threshold 5% TRACE GOOD BAD` from before the schedule changed:
    newest-first changes the schedule and makes p50 TTFT better (good), two
    requests per prefill batch slows it 7% (the first bad commit)."""
    repo, shas = plugin_repo
    cost = tmp_path / "cost.json"
    cost.write_bytes(COST.to_json())
    proc = subprocess.run(
        [sys.executable, "-m", "sgl_replay.cli", "bisect", "--repo", str(repo), "--metric", "ttft_p50",
         "--threshold", "5%", "--cost", str(cost), timed_trace, shas[REGRESSION - 1], shas[SLOW]],
        cwd=TESTS, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"first bad commit: {shas[SLOW]} {HISTORY[SLOW][0]}" in proc.stdout
    report = proc.stdout.split("first bad commit:", 1)[1].splitlines()
    assert report[1].startswith("ttft_p50 +") and "over the 5% threshold" in report[1], report
    steps = [l for l in proc.stderr.splitlines() if l.startswith("step ")]
    assert steps and all(": good (ttft_p50 -" in l and "inside the 5% threshold; the schedule diverged" in l
                         for l in steps), steps


@pytest.mark.parametrize("args, message", [
    (["--metric", "ttft_p90"], "--metric and --threshold go together"),
    (["--threshold", "5%"], "--metric and --threshold go together"),
    (["--metric", "ttft_p90", "--threshold", "five"], "how much worse, in %"),
    (["--metric", "ttft_p90", "--threshold", "5%"], "no iteration times"),  # a golden of the iterations clock
    (["--cost", str(TESTS / "data" / "mooncake_slice.jsonl")], "--cost goes with --metric"),
])
def test_bisect_by_a_figure_refuses_what_it_cannot_judge_before_any_step(tmp_path, args, message):
    trace = str(TESTS.parent / "traces" / "chunked_prefill.sglt")
    proc = subprocess.run([sys.executable, "-m", "sgl_replay.cli", "bisect", "--repo", str(tmp_path), "--good", "a",
                           "--bad", "b", *args, trace], cwd=TESTS, env=cli_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
