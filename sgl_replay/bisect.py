"""Find the commit that changed scheduling, with a trace that shows it.

`git bisect` runs in a linked worktree of the user's repository (the user's
own checkout, index and branch are never touched). At each step the
revision is installed with `pip install --no-deps --target` into a scratch
directory of its own, and `sgl-replay check TRACE` runs with that directory
first on PYTHONPATH: the engine imports that revision's code (entry points
included, so an sglang plugin's hooks load), and nothing is installed into the
user's environment. The worktree, the bisect state and the scratch
directories go away at the end, on Ctrl-C too.
"""

from __future__ import annotations

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

EXIT_GOOD, EXIT_BAD, EXIT_USAGE, EXIT_SKIP = 0, 1, 2, 125
CHECK_STOP_GRACE_S = 10.0  # a Ctrl-C'd check gets this long to stop its engine


class BisectError(Exception):
    exit_code = 2


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
        raise BisectError(f"git {' '.join(args)}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return proc.stdout + proc.stderr


def bisect(repo: str, good: str, bad: str, trace: str, *, repeat: int = 1, subdir: str = ".",
           check_args: tuple[str, ...] = (), echo: Callable[[str], None] = print) -> BisectResult:
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
            if "is the first bad commit" in out:
                result.first_bad = re.search(r"([0-9a-f]{40}) is the first bad commit", out).group(1)
                break
            if "only 'skip'ped commits left" in out:
                result.candidates = re.findall(r"^([0-9a-f]{40})$", out, re.M)
                break
            head = _git(worktree, "rev-parse", "HEAD").strip()
            step = _run_step(worktree, head, subdir, trace, repeat, check_args, scratch)
            result.steps.append(step)
            echo(f"step {len(result.steps)}: {head[:10]} {step.subject[:60]!r}: {step.verdict}"
                 f" ({step.detail}, {step.seconds:.0f}s)")
            out = _git(worktree, "bisect", step.verdict, check=False)
        if result.first_bad:
            result.subject = _git(worktree, "log", "-1", "--format=%s", result.first_bad).strip()
            tested = next((s for s in result.steps if s.commit == result.first_bad), None)
            if tested is None:  # the bad end itself: check it for its report
                tested = _run_step(worktree, result.first_bad, subdir, trace, repeat, check_args, scratch,
                                   checkout=True)
            result.report = tested.report
    finally:
        _git(worktree, "bisect", "reset", check=False) if worktree.exists() else None
        _git(repo_path, "worktree", "remove", "--force", str(worktree), check=False)
        _git(repo_path, "worktree", "prune", check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result


def _run_step(worktree: Path, commit: str, subdir: str, trace: str, repeat: int,
              check_args: tuple[str, ...], scratch: Path, checkout: bool = False) -> Step:
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
    code, out, err = _run_check([sys.executable, "-m", "sgl_replay.cli", "check", trace,
                                 "--repeat", str(repeat), *check_args], env)
    shutil.rmtree(site, ignore_errors=True)
    seconds = time.monotonic() - started
    rate = next((l for l in (out + err).splitlines() if l.startswith("diverged in ")), "")
    if code == EXIT_GOOD:
        return Step(commit, subject, "good", rate or "same", seconds)
    if code == EXIT_BAD:
        first = next((l for l in out.splitlines() if l.startswith("diverged at")), "diverged")
        return Step(commit, subject, "bad", rate or first.rstrip(":"), seconds, report=out)
    if code == EXIT_SKIP:
        why = rate if "inconclusive" in rate else _last_error(err)
        return Step(commit, subject, "skip", f"inconclusive: {rate}" if "inconclusive" in rate else why,
                    seconds)
    raise BisectError(f"check failed at {commit[:10]} (exit {code}): {_last_error(err)}")


def _last_error(err: str) -> str:
    lines = [l for l in err.splitlines() if l.startswith("sgl-replay: error:")]
    return lines[-1].removeprefix("sgl-replay: error: ") if lines else (err.strip().splitlines() or ["?"])[-1]


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
