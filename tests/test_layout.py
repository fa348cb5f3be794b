"""The package's first division is the process. Read from the source (ast),
not by importing; an import inside a function counts like one at the top.

- The scheduler side, sgl_replay.scheduler, is what runs inside sglang's
  scheduler process. It imports of sgl-replay only itself and the shared rooms.
- The shared rooms (sgl_replay.trace, sgl_replay.job, sgl_replay.credentials,
  sgl_replay.traffic, sgl_replay.timing, and the package's own __init__) are imported on both
  sides; they import only shared rooms.
- Everything else is the parent side (the CLI, runs, convert, diff, views,
  golden, bisect, the pytest plugin): it runs in the process that drives the
  engine and imports nothing of sgl_replay.scheduler. It names the scripts
  the engine runs only as strings ("sgl_replay.scheduler.scripts:record" in
  job.py, the subset script in runs/minimize.py); sglang loads the plugin
  through its entry point.
- The converters (sgl_replay.convert) start no engine: of the parent side
  they import only runs.replay, for the configuration a replay would use.
- No module of the package takes part in an import cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "sgl_replay"
SCHEDULER = ("sgl_replay.scheduler",)
SHARED = ("sgl_replay.trace", "sgl_replay.job", "sgl_replay.credentials", "sgl_replay.traffic", "sgl_replay.timing")
CONVERT_MAY_IMPORT = (*SHARED, "sgl_replay.convert", "sgl_replay.runs.replay")


def module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def in_room(module: str, room: tuple[str, ...]) -> bool:
    return any(module == r or module.startswith(r + ".") for r in room)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, at any depth, relative ones
    resolved; `from package import name` names the module package.name
    where that is a module of sgl-replay."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                out.append((node.lineno, submodule if is_module(submodule) else base))
    return list(dict.fromkeys(out))  # `from x import a, b`: once


def is_module(name: str) -> bool:
    if not name.startswith("sgl_replay."):
        return False
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def offenders(paths: list[Path], allowed) -> list[str]:
    """Imports of sgl-replay modules in `paths` that `allowed(module)` refuses."""
    out = []
    for path in paths:
        for line, module in imported_modules(path):
            if in_room(module, ("sgl_replay",)) and not allowed(module):
                out.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    return out


def import_graph(paths: list[Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in paths:
        graph[module_of(path)] = {m for _, m in imported_modules(path)
                                  if in_room(m, ("sgl_replay",)) and m != module_of(path)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph` as [a, b, ..., a], or [] when there is none."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str]:
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_stack:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in done:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return []

    for node in sorted(graph):
        if node not in done:
            found = visit(node)
            if found:
                return found
    return []


def shared(module: str) -> bool:
    return module == "sgl_replay" or module == "sgl_replay.__version__" or in_room(module, SHARED)


def test_scheduler_side_imports_only_itself_and_the_shared_rooms():
    paths = [p for p in sources() if in_room(module_of(p), SCHEDULER)]
    assert len(paths) > 5
    found = offenders(paths, lambda m: in_room(m, SCHEDULER) or shared(m))
    assert not found, "\n".join(found)


def test_shared_rooms_import_no_side():
    paths = [p for p in sources() if shared(module_of(p))]
    assert {module_of(p) for p in paths} >= {"sgl_replay", "sgl_replay.job", "sgl_replay.credentials",
                                             "sgl_replay.trace.format", "sgl_replay.traffic.specs"}
    found = offenders(paths, shared)
    assert not found, "\n".join(found)


def test_parent_side_imports_nothing_of_the_scheduler():
    paths = [p for p in sources() if not shared(module_of(p)) and not in_room(module_of(p), SCHEDULER)]
    assert {module_of(p) for p in paths} >= {"sgl_replay.cli", "sgl_replay.runs.engine", "sgl_replay.golden"}
    found = offenders(paths, lambda m: not in_room(m, SCHEDULER))
    assert not found, "\n".join(found)


def test_converters_import_no_engine_code():
    paths = [p for p in sources() if in_room(module_of(p), ("sgl_replay.convert",))]
    assert len(paths) == 4
    found = offenders(paths, lambda m: m == "sgl_replay" or in_room(m, CONVERT_MAY_IMPORT))
    assert not found, "\n".join(found)


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph(sources()))
    assert not cycle, " -> ".join(cycle)


def test_every_built_in_workload_has_its_script():
    from sgl_replay.scheduler.workloads import BUILTIN_SCRIPTS
    from sgl_replay.traffic.specs import BUILTIN

    assert list(BUILTIN_SCRIPTS) == list(BUILTIN)


def test_the_scheduler_entries_the_parent_names_exist():
    """The parent names what the engine runs by strings (job.py's scripts,
    minimize's subset script, the sglang plugin entry point in pyproject):
    each names a function defined at the top of its module."""
    texts = [PACKAGE / "job.py", PACKAGE / "runs" / "minimize.py", PACKAGE.parent / "pyproject.toml"]
    named = {m for path in texts
             for m in re.findall(r"[\"'](sgl_replay\.scheduler\.[a-z_.]+:[a-z_]+)[\"']", path.read_text())}
    assert {"sgl_replay.scheduler.scripts:record", "sgl_replay.scheduler.scripts:replay",
            "sgl_replay.scheduler.subset:record_subset", "sgl_replay.scheduler.plugin:register"} <= named
    for entry in named:
        module, _, function = entry.partition(":")
        tree = ast.parse(PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py").read_text())
        assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, entry


# ------------------------------------------------------------------ the checks can fail
def test_the_walk_sees_a_forbidden_import(tmp_path):
    """A scheduler-side file importing the CLI, and a function-level import
    of the runs room, are caught."""
    bad = PACKAGE / "scheduler" / "_layout_probe.py"
    bad.write_text("from sgl_replay.cli import main\n\ndef f():\n    from ..runs import engine\n")
    try:
        found = [m for _, m in imported_modules(bad)]
        refused = offenders([bad], lambda m: in_room(m, SCHEDULER) or shared(m))
    finally:
        bad.unlink()
    assert found == ["sgl_replay.cli", "sgl_replay.runs.engine"]
    assert len(refused) == 2 and "imports sgl_replay.cli" in refused[0]


def test_the_parent_rule_refuses_a_scheduler_import():
    bad = PACKAGE / "convert" / "_layout_probe.py"
    bad.write_text("from sgl_replay.scheduler import header\nfrom sgl_replay.runs import engine\n")
    try:
        parent = offenders([bad], lambda m: not in_room(m, SCHEDULER))
        convert = offenders([bad], lambda m: in_room(m, CONVERT_MAY_IMPORT))
    finally:
        bad.unlink()
    assert parent == ["sgl_replay/convert/_layout_probe.py:1 imports sgl_replay.scheduler.header"]
    assert len(convert) == 2


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function():
    """Two probe modules that import each other, one of them only inside a
    function (which is what kept the scheduler's own cycle alive)."""
    a, b = PACKAGE / "_layout_probe_a.py", PACKAGE / "_layout_probe_b.py"
    a.write_text("from sgl_replay import _layout_probe_b\n")
    b.write_text("def f():\n    from sgl_replay._layout_probe_a import x\n")
    try:
        graph = import_graph([a, b])
    finally:
        a.unlink()
        b.unlink()
    assert find_cycle(graph) == ["sgl_replay._layout_probe_a", "sgl_replay._layout_probe_b",
                                 "sgl_replay._layout_probe_a"]
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": set()}) == []
