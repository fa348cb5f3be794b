"""Replay a trace and diff the replay against it: the one `check` behind the
CLI, the golden suite, bisect and the tests, and its typed verdict.

Exit codes (diff/outcome.py, with the outcomes; git bisect run understands
them): 0 same, 1 diverged or a run that failed part way, 2 bad usage or bad
input, 125 could not run this revision (the engine did not start or import)
or replays that disagreed, 130 interrupted, 255 an internal error of
sgl-replay (git bisect run aborts on it instead of blaming the commit).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from sgl_replay.diff import DiffResult, Options, diff
from sgl_replay.diff.outcome import ExitCode, Outcome
from sgl_replay.diff.report import text_lines, to_plain
from sgl_replay.runs.capture import CaptureFailed
from sgl_replay.runs.engine import EngineConfig
from sgl_replay.runs.errors import BadEngineArgs, EngineError
from sgl_replay.runs.pool import EnginePool
from sgl_replay.runs.replay import engine_config_for, replay_trace
from sgl_replay.timing import latency
from sgl_replay.timing.model import CostModel
from sgl_replay.trace.format import Header
from sgl_replay.trace.reader import TraceError, TraceReader
from sgl_replay.views import write_report


# A replay still running after this long is stopped, sealed, and the check
# fails: a trace can claim any number of iterations (--timeout changes it).
REPLAY_TIMEOUT_S = 3600.0


def outcome_of(result: DiffResult) -> Outcome:
    """A diff's verdict as a check outcome: nothing compared is bad input,
    never `same`."""
    if result.verdict in (Outcome.SAME, Outcome.DIVERGED):
        return result.verdict
    return Outcome.BAD_INPUT  # not comparable, empty


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    result: Optional[DiffResult] = None  # the diff shown: a diverged replay's, if any
    observed: Optional[str] = None  # the observed trace, when kept
    message: str = ""  # why, when there is no diff to show
    replays: int = 0
    diverged_replays: int = 0
    # a timed check: {"recorded", "replay", "error"} latency summaries (timing/latency.py)
    latency: Optional[dict] = None

    @property
    def exit_code(self) -> ExitCode:
        return self.outcome.exit_code

    def lines(self, label_a: str, label_b: str) -> list[str]:
        """The report a person reads."""
        out = list(text_lines(self.result, label_a, label_b)) if self.result is not None else []
        if self.message:
            out.append(self.message)
        if self.replays > 1:
            out.append(f"diverged in {self.diverged_replays} of {self.replays} replays"
                       + (" (inconclusive)" if self.outcome is Outcome.INCONCLUSIVE else ""))
        if self.latency is not None:
            out.append("latency on the modelled clock, replay against recording: " + latency.change_line(
                self.latency["error"], self.latency["recorded"], self.latency["replay"]))
        return out

    def to_plain(self, label_a: str = "A", label_b: str = "B") -> dict[str, Any]:
        """For `check --json` (and bisect, which reads it)."""
        return {"verdict": self.outcome.value, "exit_code": int(self.exit_code),
                "message": self.message, "observed": self.observed, "replays": self.replays,
                "diverged_replays": self.diverged_replays,
                "latency": None if self.latency is None else {
                    k: ({x: y for x, y in v.items() if x != "per_request"} if k != "error" else v)
                    for k, v in self.latency.items()},
                "report": self.lines(label_a, label_b),
                "diff": to_plain(self.result, label_a, label_b) if self.result is not None else None}


# A replay turns every loop iteration the trace counts, the idle ones it did
# not write too (gaps in "i", and the run after the last record, up to the
# end record's count): at most this many of those, about as many as 40
# minutes of an idle server's loop. More is bad input: an end record is the
# trace's word, and one claiming 10^15 iterations would keep a replay
# turning until its deadline.
MAX_IDLE_ITERATIONS = 1 << 20


def read_header(trace: str) -> Header:
    """Read the whole trace before anything starts: a bad trace is bad input
    before an engine is spent on it."""
    with TraceReader(trace) as reader:
        written = 0
        for _ in reader.iterations():
            written += 1
        counted = reader.end.iterations if reader.end is not None else written  # set by a whole read
        idle = counted - written
        if idle > MAX_IDLE_ITERATIONS:
            raise TraceError(f"{trace}: the end record counts {counted} loop iterations, the "
                             f"trace holds {written}: a replay would turn {idle} idle ones, more than the "
                             f"{MAX_IDLE_ITERATIONS} it allows")
        return reader.header


def with_env_and_path(config: EngineConfig, engine_env: Optional[dict] = None,
                      engine_path: Sequence[str] = ()) -> EngineConfig:
    """`config` with environment variables `engine_env` set for the engine
    and the directories `engine_path` first on its import path (a suspect
    change shipped as an sglang plugin, say)."""
    if not engine_env and not engine_path:
        return config
    return dataclasses.replace(config, env={**config.env, **{k: str(v) for k, v in (engine_env or {}).items()}},
                               sys_path=(*(os.path.abspath(p) for p in engine_path), *config.sys_path))


def check(trace: str, *, pool: Optional[EnginePool] = None, device: Optional[str] = None,
          engine_args: Optional[dict] = None, options: Options = Options(), repeat: int = 1,
          observed: Optional[str] = None, report: Optional[str] = None,
          timeout_s: float = REPLAY_TIMEOUT_S, engine_env: Optional[dict] = None,
          engine_path: Sequence[str] = (), skip_model: bool = False,
          cost: Optional[CostModel] = None, max_in_flight: Optional[int] = None) -> Verdict:
    """Replay `trace` `repeat` times on one engine and diff each replay
    against it. The engine comes from `pool` (shared engines) or is started
    for this check and stopped after. The last replay is kept at `observed`
    when given; otherwise replays go to a temporary directory. `report`:
    where to write the HTML report of the diff shown (a diverged replay's,
    if any). `skip_model`: the model's forward returns placeholder logits
    during the replays (scheduler/skip_model.py says why that changes no
    scheduling decision). `cost`: replay on the modelled clock with this
    cost model, and compare latency too (`max_in_flight`: a closed-loop
    client's limit)."""
    try:
        header = read_header(trace)
        config = with_env_and_path(engine_config_for(header, device=device, engine_args=engine_args),
                                   engine_env, engine_path)
    except TraceError as e:
        return Verdict(Outcome.BAD_INPUT, message=str(e))
    own_pool = pool is None
    pool = pool or EnginePool(max_live=1)
    try:
        try:
            engine = pool.get(config)
        except BadEngineArgs as e:
            return Verdict(Outcome.BAD_INPUT, message=str(e))
        except ImportError as e:
            return Verdict(Outcome.COULD_NOT_RUN, message=f"cannot import the engine here: {e}")
        except EngineError as e:
            return Verdict(Outcome.COULD_NOT_RUN, message=str(e))
        overrides: dict[str, object] = {"device": device, "engine_args": engine_args or {}}
        if engine_env:
            overrides["engine_env"] = dict(engine_env)
        if skip_model:
            overrides["skip_model"] = True
        if max_in_flight is not None:
            overrides["max_in_flight"] = max_in_flight
        results: list[DiffResult] = []
        with tempfile.TemporaryDirectory(prefix="sgl-replay-check-") as tmp:
            paths = [observed if observed and run == repeat - 1 else os.path.join(tmp, f"observed-{run}.sglt")
                     for run in range(repeat)]
            for run, path in enumerate(paths):
                try:
                    replay_trace(engine, trace, path, overrides=overrides, timeout_s=timeout_s, cost=cost)
                except CaptureFailed as e:
                    kept = e.trace is not None and e.trace == path == observed
                    return Verdict(Outcome.FAILED, observed=path if kept else None, replays=run + 1,
                                   message=f"{e}" + (f" (what ran is in {path}, sealed as incomplete)"
                                                     if kept else ""))
                with TraceReader(trace) as a, TraceReader(path) as b:
                    results.append(diff(a, b, options))
            diverged = [k for k, r in enumerate(results) if r.verdict is Outcome.DIVERGED]
            shown = diverged[0] if diverged else 0
            timed = None
            if cost is not None:
                recorded, replayed = (latency.of_trace(p).summary() for p in (trace, paths[shown]))
                timed = {"recorded": recorded, "replay": replayed, "error": latency.compare(recorded, replayed)}
            if report:
                write_report(trace, paths[shown], results[shown], report, label_a="recorded", label_b="replay")
    finally:
        if own_pool:
            pool.close()
    outcome = outcome_of(results[shown])
    if 0 < len(diverged) < repeat:
        outcome = Outcome.INCONCLUSIVE
    return Verdict(outcome, results[shown], observed, replays=repeat, diverged_replays=len(diverged),
                   latency=timed)
