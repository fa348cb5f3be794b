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

    A golden whose trace keeps time (a public trace on the wall or modelled
    clock, serve) may carry a latency budget: it then replays on the
    modelled clock and fails when a figure got worse than its budget allows.

        [mooncake_budget]
        workload = "mooncake:slice.jsonl?token_scale=0.03125&clock=modeled"
        cost = "mooncake_budget.cost.json"  # beside the manifest; default: fitted on the trace
        budget = { ttft_p90 = "+5%", throughput = "-3%" }   # names: timing/latency.FIGURES
        max_in_flight = 8                   # optional: a closed-loop client's limit
        schedule = "may change"             # default "must match"

This module does the work; sgl_replay.pytest_plugin only connects it to pytest.
"""

from __future__ import annotations

import os
import re
import sys
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from sgl_replay.diff import DiffResult, Options, diff
from sgl_replay.diff.report import text_lines
from sgl_replay.diff.outcome import Outcome as Status
from sgl_replay.runs.check import Verdict, check, read_header, with_env_and_path
from sgl_replay.runs.engine import EngineConfig
from sgl_replay.runs.pool import EnginePool
from sgl_replay.runs.record import record_workload
from sgl_replay.runs.replay import engine_config_for, replay_trace
from sgl_replay.timing import latency
from sgl_replay.timing.model import CostModel, CostModelError
from sgl_replay.trace.format import Workload
from sgl_replay.trace.reader import TraceError, TraceReader
from sgl_replay.traffic import specs
from sgl_replay.views import write_report

MANIFEST = "goldens.toml"
SUFFIX = ".sglt"
# A golden's name is its file's name: nothing that could leave the directory.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
MUST_MATCH, MAY_CHANGE = "must match", "may change"  # what a budget golden's schedule may do
# a budget as a user writes it: how much worse a figure may get, "+5%" for a latency, "-3%" for throughput
_BUDGET = re.compile(r"([+-])([0-9]+(?:\.[0-9]+)?)%")
_KEYS = {"workload", "description", "engine_args", "client", "duration", "idle_timeout",
         "budget", "cost", "max_in_flight", "schedule"}


class ManifestError(Exception):
    pass


@dataclass(frozen=True)
class Budget:
    """How much worse one named figure (timing/latency.FIGURES) of the
    replay may be than the golden's own, in % of the golden's."""
    figure: str
    limit_pct: float

    @property
    def written(self) -> str:
        """As the manifest writes it."""
        return f"{'-' if self.figure == 'throughput' else '+'}{self.limit_pct:g}%"

    def exceeded(self, recorded: dict, replay: dict) -> Optional[str]:
        """Why the replay's summary is over this budget, or None."""
        worse = latency.worse_pct(recorded, replay, self.figure)
        a, b = (latency.figure(s, self.figure) for s in (recorded, replay))
        if (worse is not None and worse <= self.limit_pct) or (a is not None and a == b):  # 0 ms stayed 0
            return None
        unit = " tok/s" if self.figure == "throughput" else " ms"
        shown = " -> ".join("-" if x is None else f"{x:.2f}" for x in (a, b)) + unit
        if worse is None:
            return f"{self.figure} {shown}: no figure to compare (budget {self.written})"
        change = -worse if self.figure == "throughput" else worse
        return f"{self.figure} {shown} ({change:+.1f}%, budget {self.written})"


def parse_budget(name: str, value: object) -> Budget:
    """One entry of a golden's budget table; ManifestError naming what is wrong."""
    if name not in latency.FIGURES:
        raise ManifestError(f"budget: unknown figure {name!r}; the figures: {', '.join(latency.FIGURES)}")
    m = _BUDGET.fullmatch(value) if isinstance(value, str) else None
    rises = name != "throughput"  # a latency gets worse as it rises, throughput as it falls
    if m is None:
        raise ManifestError(f"budget {name} = {value!r}: write how much worse it may get, "
                            f"e.g. \"{'+' if rises else '-'}5%\"")
    if (m.group(1) == "+") != rises:
        raise ManifestError(f"budget {name} = {value!r}: {name} gets worse as it {'rises' if rises else 'falls'}; "
                            f"write \"{'+' if rises else '-'}{m.group(2)}%\"")
    return Budget(name, float(m.group(2)))


