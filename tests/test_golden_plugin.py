"""The pytest plugin from a user's side: a fresh repository with a goldens
directory, run in a pytest subprocess (the plugin loads through its pytest11
entry point, as in any repository that installed sgl-replay)."""

from __future__ import annotations

import re
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


def verdicts(result: pytest.RunResult) -> dict[str, str]:
    """Each golden's verdict, from the short test summary (-rA); under
    pytest-xdist a node id may end with @ its group."""
    found = (re.match(r"(PASSED|FAILED|ERROR|SKIPPED) \S*::([A-Za-z0-9_.-]+?)(@\S*)?(\s|$)", line)
             for line in result.stdout.lines)
    return {m[2]: m[1] for m in found if m}


STEADY = """
[steady]
workload = "chunked_prefill"
description = "this repository's chunked_prefill golden"

[steady_again]
workload = "chunked_prefill"
description = "the same trace again: the same engine"
"""


def test_a_changed_scheduler_fails_with_the_diff_report(pytester: pytest.Pytester):
    """The golden was recorded with 256-token chunks; the engine the suite
    replays on now prefills in 128-token chunks (standing in for a scheduler
    change): the run fails with the first divergence. Beside it two goldens
    that replay the same on the default configuration, and a trace no entry
    names. Under pytest-xdist (`-n 2 --dist loadgroup`), as a sharded CI runs
    it: the verdicts and the report come back from the workers, one engine
    start per configuration, the unused trace reported once (the plain run's
    path: test_missing_created_unused_deleted and this repository's goldens)."""
    pytester.makeini(INI)
    goldens = pytester.mkdir("goldens")
    (goldens / "goldens.toml").write_text(MANIFEST + STEADY)
    source = TRACES / "chunked_prefill.sglt"
    for name in ("steady", "steady_again", "forgotten"):
        (goldens / f"{name}.sglt").write_bytes(source.read_bytes())
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
    failed = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "-n", "2", "--dist", "loadgroup")
    failed.assert_outcomes(failed=1, passed=2)
    failed.stdout.fnmatch_lines(["*golden trace long_prompt (a long prompt through chunked prefill):*",
                                 "*diverged at iteration 0*", "*long-0 had 256 new tokens at iteration 0 in A, 128 in B*",
                                 "*observed trace kept at *long_prompt.observed.sglt",
                                 "*HTML report (both runs, the divergence marked): *long_prompt.report.html",
                                 "*if the change is intended: pytest --sgl-replay-update -k long_prompt*"])
    failed.stdout.fnmatch_lines(["*unused golden: *forgotten.sglt*",
                                 "sgl-replay: 3 goldens in *s (1 diverged, 2 same; 2 engine starts) on 2 xdist workers"])
    assert failed.stdout.str().count("unused golden:") == 1
    report = next(line.split(": ", 1)[1] for line in failed.stdout.lines if "HTML report (" in line)
    assert "long-0" in Path(report.strip()).read_text()
    assert verdicts(failed) == {"long_prompt": "FAILED", "steady": "PASSED", "steady_again": "PASSED"}


def test_unused_traces_are_judged_once_across_workers_and_shards(pytester: pytest.Pytester):
    """No golden runs, so no engine starts: a suite without entries and five
    traces. Under pytest-xdist both workers collect the suite and only the
    controller judges; over three shards each trace is judged by one."""
    pytester.makeini(INI)
    goldens = pytester.mkdir("goldens")
    (goldens / "goldens.toml").write_text("")
    strays = {f"stray_{n}" for n in range(5)}
    for name in strays:
        (goldens / f"{name}.sglt").write_bytes(b"")

    def judged(result: pytest.RunResult) -> list[str]:
        return [m[1] for line in result.stdout.lines
                for m in [re.search(r"unused golden: \S*/([\w.-]+)\.sglt", line)] if m]

    by_shard = [judged(pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sgl-replay-shard", f"{i}/3"))
                for i in (1, 2, 3)]
    assert sorted(sum(by_shard, [])) == sorted(strays)  # every one, none twice

    deleted = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--sgl-replay-update")
    assert sorted(judged(deleted)) == sorted(strays)
    assert not list(goldens.glob("*.sglt"))


SHARDED = "".join(f'[g{n}]\nworkload = "{w}"\ndescription = "d"\n\n'
                  for n, w in enumerate(["chunked_prefill", "running_cap"] * 5))


def test_shards_split_the_goldens_stably(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """Collection only, no engine: shards 1/3, 2/3 and 3/3 together hold
    every golden once, whatever Python's string hash seed; the rest is
    deselected. A golden is in the xdist_group of the engine it runs on."""
    pytester.makeini(INI)
    goldens = pytester.mkdir("goldens")
    (goldens / "goldens.toml").write_text(SHARDED)
    (goldens / "g1.sglt").write_bytes((TRACES / "max_running_requests_cap.sglt").read_bytes())

    def shard(spec: str, seed: str) -> set[str]:
        monkeypatch.setenv("PYTHONHASHSEED", seed)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--collect-only", "-q",
                                               "--sgl-replay-shard", spec)
        names = {line.split("::")[1] for line in result.stdout.lines if "::" in line}
        result.stdout.fnmatch_lines([f"{len(names)}/10 tests collected ({10 - len(names)} deselected)*"])
        return names

    shards = [shard(f"{i}/3", seed=str(i)) for i in (1, 2, 3)]
    assert sorted(n for s in shards for n in s) == [f"g{n}" for n in range(10)] == sorted(set().union(*shards))
    assert shard("1/3", seed="99") == shards[0]
    assert all(shards)  # ten names over three shards: none empty (crc32 of these names)

    for bad in ("0/3", "4/3", "1/0", "two"):
        result = pytester.runpytest("--collect-only", "--sgl-replay-shard", bad)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*argument --sgl-replay-shard: '{bad}' is not a shard: I/N*"])

    from sgl_replay.runs.replay import engine_config_for
    from sgl_replay.trace import TraceReader

    items, _ = pytester.inline_genitems("-p", "no:cacheprovider")
    group = {item.name: item.get_closest_marker("xdist_group").args[0] for item in items}
    with TraceReader(str(goldens / "g1.sglt")) as r:  # a check replays on its trace's configuration
        assert group["g1"] == f"engine-{engine_config_for(r.header, device='cpu').key()}"
    assert group["g0"] == group["g2"] != group["g3"] == group["g5"] != group["g1"]  # missing: the workload's


def test_xdist_keeps_each_configuration_on_one_worker(pytester: pytest.Pytester):
    """No engine: every golden is missing, so each fails at once. Under
    `-n 2 --dist loadgroup` the five goldens of each configuration run on
    one worker."""
    pytester.makeini(INI)
    goldens = pytester.mkdir("goldens")
    (goldens / "goldens.toml").write_text(SHARDED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup", "-v")
    result.assert_outcomes(failed=10)
    ran_on = {m[2]: m[1] for line in result.stdout.lines
              for m in [re.match(r"\[(gw\d)\] .*FAILED \S*::g(\d+)", line)] if m}
    assert len(ran_on) == 10
    assert len({ran_on[str(n)] for n in range(0, 10, 2)}) == len({ran_on[str(n)] for n in range(1, 10, 2)}) == 1
