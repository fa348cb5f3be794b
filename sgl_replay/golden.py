"""Golden traces: a directory of traces plus a manifest saying how each was
made, replayed on the real engine and diffed, the way snapshot tools check
snapshots (syrupy, insta): a golden that changed fails with its diff report,
`--sgl-replay-update` records it anew, a manifest entry without its trace is
missing, a trace without its manifest entry is unused.

    traces/goldens.toml
        [kv_pressure]
        workload = "kv_pressure"            # built-in, module:function, or "serve"
        description = "..."                 # optional for built-ins
        engine_args = { max_total_tokens = 1024 }   # optional, on top of the workload's
        client = "clients:irregular"        # serve: sends the traffic, called with the URL
        duration = 30                       # serve: seconds, and/or
        idle_timeout = 1.0                  #        stop once idle this long

This module does the work; sgl_replay.pytest_plugin only connects it to pytest.
"""

from __future__ import annotations

import os
import re
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from sgl_replay.diff import DiffResult, Options, diff
from sgl_replay.diff.report import text_lines
from sgl_replay.diff.outcome import Outcome as Status
from sgl_replay.runs.check import check
from sgl_replay.runs.engine import EngineConfig
from sgl_replay.runs.pool import EnginePool
from sgl_replay.runs.record import record_workload
from sgl_replay.runs.replay import engine_config_for, replay_trace
from sgl_replay.trace.format import Workload
from sgl_replay.trace.reader import TraceError, TraceReader
from sgl_replay.traffic import specs
from sgl_replay.views import write_report

MANIFEST = "goldens.toml"
SUFFIX = ".sglt"
# A golden's name is its file's name: nothing that could leave the directory.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class ManifestError(Exception):
    pass


@dataclass(frozen=True)
class Golden:
    name: str
    path: Path
    workload: Workload
    engine_args: dict = field(default_factory=dict)
    client: Optional[str] = None

    @property
    def description(self) -> str:
        return self.workload.description or ""

    def engine_config(self) -> EngineConfig:
        return EngineConfig.embedded(engine_args={**specs.engine_args_of(self.workload),
                                                  **self.engine_args})


def load_manifest(directory: Path) -> list[Golden]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    path = directory / MANIFEST
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest; list the goldens in it") from None
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"{path}: {e}") from None
    goldens = []
    for name, entry in data.items():
        if not SAFE_NAME.fullmatch(name) or name.endswith(".sglt"):
            raise ManifestError(f"{path}: [{name}] is not a safe golden name (letters, digits, _ . -)")
        if not isinstance(entry, dict) or "workload" not in entry:
            raise ManifestError(f"{path}: [{name}] needs a workload")
        unknown = set(entry) - {"workload", "description", "engine_args", "client", "duration",
                                "idle_timeout"}
        if unknown:
            raise ManifestError(f"{path}: [{name}] has unknown keys {sorted(unknown)}")
        try:
            workload = specs.parse(entry["workload"], duration_s=entry.get("duration"),
                                       idle_s=entry.get("idle_timeout"),
                                       description=entry.get("description"))
        except ValueError as e:
            raise ManifestError(f"{path}: [{name}] {e}") from None
        if not workload.description:
            raise ManifestError(f"{path}: [{name}] needs a one-line description")
        goldens.append(Golden(name=name, path=directory / f"{name}{SUFFIX}", workload=workload,
                              engine_args=entry.get("engine_args", {}), client=entry.get("client")))
    return goldens


def unused_traces(directory: Path, goldens: list[Golden]) -> list[Path]:
    named = {g.path.name for g in goldens}
    return sorted(p for p in directory.glob(f"*{SUFFIX}") if p.name not in named)


def engine_key(golden: Golden, *, device: Optional[str] = None, update: bool = False) -> str:
    """The key of the engine configuration the golden runs on: a check's
    replays on its trace's (the header alone is read), a re-recording and a
    missing trace's on its workload's. A trace that cannot be read fails
    without an engine, so any key does: the workload's."""
    by_trace = golden.workload.kind == "serve" and golden.client is None if update else True
    if by_trace and golden.path.exists():
        try:
            with TraceReader(str(golden.path)) as reader:
                return engine_config_for(reader.header, device=device).key()
        except (TraceError, OSError):
            pass
    return golden.engine_config().key()


