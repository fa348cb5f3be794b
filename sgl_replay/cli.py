"""The `sgl-replay` command: thin click commands over the library. Runs in
the process that drives the engine.

Exit codes are sgl_replay.runs.check.ExitCode (git bisect run understands
them). Errors are one line (plus the engine's last log lines when the engine
died); SGLREPLAY_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import sys
import time
from typing import Optional

import click

from sgl_replay.runs.check import ExitCode
from sgl_replay.trace.format import GenerateInput
from sgl_replay.timing.latency import FIGURES
from sgl_replay.trace.reader import TraceError, TraceReader

# A trace argument: a file, a directory holding one recording, or a
# recording's name prefix (DIR/RUN for the chain RUN.0000.sglt, ...) that a
# rotating capture wrote; the reader resolves it and says what is wrong.
TRACE_PATH = click.Path()


class Failure(click.ClickException):
    """A one-line error with its own exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares a class default; this one is per error

    def show(self, file=None) -> None:
        click.echo(f"sgl-replay: error: {self.format_message()}", err=True)


def _errors_to_exit_codes(fn):
    """Known failures become one line and an exit code; nothing else escapes
    as a traceback unless SGLREPLAY_DEBUG is set."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from sgl_replay.runs.capture import CaptureFailed
        from sgl_replay.runs.errors import BadEngineArgs, EngineError
        from sgl_replay.timing.model import CostModelError

        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (TraceError, CostModelError) as e:
            raise Failure(str(e), ExitCode.BAD_INPUT) from None
        except BadEngineArgs as e:
            raise Failure(str(e), ExitCode.BAD_INPUT) from None
        except EngineError as e:
            raise Failure(str(e), e.exit_code) from None
        except CaptureFailed as e:
            kept = f" (what ran is in {e.trace}, sealed as incomplete)" if e.trace else ""
            raise Failure(f"{e}{kept}", e.exit_code) from None
        except KeyboardInterrupt:
            click.echo("sgl-replay: interrupted", err=True)
            sys.exit(ExitCode.INTERRUPTED)
        except BrokenPipeError:  # `sgl-replay show ... | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except OSError as e:
            raise Failure(str(e), ExitCode.BAD_INPUT) from None
        except Exception as e:  # noqa: BLE001 — a bug of ours, never a verdict on the code under test
            if os.environ.get("SGLREPLAY_DEBUG"):
                raise
            raise Failure(f"internal error: {type(e).__name__}: {e} (SGLREPLAY_DEBUG=1 shows where)",
                          ExitCode.INTERNAL) from None

    return wrapper


def parse_engine_args(pairs: tuple[str, ...]) -> dict:
    """KEY=VALUE pairs; values are JSON when they parse as JSON (numbers,
    true/false, null, lists), else strings. Dashes in keys become underscores."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise Failure(f"--engine-arg wants KEY=VALUE, got {pair!r}", ExitCode.BAD_INPUT)
        value: object
        try:
            value = json.loads(raw)
        except ValueError:
            value = {"True": True, "False": False, "None": None}.get(raw, raw)
        out[key.strip().replace("-", "_")] = value
    return out


def _engine_options(fn):
    fn = click.option("--engine-arg", "engine_args", multiple=True, metavar="KEY=VALUE",
                      help="Any sglang server argument, e.g. chunked_prefill_size=64 (repeatable).")(fn)
    fn = click.option("--device", default=None, help="Engine device (default: cpu).")(fn)
    return fn


