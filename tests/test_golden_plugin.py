"""The pytest plugin from a user's side: a fresh repository with a goldens
directory, run in a pytest subprocess (the plugin loads through its pytest11
entry point, as in any repository that installed sgl-replay)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
TRACES = Path(__file__).parent.parent / "traces"

MANIFEST = """\
[long_prompt]
workload = "chunked_prefill"
description = "a long prompt through chunked prefill"
"""

INI = """\
[pytest]
testpaths = goldens
sgl_replay_goldens = goldens
sgl_replay_device = cpu
filterwarnings = ignore::DeprecationWarning
    ignore::UserWarning
"""


def test_missing_created_unused_deleted(pytester: pytest.Pytester):
    pytester.makeini(INI)
    goldens = pytester.mkdir("goldens")
    (goldens / "goldens.toml").write_text(MANIFEST)
    stray = goldens / "forgotten.sglt"
    stray.write_bytes((TRACES / "chunked_prefill.sglt").read_bytes())

    missing = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(["*golden long_prompt is missing*--sgl-replay-update*",
                                  "*unused golden: *forgotten.sglt*"])

    partial = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "nothing_matches")
    assert partial.ret == pytest.ExitCode.NO_TESTS_COLLECTED  # a partial run judges no file unused
    assert "unused golden" not in partial.stdout.str()

    updated = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sgl-replay-update")
    updated.assert_outcomes(passed=1)
    updated.stdout.fnmatch_lines(["created: *long_prompt.sglt", "deleted unused golden: *forgotten.sglt*",
                                  "sgl-replay: 1 goldens in *s (1 created; 1 engine starts)"])
    assert (goldens / "long_prompt.sglt").exists() and not stray.exists()

    stray.write_bytes((goldens / "long_prompt.sglt").read_bytes())
    replayed = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    replayed.assert_outcomes(passed=1)  # the golden itself replays the same...
    assert replayed.ret == pytest.ExitCode.TESTS_FAILED  # ...but an unused trace fails the run
    replayed.stdout.fnmatch_lines(["*unused golden: *forgotten.sglt*", "sgl-replay: 1 goldens in *s (1 same; *"])


def test_a_changed_scheduler_fails_with_the_diff_report(pytester: pytest.Pytester):
    """The golden was recorded with 256-token chunks; the engine the suite
    replays on now prefills in 128-token chunks (standing in for a scheduler
    change): the run fails with the first divergence."""
    pytester.makeini(INI)
    goldens = pytester.mkdir("goldens")
    (goldens / "goldens.toml").write_text(MANIFEST)
    source = TRACES / "chunked_prefill.sglt"
    golden = goldens / "long_prompt.sglt"
    # this repository's own golden, but with a header saying 128-token
    # chunks: the replay engine uses them, while the body shows 256
    from sgl_replay.trace import TraceReader, TraceWriter

    with TraceReader(str(source)) as r:
        header, body = r.header, list(r.iterations())
        end = r.end
    header.engine_args["chunked_prefill_size"] = 128
    header.pools.chunked_prefill_size = 128
    w = TraceWriter(str(golden), header)
    for rec in body:
        w.write(rec)
    w.close(end)
    failed = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sgl-replay-device", "cpu")
    failed.assert_outcomes(failed=1)
    failed.stdout.fnmatch_lines(["*golden trace long_prompt (a long prompt through chunked prefill):*",
                                 "*diverged at iteration 0*", "*long-0 had 256 new tokens at iteration 0 in A, 128 in B*",
                                 "*observed trace kept at *long_prompt.observed.sglt",
                                 "*HTML report (both runs, the divergence marked): *long_prompt.report.html",
                                 "*if the change is intended: pytest --sgl-replay-update -k long_prompt*"])
    report = next(line.split(": ", 1)[1] for line in failed.stdout.lines if "HTML report (" in line)
    assert "long-0" in Path(report.strip()).read_text()
