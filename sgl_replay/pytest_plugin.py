"""pytest plugin (entry point `pytest11`): golden traces replayed on the real
SGLang engine. Only connects pytest to sgl_replay.golden; inert unless the
ini option `sgl_replay_goldens` names a directory.

    [tool.pytest.ini_options]
    testpaths = ["tests", "traces"]
    sgl_replay_goldens = "traces"

Every goldens.toml under that directory is a suite: one test item per entry
(`traces/goldens.toml::kv_pressure`), replayed and diffed; a changed golden
fails with the diff report. `--sgl-replay-update` records them anew.
"""

from __future__ import annotations

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

    def starts(self) -> tuple[int, int]:
        return (0, 0) if self._pool is None else (self._pool.starts, self._pool.restarts)

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
    parser.addini("sgl_replay_goldens", "Directory of golden traces; every goldens.toml under it is a suite.",
                  default="")
    parser.addini("sgl_replay_device", "Device to replay goldens on.", default="")
    parser.addini("sgl_replay_pythonpath",
                  "Paths the engine imports scripts and plugins from (and serve goldens' clients).",
                  type="paths", default=[])


def pytest_configure(config: pytest.Config) -> None:
    state = config.stash[_STATE] = _State(config)
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
            yield GoldenItem.from_parent(self, name=golden.name, golden=golden)


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
    deselection leaves the rest alone, as syrupy does)."""
    from sgl_replay.golden import unused_traces

    out = []
    for directory, goldens in state.manifests.items():
        if all((directory, g.name) in state.ran for g in goldens):
            out += unused_traces(directory, goldens)
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(_STATE, None)
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
        tr.write_line(state.suite.summary())


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
