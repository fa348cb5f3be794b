"""pytest plugin (entry point `pytest11`): golden traces replayed on the real
SGLang engine. Only connects pytest to sgl_replay.golden; inert unless the
ini option `sgl_replay_goldens` names a directory.

    [tool.pytest.ini_options]
    testpaths = ["tests", "traces"]
    sgl_replay_goldens = "traces"

Every goldens.toml under that directory is a suite: one test item per entry
(`traces/goldens.toml::kv_pressure`), replayed and diffed; a changed golden
fails with the diff report. `--sgl-replay-update` records them anew.

Under pytest-xdist (`-n 2 --dist loadgroup`) each golden is in the
xdist_group of its engine configuration, so a worker starts each
configuration once; the workers send what ran to the controller, which
alone judges unused traces and prints the summary. `--sgl-replay-shard I/N`
keeps the goldens of shard I (a CI matrix runs one shard per job).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import tempfile
from pathlib import Path
from typing import Optional

import pytest

from sgl_replay.diff.outcome import Outcome as Status

_STATE = pytest.StashKey["_State"]()


class _State:
    """Per-session: the engine pool, the suite, what ran."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        goldens = config.getini("sgl_replay_goldens")
        self.root: Optional[Path] = (Path(config.rootpath) / goldens).resolve() if goldens else None
        self.update = config.getoption("sgl_replay_update")
        self.device = config.getoption("sgl_replay_device") or config.getini("sgl_replay_device") or None
        self.pythonpath = tuple(str(p) for p in config.getini("sgl_replay_pythonpath"))
        self._pool = None
        self._suite = None
        self.manifests: dict[Path, list] = {}  # manifest dir -> goldens declared
        self.ran: set[tuple[Path, str]] = set()
        self.started_by: list[tuple[str, int, int]] = []  # (test, engine starts, restarts) where any
        self.unused: list[Path] = []  # golden files no manifest names (known at the session's end)
        self.shard: tuple[int, int] = config.getoption("sgl_replay_shard") or (1, 1)
        self.is_worker = hasattr(config, "workerinput")  # a pytest-xdist worker
        self.workers = 0  # in the controller: workers whose goldens it adopted
        self.worker_starts = (0, 0)  # their engine starts and restarts

    def starts(self) -> tuple[int, int]:
        own = (0, 0) if self._pool is None else (self._pool.starts, self._pool.restarts)
        return own[0] + self.worker_starts[0], own[1] + self.worker_starts[1]

    @property
    def pool(self):
        if self._pool is None:
            from sgl_replay.runs.pool import EnginePool

            self._pool = EnginePool(extra_sys_path=self.pythonpath, max_live=5)
        return self._pool

    @property
    def suite(self):
        if self._suite is None:
            from sgl_replay.golden import GoldenSuite

            scratch = Path(tempfile.mkdtemp(prefix="sgl-replay-goldens-"))
            self._suite = GoldenSuite(self.pool, device=self.device, scratch=scratch)
        return self._suite

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._suite is not None:
            try:
                self._suite.scratch.rmdir()  # kept while it holds a diverged run's observed trace
            except OSError:
                pass


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sgl-replay", "golden traces replayed on the real SGLang engine")
    group.addoption("--sgl-replay-update", action="store_true", default=False,
                    help="Record the goldens that run anew, create missing ones, delete unused ones.")
    group.addoption("--sgl-replay-device", default=None,
                    help="Device to replay goldens on (default: ini sgl_replay_device, else as recorded).")
    group.addoption("--sgl-replay-shard", default=None, type=_shard, metavar="I/N",
                    help="Run shard I of N of the goldens (split by their names' hash; other tests all run).")
    parser.addini("sgl_replay_goldens", "Directory of golden traces; every goldens.toml under it is a suite.",
                  default="")
    parser.addini("sgl_replay_device", "Device to replay goldens on.", default="")
    parser.addini("sgl_replay_pythonpath",
                  "Paths the engine imports scripts and plugins from (and serve goldens' clients).",
                  type="paths", default=[])


