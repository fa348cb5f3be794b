"""`minimize`'s delta debugging on a known predicate. (The real-engine case,
a planted change shrunk and exported, is tools/bench/minimize.py for now.)"""

from __future__ import annotations

from sgl_replay.runs.minimize import ddmin


def test_ddmin_finds_a_one_minimal_subset():
    """The search alone: the failure needs units 3 and 11 together."""
    tried = []

    def test(candidate, step):
        tried.append(len(candidate))
        return {3, 11} <= set(candidate)

    result, steps = ddmin(list(range(32)), test)
    assert sorted(result) == [3, 11] and steps >= 1 and len(tried) < 64
