"""Which settings carry credentials, and what a trace holds in their place: a
trace gets shared. The scheduler writes headers through `redact`; `sgl-replay
redact` applies it again to a trace already written.

Shared by both sides of the process boundary: imports only sgl_replay.job.
"""

from __future__ import annotations

import re
from typing import Any

from sgl_replay.job import REDACTED

# Settings that carry credentials are written as REDACTED: a trace gets shared.
# In sglang 0.5.23: api_key, admin_api_key, ssl_keyfile_password, watermark_key,
# watermark_key_b (tests/test_record.py lists them from ServerArgs).
_SECRET_NAME = re.compile(
    r"(api_key|password|passwd|secret|credential|(^|_)key(_[a-z])?$|(^|_)(auth|access|hf|api|bearer)_token$)", re.I)
_URL_USERINFO = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]+@", re.I)


def redact(name: str, value: Any) -> Any:
    """`value`, or REDACTED when the setting's name says it is a credential or
    the value is a URL carrying a user name or password."""
    if value in (None, "", False):
        return value
    if _SECRET_NAME.search(name) or (isinstance(value, str) and _URL_USERINFO.match(value)):
        return REDACTED
    return value


def redact_argv(argv: list[str]) -> list[str]:
    """`argv` with the values of credential options (`--name=value` or
    `--name value`) written as REDACTED."""
    out, secret_next = [], False
    for arg in argv:
        if secret_next:
            out.append(REDACTED)
            secret_next = False
            continue
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            name = name.replace("-", "_")
            if eq:
                arg = f"--{arg[2:].partition('=')[0]}={redact(name, value)}"
            elif redact(name, "x") == REDACTED:
                secret_next = True
        out.append(arg)
    return out