@dataclass(frozen=True)
class Golden:
    name: str
    path: Path
    workload: Workload
    engine_args: dict = field(default_factory=dict)
    client: Optional[str] = None
    budget: tuple[Budget, ...] = ()  # empty: the golden's schedule alone is compared
    cost: Optional[Path] = None  # the cost model it is recorded (modelled clock) and replayed (budget) with
    max_in_flight: Optional[int] = None
    schedule: str = MUST_MATCH

    @property
    def timed(self) -> bool:
        """Whether its recording keeps time (the wall or the modelled clock)."""
        return specs.by_wall_clock(self.workload) or self.modelled

    @property
    def modelled(self) -> bool:
        return self.workload.kind == "public" and (self.workload.options or {}).get("clock") == "modeled"

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
        unknown = set(entry) - _KEYS
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
        golden = Golden(name=name, path=directory / f"{name}{SUFFIX}", workload=workload,
                        engine_args=entry.get("engine_args", {}), client=entry.get("client"))
        try:
            goldens.append(_with_budget(golden, entry, directory))
        except ManifestError as e:
            raise ManifestError(f"{path}: [{name}] {e}") from None
    return goldens


def _with_budget(golden: Golden, entry: dict, directory: Path) -> Golden:
    """`golden` with its entry's budget, cost model, client limit and
    schedule rule, checked."""
    budget = entry.get("budget")
    if budget is not None and (not isinstance(budget, dict) or not budget):
        raise ManifestError("budget is a table of figures: budget = { ttft_p90 = \"+5%\" }")
    budgets = tuple(parse_budget(k, v) for k, v in (budget or {}).items())
    cost = entry.get("cost")
    if cost is not None and (not isinstance(cost, str) or not SAFE_NAME.fullmatch(cost)):
        raise ManifestError(f"cost = {cost!r}: the name of a cost model file beside the manifest")
    limit = entry.get("max_in_flight")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ManifestError(f"max_in_flight = {limit!r}: a number of requests, 1 or more")
    schedule = entry.get("schedule", MUST_MATCH)
    if schedule not in (MUST_MATCH, MAY_CHANGE):
        raise ManifestError(f"schedule = {schedule!r}: \"{MUST_MATCH}\" or \"{MAY_CHANGE}\"")
    if not budgets and (limit is not None or "schedule" in entry):
        raise ManifestError("max_in_flight and schedule go with a budget")
    golden = replace(golden, budget=budgets, cost=None if cost is None else directory / cost,
                     max_in_flight=limit, schedule=schedule)
    if (budgets or cost is not None) and not golden.timed:
        raise ManifestError("a budget or a cost model needs a recording that keeps time: a public trace with "
                            "clock=wall or clock=modeled, or serve")
    if golden.modelled and cost is None:
        raise ManifestError("a recording on the modelled clock needs its cost model: cost = \"FILE\"")
    return golden


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


PASSED = (Status.SAME, Status.WITHIN_BUDGET, Status.CREATED, Status.UPDATED, Status.UNCHANGED)


@dataclass
class Outcome:
    golden: Golden
    status: Status  # a check's outcome, or MISSING, CREATED, UPDATED, UNCHANGED, OVER_BUDGET, WITHIN_BUDGET
    report: list[str] = field(default_factory=list)
    seconds: float = 0.0  # its engine start included, when it needed one
    engine_starts: int = 0
    diverged: bool = False  # its replay's schedule diverged (kept, with an HTML report)

    @property
    def passed(self) -> bool:
        return self.status in PASSED


def judge(golden: Golden, verdict: Verdict) -> tuple[Status, list[str]]:
    """A golden's status and report from its check: a figure over budget
    fails it, schedule or not; a divergence passes only a golden whose
    schedule may change, inside its budgets."""
    lines = verdict.lines(str(golden.path), "replay")
    if not golden.budget or verdict.latency is None or verdict.outcome not in (Status.SAME, Status.DIVERGED):
        return verdict.outcome, lines
    recorded, replay = verdict.latency["recorded"], verdict.latency["replay"]
    over = [why for budget in golden.budget if (why := budget.exceeded(recorded, replay)) is not None]
    if over:
        schedule = ("the schedule diverged too" if verdict.outcome is Status.DIVERGED
                    else "the schedule did not diverge")
        return Status.OVER_BUDGET, [f"over budget on the modelled clock ({schedule}):",
                                    *(f"  {why}" for why in over), *lines]
    if verdict.outcome is Status.DIVERGED and golden.schedule == MAY_CHANGE:
        kept = ", ".join(f"{b.figure} {b.written}" for b in golden.budget)
        return Status.WITHIN_BUDGET, [f"the schedule changed, as it may; inside the budget ({kept})", *lines]
    return verdict.outcome, lines


