"""HTTP calls from inside the scheduler process: how a replay, a subset and a
public trace by the wall clock send inputs through the engine's own server."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Optional


class Poster:
    """HTTP calls from inside the scheduler process, on a background event
    loop with one long-lived session.

    - The session is never closed under a pending call: the tokenizer manager
      aborts a request whose client went away, by rid, and that abort would
      land in whatever run came next.
    - Every call gets a fresh connection: uvicorn drops keep-alive connections
      idle for 5 s, and a call sent on one that is closing never arrives."""

    def __init__(self) -> None:
        import aiohttp

        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="sgl-replay-poster", daemon=True).start()

        async def make_session():
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                         timeout=aiohttp.ClientTimeout(total=None))

        self._session = asyncio.run_coroutine_threadsafe(make_session(), self._loop).result()
        self._pending: set[Future] = set()
        self.errors: list[str] = []

    def post(self, url: str, body: Optional[dict]) -> None:
        async def call() -> None:
            try:
                async with self._session.post(url, json=body) as response:
                    await response.read()
            except Exception as e:  # noqa: BLE001 — reported with the input that went missing
                self.errors.append(f"{url}: {type(e).__name__}: {e}")

        future = asyncio.run_coroutine_threadsafe(call(), self._loop)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    @property
    def pending(self) -> int:
        return len(self._pending)


_poster: Optional[Poster] = None


def shared_poster() -> Poster:
    global _poster
    if _poster is None:
        _poster = Poster()
    return _poster
