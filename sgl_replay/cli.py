"""The `sgl-replay` command: thin click commands over the library.

Exit codes (git bisect run understands them): 0 same / done, 1 diverged or a
run that failed part way (its trace is kept, sealed), 125 the engine could
not start or import at this revision, 2 bad usage or unreadable input,
130 interrupted. Errors are one line (plus the engine's last log lines when
the engine died); SGLREPLAY_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from typing import Optional

import click

from sgl_replay.trace.reader import TraceError, TraceReader

EXIT_SAME, EXIT_DIVERGED, EXIT_USAGE, EXIT_SKIP, EXIT_INTERRUPTED = 0, 1, 2, 125, 130


class Failure(click.ClickException):
    """A one-line error with its own exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"sgl-replay: error: {self.format_message()}", err=True)


def _errors_to_exit_codes(fn):
    """Known failures become one line and an exit code; nothing else escapes
    as a traceback unless SGLREPLAY_DEBUG is set."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from sgl_replay.engine import BadEngineArgs, EngineError
        from sgl_replay.record.runner import CaptureFailed

        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except TraceError as e:
            raise Failure(str(e), EXIT_USAGE) from None
        except BadEngineArgs as e:
            raise Failure(str(e), EXIT_USAGE) from None
        except EngineError as e:
            raise Failure(str(e), e.exit_code) from None
        except CaptureFailed as e:
            kept = f" (what ran is in {e.trace}, sealed as incomplete)" if e.trace else ""
            raise Failure(f"{e}{kept}", e.exit_code) from None
        except KeyboardInterrupt:
            click.echo("sgl-replay: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # `sgl-replay show ... | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except OSError as e:
            raise Failure(str(e), EXIT_USAGE) from None
        except Exception as e:  # noqa: BLE001
            if os.environ.get("SGLREPLAY_DEBUG"):
                raise
            raise Failure(f"{type(e).__name__}: {e}", EXIT_DIVERGED) from None

    return wrapper


def parse_engine_args(pairs: tuple[str, ...]) -> dict:
    """KEY=VALUE pairs; values are JSON when they parse as JSON (numbers,
    true/false, null, lists), else strings. Dashes in keys become underscores."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise Failure(f"--engine-arg wants KEY=VALUE, got {pair!r}", EXIT_USAGE)
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


@click.group()
@click.version_option(package_name="sgl-replay")
def main() -> None:
    """Record, replay and diff SGLang scheduler runs, iteration by iteration."""
    # SIGTERM (a CI timeout, `kill`) takes the Ctrl-C path: the engine is
    # stopped and the trace so far sealed.
    signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


# ------------------------------------------------------------------ record
@main.command()
@click.argument("workload")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Trace file to write (.sglt).")
@click.option("--model-path", default=None, help="A real model instead of the embedded tiny GPT-2.")
@_engine_options
@click.option("--duration", type=float, default=None, help="serve: stop after this many seconds.")
@click.option("--idle-timeout", type=float, default=None,
              help="serve: stop once idle this long after the first request.")
@_errors_to_exit_codes
def record(workload: str, output: str, model_path: Optional[str], device: Optional[str],
           engine_args: tuple[str, ...], duration: Optional[float], idle_timeout: Optional[float]) -> None:
    """Run WORKLOAD on the real engine and write its trace.

    WORKLOAD is a built-in name (see `sgl-replay workloads`), `serve` (the
    engine serves HTTP /generate from any client; the URL is printed), or a
    scripted-runtime script `module:function` taking sglang's ScriptedContext.
    """
    from sgl_replay.engine import Engine, EngineConfig
    from sgl_replay.record.runner import check_writable, record_workload
    from sgl_replay.replay.runner import DEVICE_ARGS

    spec, defaults = _workload_spec(workload, duration, idle_timeout)
    check_writable(output)
    overrides = dict(DEVICE_ARGS.get(device, {"device": device})) if device else {}
    overrides.update(parse_engine_args(engine_args))
    config = EngineConfig.embedded(engine_args={**defaults, **overrides}, model_path=model_path)
    started = time.monotonic()
    with Engine.start(config) as engine:
        click.echo(f"engine ready in {time.monotonic() - started:.1f}s", err=True)
        if spec["kind"] == "serve":
            limit = " or ".join(x for x in (f"{duration:g}s" if duration else "",
                                            f"{idle_timeout:g}s idle" if idle_timeout else "") if x)
            click.echo(f"serving {engine.base_url}/generate until {limit}; Ctrl-C stops "
                       f"and keeps the trace", err=True)
        end = record_workload(engine, spec, output, argv=sys.argv[1:])
    size = os.path.getsize(output)
    click.echo(f"recorded {end['iterations']} loop iterations, {end['forwards']} forward batches, "
               f"{end['requests']} requests -> {output} ({size / 1024:.1f} KiB)")