class GoldenSuite:
    """Replays (or re-records) goldens on a shared EnginePool: one engine
    start per distinct configuration, shared by every golden that needs it."""

    def __init__(self, pool: EnginePool, *, device: Optional[str] = None,
                 options: Options = Options(), scratch: Optional[Path] = None,
                 engine_env: Optional[dict] = None) -> None:
        self.pool = pool
        self.device = device
        self.options = options
        self.scratch = scratch or Path(os.environ.get("TMPDIR", "/tmp"))
        self.engine_env = engine_env  # for every golden's engine (a change shipped as an sglang plugin)
        self.outcomes: list[Outcome] = []

    def check(self, golden: Golden) -> Outcome:
        """Replay the golden and diff it; a golden with a budget replays on
        the modelled clock and its latency is judged too."""
        started, starts = time.monotonic(), self.pool.starts
        if not golden.path.exists():
            outcome = Outcome(golden, Status.MISSING, [
                f"golden {golden.name} is missing: {golden.path} does not exist; "
                f"record it with --sgl-replay-update"])
        else:
            outcome = self._check(golden)
        outcome.seconds = time.monotonic() - started
        outcome.engine_starts = self.pool.starts - starts
        self.outcomes.append(outcome)
        return outcome

    def _check(self, golden: Golden) -> Outcome:
        cost = None
        if golden.budget:
            try:
                cost = self._cost_model(golden)
            except (TraceError, CostModelError, OSError) as e:
                return Outcome(golden, Status.BAD_INPUT, [f"golden {golden.name}: {e}"])
        observed = self.observed_path(golden)
        verdict = check(str(golden.path), pool=self.pool, device=self.device, options=self.options,
                        observed=str(observed), engine_env=self.engine_env, cost=cost,
                        max_in_flight=golden.max_in_flight)
        status, lines = judge(golden, verdict)
        if status in (Status.SAME, Status.WITHIN_BUDGET):
            observed.unlink()
        elif verdict.outcome is Status.DIVERGED and verdict.result is not None:
            write_report(str(golden.path), str(observed), verdict.result, str(self.report_path(golden)),
                         label_a=str(golden.path), label_b="replay")
        return Outcome(golden, status, lines, diverged=verdict.outcome is Status.DIVERGED)

    def _cost_model(self, golden: Golden) -> CostModel:
        """The golden's cost model: its file, else the one its trace was
        recorded with, else one fitted on its trace (as `check --clock
        modeled` picks)."""
        from sgl_replay.timing.fit import cost_for

        trace = str(golden.path)
        model, _ = cost_for(trace, read_header(trace), None if golden.cost is None else str(golden.cost))
        return model

    def failure(self, outcome: Outcome) -> str:
        """What a failed golden says: its report, where its replay is kept,
        and the update command."""
        kept = []
        if outcome.diverged or outcome.status is Status.OVER_BUDGET:
            observed = self.observed_path(outcome.golden)
            kept.append(f"observed trace kept at {observed}")
            if outcome.diverged:
                kept.append(f"HTML report (both runs, the divergence marked): {self.report_path(outcome.golden)}")
            if outcome.golden.budget:
                kept.append(f"its latency against the golden's: sgl-replay latency {outcome.golden.path} {observed}")
            widen = " (or widen the budget in goldens.toml)" if outcome.status is Status.OVER_BUDGET else ""
            kept.append(f"if the change is intended: pytest --sgl-replay-update -k {outcome.golden.name}{widen}")
        return "\n".join(outcome.report + kept)

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
            replay_trace(self.pool.get(with_env_and_path(config, self.engine_env)), str(golden.path), str(fresh))
        else:
            from sgl_replay.timing.model import load

            client = specs.resolve(golden.client) if golden.client else None
            cost = load(str(golden.cost)) if golden.modelled and golden.cost is not None else None
            record_workload(self.pool.get(with_env_and_path(golden.engine_config(), self.engine_env)),
                            golden.workload, str(fresh), client=client, cost=cost)
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
