"""The package's first division is the process: what runs inside sglang's
scheduler (sgl_replay.scheduler) must not depend on what runs in the process
that drives the engine. Read from the source (ast), not by importing."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "sgl_replay"
# What code inside the scheduler may import of sgl-replay.
SCHEDULER_MAY_IMPORT = ("sgl_replay.scheduler", "sgl_replay.trace", "sgl_replay.job", "sgl_replay.timing")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, relative ones resolved."""
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
            # `from sgl_replay import x` may name a module x
            out += [(node.lineno, f"{base}.{alias.name}" if base == "sgl_replay" else base)
                    for alias in node.names]
    return out


def test_scheduler_side_imports_only_trace_and_job():
    offenders = []
    for path in sorted((PACKAGE / "scheduler").rglob("*.py")):
        for line, module in imported_modules(path):
            if module == "sgl_replay" or module == "sgl_replay.__version__":
                continue  # the package itself: __version__ and the trace API
            if module.startswith("sgl_replay") and not module.startswith(SCHEDULER_MAY_IMPORT):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_shared_modules_import_no_side():
    for path in [PACKAGE / "job.py", *sorted((PACKAGE / "trace").rglob("*.py")),
                 *sorted((PACKAGE / "timing").rglob("*.py"))]:
        for line, module in imported_modules(path):
            assert not module.startswith(("sgl_replay.scheduler", "sgl_replay.runs")), \
                f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"


def test_the_walk_sees_a_forbidden_import(tmp_path):
    """The check can fail: a scheduler-side file importing the CLI is caught."""
    bad = PACKAGE / "scheduler" / "_layout_probe.py"
    bad.write_text("from sgl_replay.cli import main\nfrom ..runs import engine\n")
    try:
        found = [m for _, m in imported_modules(bad)]
    finally:
        bad.unlink()
    assert "sgl_replay.cli" in found and "sgl_replay.runs" in found
