"""Find the commit that changed scheduling, with a trace that shows it.

`git bisect` runs in a linked worktree of the user's repository (the user's
own checkout, index and branch are never touched). At each step the
revision is installed with `pip install --no-deps --target` into a scratch
directory of its own, and `sgl-replay check TRACE` runs with that directory
first on PYTHONPATH: the engine imports that revision's code (entry points
included, so an sglang plugin's hooks load), and nothing is installed into the
user's environment. The worktree, the bisect state and the scratch
directories go away at the end, on Ctrl-C too.

By a latency figure (`metric`, `threshold_pct`): each step's check replays
on the modelled clock, and a step is bad when the figure
(timing/latency.FIGURES) is more than `threshold_pct` worse than the
recording's; a changed schedule alone is then not bad.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from sgl_replay.runs import progress
from sgl_replay.runs.check import ExitCode, Outcome
from sgl_replay.timing import latency

CHECK_STOP_GRACE_S = 10.0  # a Ctrl-C'd check gets this long to stop its engine


class BisectError(Exception):
    exit_code = 2


@dataclass(frozen=True)
class Metric:
    """A step is bad when `figure` is more than `threshold_pct` worse than
    the recording's (check --json carries both summaries)."""
    figure: str
    threshold_pct: float

    def judge(self, verdict: dict) -> tuple[str, str]:
        """(good | bad, why) of a check whose replay ran to the end."""
        timed = verdict.get("latency") or {}
        if "recorded" not in timed or "replay" not in timed:
            raise BisectError(f"check printed no latency: was it run with --clock modeled? ({verdict['message']})")
        a, b = timed["recorded"], timed["replay"]
        worse = latency.worse_pct(a, b, self.figure)
        x, y = latency.figure(a, self.figure), latency.figure(b, self.figure)
        shown = " -> ".join("-" if v is None else f"{v:.2f}" for v in (x, y))
        shown += " tok/s" if self.figure == "throughput" else " ms"
        schedule = "; the schedule diverged" if verdict["verdict"] == Outcome.DIVERGED else ""
        if worse is None:
            return "bad", f"{self.figure} {shown}: no figure in the replay{schedule}"
        bad = worse > self.threshold_pct
        change = -worse if self.figure == "throughput" else worse
        return ("bad" if bad else "good", f"{self.figure} {change:+.1f}% ({shown}), "
                f"{'over' if bad else 'inside'} the {self.threshold_pct:g}% threshold{schedule}")


@dataclass
class Step:
    commit: str
    subject: str
    verdict: str  # good | bad | skip
    detail: str
    seconds: float
    report: str = ""


@dataclass
class BisectResult:
    first_bad: Optional[str]
    subject: str
    candidates: list[str]  # when only skipped commits are left
    steps: list[Step] = field(default_factory=list)
    report: str = ""
    seconds: float = 0.0

    @property
    def skipped(self) -> list[Step]:
        return [s for s in self.steps if s.verdict == "skip"]


