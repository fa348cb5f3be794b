"""Public LLM serving traces as workloads: `mooncake:FILE`, `azure:FILE`,
`burstgpt:FILE`.

Each request of the trace goes to the real engine with its exact input and
output lengths (ignore_eos with max_new_tokens), scaled by `token_scale`
(at least one token each), at the loop iteration its arrival time maps to on
a virtual clock (one loop iteration = `iteration_ms`), so a recording is a
pure function of the file and the options.

Prompts: Mooncake's `hash_ids` name the prompt's 512-token blocks, a prefix
hash chain (equal leading ids = a shareable prefix). The importer builds a
trie of those chains over the selected rows; every trie node is one block of
tokens, the same wherever it appears, so requests with equal leading
hash_ids share exactly those blocks. The first token(s) of a block encode
its index among its parent's children (a fixed-width code in base 1021, ids
3..1023), so two different blocks after a common prefix part at their first
token: nothing more is shared. The rest of a block is a hash of the node's
number. Tokens a row's hash_ids do not cover (and every prompt of Azure and
BurstGPT, which carry no prefix information) are a block of their own, unique
to the row. Scaled block boundaries are round(j * block_size * token_scale),
the same for every request.

Parsing runs in the parent first (`load`, called by specs.parse): a
malformed line or row is one ValueError naming the file, line and field. A
file in time order is parsed only up to the last row the selection needs
(a week of traffic, --limit 1000); one that is not is read whole and sorted.
`check_fits` says which row does not fit the engine after scaling and the
largest token scale that fits. The scheduler side
(sgl_replay.scheduler.workloads.public_trace) loads the file again, checks
its SHA-256, and drives the requests with the prompts built here.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterable, Iterator, Optional

FORMATS = ("mooncake", "azure", "burstgpt")
DEFAULT_BLOCK_SIZE = 512  # Mooncake's block: one hash id covers 512 tokens
DEFAULT_ITERATION_MS = 10.0  # one loop iteration of the virtual clock
CLOCKS = ("virtual", "wall", "modeled")
# The embedded model's vocabulary: ids 0..2 are special (2 is EOS).
FIRST_TOKEN = 3
VOCAB_SIZE = 1024
ALPHABET = VOCAB_SIZE - FIRST_TOKEN  # 1021 ids a prompt is built from
# A line of a trace file longer than this is malformed (a Mooncake row of a
# 1M-token prompt has ~2,000 hash ids, ~15 KB)
MAX_LINE_BYTES = 1 << 20

OPTION_DEFAULTS = {"limit": None, "start_ms": 0, "time_scale": 1, "token_scale": 1,
                   "block_size": DEFAULT_BLOCK_SIZE, "iteration_ms": DEFAULT_ITERATION_MS,
                   "clock": "virtual"}


@dataclass(frozen=True)
class Row:
    """One request of a trace, as the file has it."""
    line: int  # 1-based line number in the file (the rid says it too)
    arrival_ms: Fraction  # from the file's first request
    input_len: int
    output_len: int
    hash_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Request:
    """One request as it goes to the engine."""
    rid: str
    line: int
    iteration: int  # virtual-clock loop iteration from the workload's start
    arrival_ms: Fraction  # after start_ms, rebasing and time_scale
    input_len: int
    output_len: int
    nodes: tuple[int, ...]  # trie nodes, one per scaled block, in order


@dataclass
class Imported:
    """A parsed, selected and scaled trace: what a recording sends."""
    fmt: str
    path: str
    sha256: str
    options: dict
    requests: list[Request]
    skipped_failed: int  # BurstGPT rows with 0 response tokens (among the rows read)
    # trie: node -> (parent node or -1, index among the parent's children)
    parent: list[int]
    sibling: list[int]
    width: list[int]  # per node: code width of its children (digits base 1021)
    token_scale: Fraction
    block_size: int
    root_width: int = 1  # code width of the root's children
    source_rows: list = field(default_factory=list)  # the selected rows, unscaled

    def boundaries(self, upto: int, blocks: Optional[int] = None) -> list[int]:
        """Scaled block boundaries 0, b(1), ... up to `upto` tokens."""
        return block_boundaries(self.block_size, self.token_scale, upto, blocks)

    def input_ids(self, request: Request) -> list[int]:
        return prompt_ids(self, request)


# ------------------------------------------------------------------ options
def normalize_options(fmt: str, options: Optional[dict]) -> dict:
    """Full, checked options (plain JSON values); ValueError names the option."""
    out: dict[str, Any] = dict(OPTION_DEFAULTS)
    for key, value in (options or {}).items():
        key = key.replace("-", "_")
        if key == "format" and value == fmt:
            continue
        if key not in OPTION_DEFAULTS:
            raise ValueError(f"unknown option {key!r} for a {fmt} trace; options: "
                             f"{', '.join(OPTION_DEFAULTS)}")
        if value is not None:
            out[key] = value
    out["format"] = fmt

    def number(key: str, *, integer: bool = False, positive: bool = True) -> None:
        raw = out[key]
        try:
            value = Fraction(str(raw).strip())
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"option {key}: expected a number, got {raw!r}") from None
        if integer and value.denominator != 1:
            raise ValueError(f"option {key}: expected an integer, got {raw!r}")
        if value < 0 or (positive and value == 0):
            raise ValueError(f"option {key}: must be {'> 0' if positive else '>= 0'}, got {raw!r}")
        out[key] = int(value) if integer or value.denominator == 1 else float(raw)

    if out["limit"] is not None:
        number("limit", integer=True)
    number("start_ms", positive=False)
    number("time_scale")
    number("token_scale")
    number("block_size", integer=True)
    number("iteration_ms")
    if out["clock"] not in CLOCKS:
        raise ValueError(f"option clock: {out['clock']!r}; expected one of {', '.join(CLOCKS)}")
    return out


def split_spec(spec: str) -> Optional[tuple[str, str, dict]]:
    """`fmt:FILE[?key=value&...]` to (fmt, path, options); None for any other spec."""
    fmt, sep, rest = spec.partition(":")
    if not sep or fmt not in FORMATS:
        return None
    path, _, query = rest.partition("?")
    if not path:
        raise ValueError(f"{fmt}: needs a file: {fmt}:FILE")
    options: dict = {}
    for pair in filter(None, query.split("&")):
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ValueError(f"{spec!r}: option {pair!r} is not key=value")
        options[key.replace("-", "_")] = value
    return fmt, path, options


# ------------------------------------------------------------------ parsing
def _nonneg_int(value, where: str, field: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{where}: field {field}: expected a non-negative integer, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{where}: field {field}: expected a non-negative integer, "
                             f"got {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: field {field}: expected a non-negative integer, got {value!r}")
    return value


def _nonneg_number(value, where: str, field: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{where}: field {field}: expected a non-negative number, got {value!r}")
    try:
        out = Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{where}: field {field}: expected a non-negative number, got {value!r}") from None
    if out < 0:
        raise ValueError(f"{where}: field {field}: expected a non-negative number, got {value!r}")
    return out


def _lines(f, name: str) -> Iterator[str]:
    """A binary file's lines as text, each at most MAX_LINE_BYTES long (a
    file with no line breaks is not read whole); bytes that are not UTF-8
    are one error naming the line."""
    line_no = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        line_no += 1
        if len(raw) > MAX_LINE_BYTES:
            raise ValueError(f"{name}:{line_no}: line longer than {MAX_LINE_BYTES} bytes")
        try:
            line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{name}:{line_no}: not UTF-8 text") from None
        yield line


def parse_mooncake(lines: Iterable[str], name: str) -> Iterator[Row]:
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name}:{line_no}"
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than Python's stack
            raise ValueError(f"{where}: not a JSON object: {e}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: not a JSON object")
        for required in ("timestamp", "input_length", "output_length"):
            if required not in obj:
                raise ValueError(f"{where}: field {required} missing")
        hash_ids = obj.get("hash_ids", [])
        if not isinstance(hash_ids, list) or not all(
                isinstance(h, int) and not isinstance(h, bool) for h in hash_ids):
            raise ValueError(f"{where}: field hash_ids: expected a list of integers")
        yield Row(line_no, _nonneg_number(obj["timestamp"], where, "timestamp"),
                  _nonneg_int(obj["input_length"], where, "input_length"),
                  _nonneg_int(obj["output_length"], where, "output_length"), tuple(hash_ids))


def _csv_rows(lines: Iterable[str], name: str, columns: tuple[str, ...]) -> Iterator[tuple[int, str, dict]]:
    reader = csv.reader(lines)
    header = None
    while True:
        try:
            fields = next(reader, None)
        except csv.Error as e:  # a field over csv's size limit
            raise ValueError(f"{name}:{reader.line_num}: not a CSV row: {e}") from None
        if fields is None:
            break
        line_no = reader.line_num
        if not fields or not "".join(fields).strip():
            continue
        if header is None:
            header = [f.strip() for f in fields]
            missing = [c for c in columns if c not in header]
            if missing:
                raise ValueError(f"{name}:{line_no}: header lacks column(s) {', '.join(missing)} "
                                 f"(has {', '.join(header)})")
            continue
        if len(fields) != len(header):
            raise ValueError(f"{name}:{line_no}: expected {len(header)} columns, got {len(fields)}")
        yield line_no, f"{name}:{line_no}", dict(zip(header, fields))
    if header is None:
        raise ValueError(f"{name}: empty file (no header)")


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _azure_time_ms(raw: str, where: str) -> Fraction:
    """'2023-11-16 18:17:03.9799600' (optionally '+00:00') to ms, exactly."""
    text = raw.strip()
    try:
        tz = datetime.timezone.utc
        for sign in ("+", "-"):
            head, s, offset = text.rpartition(sign)
            if s and ":" in offset and len(offset) == 5 and " " in head:
                hours, minutes = offset.split(":")
                delta = datetime.timedelta(hours=int(hours), minutes=int(minutes))
                tz = datetime.timezone(delta if sign == "+" else -delta)
                text = head
                break
        if text.endswith("Z"):
            text = text[:-1]
        whole, _, frac = text.partition(".")
        if frac and not frac.isdigit():
            raise ValueError(frac)
        base = datetime.datetime.strptime(whole.replace("T", " "), "%Y-%m-%d %H:%M:%S").replace(tzinfo=tz)
    except ValueError:
        raise ValueError(f"{where}: field TIMESTAMP: expected 'YYYY-MM-DD HH:MM:SS[.fraction]', "
                         f"got {raw!r}") from None
    seconds = int((base - _EPOCH).total_seconds())
    fraction = Fraction(int(frac), 10 ** len(frac)) if frac else Fraction(0)
    return (seconds + fraction) * 1000


def parse_azure(lines: Iterable[str], name: str) -> Iterator[Row]:
    for line_no, where, row in _csv_rows(lines, name, ("TIMESTAMP", "ContextTokens", "GeneratedTokens")):
        yield Row(line_no, _azure_time_ms(row["TIMESTAMP"], where),
                  _nonneg_int(row["ContextTokens"], where, "ContextTokens"),
                  _nonneg_int(row["GeneratedTokens"], where, "GeneratedTokens"))


def parse_burstgpt(lines: Iterable[str], name: str, skipped: list[int]) -> Iterator[Row]:
    columns = ("Timestamp", "Request tokens", "Response tokens")
    for line_no, where, row in _csv_rows(lines, name, columns):
        seconds = _nonneg_number(row["Timestamp"], where, "Timestamp")
        input_len = _nonneg_int(row["Request tokens"], where, "Request tokens")
        output_len = _nonneg_int(row["Response tokens"], where, "Response tokens")
        if output_len == 0:  # a failed request: BurstGPT logs it with 0 response tokens
            skipped.append(line_no)
            continue
        yield Row(line_no, seconds * 1000, input_len, output_len)


def parse_rows(fmt: str, lines: Iterable[str], name: str, skipped: list[int]) -> Iterator[Row]:
    """The rows of a file, in file order (ValueError on the first malformed
    one); failed requests skipped are appended to `skipped`."""
    if fmt == "mooncake":
        return parse_mooncake(lines, name)
    if fmt == "azure":
        return parse_azure(lines, name)
    if fmt == "burstgpt":
        return parse_burstgpt(lines, name, skipped)
    raise ValueError(f"unknown trace format {fmt!r}; formats: {', '.join(FORMATS)}")


def select_in_order(rows: Iterable[Row], start_ms: Fraction,
                    limit: Optional[int]) -> Optional[tuple[Optional[Fraction], list[Row]]]:
    """(t0, the selected rows) read from rows in time order, stopping at the
    last row the selection needs; None at the first row out of time order."""
    t0, last, selected = None, None, []
    for row in rows:
        if last is not None and row.arrival_ms < last:
            return None
        last = row.arrival_ms
        if t0 is None:
            t0 = row.arrival_ms
        if row.arrival_ms - t0 >= start_ms:
            selected.append(row)
            if limit is not None and len(selected) >= limit:
                break
    return t0, selected


def select_sorted(rows: Iterable[Row], start_ms: Fraction, limit: Optional[int]) -> tuple[Optional[Fraction], list[Row]]:
    """(t0, the selected rows) of a file not in time order: every row is read."""
    ordered = sorted(rows, key=lambda r: r.arrival_ms)  # stable: file order among equals
    if not ordered:
        return None, []
    t0 = ordered[0].arrival_ms
    selected = [r for r in ordered if r.arrival_ms - t0 >= start_ms]
    return t0, selected[:limit] if limit is not None else selected


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------ scaling
def scale_tokens(n: int, scale: Fraction) -> int:
    """n * scale rounded half up, at least 1."""
    return max(1, int(n * scale + Fraction(1, 2)))


def block_boundaries(block_size: int, scale: Fraction, upto: int, blocks: Optional[int] = None) -> list[int]:
    """0, b(1), ... up to `upto`; given `blocks`, at most that many blocks,
    the last running to `upto` (a row of 10^12 tokens is not cut whole)."""
    out = [0]
    j = 1
    while out[-1] < upto:
        if blocks is not None and j >= blocks:
            out.append(upto)
            break
        out.append(min(upto, int(j * block_size * scale + Fraction(1, 2))))
        j += 1
    return out


def fit_limit(context_length: int, max_total_tokens: Optional[int]) -> tuple[int, int]:
    """(largest input + output, largest input) a request may have to run with
    its exact output length (sglang 0.5.23: max_req_len = min(context - 1,
    KV capacity - 1); input < max_req_len - 5; max_new_tokens <= max_req_len
    - input - 1)."""
    cap = context_length if not max_total_tokens else min(context_length, max_total_tokens)
    max_req_len = cap - 1
    return max_req_len - 1, max_req_len - 6


def fits(row: Row, scale: Fraction, limits: tuple[int, int]) -> bool:
    total, inputs = limits
    i, o = scale_tokens(row.input_len, scale), scale_tokens(row.output_len, scale)
    return i + o <= total and i <= inputs


def largest_fitting_scale(row: Row, limits: tuple[int, int]) -> Optional[Fraction]:
    """The largest token scale (4 significant digits, rounded down) at which `row` fits."""
    if not fits(row, Fraction(1, 10 ** 9), limits):
        return None
    lo, hi = Fraction(0), Fraction(max(row.input_len, row.output_len, 1) * 4 + 4)
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(row, mid, limits) else (lo, mid)
    # 4 significant digits, rounded down (lo fits; fits is monotone in the scale)
    if lo <= 0:
        return None
    exponent = 0
    while lo * Fraction(10) ** exponent < 1000:
        exponent += 1
    while lo * Fraction(10) ** exponent >= 10000:
        exponent -= 1
    return Fraction(int(lo * Fraction(10) ** exponent), 1) / Fraction(10) ** exponent


def check_fits(imported: "Imported", context_length: int, max_total_tokens: Optional[int]) -> None:
    """ValueError naming the first row that does not fit the engine after
    scaling, and the largest token scale at which every selected row fits."""
    limits = fit_limit(context_length, max_total_tokens)
    scale = imported.token_scale
    rows = {r.line: r for r in imported.source_rows}
    for request in imported.requests:
        row = rows[request.line]
        if not fits(row, scale, limits):
            best = min((s for s in (largest_fitting_scale(rows[q.line], limits) for q in imported.requests)
                        if s is not None), default=None)
            cap = f"context {context_length}" + (f", KV pool {max_total_tokens}" if max_total_tokens else "")
            hint = (f"largest token scale that fits every selected row: {float(best):g}"
                    if best else "no token scale fits")
            raise ValueError(
                f"{imported.path}:{row.line}: input {row.input_len} + output {row.output_len} tokens "
                f"at token scale {float(scale):g} is {request.input_len} + {request.output_len}, "
                f"more than the engine takes ({cap}: at most {limits[0]} in all, {limits[1]} of "
                f"input); {hint} (--token-scale)")


# ------------------------------------------------------------------ import
def _digits(n: int) -> int:
    """Digits base ALPHABET needed to number n children (at least 1)."""
    d, span = 1, ALPHABET
    while span < n:
        d, span = d + 1, span * ALPHABET
    return d


def load(fmt: str, path: str, options: Optional[dict] = None, *,
         expect_sha256: Optional[str] = None) -> Imported:
    """Read, check, select and scale a trace file. ValueError: one line."""
    opts = normalize_options(fmt, options)
    start = Fraction(str(opts["start_ms"]))
    skipped: list[int] = []
    try:
        digest = _sha256(path)
        if expect_sha256 is not None and digest != expect_sha256:
            raise ValueError(f"{path} changed since the recording started (SHA-256 differs)")
        # Public traces are in time order: read only up to the selection. A
        # file that is not is read again, whole, and sorted.
        with open(path, "rb") as f:
            found = select_in_order(parse_rows(fmt, _lines(f, path), path, skipped), start, opts["limit"])
        if found is None:
            skipped.clear()
            with open(path, "rb") as f:
                found = select_sorted(parse_rows(fmt, _lines(f, path), path, skipped), start, opts["limit"])
    except OSError as e:
        raise ValueError(f"{fmt}: cannot read {path}: {e.strerror or e}") from None
    t0, selected = found
    if t0 is None:
        raise ValueError(f"{path}: no requests")
    if not selected:
        raise ValueError(f"{path}: no request at or after --start-ms {opts['start_ms']}")
    token_scale = Fraction(str(opts["token_scale"]))
    time_scale = Fraction(str(opts["time_scale"]))
    iteration_ms = Fraction(str(opts["iteration_ms"]))
    block_size = int(opts["block_size"])
    first = selected[0].arrival_ms

    parent: list[int] = []
    sibling: list[int] = []
    children: dict[tuple[int, object], int] = {}
    count: list[int] = []  # children per node; index -1 (the root) kept apart
    root_children = 0

    def child(of: int, key: object) -> int:
        nonlocal root_children
        node = children.get((of, key))
        if node is None:
            node = len(parent)
            children[(of, key)] = node
            parent.append(of)
            if of < 0:
                sibling.append(root_children)
                root_children += 1
            else:
                sibling.append(count[of])
                count[of] += 1
            count.append(0)
        return node

    requests = []
    for row in selected:
        input_len = scale_tokens(row.input_len, token_scale)
        output_len = scale_tokens(row.output_len, token_scale)
        bounds = block_boundaries(block_size, token_scale, input_len, len(row.hash_ids) + 1)
        nodes: list[int] = []
        node = -1
        for j in range(len(bounds) - 1):
            if j < len(row.hash_ids):
                node = child(node, row.hash_ids[j])
            else:  # tokens the hash ids do not cover: unique to this row
                node = child(node, ("row", row.line))
                nodes.append(node)
                break
            nodes.append(node)
        arrival = (row.arrival_ms - first) * time_scale
        requests.append(Request(rid=f"{fmt}-{row.line}", line=row.line,
                                iteration=int(arrival / iteration_ms), arrival_ms=arrival,
                                input_len=input_len, output_len=output_len, nodes=tuple(nodes)))
    width = [_digits(n) for n in count]
    imported = Imported(fmt=fmt, path=path, sha256=digest, options=opts, requests=requests,
                        skipped_failed=len(skipped), parent=parent,
                        sibling=sibling, width=width, token_scale=token_scale, block_size=block_size)
    imported.root_width = _digits(root_children)
    imported.source_rows = selected
    _check_codes_fit(imported)
    return imported


def _code_width(imported: Imported, node: int) -> int:
    p = imported.parent[node]
    return imported.root_width if p < 0 else imported.width[p]


def _check_codes_fit(imported: Imported) -> None:
    """A block must hold the code that sets it apart from its siblings."""
    for request in imported.requests:
        bounds = imported.boundaries(request.input_len, len(request.nodes))
        for j, node in enumerate(request.nodes):
            last = j == len(request.nodes) - 1
            size = (request.input_len if last else bounds[j + 1]) - bounds[j]
            if size < _code_width(imported, node) and not last:
                raise ValueError(
                    f"{imported.path}:{request.line}: block {j} has {size} token(s) after scaling; "
                    f"its prefix has more than {ALPHABET ** size} different continuations, which "
                    f"need {_code_width(imported, node)} tokens to tell apart; use a larger --token-scale")


def _mix(x: int) -> int:
    """splitmix64: a well-spread hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def block_tokens(imported: Imported, node: int, size: int) -> list[int]:
    """The first `size` tokens of a trie node's block: its sibling code
    (least significant digit first), then a hash of the node's number."""
    width = _code_width(imported, node)
    code = imported.sibling[node]
    out = []
    for _ in range(min(width, size)):
        out.append(FIRST_TOKEN + code % ALPHABET)
        code //= ALPHABET
    if size > len(out):
        fill = random.Random(_mix(node + 1)).choices(_POPULATION, k=size - len(out))
        out += fill
    return out


_POPULATION = range(FIRST_TOKEN, VOCAB_SIZE)


def prompt_ids(imported: Imported, request: Request) -> list[int]:
    bounds = imported.boundaries(request.input_len, len(request.nodes))
    ids: list[int] = []
    last = len(request.nodes) - 1
    for j, node in enumerate(request.nodes):
        # a row's own tail (tokens its hash ids do not cover) runs to the end
        end = bounds[j + 1] if j < last else request.input_len
        ids += block_tokens(imported, node, end - bounds[j])
    assert len(ids) == request.input_len, (len(ids), request.input_len)
    return ids


def description(imported: Imported) -> str:
    o = imported.options
    parts = [f"{len(imported.requests)} requests of {imported.fmt} trace {os.path.basename(imported.path)}"]
    knobs = [f"{k}={o[k]}" for k in ("start_ms", "limit", "time_scale", "token_scale", "iteration_ms")
             if o[k] != OPTION_DEFAULTS[k]]
    if imported.skipped_failed:
        knobs.append(f"{imported.skipped_failed} failed requests skipped")
    return parts[0] + (f" ({', '.join(knobs)})" if knobs else "")
