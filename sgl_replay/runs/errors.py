"""What can go wrong with an engine sgl-replay starts, each error with the
exit status the CLI gives it."""

from __future__ import annotations


class EngineError(Exception):
    """The engine could not do what was asked; `exit_code` is for the CLI."""

    exit_code = 125


class BadEngineArgs(EngineError):
    exit_code = 2


class EngineDied(EngineError):
    exit_code = 1


class ScriptTimedOut(EngineError):
    """The script did not finish within its deadline; it is still running."""


class ScriptFailed(Exception):
    """The script raised inside the scheduler; carries its traceback."""

    def __init__(self, traceback: str) -> None:
        super().__init__(traceback.strip().splitlines()[-1] if traceback.strip() else "script failed")
        self.traceback = traceback