def parse_engine_env(pairs: tuple[str, ...]) -> dict:
    """--engine-env KEY=VALUE pairs, values kept as strings."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise Failure(f"--engine-env wants KEY=VALUE, got {pair!r}", ExitCode.BAD_INPUT)
        out[key.strip()] = value
    return out


def _suspect_options(fn):
    fn = click.option("--engine-path", "engine_path", multiple=True, metavar="DIR",
                      type=click.Path(file_okay=False, exists=True),
                      help="Put DIR first on the engine's import path, e.g. a directory holding an "
                           "sglang plugin (repeatable).")(fn)
    fn = click.option("--engine-env", "engine_env", multiple=True, metavar="KEY=VALUE",
                      help="An environment variable for the engine (repeatable).")(fn)
    return fn


def _skip_model_option(fn):
    return click.option("--skip-model", is_flag=True,
                        help="The model's forward returns placeholder logits: a CPU replay many "
                             "times faster. Tokens come from the oracle either way, so no "
                             "scheduling decision changes; a batch that would crash a kernel "
                             "no longer does.")(fn)


def _clock_options(fn):
    fn = click.option("--max-in-flight", type=click.IntRange(min=1), default=None,
                      help="--clock modeled: the client keeps at most N requests in flight (a closed-loop "
                           "client such as bench_serving --max-concurrency N): a request goes at its "
                           "recorded time or, with N in flight, when one finishes.")(fn)
    fn = click.option("--cost", "cost_path", default=None, type=click.Path(dir_okay=False, exists=True),
                      help="--clock modeled: the cost model (`sgl-replay cost`); default: one fitted "
                           "on TRACE itself.")(fn)
    return click.option("--clock", type=click.Choice(["iterations", "modeled"]), default="iterations",
                        show_default=True,
                        help="iterations: each input is fed at the loop iteration that pulled it; modeled: "
                             "at its recorded time, on a virtual clock advanced by a cost model's length "
                             "of every iteration the scheduler runs (the trace must have kept time).")(fn)


def _cost_model(trace: str, clock: str, cost_path: Optional[str], max_in_flight: Optional[int] = None):
    """The cost model of a timed replay (None on the iterations clock), its
    notes printed to stderr."""
    if clock != "modeled":
        if cost_path is not None or max_in_flight is not None:
            raise click.UsageError("--cost and --max-in-flight go with --clock modeled")
        return None
    from sgl_replay.runs.check import read_header
    from sgl_replay.timing.fit import cost_for

    model, notes = cost_for(trace, read_header(trace), cost_path)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    return model


def _timeout_option(fn):
    from sgl_replay.runs.check import REPLAY_TIMEOUT_S

    return click.option("--timeout", type=click.FloatRange(min=1), default=REPLAY_TIMEOUT_S,
                        show_default=True, metavar="SECONDS",
                        help="A replay still running after this long is stopped and sealed "
                             "(a trace can claim any number of iterations).")(fn)


@click.group()
@click.version_option(package_name="sgl-replay")
def main() -> None:
    """Record, replay and diff SGLang scheduler runs, iteration by iteration."""
    # SIGTERM (a CI timeout, `kill`) takes the Ctrl-C path: the engine is
    # stopped and the trace so far sealed.
    signal.signal(signal.SIGTERM, _terminate)
    from sgl_replay.runs import progress

    progress.enable()  # shown only where stderr is a terminal


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


# ------------------------------------------------------------------ record
def _public_trace_options(fn):
    for name, kind, text in reversed((
            ("--limit", click.IntRange(min=1), "trace: import the first N requests (after --start-ms)."),
            ("--start-ms", click.FloatRange(min=0), "trace: skip requests before this time (ms from the first)."),
            ("--time-scale", click.FloatRange(min=0, min_open=True), "trace: multiply arrival times."),
            ("--token-scale", click.FloatRange(min=0, min_open=True),
             "trace: multiply input and output lengths (at least 1 token) and prefix blocks."),
            ("--block-size", click.IntRange(min=1), "trace: tokens per hash id (Mooncake: 512)."),
            ("--iteration-ms", click.FloatRange(min=0, min_open=True),
             "trace: one loop iteration of the virtual clock, in ms (default 10)."),
            ("--clock", click.Choice(["virtual", "wall", "modeled"]),
             "trace: arrival clock. virtual (default): arrival times map to loop iterations, a "
             "pure function of the file and the options; wall: each request is sent over HTTP "
             "at its arrival time, like live traffic; modeled: each request arrives at its time on "
             "a virtual clock advanced by --cost's length of every iteration (a latency prediction "
             "for the server the cost model was fitted on)."),
            ("--cost", click.Path(dir_okay=False, exists=True),
             "trace with --clock modeled: the cost model (`sgl-replay cost`)."))):
        fn = click.option(name, type=kind, default=None, help=text)(fn)
    return fn


@main.command()
@click.argument("workload")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Trace file to write (.sglt).")
@click.option("--model-path", default=None, help="A real model instead of the embedded tiny GPT-2.")
@_engine_options
@click.option("--duration", type=float, default=None, help="serve: stop after this many seconds.")
@click.option("--idle-timeout", type=float, default=None,
              help="serve: stop once idle this long after the first request.")
@click.option("--redact", "redacted", is_flag=True,
              help="Write the trace redacted (see `sgl-replay redact`): no token id of the run is kept.")
@_public_trace_options
@_errors_to_exit_codes
def record(workload: str, output: str, model_path: Optional[str], device: Optional[str],
           engine_args: tuple[str, ...], duration: Optional[float], idle_timeout: Optional[float],
           redacted: bool = False, **trace_options) -> None:
    """Run WORKLOAD on the real engine and write its trace.

    WORKLOAD is a built-in name (see `sgl-replay workloads`), `serve` (the
    engine serves HTTP /generate from any client; the URL is printed), or a
    scripted-runtime script `module:function` taking sglang's ScriptedContext,
    or a public serving trace: mooncake:FILE, azure:FILE, burstgpt:FILE
    (each request with its exact lengths at its arrival time, on a virtual
    clock or the wall clock; see the trace options).
    """
    from sgl_replay.runs.capture import check_writable
    from sgl_replay.runs.engine import Engine, EngineConfig, device_args
    from sgl_replay.runs.record import record_workload
    from sgl_replay.traffic import specs

    trace_options = {k: v for k, v in trace_options.items() if v is not None}
    cost_path = trace_options.pop("cost", None)
    if (trace_options.get("clock") == "modeled") != (cost_path is not None):
        raise click.UsageError("--clock modeled and --cost go together")
    try:
        spec = specs.parse(workload, duration_s=duration, idle_s=idle_timeout,
                           options=trace_options or None)
    except ValueError as e:
        raise Failure(str(e), ExitCode.BAD_INPUT) from None
    check_writable(output)
    overrides = device_args(device) if device else {}
    overrides.update(parse_engine_args(engine_args))
    config = EngineConfig.embedded(engine_args={**specs.engine_args_of(spec), **overrides},
                                   model_path=model_path)
    if spec.kind == "public":
        _check_trace_fits(spec, config)
    cost = None
    if cost_path is not None:
        from sgl_replay.timing.model import load

        cost = load(cost_path)
    started = time.monotonic()
    with Engine.start(config) as engine:
        click.echo(f"engine ready in {time.monotonic() - started:.1f}s", err=True)
        if spec.kind == "serve":
            limit = " or ".join(x for x in (f"{duration:g}s" if duration else "",
                                            f"{idle_timeout:g}s idle" if idle_timeout else "") if x)
            click.echo(f"serving {engine.base_url}/generate until {limit}; Ctrl-C stops "
                       f"and keeps the trace", err=True)
        raw = output + ".unredacted" if redacted else output
        end = record_workload(engine, spec, raw, argv=sys.argv[1:], cost=cost)
    if redacted:
        from sgl_replay.convert.redact import redact

        try:
            redact(raw, output)
        except (TraceError, OSError) as e:  # what was recorded is kept, and said where
            raise Failure(f"{e}; the recording, not redacted, is {raw}", ExitCode.BAD_INPUT) from None
        os.unlink(raw)
    size = os.path.getsize(output)
    click.echo(f"recorded {end.iterations} loop iterations, {end.forwards} forward batches, "
               f"{end.requests} requests -> {output} ({size / 1024:.1f} KiB)")


def _check_trace_fits(spec, config) -> None:
    """A trace row too long for the engine after scaling: exit 2 before it starts."""
    from sgl_replay.traffic import public_traces

    if config.model_config is None:
        return  # a real model: the scheduler checks against its own context length
    try:
        imported = public_traces.load(spec.options["format"], spec.path, spec.options,
                                      expect_sha256=spec.sha256)
        public_traces.check_fits(imported, int(config.model_config.get("n_positions", 4096)),
                                 config.engine_args.get("max_total_tokens"))
    except ValueError as e:
        raise Failure(str(e), ExitCode.BAD_INPUT) from None
    if imported.skipped_failed:
        click.echo(f"skipped {imported.skipped_failed} failed requests (0 response tokens)", err=True)


@main.command()
def workloads() -> None:
    """List the built-in workloads."""
    from sgl_replay.traffic.specs import BUILTIN

    for w in BUILTIN.values():
        args = " ".join(f"{k}={v}" for k, v in w.engine_args.items())
        click.echo(f"{w.name:22} {w.description}" + (f"  [{args}]" if args else ""))
    click.echo(f"{'serve':22} serve HTTP /generate from any client (--duration, --idle-timeout)")
    click.echo(f"{'mooncake:FILE':22} a public serving trace (also azure:FILE, burstgpt:FILE; --limit, "
               f"--token-scale, --time-scale ...)")


# ------------------------------------------------------------------ read
@main.command()
@click.argument("trace", type=TRACE_PATH)
@click.option("--iter", "iter_range", default=None, metavar="A:B",
              help="Only iterations A..B-1 (either end may be left out).")
@click.option("--rid", default=None, help="Only what concerns this request.")
@click.option("--header", "header_only", is_flag=True, help="Print the whole header as JSON.")
@_errors_to_exit_codes
def show(trace: str, iter_range: Optional[str], rid: Optional[str], header_only: bool) -> None:
    """Print a trace: header, then one block per recorded iteration."""
    from sgl_replay.trace.text import end_line, header_lines, iteration_lines, names_from, touches

    lo, hi = _parse_range(iter_range)
    with TraceReader(trace) as reader:
        if header_only:
            from sgl_replay.runs.replay import replay_plan

            plan = replay_plan(reader.header)
            click.echo(json.dumps(reader.header.to_dict(), indent=2, sort_keys=True, default=repr))
            click.echo(f"a replay applies engine args {json.dumps(plan.engine_args, sort_keys=True)} "
                       f"and env {json.dumps(plan.env, sort_keys=True)}; it ignores engine args "
                       f"{', '.join(plan.ignored_args) or 'none'} and env {', '.join(plan.ignored_env) or 'none'}",
                       err=True)
            return
        for line in header_lines(reader.header):
            click.echo(line)
        rids: list[str] = []
        name = names_from(rids)
        wanted: Optional[int] = None
        try:
            for record in reader.iterations():
                for item in record.inputs:
                    if type(item) is GenerateInput:
                        if item.rid == rid:
                            wanted = len(rids)
                        rids.append(item.rid)
                if not lo <= record.i < hi:
                    continue
                if rid is not None and (wanted is None or not touches(record, wanted, rid)):
                    continue
                for line in iteration_lines(record, name, only=wanted if rid is not None else None):
                    click.echo(line)
        except TraceError as e:
            raise Failure(f"{e} (everything before it is shown above)", ExitCode.BAD_INPUT) from None
        click.echo(end_line(reader.end))


def _parse_range(text: Optional[str]) -> tuple[float, float]:
    if not text:
        return 0, float("inf")
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            return int(lo), int(lo) + 1
        return (int(lo) if lo else 0), (int(hi) if hi else float("inf"))
    except ValueError:
        raise Failure(f"--iter wants A:B, got {text!r}", ExitCode.BAD_INPUT) from None


@main.command()
@click.argument("trace", type=TRACE_PATH)
@_errors_to_exit_codes
def seal(trace: str) -> None:
    """Close a trace a killed process left torn (a .partial file, or a trace
    cut short or damaged): keep every record that reads and append an end
    record saying what was wrong. The file is rewritten whole and renamed
    into place; a trace that reads whole is left as it is."""
    from sgl_replay.trace.text import end_line
    from sgl_replay.trace.writer import repair

    click.echo(f"{trace}: {end_line(repair(trace))}")


@main.command()
@click.argument("trace", type=TRACE_PATH)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@_errors_to_exit_codes
def stats(trace: str, as_json: bool) -> None:
    """Counts and sizes of a trace."""
    records = forwards = inputs = requests = finished = retracted = 0
    modes: dict[Optional[str], int] = {}
    with TraceReader(trace) as reader:
        for record in reader.iterations():
            records += 1
            for item in record.inputs:
                inputs += 1
                requests += type(item) is GenerateInput
            for batch in record.batches:
                forwards += 1
                modes[batch.mode] = modes.get(batch.mode, 0) + 1
            finished += len(record.finished)
            retracted += len(record.retracted)
        end = reader.end
        figures = {
            "iterations": end.iterations if end else None, "recorded_iterations": records,
            "forwards": forwards, "forward_modes": modes, "inputs": inputs, "requests": requests,
            "finished": finished, "retractions": retracted, "frames": reader.frames,
            "file_bytes": reader.file_bytes, "raw_bytes": reader.raw_bytes,
            "compression_ratio": round(reader.raw_bytes / reader.file_bytes, 2) if reader.file_bytes else None,
            "bytes_per_forward": round(reader.file_bytes / forwards, 1) if forwards else None,
            "complete": bool(end and end.complete),
            # what recording cost the scheduler loop, measured inside it
            "recorder_share": (round(end.recorder_seconds / end.seconds, 5)
                               if end and end.recorder_seconds is not None and end.seconds else None),
            # ... over the iterations that ran a forward batch (captures)
            "recorder_share_busy": (round(end.busy_recorder_seconds / end.busy_seconds, 5)
                                    if end and end.busy_recorder_seconds is not None and end.busy_seconds
                                    else None),
        }
    if as_json:
        click.echo(json.dumps(figures))
        return
    width = max(map(len, figures))
    for key, value in figures.items():
        click.echo(f"{key:{width}}  {value}")


# ------------------------------------------------------------------ replay
@main.command()
@click.argument("trace", type=TRACE_PATH)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the observed trace.")
@_engine_options
@_skip_model_option
@_clock_options
@_timeout_option
@_errors_to_exit_codes
def replay(trace: str, output: str, device: Optional[str], engine_args: tuple[str, ...],
           skip_model: bool, timeout: float, clock: str = "iterations", cost_path: Optional[str] = None,
           max_in_flight: Optional[int] = None) -> None:
    """Re-drive the real engine with TRACE's inputs and record what happens
    now: each input at the iteration that pulled it, or (--clock modeled) at
    its recorded time on a modelled clock, whose times `latency` reads."""
    from sgl_replay.runs.capture import check_writable
    from sgl_replay.runs.check import read_header
    from sgl_replay.runs.engine import Engine
    from sgl_replay.runs.replay import engine_config_for, replay_trace

    check_writable(output)
    overrides = parse_engine_args(engine_args)
    cost = _cost_model(trace, clock, cost_path, max_in_flight)
    config = engine_config_for(read_header(trace), device=device, engine_args=overrides)
    with Engine.start(config) as engine:
        source_overrides: dict[str, object] = {"device": device, "engine_args": overrides}
        if skip_model:
            source_overrides["skip_model"] = True
        if max_in_flight is not None:
            source_overrides["max_in_flight"] = max_in_flight
        end = replay_trace(engine, trace, output, overrides=source_overrides, timeout_s=timeout, cost=cost)
    modelled = f" in {end.seconds:.3f} modelled seconds" if cost is not None and end.seconds is not None else ""
    click.echo(f"replayed {end.iterations} loop iterations, {end.forwards} forward batches{modelled} -> {output}")


# ------------------------------------------------------------------ diff
def _diff_options(fn):
    fn = click.option("--force", is_flag=True, help="Compare even traces that are not comparable.")(fn)
    fn = click.option("--ignore", multiple=True, metavar="FIELD",
                      help="Leave FIELD out of the comparison, e.g. state.kv_free (repeatable).")(fn)
    fn = click.option("--level", type=click.Choice(["composition", "full"]), default="full",
                      show_default=True, help="composition: what ran when; full: also pool sizes "
                      "and output hashes.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="One JSON object.")(fn)
    return fn


def _options(level: str, ignore: tuple[str, ...], force: bool):
    from sgl_replay.diff import Options

    try:
        return Options(level=level, ignore=frozenset(ignore), force=force)
    except ValueError as e:
        raise Failure(str(e), ExitCode.BAD_INPUT) from None


@main.command()
@click.argument("a", type=TRACE_PATH)
@click.argument("b", type=TRACE_PATH)
@_diff_options
@_errors_to_exit_codes
def diff(a: str, b: str, as_json: bool, level: str, ignore: tuple[str, ...], force: bool) -> None:
    """Compare two traces (no engine needed): the first divergent iteration,
    explained per request, then a summary realigned by request id."""
    from sgl_replay.diff import diff as compare
    from sgl_replay.diff.report import text_lines, to_json
    from sgl_replay.runs.check import outcome_of

    options = _options(level, ignore, force)
    with TraceReader(a) as ra, TraceReader(b) as rb:
        result = compare(ra, rb, options)
    if as_json:
        click.echo(to_json(result, a, b))
    else:
        for line in text_lines(result, a, b):
            click.echo(line)
    sys.exit(outcome_of(result).exit_code)


@main.command()
@click.argument("a", type=TRACE_PATH)
@click.argument("b", type=TRACE_PATH)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The HTML file to write.")
@click.option("--level", type=click.Choice(["composition", "full"]), default="full", show_default=True)
@click.option("--ignore", multiple=True, metavar="FIELD", help="As for diff (repeatable).")
@click.option("--force", is_flag=True, help="Compare even traces that are not comparable.")
@_errors_to_exit_codes
def report(a: str, b: str, output: str, level: str, ignore: tuple[str, ...], force: bool) -> None:
    """Diff two traces into one self-contained HTML page: both runs as
    per-iteration charts, the first divergence marked and explained, the
    lifecycle table. Exit codes as for diff."""
    from sgl_replay.diff import diff as compare
    from sgl_replay.runs.check import outcome_of
    from sgl_replay.views import write_report

    with TraceReader(a) as ra, TraceReader(b) as rb:
        result = compare(ra, rb, _options(level, ignore, force))
    write_report(a, b, result, output, label_a=a, label_b=b)
    click.echo(f"{result.verdict} -> {output}")
    sys.exit(outcome_of(result).exit_code)


@main.command("export")
@click.argument("trace", type=TRACE_PATH)
@click.option("--format", "fmt", type=click.Choice(["mooncake", "csv"]), default="mooncake",
              show_default=True, help="mooncake: JSONL with hash_ids; csv: arrival_ms, prompt_tokens, "
                                      "completion_tokens.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The file to write.")
@click.option("--block-size", type=click.IntRange(min=1), default=None,
              help="mooncake: tokens per hash id (default: for a recording of a public trace, the "
                   "block its import used times its --token-scale, rounded, at least 1; else 512).")
@click.option("--iteration-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Arrival on the virtual clock, this many ms per loop iteration (default: "
                   "recorded times where the recording kept them, else its iteration_ms, else 10).")
@_errors_to_exit_codes
def export_trace(trace: str, fmt: str, output: str, block_size: Optional[int],
                 iteration_ms: Optional[float]) -> None:
    """Write TRACE's requests as a public serving-trace file: arrival (recorded
    time or the virtual clock), input and output lengths, and (mooncake)
    prefix hash ids."""
    from sgl_replay.convert.export import export

    result = export(trace, output, fmt=fmt, block_size=block_size, iteration_ms=iteration_ms)
    left = f" ({result.unfinished} unfinished requests left out)" if result.unfinished else ""
    clock = (f"{result.iteration_ms:g} ms per iteration" if result.iteration_ms is not None
             else "arrival from recorded times")
    click.echo(f"{output}: {result.rows} requests, {clock}{left}")


@main.command()
@click.argument("trace", type=TRACE_PATH)
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="Where to write the Chrome trace-event JSON (default: TRACE.json.gz).")
@_errors_to_exit_codes
def timeline(trace: str, output: Optional[str]) -> None:
    """Write TRACE as a timeline for ui.perfetto.dev or chrome://tracing:
    forward batches, pool and queue counters, each request's life."""
    from sgl_replay.views import write_timeline

    output = output or os.path.splitext(trace)[0] + ".json.gz"
    figures = write_timeline(trace, output)
    click.echo(f"{output}: {figures['forwards']} forward batches, {figures['requests']} requests, "
               f"{figures['retractions']} retractions (open in ui.perfetto.dev)")