def _git(repo: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode
        raise BisectError(f"git {' '.join(args)}: {why}")
    return proc.stdout + proc.stderr


def bisect(repo: str, good: str, bad: str, trace: str, *, repeat: int = 1, subdir: str = ".",
           check_args: tuple[str, ...] = (), echo: Callable[[str], None] = print,
           html_report: Optional[str] = None, metric: Optional[Metric] = None) -> BisectResult:
    """Bisect; with `html_report`, the first bad commit's HTML report (its
    replay against the trace) is written there. With `metric`, a step is bad
    when its figure got too much worse (check_args then hold `--clock
    modeled`)."""
    started = time.monotonic()
    repo_path = Path(repo).resolve()
    if not (repo_path / ".git").exists() and _git(repo_path, "rev-parse", "--git-dir", check=False).startswith("fatal"):
        raise BisectError(f"{repo} is not a git repository")
    good_sha = _git(repo_path, "rev-parse", "--verify", f"{good}^{{commit}}").strip()
    bad_sha = _git(repo_path, "rev-parse", "--verify", f"{bad}^{{commit}}").strip()
    trace = os.path.abspath(trace)
    scratch = Path(tempfile.mkdtemp(prefix="sgl-replay-bisect-"))
    worktree = scratch / "worktree"
    result = BisectResult(None, "", [])
    try:
        _git(repo_path, "worktree", "add", "--detach", str(worktree), bad_sha)
        out = _git(worktree, "bisect", "start", bad_sha, good_sha)
        while True:
            first_bad = re.search(r"([0-9a-f]{40}) is the first bad commit", out)
            if first_bad is not None:
                result.first_bad = first_bad.group(1)
                break
            if "only 'skip'ped commits left" in out:
                result.candidates = re.findall(r"^([0-9a-f]{40})$", out, re.M)
                break
            head = _git(worktree, "rev-parse", "HEAD").strip()
            left = re.search(r"\(roughly (\d+) steps?\)", out)  # git's estimate, after this step
            about = f" of about {len(result.steps) + 1 + int(left.group(1))}" if left else ""
            with progress.bar(f"step {len(result.steps) + 1}{about}: checking {head[:10]}"):
                step = _run_step(worktree, head, subdir, trace, repeat, check_args, scratch, metric=metric)
            result.steps.append(step)
            echo(f"step {len(result.steps)}: {head[:10]} {step.subject[:60]!r}: {step.verdict}"
                 f" ({step.detail}, {step.seconds:.0f}s)")
            out = _git(worktree, "bisect", step.verdict, check=False)
        if result.first_bad:
            result.subject = _git(worktree, "log", "-1", "--format=%s", result.first_bad).strip()
            tested = next((s for s in result.steps if s.commit == result.first_bad), None)
            if tested is None:  # the bad end itself: check it for its report
                with progress.bar(f"checking {result.first_bad[:10]} for its report"):
                    tested = _run_step(worktree, result.first_bad, subdir, trace, repeat, check_args, scratch,
                                       checkout=True, metric=metric)
            result.report = tested.report
            if html_report and _html_report(scratch, result.first_bad).exists():
                shutil.copyfile(_html_report(scratch, result.first_bad), html_report)
    finally:
        _git(worktree, "bisect", "reset", check=False) if worktree.exists() else None
        _git(repo_path, "worktree", "remove", "--force", str(worktree), check=False)
        _git(repo_path, "worktree", "prune", check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result


def _run_step(worktree: Path, commit: str, subdir: str, trace: str, repeat: int,
              check_args: tuple[str, ...], scratch: Path, checkout: bool = False,
              metric: Optional[Metric] = None) -> Step:
    started = time.monotonic()
    if checkout:
        _git(worktree, "checkout", "--quiet", "--detach", commit)
    subject = _git(worktree, "log", "-1", "--format=%s", commit).strip()
    site = scratch / f"site-{commit[:12]}"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-compile", "--target", str(site), str(worktree / subdir)],
        capture_output=True, text=True)
    if install.returncode != 0:
        last = (install.stderr.strip().splitlines() or ["pip failed"])[-1]
        return Step(commit, subject, "skip", f"does not install: {last}", time.monotonic() - started)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    code, out, err = _run_check([sys.executable, "-m", "sgl_replay.cli", "check", trace, "--json",
                                 "--repeat", str(repeat), "--report", str(_html_report(scratch, commit)),
                                 *check_args], env)
    shutil.rmtree(site, ignore_errors=True)
    seconds = time.monotonic() - started
    verdict = _verdict(out)
    if verdict is None or code not in (ExitCode.SAME, ExitCode.DIVERGED, ExitCode.SKIP):
        why = verdict["message"] if verdict else (err.strip().splitlines() or ["no verdict"])[-1]
        raise BisectError(f"check failed at {commit[:10]} (exit {code}): {why}")
    outcome, report = Outcome(verdict["verdict"]), "\n".join(verdict["report"])
    rate = (f"diverged in {verdict['diverged_replays']} of {verdict['replays']} replays"
            if verdict["replays"] > 1 else "")
    if metric is not None and outcome in (Outcome.SAME, Outcome.DIVERGED):
        word, why = metric.judge(verdict)
        return Step(commit, subject, word, why, seconds, report=f"{why}\n{report}" if word == "bad" else "")
    if outcome is Outcome.SAME:
        return Step(commit, subject, "good", rate or "same", seconds)
    if outcome is Outcome.DIVERGED:
        first = next((l for l in verdict["report"] if l.startswith("diverged at")), "diverged")
        return Step(commit, subject, "bad", rate or first.rstrip(":"), seconds, report=report)
    if outcome is Outcome.INCONCLUSIVE:
        return Step(commit, subject, "skip", f"inconclusive: {rate}", seconds)
    if outcome is Outcome.COULD_NOT_RUN:
        return Step(commit, subject, "skip", verdict["message"], seconds)
    # a replay that failed part way is this revision's fault: bad, with its reason
    return Step(commit, subject, "bad", verdict["message"], seconds, report=report)


def _html_report(scratch: Path, commit: str) -> Path:
    return scratch / f"report-{commit[:12]}.html"


def _verdict(out: str) -> Optional[dict]:
    """The verdict `check --json` prints as its last line (None: it printed none)."""
    lines = out.strip().splitlines()
    try:
        verdict = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return verdict if isinstance(verdict, dict) and "verdict" in verdict else None


def _run_check(cmd: list[str], env: dict) -> tuple[int, str, str]:
    """Run one check; on Ctrl-C let it stop its engine (SIGINT) before going."""
    proc = subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate()
    except BaseException:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=CHECK_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    return proc.returncode, out, err
