"""Shared real engines: one per distinct configuration for the whole session
(an engine takes about 25 s to start on a 2-core machine)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from sgl_replay.traffic.specs import parse as parse_workload
from sgl_replay.runs.engine import EngineConfig
from sgl_replay.runs.record import record_workload
from sgl_replay.traffic.specs import BUILTIN, KV_PRESSURE_ARGS
from sgl_replay.trace import TraceReader
from sgl_replay.trace.format import Batch, Iteration

TESTS = Path(__file__).parent


@pytest.fixture(scope="session")
def engines(sgl_replay_engines):
    """sgl-replay's pytest plugin owns the pool, so the golden suite shares
    these engines. Its engines import from tests/ (test-only scripts) and
    tests/plugins (a test-only sglang plugin, inert unless its env var is
    set): see sgl_replay_pythonpath in pyproject.toml."""
    return sgl_replay_engines


# The order tests run in. The session's pool keeps at most 5 engines and
# stops the least recently used one to make room (sgl_replay/pytest_plugin.py),
# so a configuration whose users are spread over the session starts again
# after each eviction. Tests run in these groups, in collection order within
# each; a module not named here runs first (one that uses the pool belongs
# in a group: the group of the configurations it uses).
#   1. the record configurations: default, 1,024-token KV pool, two slots
#      (test_record records every built-in workload for the session)
#   2. their other users, and the default replay configuration
#   3. the tweaks engine (tests/plugins' sched_tweaks): every test that uses it
#   4. minimize and budgets: the KV-pool and tweaked replay configurations, a changed argument
#   5. the replay configurations: default, KV pool, two slots, a changed knob;
#      the goldens
#   6. single-use configurations: the GPU traces' on CPU, the plain servers' captures
ENGINE_GROUPS = {
    "test_record.py": 1,
    "test_bisect.py": 2, "test_cli.py": 2, "test_engine.py": 2, "test_public_traces.py": 2,
    "test_timed.py": 2, "test_whatif.py": 2,
    "test_minimize.py": 4, "test_budgets.py": 4,
    "test_replay.py": 5, "goldens.toml": 5,
    "test_gpu_traces.py": 6, "test_capture.py": 6,
}
TWEAKS_GROUP = 3
TWEAKS_FIXTURES = {"tweaks_engine", "tweak_baseline", "served"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def group(item: pytest.Item) -> int:
        if TWEAKS_FIXTURES & set(getattr(item, "fixturenames", ())):
            return TWEAKS_GROUP
        return ENGINE_GROUPS.get(item.path.name, 0)

    items.sort(key=group)  # stable: collection order within a group


def builtin_config(name: str, **overrides) -> EngineConfig:
    return EngineConfig.embedded(engine_args={**BUILTIN[name].engine_args, **overrides})


@pytest.fixture(scope="session")
def recorded(engines, tmp_path_factory):
    """Record a built-in workload once per session: name -> trace path."""
    cache: dict[str, str] = {}
    root = tmp_path_factory.mktemp("recorded")

    def get(name: str) -> str:
        if name not in cache:
            out = str(root / f"{name}.sglt")
            record_workload(engines.get(builtin_config(name)), parse_workload(name), out)
            cache[name] = out
        return cache[name]

    return get


def read(path: str) -> tuple[dict, list[Iteration], dict]:
    with TraceReader(path) as reader:
        body = list(reader.iterations())
        return reader.header, body, reader.end


def forwards(body: list[Iteration]) -> list[Batch]:
    return [b for rec in body for b in rec.batches]


def rid_table(body: list[Iteration]) -> list[str]:
    return [x.rid for rec in body for x in rec.inputs if x.kind == "generate"]


def interruptible() -> None:
    """Popen's preexec_fn for a child the test will Ctrl-C: SIGINT acts as
    from a terminal, also when this test run was started in the background
    (a shell's `cmd &` starts it with SIGINT ignored, which Python keeps)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


# ------------------------------------------------------------ test-only plugin
@pytest.fixture(scope="session")
def tweaks(tmp_path_factory):
    """An engine with the test-only sched_tweaks plugin (tests/plugins), a
    1024-token KV pool, and a witness log of what the scheduler received."""
    root = tmp_path_factory.mktemp("tweaks")
    mode, witness = root / "mode", root / "witness.jsonl"
    mode.write_text("off")
    config = EngineConfig.embedded(engine_args=KV_PRESSURE_ARGS, env={
        "SCHED_TWEAKS_FILE": str(mode), "SCHED_TWEAKS_WITNESS": str(witness)})
    return config, mode, witness


@pytest.fixture
def tweaks_engine(engines, tweaks):
    config, mode, witness = tweaks
    mode.write_text("off")
    yield engines.get(config), mode, witness
    mode.write_text("off")


@pytest.fixture(scope="session")
def tweak_baseline(engines, tweaks, tmp_path_factory):
    config, mode, _ = tweaks
    mode.write_text("off")
    out = str(tmp_path_factory.mktemp("baseline") / "kv_pressure.sglt")
    record_workload(engines.get(config), parse_workload("kv_pressure"), out)
    return out