@main.command()
@click.argument("trace", type=TRACE_PATH)
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="Keep the (last) observed trace here (default: a temporary file).")
@click.option("--report", "report_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the HTML report of the recording against the replay here.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Replay N times on one engine; mixed results are inconclusive (exit 125).")
@_engine_options
@_suspect_options
@_skip_model_option
@_clock_options
@_timeout_option
@_diff_options
@_errors_to_exit_codes
def check(trace: str, output: Optional[str], report_path: Optional[str], repeat: int,
          device: Optional[str], engine_args: tuple[str, ...], timeout: float, as_json: bool,
          level: str, ignore: tuple[str, ...], force: bool, engine_env: tuple[str, ...] = (),
          engine_path: tuple[str, ...] = (), skip_model: bool = False, clock: str = "iterations",
          cost_path: Optional[str] = None, max_in_flight: Optional[int] = None) -> None:
    """Replay TRACE and diff the result against it, in one step.

    Exit 0 same, 1 diverged, 125 the engine could not start or import here, or
    --repeat replays disagreed (git bisect run skips the revision), 2 bad
    usage or unreadable trace. --json prints the verdict as one JSON object.
    """
    from sgl_replay.runs.check import check as run_check

    options = _options(level, ignore, force)
    cost = _cost_model(trace, clock, cost_path, max_in_flight)
    verdict = run_check(trace, device=device, engine_args=parse_engine_args(engine_args),
                        options=options, repeat=repeat, observed=output, report=report_path,
                        timeout_s=timeout, engine_env=parse_engine_env(engine_env),
                        engine_path=engine_path, skip_model=skip_model, cost=cost,
                        max_in_flight=max_in_flight)
    label_b = "replay" if output is None else output
    if as_json:
        click.echo(json.dumps(verdict.to_plain(trace, label_b)))
    elif verdict.result is None:  # nothing compared: the reason is the error
        raise Failure(verdict.message, verdict.exit_code)
    else:
        for line in verdict.lines(trace, label_b):
            click.echo(line)
    sys.exit(verdict.exit_code)


