"""Traces recorded on a GPU (traces/gpu, see tools/gpu) replay on the CPU
engine with zero divergence."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import read
from sgl_replay.diff.compare import Options, diff
from sgl_replay.diff.report import text_lines
from sgl_replay.replay.runner import engine_config_for, replay_trace
from sgl_replay.trace import TraceReader

GPU_TRACES = sorted((Path(__file__).parent.parent / "traces" / "gpu").glob("*.sglt"))


def test_there_are_gpu_traces_of_each_kind():
    headers = [read(str(p))[0] for p in GPU_TRACES]
    assert len(headers) >= 3
    assert all(h["device"]["type"] == "cuda" and "H" in h["device"]["name"] for h in headers)
    assert {h["resolved"]["overlap_schedule"] for h in headers} == {True, False}
    assert any(h["engine_args"].get("max_total_tokens") == 1024 for h in headers)


@pytest.mark.parametrize("trace", GPU_TRACES, ids=lambda p: p.stem)
def test_gpu_trace_replays_on_cpu_with_zero_divergence(engines, trace, tmp_path):
    with TraceReader(str(trace)) as r:
        header = r.header
    config = engine_config_for(header, device="cpu")
    observed = str(tmp_path / "cpu.sglt")
    replay_trace(engines.get(config), str(trace), observed)
    assert read(observed)[0]["device"]["type"] == "cpu"
    for level in ("composition", "full"):
        with TraceReader(str(trace)) as a, TraceReader(observed) as b:
            result = diff(a, b, Options(level=level))
        assert result.verdict == "same", "\n".join(text_lines(result))
