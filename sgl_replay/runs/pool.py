"""Engines shared by configuration across the runs of one process."""

from __future__ import annotations

from sgl_replay.runs.engine import Engine, EngineConfig


class EnginePool:
    """Engines by configuration, started on first use and shared after: a
    test session or a golden run starts one engine per distinct config. At
    most `max_live` run at once (an engine holds about 2 GB); the least
    recently used one stops to make room."""

    def __init__(self, extra_sys_path: tuple[str, ...] = (), max_live: int = 3) -> None:
        self._engines: dict[str, Engine] = {}  # in order of last use
        self._extra_sys_path = extra_sys_path
        self.max_live = max_live
        self.starts = 0
        self.restarts = 0  # starts of a configuration started before (stopped to make room, or dead)
        self._started: set[str] = set()

    def get(self, config: EngineConfig) -> Engine:
        key = config.key()
        engine = self._engines.pop(key, None)
        if engine is not None and not engine.alive():
            engine.stop()
            engine = None
        if engine is None:
            while len(self._engines) >= self.max_live:
                self._engines.pop(next(iter(self._engines))).stop()
            engine = Engine.start(config, extra_sys_path=self._extra_sys_path)
            self.starts += 1
            self.restarts += key in self._started
            self._started.add(key)
        self._engines[key] = engine
        return engine

    def close(self) -> None:
        for engine in self._engines.values():
            engine.stop()
        self._engines.clear()