# ------------------------------------------------------------------ time
@main.command()
@click.argument("trace", type=TRACE_PATH)
@click.argument("other", type=TRACE_PATH, required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@_errors_to_exit_codes
def latency(trace: str, other: Optional[str], as_json: bool) -> None:
    """Per-request TTFT, inter-token latency, end-to-end latency and queueing
    of a trace that kept time (a capture, serve, --clock wall, a timed
    replay), p50/p90/p99, and output-token throughput. With OTHER (the same
    requests: a replay of TRACE, say), both side by side and OTHER's error
    against TRACE."""
    from sgl_replay.timing import latency as lat

    a = lat.of_trace(trace).summary()
    if other is None:
        if as_json:
            click.echo(json.dumps(a))
        else:
            for line in lat.text(a, trace):
                click.echo(line)
        return
    b = lat.of_trace(other).summary()
    error = lat.compare(a, b)
    if as_json:
        click.echo(json.dumps({"a": a, "b": b, "error": error}))
        return
    for line in lat.text(a, f"A {trace}") + lat.text(b, f"B {other}"):
        click.echo(line)
    click.echo(f"B against A over {error['requests_compared']} requests: " + lat.change_line(error, a, b))
    click.echo(f"  per request: TTFT median error {_pct(error['ttft_median_abs_pct'])}, p90 "
               f"{_pct(error['ttft_per_request_p90_abs_pct'])}; E2E median error {_pct(error['e2e_median_abs_pct'])}")


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.1f}%"


