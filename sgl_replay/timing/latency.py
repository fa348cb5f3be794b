"""Per-request latency of a timed trace, from the trace alone.

A request's times, on the trace's clock (ms since the recording started):
    arrival       when it reached the scheduler (the iteration's "arrivals")
    first token   the end of the iteration that produced its first output
                  token: the one that ran its last prefill chunk, or, with
                  overlap scheduling (the result of a batch is processed in
                  the next loop iteration), the next one
    tokens        likewise for every batch it ran in (a chunk that leaves it
                  mid chunked prefill produces none; a retraction's
                  re-prefill produces the next token)
    finish        the end of the iteration whose finish record names it
TTFT = first token - arrival; E2E = finish - arrival; ITL = the gaps between
a request's consecutive tokens; queueing = the start of the iteration that
first ran it (the end of the one before) - arrival. Aborted requests count
apart. Output-token throughput is finished requests' output tokens over the
span from the first arrival to the last finish.

What a client sees adds the time outside the scheduler (HTTP, tokenizer,
detokenizer, streaming): docs/timed-replay.md gives the gap measured against
sglang's own bench_serving.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from sgl_replay.trace.format import GenerateInput, Header, Iteration
from sgl_replay.trace.reader import TraceError, TraceReader

PERCENTILES = (50, 90, 99)
NO_TIMES = "no iteration times: recorded with --clock wall, serve, or a capture?"


@dataclass
class RequestTimes:
    rid: str
    arrival: float
    prompt: str = ""  # a digest of the prompt's token ids: the same request in another recording
    first_run: Optional[float] = None  # start of the iteration that first ran it
    tokens: list[float] = field(default_factory=list)
    finish: Optional[float] = None
    reason: Optional[str] = None
    output_len: Optional[int] = None

    @property
    def ttft(self) -> Optional[float]:
        return self.tokens[0] - self.arrival if self.tokens else None

    @property
    def e2e(self) -> Optional[float]:
        return None if self.finish is None else self.finish - self.arrival

    @property
    def queue(self) -> Optional[float]:
        return None if self.first_run is None else max(0.0, self.first_run - self.arrival)


@dataclass
class Latency:
    """A trace's per-request times and what follows from them."""
    requests: list[RequestTimes]
    clock: str

    @property
    def done(self) -> list[RequestTimes]:
        return [r for r in self.requests if r.finish is not None and r.reason != "abort" and r.tokens]

    def summary(self) -> dict[str, Any]:
        done = self.done
        gaps = array("d")
        for r in done:
            gaps.extend(b - a for a, b in zip(r.tokens, r.tokens[1:]))
        tokens = sum(r.output_len or len(r.tokens) for r in done)
        finishes = [r.finish for r in done if r.finish is not None]
        span = (max(finishes) - min(r.arrival for r in done)) / 1000 if done else 0.0
        return {
            "clock": self.clock,
            "requests": len(self.requests),
            "finished": len(done),
            "aborted": sum(1 for r in self.requests if r.reason == "abort"),
            "unfinished": sum(1 for r in self.requests if r.finish is None),
            "ttft_ms": percentiles([r.ttft for r in done]),
            "itl_ms": percentiles(gaps),
            "e2e_ms": percentiles([r.e2e for r in done]),
            "queue_ms": percentiles([r.queue for r in done]),
            "output_tokens": tokens,
            "span_s": round(span, 6),
            "throughput_tok_s": round(tokens / span, 3) if span > 0 else None,
            "per_request": {r.rid: {"ttft_ms": _round(r.ttft), "e2e_ms": _round(r.e2e), "queue_ms": _round(r.queue),
                                    "output_len": r.output_len, "prompt": r.prompt} for r in done},
        }


def _round(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 3)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def percentiles(values: Iterable[Optional[float]]) -> dict[str, Optional[float]]:
    xs = sorted(v for v in values if v is not None)
    out: dict[str, Optional[float]] = {f"p{p}": (round(percentile(xs, p), 3) if xs else None) for p in PERCENTILES}
    out["mean"] = round(sum(xs) / len(xs), 3) if xs else None
    return out


def check_times(record: Iteration) -> None:
    """TraceError unless a timed trace's iteration has a finite time and
    finite arrivals, one per input."""
    if record.ms is None or not math.isfinite(record.ms):
        raise TraceError(f"iteration {record.i} of a timed trace has no finite time")
    if record.inputs and (len(record.arrivals) != len(record.inputs)
                          or not all(math.isfinite(a) for a in record.arrivals)):
        raise TraceError(f"iteration {record.i} of a timed trace has no finite arrival for each input")


