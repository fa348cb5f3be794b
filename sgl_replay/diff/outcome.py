"""One vocabulary for what a comparison came to, shared by the diff, `check`
and the golden suite, and the exit status each gives. Pure: it imports
nothing of sgl-replay."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    SAME = 0
    DIVERGED = 1  # also: a run that failed part way (its trace is kept, sealed)
    BAD_INPUT = 2  # bad usage, an unreadable or unusable trace
    SKIP = 125  # could not run here, or --repeat replays disagreed
    INTERRUPTED = 130
    INTERNAL = 255  # a bug in sgl-replay, never a verdict on the code under test


class Outcome(str, enum.Enum):
    """The values are what `--json` prints (bisect reads them) and what
    reports say; str() and format() give the value, as StrEnum's do."""

    # a diff of two traces
    SAME = "same"
    DIVERGED = "diverged"
    NOT_COMPARABLE = "not comparable"  # the headers say the runs cannot be compared
    EMPTY = "empty"  # neither trace holds an iteration
    # a check (replays against a trace)
    INCONCLUSIVE = "inconclusive"  # some of the --repeat replays diverged, not all
    FAILED = "failed"  # the replay stopped part way (script failed, engine died)
    COULD_NOT_RUN = "could not run"  # the engine did not start or import here
    BAD_INPUT = "bad input"
    # a golden trace of the pytest plugin
    MISSING = "missing"  # its file is not there (run with --sgl-replay-update)
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    OVER_BUDGET = "over budget"  # a figure of its latency budget got worse than the budget allows
    WITHIN_BUDGET = "within budget"  # its schedule changed, as it may, and its figures stayed in budget

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return self.value.__format__(spec)

    @property
    def exit_code(self) -> ExitCode:
        """A check's exit status (a diff's verdict is first made a check's
        outcome: nothing compared is bad input)."""
        return _EXIT_CODES[self]


_EXIT_CODES = {Outcome.SAME: ExitCode.SAME, Outcome.DIVERGED: ExitCode.DIVERGED,
               Outcome.INCONCLUSIVE: ExitCode.SKIP, Outcome.FAILED: ExitCode.DIVERGED,
               Outcome.COULD_NOT_RUN: ExitCode.SKIP, Outcome.BAD_INPUT: ExitCode.BAD_INPUT,
               Outcome.NOT_COMPARABLE: ExitCode.BAD_INPUT, Outcome.EMPTY: ExitCode.BAD_INPUT}