@main.command()
@click.argument("traces", nargs=-1, required=True, type=TRACE_PATH)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The cost model file to write (JSON).")
@_errors_to_exit_codes
def cost(traces: tuple[str, ...], output: str) -> None:
    """Fit how long a loop iteration takes on the recorded server from what
    the scheduler put in it (timed recordings: captures, serve, --clock
    wall), print the fit's error on held-out iterations, and write the model."""
    from sgl_replay.timing.fit import fit

    model = fit(list(traces))
    tmp = output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(model.to_json())
    os.replace(tmp, output)
    src = model.source
    click.echo(f"fitted on {src.iterations} iterations of {', '.join(src.traces)} "
               f"({src.device or '?'} {src.device_name or ''}, {src.model or '?'}, {src.dtype or '?'}, "
               f"sglang {src.sglang or '?'})")
    click.echo(f"held-out iterations: {model.fit.heldout_iterations}, median error {_pct(model.fit.median_abs_pct)}, "
               f"p90 {_pct(model.fit.p90_abs_pct)}, total time {model.fit.total_pct:+.1f}%"
               if model.fit.total_pct is not None else "held-out iterations: none")
    click.echo(f"-> {output}")


# ------------------------------------------------------------------ what-if
@main.command()
@click.argument("trace", type=TRACE_PATH)
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2,...",
              help="A scheduling argument (or the client's max_in_flight) and the values to try "
                   "(repeatable: every combination is a configuration).")