def overlap_of(header: Header) -> bool:
    """Whether a batch's result was processed in the next loop iteration."""
    if header.resolved.overlap_schedule is not None:
        return bool(header.resolved.overlap_schedule)
    return not header.server_args.get("disable_overlap_schedule", False)


def from_records(header: Header, records: Iterable[Iteration]) -> Latency:
    """Per-request times of a timed trace's body. TraceError if it kept no
    time."""
    if header.timing is None:
        raise TraceError(NO_TIMES)
    overlap = overlap_of(header)
    requests: list[RequestTimes] = []
    live: dict[int, RequestTimes] = {}  # requests that have not finished
    waiting_token: list[int] = []  # reqs whose token appears with the next iteration's end (overlap)
    prev_i, prev_ms = -2, 0.0
    for record in records:
        ms = record.ms
        check_times(record)
        assert ms is not None  # check_times said so
        if overlap and waiting_token:
            for n in waiting_token:
                r = live.get(n)
                if r is not None:
                    r.tokens.append(ms)
            waiting_token = []
        arrivals = record.arrivals
        for k, item in enumerate(record.inputs):
            if type(item) is GenerateInput:
                at = arrivals[k]
                ids = item.input_ids
                digest = hashlib.blake2b(ids, digest_size=8).hexdigest() if ids is not None else ""
                r = RequestTimes(rid=item.rid, arrival=float(at), prompt=digest)
                live[len(requests)] = r
                requests.append(r)
        start = (prev_ms if prev_i == record.i - 1 and not record.after_idle
                 else max(prev_ms, min(arrivals)) if arrivals else prev_ms)
        for batch in record.batches:
            for n in batch.reqs or ():
                r = live.get(n)
                if r is None:
                    continue
                if r.first_run is None:
                    r.first_run = start
                if n != batch.chunked:
                    if overlap:
                        waiting_token.append(n)
                    else:
                        r.tokens.append(ms)
        for f in record.finished:
            r = live.pop(f[0], None) if f and isinstance(f[0], int) else None
            if r is None:
                continue
            r.finish, r.reason = ms, str(f[1])
            r.output_len = int(f[2]) if len(f) > 2 and isinstance(f[2], int) else None
            if r.output_len is not None:  # with overlap a finished request may run once more, for nothing
                del r.tokens[r.output_len:]
        prev_i, prev_ms = record.i, ms
    return Latency(requests, clock=header.timing.clock)


def of_trace(path: str) -> Latency:
    with TraceReader(path) as reader:
        if reader.header.timing is None:
            raise TraceError(f"{path}: {NO_TIMES}")
        return from_records(reader.header, reader.iterations())


def pairs(a: dict[str, Any], b: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str], str]:
    """The requests two summaries share: by rid (a replay keeps them), else,
    for two recordings of the same traffic (a client's rids are its own
    each run), by prompt, the k-th request with a prompt matching the k-th."""
    pa, pb = a["per_request"], b["per_request"]
    common = [rid for rid in pa if rid in pb]
    if len(common) * 2 >= min(len(pa), len(pb)):
        return pa, pb, common, "rid"

    def by_prompt(per: dict[str, Any]) -> dict[str, Any]:
        seen: dict[str, int] = {}
        out = {}
        for t in per.values():
            k = seen[t["prompt"]] = seen.get(t["prompt"], -1) + 1
            out[f"{t['prompt']}#{k}"] = t
        return out

    pa, pb = by_prompt(pa), by_prompt(pb)
    return pa, pb, [key for key in pa if key in pb], "prompt"


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """B's error against A (two summaries of the same requests), in %."""
    pa, pb, common, matched_by = pairs(a, b)

    def per_request(key: str) -> list[float]:
        return [abs(pb[r][key] - pa[r][key]) / pa[r][key] * 100 for r in common
                if pa[r][key] is not None and pb[r][key] is not None and pa[r][key] > 0]

    def figure(key: str, p: str) -> Optional[float]:
        x, y = a[key].get(p), b[key].get(p)
        return round((y - x) / x * 100, 3) if x and y is not None else None

    ttft, e2e = sorted(per_request("ttft_ms")), sorted(per_request("e2e_ms"))
    ttft_p90, e2e_p90 = figure("ttft_ms", "p90"), figure("e2e_ms", "p90")
    ta, tb = a.get("throughput_tok_s"), b.get("throughput_tok_s")
    return {
        "requests_compared": len(common),
        "matched_by": matched_by,
        "ttft_median_abs_pct": round(percentile(ttft, 50), 3) if ttft else None,
        "ttft_p90_abs_pct": None if ttft_p90 is None else abs(ttft_p90),
        "ttft_per_request_p90_abs_pct": round(percentile(ttft, 90), 3) if ttft else None,
        "e2e_median_abs_pct": round(percentile(e2e, 50), 3) if e2e else None,
        "e2e_p90_abs_pct": None if e2e_p90 is None else abs(e2e_p90),
        "throughput_pct": round((tb - ta) / ta * 100, 3) if ta and tb is not None else None,
        "ttft_p50_pct": figure("ttft_ms", "p50"),
        "ttft_p90_pct": figure("ttft_ms", "p90"),
        "itl_p50_pct": figure("itl_ms", "p50"),
        "e2e_p90_pct": figure("e2e_ms", "p90"),
    }


