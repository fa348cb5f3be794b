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
from sgl_replay.trace.format import unpack_ids

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


def test_gpu_captures_sampled_for_real_and_retracted():
    """The H200 captures of plain servers: temperature 1.0 in every request
    (many distinct output tokens over the 128,256-token vocabulary, not the
    one a greedy dummy model repeats), and the KV-pressure one retracted."""
    captures = {p.stem: p for p in GPU_TRACES if p.stem.startswith("h200_capture")}
    assert set(captures) == {"h200_capture_short", "h200_capture_kv_retract"}
    for name, path in captures.items():
        header, records, end = read(str(path))
        assert header.workload.kind == "capture" and header.model.vocab_size == 128256, name
        assert header.resolved.overlap_schedule and not header.engine_args.get("disable_cuda_graph"), name
        outputs = [t for r in records for _, ids in r.outputs for t in unpack_ids(ids)]
        assert len(set(outputs)) > len(outputs) // 2, name
        assert end.complete and end.busy_seconds > 0, name
    _, records, _ = read(str(captures["h200_capture_kv_retract"]))
    assert sum(len(r.retracted) for r in records) > 0