def _workload_spec(workload: str, duration, idle_timeout) -> tuple[dict, dict]:
    from sgl_replay.record.workloads import BUILTIN

    if workload == "serve":
        if duration is None and idle_timeout is None:
            raise Failure("serve needs --duration and/or --idle-timeout", EXIT_USAGE)
        return {"kind": "serve", "duration_s": duration, "idle_s": idle_timeout}, {}
    if duration is not None or idle_timeout is not None:
        raise Failure("--duration and --idle-timeout apply to `serve` only", EXIT_USAGE)
    if workload in BUILTIN:
        w = BUILTIN[workload]
        return {"kind": "builtin", "name": workload, "description": w.description}, dict(w.engine_args)
    if ":" in workload:
        return {"kind": "script", "name": workload}, {}
    raise Failure(f"unknown workload {workload!r}; built-in workloads: {', '.join(BUILTIN)}; "
                  f"or `serve`, or module:function", EXIT_USAGE)


@main.command()
def workloads() -> None:
    """List the built-in workloads."""
    from sgl_replay.record.workloads import BUILTIN

    for w in BUILTIN.values():
        args = " ".join(f"{k}={v}" for k, v in w.engine_args.items())
        click.echo(f"{w.name:22} {w.description}" + (f"  [{args}]" if args else ""))
    click.echo(f"{'serve':22} serve HTTP /generate from any client (--duration, --idle-timeout)")


# ------------------------------------------------------------------ read
@main.command()
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--iter", "iter_range", default=None, metavar="A:B",
              help="Only iterations A..B-1 (either end may be left out).")
@click.option("--rid", default=None, help="Only what concerns this request.")
@click.option("--header", "header_only", is_flag=True, help="Print the whole header as JSON.")
@_errors_to_exit_codes
def show(trace: str, iter_range: Optional[str], rid: Optional[str], header_only: bool) -> None:
    """Print a trace: header, then one block per recorded iteration."""
    from sgl_replay.trace.text import iteration_lines, names_from, touches

    lo, hi = _parse_range(iter_range)
    with TraceReader(trace) as reader:
        h = reader.header
        if header_only:
            click.echo(json.dumps(h, indent=2, sort_keys=True))
            return
        for line in header_lines(h):
            click.echo(line)
        rids: list[str] = []
        name = names_from(rids)
        wanted: Optional[int] = None
        try:
            for record in reader.iterations():
                for item in record.inputs:
                    if item["type"] == "generate":
                        if item["rid"] == rid:
                            wanted = len(rids)
                        rids.append(item["rid"])
                if not lo <= record.i < hi:
                    continue
                if rid is not None and (wanted is None or not touches(record, wanted, rid)):
                    continue
                for line in iteration_lines(record, name, only=wanted if rid is not None else None):
                    click.echo(line)
        except TraceError as e:
            raise Failure(f"{e} (everything before it is shown above)", EXIT_USAGE) from None
        click.echo(end_line(reader.end))


def header_lines(h: dict) -> list[str]:
    v, d, w = h.get("versions", {}), h.get("device", {}), h.get("workload") or {}
    src = h.get("source", {})
    pools = " ".join(f"{k}={val}" for k, val in h.get("pools", {}).items())
    lines = [
        f"trace format {h.get('format')}  sgl-replay {v.get('sgl_replay')}  sglang {v.get('sglang')}  "
        f"torch {v.get('torch')}  python {v.get('python')}",
        f"device {d.get('type')} {d.get('name') or ''}  attention {d.get('attention_backend')}"
        + (f"  cuda {d['cuda']} driver {d.get('driver')}" if d.get("cuda") else ""),
        f"workload {w.get('kind')} {w.get('name') or ''}"
        + (f": {w['description']}" if w.get("description") else "")
        + (f"  ({src.get('kind')} of {src.get('trace')})" if src.get("kind") == "replay" else ""),
        f"pools {pools}",
    ]
    model = h.get("model", {})
    lines.append("model embedded tiny GPT-2" if model.get("config") else f"model {model.get('path')}")
    return lines