def _shard(value: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", value.strip())
    if m is None or not 1 <= int(m[1]) <= int(m[2]):
        raise argparse.ArgumentTypeError(f"{value!r} is not a shard: I/N, 1 <= I <= N (say 1/4 ... 4/4)")
    return int(m[1]), int(m[2])


def pytest_configure(config: pytest.Config) -> None:
    state = config.stash[_STATE] = _State(config)
    # the goldens' groups, also where pytest-xdist is not installed
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist's --dist loadgroup runs a group on one worker")
    # serve goldens' clients are imported here from the same paths
    for path in reversed(state.pythonpath):
        if path not in sys.path:
            sys.path.insert(0, path)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None:
        state.close()


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    state = parent.config.stash[_STATE]
    if state.root is None or file_path.name != "goldens.toml":
        return None
    if state.root != file_path.parent and state.root not in file_path.parents:
        return None
    return GoldenManifest.from_parent(parent, path=file_path)


class GoldenManifest(pytest.File):
    def collect(self):
        from sgl_replay.golden import ManifestError, load_manifest

        state = self.config.stash[_STATE]
        try:
            goldens = load_manifest(self.path.parent)
        except ManifestError as e:
            raise self.CollectError(str(e)) from None
        state.manifests[self.path.parent] = goldens
        for golden in goldens:
            item = GoldenItem.from_parent(self, name=golden.name, golden=golden)
            # --dist loadgroup: one worker per configuration, one engine start there
            item.add_marker(pytest.mark.xdist_group(_group(state, golden)))
            yield item


def _group(state: _State, golden) -> str:
    from sgl_replay.golden import engine_key

    return f"engine-{engine_key(golden, device=state.device, update=state.update)}"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """pytest-xdist's loadgroup scheduler, told each golden's group here:
    xdist carries an xdist_group mark to the controller in the node id, which
    pytest 9.2 no longer lets it change (pytest-xdist issue 1386), and then
    groups nothing."""
    state = config.stash[_STATE]
    if config.getvalue("dist") != "loadgroup" or state.root is None:
        return None
    from xdist.scheduler import LoadGroupScheduling

    from sgl_replay.golden import MANIFEST, ManifestError, load_manifest

    manifests: dict[Path, dict] = {}

    def group(nodeid: str) -> Optional[str]:
        path, sep, name = nodeid.partition("::")
        directory = (Path(config.rootpath) / path).parent.resolve()
        if not sep or Path(path).name != MANIFEST or not (directory == state.root or state.root in directory.parents):
            return None
        if directory not in manifests:
            try:
                manifests[directory] = {g.name: g for g in load_manifest(directory)}
            except ManifestError:
                manifests[directory] = {}
        golden = manifests[directory].get(name.split("@")[0])  # xdist's suffix, where pytest keeps it
        return None if golden is None else _group(state, golden)

    class GoldenGroups(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group(nodeid) or super()._split_scope(nodeid)

    return GoldenGroups(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """--sgl-replay-shard: the goldens of other shards are deselected."""
    from sgl_replay.golden import in_shard

    shard = config.stash[_STATE].shard
    if shard == (1, 1):
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        (dropped if isinstance(item, GoldenItem) and not in_shard(item.golden.name, shard) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


class GoldenFailure(Exception):
    pass


class GoldenItem(pytest.Item):
    def __init__(self, *, golden, **kwargs) -> None:
        super().__init__(**kwargs)
        self.golden = golden

    def runtest(self) -> None:
        state = self.config.stash[_STATE]
        state.ran.add((self.golden.path.parent, self.golden.name))
        suite = state.suite
        outcome = suite.update(self.golden) if state.update else suite.check(self.golden)
        if not outcome.passed:
            raise GoldenFailure(suite.failure(outcome))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, GoldenFailure):
            return f"golden trace {self.golden.name} ({self.golden.description}):\n{excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"golden {self.golden.name}"


@pytest.fixture(scope="session")
def sgl_replay_engines(pytestconfig):
    """The session's shared EnginePool (the goldens use it too)."""
    return pytestconfig.stash[_STATE].pool


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Optional[pytest.Item]):
    """Which test started which engines: a restart is a configuration the
    pool had stopped to make room (the order of tests decides how many)."""
    state = item.config.stash[_STATE]
    starts, restarts = state.starts()
    try:
        return (yield)
    finally:
        now, now_restarts = state.starts()
        if now > starts:
            state.started_by.append((item.nodeid, now - starts, now_restarts - restarts))


def _unused(state: _State) -> list[Path]:
    """Unused traces, only in suites whose every golden ran (a -k or a
    deselection leaves the rest alone, as syrupy does). Under
    --sgl-replay-shard, the shard's goldens of a suite must all have run, and
    it judges the unused traces whose names fall in it: every shard of a CI
    matrix judges its own, none twice."""
    from sgl_replay.golden import in_shard, unused_traces

    out = []
    for directory, goldens in state.manifests.items():
        if all((directory, g.name) in state.ran for g in goldens if in_shard(g.name, state.shard)):
            out += [p for p in unused_traces(directory, goldens) if in_shard(p.stem, state.shard)]
    return out


def _to_controller(state: _State) -> dict:
    """What a pytest-xdist worker hands its controller (plain values)."""
    goldens = []
    outcomes: list = state._suite.outcomes if state._suite is not None else []
    for o in outcomes:
        fields = {f.name: getattr(o, f.name) for f in dataclasses.fields(o) if f.name != "golden"}
        goldens.append([str(o.golden.path.parent), o.golden.name, {**fields, "status": o.status.value}])
    return {"manifests": [str(d) for d in state.manifests], "ran": [[str(d), n] for d, n in sorted(state.ran)],
            "outcomes": goldens, "started_by": [list(s) for s in state.started_by],
            "starts": list(state.starts())}


def _adopt(state: _State, output: dict) -> None:
    """In the controller: a worker's goldens, as if they had run here."""
    from sgl_replay.golden import ManifestError, Outcome, load_manifest

    for directory in map(Path, output["manifests"]):
        if directory not in state.manifests:
            try:
                state.manifests[directory] = load_manifest(directory)
            except ManifestError:  # broken since the worker read it: its collection error says so
                pass
    state.ran |= {(Path(d), n) for d, n in output["ran"]}
    by_name = {(d, g.name): g for d, goldens in state.manifests.items() for g in goldens}
    for directory, name, fields in output["outcomes"]:
        golden = by_name.get((Path(directory), name))
        if golden is not None:
            state.suite.outcomes.append(Outcome(golden=golden, **{**fields, "status": Status(fields["status"])}))
    state.started_by += [tuple(s) for s in output["started_by"]]
    starts, restarts = output["starts"]
    state.worker_starts = (state.worker_starts[0] + starts, state.worker_starts[1] + restarts)
    state.workers += bool(output["outcomes"])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist, in the controller: a worker finished (a crashed one
    sends nothing, so its suites count as not wholly run)."""
    output = getattr(node, "workeroutput", None)
    state = node.config.stash.get(_STATE, None)
    if state is not None and output and "sgl_replay" in output:
        _adopt(state, output["sgl_replay"])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is not None and state.is_worker:  # the controller judges, from every worker's goldens
        session.config.workeroutput["sgl_replay"] = _to_controller(state)  # type: ignore[attr-defined]
        return
    if state is None or not state.manifests:
        return
    unused = _unused(state)
    if unused and state.update:
        for path in unused:
            path.unlink()
    elif unused and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    state.unused = unused


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None and state.started_by:
        _engine_starts_summary(terminalreporter, state)
    if state is None or state._suite is None and not state.unused:
        return
    tr = terminalreporter
    tr.write_sep("-", "sgl-replay goldens")
    if state._suite is not None:
        for outcome in state.suite.outcomes:
            if outcome.status in (Status.UPDATED, Status.CREATED):
                tr.write_line(f"{outcome.status}: {outcome.golden.path}")
    unused = state.unused
    verb = "deleted unused" if state.update else "unused"
    for path in unused:
        tr.write_line(f"{verb} golden: {path} (no entry in {path.parent / 'goldens.toml'})")
    if unused and not state.update:
        tr.write_line("remove them, or run pytest --sgl-replay-update to delete them")
    if state._suite is not None:  # the summary line last, where CI logs are read
        workers = f" on {state.workers} xdist workers" if state.workers > 1 else ""
        tr.write_line(state.suite.summary() + workers)


def _engine_starts_summary(tr, state: _State) -> None:
    """The session's engine starts (each is 25-60 s on a 2-core machine) and
    the tests that paid for them; with -v, every such test."""
    starts, restarts = state.starts()
    tr.write_sep("-", "sgl-replay engine pool")
    for nodeid, n, again in state.started_by:
        if again or tr.config.option.verbose > 0:
            tr.write_line(f"{n} engine starts ({again} restarts): {nodeid}")
    tr.write_line(f"sgl-replay engine pool: {starts} engine starts, {restarts} restarts of a configuration "
                  f"it had stopped")
