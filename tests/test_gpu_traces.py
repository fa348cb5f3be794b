"""Traces recorded on a GPU (traces/gpu, see tools/gpu) replay on the CPU
engine with zero divergence."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import read
from sgl_replay.diff import Options, diff
from sgl_replay.diff.report import text_lines
from sgl_replay.runs.check import Outcome, check
from sgl_replay.trace import TraceReader

GPU_TRACES = sorted((Path(__file__).parent.parent / "traces" / "gpu").glob("*.sglt"))


def test_there_are_gpu_traces_of_each_kind():
    headers = [read(str(p))[0] for p in GPU_TRACES]
    assert len(headers) >= 3
    assert all(h.device.type == "cuda" and "H" in h.device.name for h in headers)
    assert {h.resolved.overlap_schedule for h in headers} == {True, False}
    assert any(h.engine_args.get("max_total_tokens") == 1024 for h in headers)


@pytest.mark.parametrize("trace", GPU_TRACES, ids=lambda p: p.stem)
def test_gpu_trace_replays_on_cpu_with_zero_divergence(engines, trace, tmp_path):
    observed = str(tmp_path / "cpu.sglt")
    verdict = check(str(trace), pool=engines, device="cpu", options=Options(level="full"), observed=observed)
    assert verdict.outcome is Outcome.SAME, "\n".join(verdict.lines(str(trace), observed))
    assert read(observed)[0].device.type == "cpu"
    with TraceReader(str(trace)) as a, TraceReader(observed) as b:
        result = diff(a, b, Options(level="composition"))
    assert result.verdict == "same", "\n".join(text_lines(result))