@click.option("--cost", "cost_path", default=None, type=click.Path(dir_okay=False, exists=True),
              help="The cost model (`sgl-replay cost`); default: one fitted on TRACE itself.")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=None,
              help="Every configuration's client keeps at most N requests in flight "
                   "(unless the grid varies it).")
@click.option("--rank", default="ttft_p90", show_default=True, metavar="FIGURE",
              help="Rank by this figure: ttft_p50|p90|p99, itl_..., e2e_..., queue_..., throughput.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Local process pool size (default: one per core, while each can keep 3 GiB free).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Run each configuration as a Ray task: on the cluster at ADDRESS, or with no "
                   "ADDRESS on a local Ray instance (pip install 'sgl-replay[ray]').")
@click.option("-o", "--output", "outputs", multiple=True, type=click.Path(dir_okay=False),
              help="Also write the table as .csv, .json or .html (with a latency-throughput chart); "
                   "repeatable.")
@click.option("--device", default=None, help="Engine device (default: cpu).")
@_skip_model_option
@_timeout_option
@_errors_to_exit_codes
def whatif(trace: str, grid: tuple[str, ...], cost_path: Optional[str], max_in_flight: Optional[int],
           rank: str, workers: Optional[int], ray_address: Optional[str], outputs: tuple[str, ...],
           device: Optional[str], skip_model: bool, timeout: float) -> None:
    """Replay TRACE on the modelled clock once per configuration of the grid
    (the recorded configuration first, as the baseline), in parallel, and
    rank the configurations by a latency figure.

    Exit 0 when every configuration ran, 1 when some failed, 2 bad usage
    or input (nothing is written then).
    """
    from sgl_replay.runs import progress
    from sgl_replay.runs import whatif as w

    try:
        configs = w.parse_grid(grid, max_in_flight=max_in_flight)
        for output in outputs:
            w.check_output(output)
        if workers is not None and ray_address is not None:
            raise w.WhatifError("--workers is the local pool's size; Ray sizes itself (give one of them)")
        if ray_address:
            w.check_ray_address(ray_address)
        cost = _cost_model(trace, "modeled", cost_path)
        with progress.counter(f"what-if: {len(configs)} configurations", len(configs)) as advance:
            result = w.sweep(trace, configs, cost, rank=rank, workers=workers, ray_address=ray_address,
                             device=device, skip_model=skip_model, timeout_s=timeout,
                             on_row=lambda row: advance(row.config.label))
    except w.WhatifError as e:
        raise Failure(str(e), ExitCode.BAD_INPUT) from None
    for line in w.text_lines(result):
        click.echo(line)
    for output in outputs:
        w.write(result, output)
        click.echo(f"-> {output}")
    sys.exit(ExitCode.DIVERGED if any(row.failed for row in result.rows) else ExitCode.SAME)  # 1: a run that failed


