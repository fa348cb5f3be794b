"""The README and docs/ show only commands that parse and links that lead
somewhere. Pure: reads the Markdown and click's command objects, starts
nothing."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from sgl_replay.cli import main

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# `sgl-replay ...`, `.venv/bin/sgl-replay ...`, after env assignments and
# the wrappers the pages use (`time`, `git bisect run`).
_INVOCATION = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:time\s+|git bisect run\s+)?(?:\S*/)?sgl-replay\s+(.*)$")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^\s*```")


def code_lines(text: str) -> list[str]:
    """Lines inside fenced code blocks, backslash continuations joined and
    shell comments dropped."""
    out, inside, pending = [], False, ""
    for line in text.splitlines():
        if _FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            continue
        line = pending + line.strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        out.append(re.sub(r"(^|\s)#.*$", "", line).strip())
    return out


def invocations(text: str) -> list[str]:
    """The argument part of every sgl-replay command in the code blocks; one
    line may chain several with && or ;."""
    found = []
    for line in code_lines(text):
        for part in re.split(r"&&|;|\|\|", line):
            m = _INVOCATION.match(part.strip())
            if m:
                found.append(m.group(1))
    return found


_INLINE = re.compile(r"`([^`]*sgl-replay [^`]*)`")


def inline_invocations(text: str) -> list[str]:
    """The argument part of every `sgl-replay ...` code span outside the
    code blocks (prose and tables)."""
    found, inside = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            inside = not inside
        elif not inside:
            for span in _INLINE.findall(line):
                m = _INVOCATION.match(span)
                if m:
                    found.append(m.group(1))
    return found


def _option_names(command: click.Command) -> set[str]:
    params = command.get_params(click.Context(command, info_name=command.name))
    return {o for p in params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)}


def problems(args: str) -> list[str]:
    """What is wrong with `sgl-replay ARGS` as the pages show it: an unknown
    command, or an option the command does not have. Placeholders in
    brackets and `a|b` alternatives are fine; their options are checked too."""
    plain = args.replace("[", " ").replace("]", " ").replace("|", " ")
    try:
        words = shlex.split(plain)
    except ValueError:  # an apostrophe in prose around the command
        words = plain.split()
    if not words:
        return ["no command"]
    if words[0].startswith("-"):
        name, rest, known = "sgl-replay", words, _option_names(main)
    elif words[0] in main.commands:
        name, rest, known = words[0], words[1:], _option_names(main.commands[words[0]])
    elif words[0] == "COMMAND":  # the placeholder: what every command takes
        name, rest = "every command", words[1:]
        known = set.intersection(*(_option_names(c) for c in main.commands.values()))
    else:
        return [f"unknown command {words[0]!r}"]
    flags = [w.split("=", 1)[0] for w in rest if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", w)]
    return [f"{name} has no option {flag}" for flag in flags if flag not in known]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    inside, out = False, set()
    for line in page.read_text().splitlines():
        if _FENCE.match(line):
            inside = not inside
        elif not inside and line.startswith("#"):
            out.add(_slug(line.lstrip("#")))
    return out


def broken_links(page: Path, being_written: frozenset[Path] = frozenset(), root: Path = ROOT) -> list[str]:
    """Relative links of a page whose file (or heading) does not exist."""
    out = []
    for target in _LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # a URL
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page.resolve()
        if not dest.exists():
            if dest not in {p.resolve() for p in being_written}:
                out.append(f"{page.relative_to(root)}: {target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            out.append(f"{page.relative_to(root)}: {target} (no such heading)")
    return out


# ------------------------------------------------------------------ tests
def test_the_pages_show_commands():
    assert len(PAGES) > 10
    assert len([a for p in PAGES for a in invocations(p.read_text())]) > 40


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_shown_parses(page):
    text = page.read_text()
    bad = [f"sgl-replay {a}: {p}" for a in invocations(text) + inline_invocations(text) for p in problems(a)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_somewhere(page):
    assert not broken_links(page)


def test_the_command_table_lists_every_command_and_only_commands():
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| `sgl-replay ([a-z][\w-]*)", readme, re.MULTILINE))
    assert listed == set(main.commands)


def test_the_readme_holds_the_setup_commands_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    install = next(line for line in ci if line.startswith("python3 -m venv"))
    install = install.split(" || ")[0]  # .ci/run's own failure handling
    tests = next(line for line in ci if line.startswith(".venv/bin/python -m pytest"))
    shown = code_lines((ROOT / "README.md").read_text())
    assert install in shown and tests in shown


def test_a_made_up_command_or_option_or_link_is_caught(tmp_path):
    assert problems("check run.sglt --level full --engine-arg a=1 -o x.sglt") == []
    assert problems("check run.sglt --no-such-flag") == ["check has no option --no-such-flag"]
    assert problems("record w -o x --clock=wall --clock-skew 3") == ["record has no option --clock-skew"]
    assert problems("frobnicate run.sglt") == ["unknown command 'frobnicate'"]
    assert problems("--help") == [] and problems("--nope") == ["sgl-replay has no option --nope"]
    assert problems("COMMAND --help") == [] and problems("COMMAND --json") == ["every command has no option --json"]
    assert inline_invocations("run `sgl-replay stats T --jsn` or `sgl-replay: a log line`") == ["stats T --jsn"]
    assert invocations("```\nSGLREPLAY_DEBUG=1 .venv/bin/sgl-replay diff a b --json \\\n  --bogus   # x\n```") == \
        ["diff a b --json --bogus"]
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A heading\n")
    page.write_text("[a](there.md) [b](there.md#a-heading) [c](missing.md) [d](there.md#nope) "
                    "[e](https://example.com/x.md) [f](pending.md)\n")
    assert broken_links(page, frozenset({tmp_path / "pending.md"}), root=tmp_path) == [
        "page.md: missing.md (no such file)", "page.md: there.md#nope (no such heading)"]