def in_shard(name: str, shard: tuple[int, int]) -> bool:
    """Whether golden `name` is in shard (I, N), 1-based: a split by a hash
    of the name that is the same in every process and on every machine."""
    index, count = shard
    return zlib.crc32(name.encode()) % count == index - 1


@dataclass
class Outcome:
    golden: Golden
    status: Status  # a check's outcome, or MISSING, CREATED, UPDATED, UNCHANGED
    report: list[str] = field(default_factory=list)
    seconds: float = 0.0  # its engine start included, when it needed one
    engine_starts: int = 0


class GoldenSuite:
    """Replays (or re-records) goldens on a shared EnginePool: one engine
    start per distinct configuration, shared by every golden that needs it."""

    def __init__(self, pool: EnginePool, *, device: Optional[str] = None,
                 options: Options = Options(), scratch: Optional[Path] = None) -> None:
        self.pool = pool
        self.device = device
        self.options = options
        self.scratch = scratch or Path(os.environ.get("TMPDIR", "/tmp"))
        self.outcomes: list[Outcome] = []

    def check(self, golden: Golden) -> Outcome:
        started, starts = time.monotonic(), self.pool.starts
        if not golden.path.exists():
            outcome = Outcome(golden, Status.MISSING, [
                f"golden {golden.name} is missing: {golden.path} does not exist; "
                f"record it with --sgl-replay-update"])
        else:
            observed = self.observed_path(golden)
            verdict = check(str(golden.path), pool=self.pool, device=self.device, options=self.options,
                            observed=str(observed))
            outcome = Outcome(golden, verdict.outcome, verdict.lines(str(golden.path), "replay"))
            if verdict.outcome is Status.SAME:
                observed.unlink()
            elif verdict.outcome is Status.DIVERGED and verdict.result is not None:
                write_report(str(golden.path), str(observed), verdict.result, str(self.report_path(golden)),
                             label_a=str(golden.path), label_b="replay")
        outcome.seconds = time.monotonic() - started
        outcome.engine_starts = self.pool.starts - starts
        self.outcomes.append(outcome)
        return outcome

    def observed_path(self, golden: Golden) -> Path:
        return self.scratch / f"{golden.name}.observed{SUFFIX}"

    def report_path(self, golden: Golden) -> Path:
        return self.scratch / f"{golden.name}.report.html"

    def update(self, golden: Golden) -> Outcome:
        """Record the golden anew (re-run its workload; a serve golden without
        a client is replayed instead, its inputs kept). An unchanged golden
        keeps its file."""
        started, starts = time.monotonic(), self.pool.starts
        fresh = self.scratch / f"{golden.name}.fresh{SUFFIX}"
        if golden.workload.kind == "serve" and golden.client is None:
            if not golden.path.exists():
                raise ManifestError(f"golden {golden.name}: a serve golden without a client "
                                    f"cannot be recorded here; record it with `sgl-replay record serve`")
            with TraceReader(str(golden.path)) as reader:
                config = engine_config_for(reader.header, device=self.device)
            replay_trace(self.pool.get(config), str(golden.path), str(fresh))
        else:
            client = specs.resolve(golden.client) if golden.client else None
            record_workload(self.pool.get(golden.engine_config()), golden.workload, str(fresh),
                            client=client)
        if not golden.path.exists():
            status, lines = Status.CREATED, [f"created {golden.path}"]
        else:
            result = self._diff(golden.path, fresh)
            status = Status.UNCHANGED if result.same else Status.UPDATED
            lines = [] if result.same else list(text_lines(result, f"{golden.path} (old)", "new"))
        if status is Status.UNCHANGED:
            fresh.unlink()
        else:
            os.replace(fresh, golden.path)
        outcome = Outcome(golden, status, lines, time.monotonic() - started, self.pool.starts - starts)
        self.outcomes.append(outcome)
        return outcome

    def _diff(self, a: Path, b: Path) -> DiffResult:
        with TraceReader(str(a)) as ra, TraceReader(str(b)) as rb:
            return diff(ra, rb, self.options)

    def summary(self) -> str:
        """One line: the goldens' own time and engine starts (in a session
        that shares the pool with other tests, theirs are not counted)."""
        counts: dict[Status, int] = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        seconds = sum(o.seconds for o in self.outcomes)
        starts = sum(o.engine_starts for o in self.outcomes)
        return f"sgl-replay: {len(self.outcomes)} goldens in {seconds:.1f}s ({parts}; {starts} engine starts)"