# ------------------------------------------------------------------ minimize
@main.command()
@click.argument("trace", type=TRACE_PATH)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The minimized trace to write (.sglt).")
@click.option("--match", type=click.Choice(["kinds", "any"]), default="kinds", show_default=True,
              help="Keep a candidate that diverges with the same kinds of first difference "
                   "as the whole trace (kinds), or that diverges at all (any).")
@click.option("--no-verify", is_flag=True, help="Do not check the result on both engines at the end.")
@_engine_options
@_suspect_options
@_timeout_option
@_diff_options
@_errors_to_exit_codes
def minimize(trace: str, output: str, match: str, no_verify: bool, device: Optional[str],
             engine_args: tuple[str, ...], engine_env: tuple[str, ...], engine_path: tuple[str, ...],
             timeout: float, as_json: bool, level: str, ignore: tuple[str, ...], force: bool) -> None:
    """Shrink TRACE, which diverges on the suspect configuration (the trace's
    own plus --engine-arg, --engine-env, --engine-path), to the fewest
    requests and control inputs that still diverge the same way (ddmin).
    Each candidate is recorded on the baseline and checked on the suspect.

    Exit 0 minimized, 2 the trace does not diverge there (or is unusable),
    125 an engine could not start.
    """
    from sgl_replay.runs.capture import check_writable
    from sgl_replay.runs.minimize import NotDiverging, minimize as run_minimize

    check_writable(output)
    lines = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    try:
        res = run_minimize(trace, output, device=device, engine_args=parse_engine_args(engine_args),
                           engine_env=parse_engine_env(engine_env), engine_path=engine_path,
                           options=_options(level, ignore, force), match=match, verify=not no_verify,
                           progress=lines, timeout_s=timeout)
    except NotDiverging as e:
        raise Failure(str(e), ExitCode.BAD_INPUT) from None
    if as_json:
        click.echo(json.dumps({
            "output": res.output, "steps": res.steps, "candidates": res.candidates,
            "requests_before": res.requests_before, "requests_after": res.requests_after,
            "units_before": res.units_before, "units_after": res.units_after, "kept": res.kept,
            "kinds": list(res.kinds), "seconds": round(res.seconds, 1),
            "baseline": res.baseline.outcome.value if res.baseline else None,
            "suspect": res.suspect.outcome.value if res.suspect else None}))


@main.command("redact")
@click.argument("trace", type=TRACE_PATH)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The redacted trace to write (.sglt).")
@_errors_to_exit_codes
def redact_trace(trace: str, output: str) -> None:
    """Write TRACE with every token id (prompts, recorded outputs) replaced by
    synthetic ids that keep each sequence's length and exactly which prefixes
    the sequences share (what the radix cache sees), EOS and stop ids as they
    are, and credential settings removed. Its replay has the same
    consequences as the original's."""
    from sgl_replay.convert.redact import redact
    from sgl_replay.runs.capture import check_writable

    check_writable(output)
    figures = redact(trace, output)
    click.echo(f"{output}: {figures['requests']} requests, {figures['tokens']} token ids replaced "
               f"({figures['outputs']} recorded outputs)")


@main.command("export-test")
@click.argument("trace", type=TRACE_PATH)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The pytest file to write (test_NAME.py).")
@_errors_to_exit_codes
def export_test(trace: str, output: str) -> None:
    """Write TRACE as a pytest file for SGLang's scripted-runtime harness: the
    same inputs at the same iterations, asserting the batches, finishes,
    retractions and cached tokens the trace recorded. It needs only sglang."""
    from sgl_replay.convert.export_test import export_test as run_export

    figures = run_export(trace, output)
    click.echo(f"{output}: {figures['inputs']} inputs, {figures['iterations']} iterations, "
               f"{figures['batches']} batches asserted")