# The figures a what-if sweep ranks by, a golden's budget bounds and bisect
# watches, by name: (summary key, statistic). Throughput is the one figure
# where more is better.
FIGURES: dict[str, tuple[str, Optional[str]]] = {
    **{f"{kind}_{p}": (f"{kind}_ms", p) for kind in ("ttft", "itl", "e2e", "queue") for p in ("p50", "p90", "p99")},
    "throughput": ("throughput_tok_s", None),
}


def figure(summary: dict[str, Any], name: str) -> Optional[float]:
    """One named figure of a summary (KeyError for a name not in FIGURES)."""
    key, stat = FIGURES[name]
    value = summary.get(key)
    return value.get(stat) if stat is not None and isinstance(value, dict) else value


def worse_pct(a: dict[str, Any], b: dict[str, Any], name: str) -> Optional[float]:
    """How much worse B's figure is than A's, in % of A's: positive where B
    is slower (or, for throughput, serves less), None where either lacks it."""
    x, y = figure(a, name), figure(b, name)
    if x is None or y is None or x == 0:
        return None
    change = (y - x) / x * 100
    return round(-change if name == "throughput" else change, 3)


def text(summary: dict[str, Any], name: str = "") -> list[str]:
    """Human lines for one summary."""
    def row(label: str, key: str) -> str:
        s = summary[key]
        cells = "  ".join(f"{p} {s[p]:>9.2f}" if s[p] is not None else f"{p}         -" for p in ("p50", "p90", "p99"))
        return f"  {label:<12} {cells}"

    head = f"{name}: " if name else ""
    lines = [f"{head}{summary['finished']} of {summary['requests']} requests finished"
             + (f", {summary['aborted']} aborted" if summary["aborted"] else "")
             + (f", {summary['unfinished']} unfinished" if summary["unfinished"] else "")
             + f" ({summary['clock']} clock)"]
    lines += [row("TTFT ms", "ttft_ms"), row("ITL ms", "itl_ms"), row("E2E ms", "e2e_ms"),
              row("queue ms", "queue_ms")]
    tp = summary["throughput_tok_s"]
    lines.append(f"  throughput   {tp:.1f} output tok/s over {summary['span_s']:.3f} s" if tp is not None
                 else "  throughput   -")
    return lines


def change_line(error: dict[str, Any], a: dict[str, Any], b: dict[str, Any]) -> str:
    """One line for a verdict: "p90 TTFT +18.4% (412 -> 488 ms), throughput -3.1%"."""
    parts = []
    x, y = a["ttft_ms"]["p90"], b["ttft_ms"]["p90"]
    if x is not None and y is not None and error.get("ttft_p90_pct") is not None:
        parts.append(f"p90 TTFT {error['ttft_p90_pct']:+.1f}% ({x:.0f} -> {y:.0f} ms)")
    x, y = a["e2e_ms"]["p90"], b["e2e_ms"]["p90"]
    if x is not None and y is not None and error.get("e2e_p90_pct") is not None:
        parts.append(f"p90 E2E {error['e2e_p90_pct']:+.1f}% ({x:.0f} -> {y:.0f} ms)")
    if error.get("throughput_pct") is not None:
        parts.append(f"throughput {error['throughput_pct']:+.1f}%")
    return ", ".join(parts) if parts else "no latency figures to compare"
