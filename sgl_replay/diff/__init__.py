"""Comparing two traces: pure and streaming, no engine, no sglang, no file I/O.

    headers.py      can the two runs be compared at all
    lockstep.py     pairing iterations, the first divergence, the realigned rest
    comparators.py  one comparator per kind of consequence; --level, --ignore
    lifecycle.py    each request's life, per side
    report.py       a result as text or JSON
    outcome.py      the verdicts (diff, check, golden) and their exit codes
"""

from sgl_replay.diff.comparators import Options
from sgl_replay.diff.lifecycle import Lifecycle
from sgl_replay.diff.lockstep import DiffResult, FirstDivergence, diff
from sgl_replay.diff.outcome import ExitCode, Outcome

__all__ = ["DiffResult", "ExitCode", "FirstDivergence", "Lifecycle", "Options", "Outcome", "diff"]