# ------------------------------------------------------------------ bisect
@main.command("bisect")
@click.option("--repo", default=".", show_default=True, type=click.Path(file_okay=False, exists=True),
              help="Git repository of the code under test (sglang, or a package that changes scheduling).")
@click.option("--good", default=None, help="A revision that reproduces the trace (or GOOD after TRACE).")
@click.option("--bad", default=None, help="A revision that does not (or BAD after TRACE).")
@click.option("--subdir", default=".", show_default=True,
              help="Where the installable package sits in the repository (sglang: python).")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Replays per step; a step with mixed results is inconclusive and skipped.")
@click.option("--report", "report_path", default=None, type=click.Path(dir_okay=False),
              help="Write the first bad commit's HTML report (its replay against TRACE) here.")
@click.option("--metric", default=None, type=click.Choice(list(FIGURES)),
              help="Bisect by a latency figure on the modelled clock instead of the schedule (with --threshold).")
@click.option("--threshold", default=None, metavar="PCT",
              help="--metric: a step is bad when the figure is more than PCT worse than TRACE's (e.g. 5%).")
@click.option("--cost", "cost_path", default=None, type=click.Path(dir_okay=False, exists=True),
              help="--metric: the cost model (`sgl-replay cost`); default: as `check --clock modeled` picks.")
@click.argument("trace", type=TRACE_PATH)
@click.argument("revisions", nargs=-1, metavar="[GOOD BAD]")
@_engine_options
@_errors_to_exit_codes
def bisect_command(repo: str, good: Optional[str], bad: Optional[str], subdir: str, repeat: int,
                   report_path: Optional[str], trace: str, revisions: tuple[str, ...], device: Optional[str],
                   engine_args: tuple[str, ...], metric: Optional[str] = None,
                   threshold: Optional[str] = None, cost_path: Optional[str] = None) -> None:
    """Find the first commit between GOOD and BAD whose engine no longer
    reproduces TRACE, or (--metric, --threshold) whose timed replay of TRACE
    pushed a latency figure more than the threshold past the recording's.

    Runs git bisect in a linked worktree (your checkout is left as it is);
    each revision is pip-installed into a scratch directory that goes first on
    PYTHONPATH for `sgl-replay check`; nothing is installed into your
    environment. Revisions whose engine cannot start or whose plugins fail to
    import are skipped.
    """
    from sgl_replay.bisect import BisectError, bisect
    from sgl_replay.runs.check import read_header

    if revisions and (len(revisions) != 2 or good or bad):
        raise click.UsageError("give the revisions once: TRACE GOOD BAD, or --good G --bad B")
    good, bad = revisions if revisions else (good, bad)
    if not good or not bad:
        raise click.UsageError("which revisions? TRACE GOOD BAD, or --good G --bad B")
    read_header(trace)
    check_args = tuple(a for pair in engine_args for a in ("--engine-arg", pair))
    check_args += ("--device", device) if device else ()
    by_metric = _bisect_metric(trace, metric, threshold, cost_path)
    if by_metric is not None:
        check_args += ("--clock", "modeled") + (("--cost", os.path.abspath(cost_path)) if cost_path else ())
    try:
        result = bisect(repo, good, bad, trace, repeat=repeat, subdir=subdir, check_args=check_args,
                        echo=lambda line: click.echo(line, err=True),
                        html_report=os.path.abspath(report_path) if report_path else None, metric=by_metric)
    except BisectError as e:
        raise Failure(str(e), e.exit_code) from None
    skipped = ", ".join(s.commit[:10] for s in result.skipped) or "none"
    if result.first_bad:
        click.echo(f"first bad commit: {result.first_bad} {result.subject}")
        click.echo(result.report.rstrip())
        if report_path:
            click.echo(f"HTML report: {report_path}")
    else:
        click.echo("no single first bad commit: only skipped commits are left; it is one of:")
        for sha in result.candidates:
            click.echo(f"  {sha}")
    click.echo(f"{len(result.steps)} steps, {len(result.skipped)} skipped ({skipped}), "
               f"{result.seconds:.0f}s wall time")
    sys.exit(ExitCode.SAME if result.first_bad else ExitCode.DIVERGED)


def _bisect_metric(trace: str, metric: Optional[str], threshold: Optional[str], cost_path: Optional[str]):
    """bisect's Metric (None without --metric), its trace and cost model
    checked before any step runs."""
    from sgl_replay.bisect import Metric

    if (metric is None) != (threshold is None):
        raise click.UsageError("--metric and --threshold go together")
    if metric is None:
        if cost_path is not None:
            raise click.UsageError("--cost goes with --metric")
        return None
    assert threshold is not None
    m = re.fullmatch(r"\+?([0-9]+(?:\.[0-9]+)?)%?", threshold.strip())
    if m is None:
        raise click.BadParameter(f"{threshold!r}: how much worse, in %, e.g. 5%", param_hint="--threshold")
    from sgl_replay.timing import latency as lat

    _cost_model(trace, "modeled", cost_path)  # a trace that kept no time, a bad cost file: exit 2 here
    if lat.figure(lat.of_trace(trace).summary(), metric) is None:
        raise Failure(f"{trace}: no {metric} to compare (no request finished?)", ExitCode.BAD_INPUT)
    return Metric(metric, float(m.group(1)))


if __name__ == "__main__":
    main()