def end_line(end: Optional[dict]) -> str:
    if end is None:
        return "end: missing (the trace stops without its end record)"
    state = "complete" if end["complete"] else f"INCOMPLETE: {end.get('reason')}"
    return (f"end: {state}; {end['iterations']} loop iterations, {end['forwards']} forward batches, "
            f"{end['requests']} requests")


def _parse_range(text: Optional[str]) -> tuple[float, float]:
    if not text:
        return 0, float("inf")
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            return int(lo), int(lo) + 1
        return (int(lo) if lo else 0), (int(hi) if hi else float("inf"))
    except ValueError:
        raise Failure(f"--iter wants A:B, got {text!r}", EXIT_USAGE) from None


@main.command()
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@_errors_to_exit_codes
def stats(trace: str, as_json: bool) -> None:
    """Counts and sizes of a trace."""
    records = forwards = inputs = requests = finished = retracted = 0
    modes: dict[str, int] = {}
    with TraceReader(trace) as reader:
        for record in reader.iterations():
            records += 1
            for item in record.inputs:
                inputs += 1
                requests += item["type"] == "generate"
            for batch in record.batches:
                forwards += 1
                modes[batch.mode] = modes.get(batch.mode, 0) + 1
            finished += len(record.finished)
            retracted += len(record.retracted)
        end = reader.end
        figures = {
            "iterations": end["iterations"] if end else None, "recorded_iterations": records,
            "forwards": forwards, "forward_modes": modes, "inputs": inputs, "requests": requests,
            "finished": finished, "retractions": retracted, "frames": reader.frames,
            "file_bytes": reader.file_bytes, "raw_bytes": reader.raw_bytes,
            "compression_ratio": round(reader.raw_bytes / reader.file_bytes, 2) if reader.file_bytes else None,
            "bytes_per_forward": round(reader.file_bytes / forwards, 1) if forwards else None,
            "complete": bool(end and end["complete"]),
            # what recording cost the scheduler loop, measured inside it
            "recorder_share": (round(end["recorder_seconds"] / end["seconds"], 5)
                               if end and end.get("recorder_seconds") is not None and end.get("seconds")
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
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the observed trace.")
@_engine_options
@_errors_to_exit_codes
def replay(trace: str, output: str, device: Optional[str], engine_args: tuple[str, ...]) -> None:
    """Re-drive the real engine with TRACE's inputs at the same iterations and
    record what happens now."""
    from sgl_replay.record.runner import check_writable

    check_writable(output)
    end = _replay(trace, output, device, parse_engine_args(engine_args))
    click.echo(f"replayed {end['iterations']} loop iterations, {end['forwards']} forward batches "
               f"-> {output}")


def _replay(trace: str, output: str, device: Optional[str], overrides: dict) -> dict:
    from sgl_replay.engine import Engine
    from sgl_replay.replay.runner import engine_config_for, replay_trace

    config = engine_config_for(_readable_header(trace), device=device, engine_args=overrides)
    with Engine.start(config) as engine:
        return replay_trace(engine, trace, output,
                            overrides={"device": device, "engine_args": overrides})


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
    from sgl_replay.diff.compare import Options

    try:
        return Options(level=level, ignore=frozenset(ignore), force=force)
    except ValueError as e:
        raise Failure(str(e), EXIT_USAGE) from None


def _report(result, as_json: bool, label_a: str, label_b: str) -> int:
    from sgl_replay.diff.report import text_lines, to_json

    if as_json:
        click.echo(to_json(result, label_a, label_b))
    else:
        for line in text_lines(result, label_a, label_b):
            click.echo(line)
    if result.verdict == "same":
        return EXIT_SAME
    if result.verdict in ("not comparable", "empty"):
        return EXIT_USAGE
    return EXIT_DIVERGED


@main.command()
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@_diff_options
@_errors_to_exit_codes
def diff(a: str, b: str, as_json: bool, level: str, ignore: tuple[str, ...], force: bool) -> None:
    """Compare two traces (no engine needed): the first divergent iteration,
    explained per request, then a summary realigned by request id."""
    from sgl_replay.diff.compare import diff as compare

    options = _options(level, ignore, force)
    with TraceReader(a) as ra, TraceReader(b) as rb:
        result = compare(ra, rb, options)
    sys.exit(_report(result, as_json, a, b))


@main.command()
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="Keep the (last) observed trace here (default: a temporary file).")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Replay N times on one engine; mixed results are inconclusive (exit 125).")
@_engine_options
@_diff_options
@_errors_to_exit_codes
def check(trace: str, output: Optional[str], repeat: int, device: Optional[str],
          engine_args: tuple[str, ...], as_json: bool, level: str, ignore: tuple[str, ...],
          force: bool) -> None:
    """Replay TRACE and diff the result against it, in one step.

    Exit 0 same, 1 diverged, 125 the engine could not start or import here, or
    --repeat replays disagreed (git bisect run skips the revision), 2 bad
    usage or unreadable trace.
    """
    import tempfile

    from sgl_replay.diff.compare import diff as compare
    from sgl_replay.engine import Engine
    from sgl_replay.replay.runner import engine_config_for, replay_trace

    options = _options(level, ignore, force)
    overrides = parse_engine_args(engine_args)
    header = _readable_header(trace)
    try:
        config = engine_config_for(header, device=device, engine_args=overrides)
        engine = Engine.start(config)
    except ImportError as e:
        raise Failure(f"cannot import the engine here: {e}", EXIT_SKIP) from None
    results = []
    with engine, tempfile.TemporaryDirectory(prefix="sgl-replay-check-") as tmp:
        for run in range(repeat):
            observed = output if output and run == repeat - 1 else os.path.join(tmp, f"observed-{run}.sglt")
            replay_trace(engine, trace, observed, overrides={"device": device, "engine_args": overrides})
            with TraceReader(trace) as ra, TraceReader(observed) as rb:
                results.append(compare(ra, rb, options))
    diverged = [r for r in results if r.verdict == "diverged"]
    shown = diverged[0] if diverged else results[0]
    code = _report(shown, as_json, trace, "replay" if output is None else output)
    if repeat > 1:
        click.echo(f"diverged in {len(diverged)} of {repeat} replays"
                   + (" (inconclusive)" if 0 < len(diverged) < repeat else ""), err=as_json)
        if 0 < len(diverged) < repeat:
            code = EXIT_SKIP
    sys.exit(code)


def _readable_header(trace: str) -> dict:
    """Read the whole trace before anything starts: a bad trace is exit 2."""
    with TraceReader(trace) as reader:
        for _ in reader.iterations():
            pass
        return reader.header


# ------------------------------------------------------------------ bisect
@main.command("bisect")
@click.option("--repo", required=True, type=click.Path(file_okay=False, exists=True),
              help="Git repository of the code under test (sglang, or a package that changes scheduling).")
@click.option("--good", required=True, help="A revision that reproduces the trace.")
@click.option("--bad", required=True, help="A revision that does not.")
@click.option("--subdir", default=".", show_default=True,
              help="Where the installable package sits in the repository (sglang: python).")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Replays per step; a step with mixed results is inconclusive and skipped.")
@click.argument("trace", type=click.Path(dir_okay=False))
@_engine_options
@_errors_to_exit_codes
def bisect_command(repo: str, good: str, bad: str, subdir: str, repeat: int, trace: str,
                   device: Optional[str], engine_args: tuple[str, ...]) -> None:
    """Find the first commit between GOOD and BAD whose engine no longer
    reproduces TRACE.

    Runs git bisect in a linked worktree (your checkout is left as it is);
    each revision is pip-installed into a scratch directory that goes first on
    PYTHONPATH for `sgl-replay check`; nothing is installed into your
    environment. Revisions whose engine cannot start or whose plugins fail to
    import are skipped.
    """
    from sgl_replay.bisect import BisectError, bisect

    _readable_header(trace)
    check_args = tuple(a for pair in engine_args for a in ("--engine-arg", pair))
    check_args += ("--device", device) if device else ()
    try:
        result = bisect(repo, good, bad, trace, repeat=repeat, subdir=subdir, check_args=check_args,
                        echo=lambda line: click.echo(line, err=True))
    except BisectError as e:
        raise Failure(str(e), e.exit_code) from None
    skipped = ", ".join(s.commit[:10] for s in result.skipped) or "none"
    if result.first_bad:
        click.echo(f"first bad commit: {result.first_bad} {result.subject}")
        click.echo(result.report.rstrip())
    else:
        click.echo("no single first bad commit: only skipped commits are left; it is one of:")
        for sha in result.candidates:
            click.echo(f"  {sha}")
    click.echo(f"{len(result.steps)} steps, {len(result.skipped)} skipped ({skipped}), "
               f"{result.seconds:.0f}s wall time")
    sys.exit(0 if result.first_bad else EXIT_DIVERGED)


if __name__ == "__main__":
    main()
