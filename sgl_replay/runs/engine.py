"""Start and stop the real SGLang engine in scripted-runtime mode, from the
process that drives it.

The engine is sglang's own HTTP server with SGLANG_TEST_SCRIPTED_RUNTIME set:
its scheduler runs one loop iteration per `yield` of a script that the
scheduler hook imports and drives. This module owns the process: it starts it
in a session of its own (a terminal's Ctrl-C reaches only us), notices a
death within a poll interval and shows the log's last lines, and stops the
whole process tree in about a second (upstream's shutdown waits 60 s).

The parent imports sglang only for the harness's message classes (the
engine's replies, `run_script`, `stop`), not at import: a CLI that reads
traces stays quick. A start imports them in a thread while the engine starts.
The engine's own main process is sgl_replay.runs.child; the embedded model
it loads is sgl_replay.runs.embedded_model; EnginePool (sgl_replay.runs.pool)
shares engines by configuration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

from sgl_replay.job import ACTIVE_ENV
from sgl_replay.runs.child import EXIT_BAD_ENGINE_ARGS
from sgl_replay.runs.embedded_model import EMBEDDED_MODEL_CONFIG, write_model_dir
from sgl_replay.runs.errors import BadEngineArgs, EngineDied, EngineError, ScriptFailed, ScriptTimedOut

ENGINE_READY_TIMEOUT_S = 300.0  # start-up plus sglang's warmup request
POLL_INTERVAL_S = 0.2  # how often a wait checks that the engine is alive
READY_POLL_S = 0.01  # the last steps of a start: cheap checks, milliseconds apart
STOP_GRACE_S = 1.0  # after Shutdown, before the process tree is killed
LOG_TAIL_LINES = 12
# What sglang logs (and otherwise ignores) when a plugin breaks.
PLUGIN_FAILURE_MARKERS = ("Failed to load plugin", "Failed to execute general plugin",
                          "Failed to apply hooks to")
# The HTTP port is picked free but bound by the server only ~25 s later; when
# another process took it meanwhile, uvicorn logs this and the engine hangs in
# warmup for 120 s before dying. Seen in the test suite: start again on a new port.
PORT_TAKEN_MARKER = "error while attempting to bind on address"
PORT_ATTEMPTS = 3
WORKER_FAILURE_MARKER = "hit an exception"  # "Scheduler hit an exception: <traceback>"
# The command lines of sglang's workers before they name themselves.
WORKER_CMDLINES = ("multiprocessing.spawn import spawn_main", "multiprocessing.forkserver import main")
KEEP_ALIVE_S = 24 * 3600

# What the embedded CPU engine needs (README, "Facts about sglang 0.5.23");
# every key can be overridden with --engine-arg. max_total_tokens pins the KV pool so that
# scheduling does not depend on how much memory the machine has; a small
# chunked_prefill_size makes chunked prefill visible on short prompts.
DEFAULT_ENGINE_ARGS: dict[str, Any] = {
    "device": "cpu",
    "load_format": "dummy",
    "skip_tokenizer_init": True,
    "attention_backend": "torch_native",
    "disable_cuda_graph": True,
    "disable_prefill_cuda_graph": True,
    "kv_canary": "none",
    "kv_canary_sweep_interval": 0,
    "dtype": "float32",
    "sampling_backend": "token_oracle",
    "max_total_tokens": 16384,
    "chunked_prefill_size": 256,
    "random_seed": 0,
}

# Environment knobs that change scheduling or token choice; recorded in every
# trace header and set again on replay.
DEFAULT_ENGINE_ENV: dict[str, str] = {
    "SGLANG_KV_CANARY_ENABLE_TOKEN_ORACLE": "1",
    # The wheel lacks the Rust radix tree core's sources the harness inspects.
    "SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND": "python",
}

# What a device needs to run at all; a --device override brings its own.
DEVICE_ARGS: dict[str, dict[str, Any]] = {
    "cpu": {"device": "cpu", "attention_backend": "torch_native", "disable_cuda_graph": True},
    "cuda": {"device": "cuda", "attention_backend": "triton"},
}


def device_args(device: str) -> dict[str, Any]:
    return dict(DEVICE_ARGS.get(device, {"device": device}))


class _PortTaken(EngineError):
    """The HTTP port went to another process before the server bound it."""


class _DiedSilently(EngineError):
    """A worker vanished during start-up without logging why (sglang's
    workers log WORKER_FAILURE_MARKER when they raise): killed from outside,
    by something this process cannot see (the OOM killer on a crowded
    machine, say). Tried once more; a second silent death is reported."""


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Everything that makes one engine differ from another."""

    engine_args: dict[str, Any]
    env: dict[str, str]
    # config.json of the model when sgl-replay writes the model itself
    model_config: Optional[dict[str, Any]] = None
    # directories put first on the engine's import path (plugins, scripts)
    sys_path: tuple[str, ...] = ()

    @classmethod
    def embedded(cls, *, engine_args: Optional[dict] = None, env: Optional[dict] = None,
                 model_path: Optional[str] = None) -> "EngineConfig":
        args = {**DEFAULT_ENGINE_ARGS, **(engine_args or {})}
        if model_path is not None:
            args["model_path"] = model_path
        model_config = None if "model_path" in args else dict(EMBEDDED_MODEL_CONFIG)
        return cls(engine_args=args, env={**DEFAULT_ENGINE_ENV, **(env or {})},
                   model_config=model_config)

    def key(self) -> str:
        """Equal keys mean one engine can serve both configurations."""
        parts: list[Any] = [self.engine_args, self.env, self.model_config]
        if self.sys_path:  # absent when empty: a configuration without one keeps its key
            parts.append(list(self.sys_path))
        blob = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def launch_args(self) -> dict[str, Any]:
        args = dict(self.engine_args)
        if self.model_config is not None:
            args["model_path"] = write_model_dir(self.model_config)
        return args


# A unix socket's path must fit in sockaddr_un (108 bytes on Linux).
_SOCKET_PATH_MAX = 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Engine:
    """One running engine. Use `Engine.start(config)` as a context manager."""

    def __init__(self, config: EngineConfig, process: subprocess.Popen, log_path: Path,
                 work_dir: Path, zmq_ctx, sock, http_port: int) -> None:
        self.config = config
        self._control_dir: Optional[Path] = None  # the socket's own directory, when the work dir's path is too long
        self._process = process
        self.log_path = log_path
        self._work_dir = work_dir
        self._zmq_ctx = zmq_ctx
        self._sock = sock
        self.http_port = http_port
        self.base_url = f"http://127.0.0.1:{http_port}"
        self._stopped = False
        self._keep_work_dir = False  # its log is named in an error the user reads
        self._workers: dict[int, str] = {}  # sglang's named worker processes seen: pid -> title
        self.died_worker: Optional[str] = None

    # ----------------------------------------------------------------- start
    @classmethod
    def start(cls, config: EngineConfig, *, timeout_s: float = ENGINE_READY_TIMEOUT_S,
              extra_sys_path: tuple[str, ...] = ()) -> "Engine":
        silent_deaths = 0
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                return cls._launch(config, timeout_s, extra_sys_path)
            except _PortTaken as e:
                if attempt == PORT_ATTEMPTS:
                    raise EngineError(f"{e} ({attempt} attempts)") from None
            except _DiedSilently as e:
                silent_deaths += 1
                if silent_deaths == 2 or attempt == PORT_ATTEMPTS:
                    raise EngineError(str(e)) from None
        raise AssertionError("the last attempt returns or raises")

    @classmethod
    def _launch(cls, config: EngineConfig, timeout_s: float, extra_sys_path: tuple[str, ...]) -> "Engine":
        import zmq

        _import_harness_messages()
        work_dir = Path(tempfile.mkdtemp(prefix="sgl-replay-engine-"))  # 0700
        log_path = work_dir / "engine.log"
        # The control channel (pickled harness messages) is a unix socket in
        # a 0700 directory: only this user can connect, so what arrives there
        # comes from the engine we started (a TCP port would be open to every
        # local user during the ~25 s start-up).
        control_dir = work_dir
        if len(str(work_dir / "control")) > _SOCKET_PATH_MAX:
            control_dir = Path(tempfile.mkdtemp(prefix="sglr-", dir="/tmp"))
        control = f"ipc://{control_dir / 'control'}"
        zmq_ctx = zmq.Context()
        sock = zmq_ctx.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(control)
        http_port = _free_port()

        launch = config.launch_args()
        launch.update(host="127.0.0.1", port=http_port)
        spec_path = work_dir / "spec.json"
        spec_path.write_text(json.dumps({"server_args": launch, "warmed": str(work_dir / "warmed")}))

        sys_path = [*config.sys_path, os.getcwd(), *extra_sys_path]
        env = dict(os.environ)
        env.update(config.env)
        env.update({
            ACTIVE_ENV: "1",
            "SGLANG_TEST_SCRIPTED_RUNTIME": "1",
            "SGLANG_TEST_SCRIPTED_RUNTIME_IPC_ADDR": control,
            "SGLANG_TEST_SCRIPTED_RUNTIME_OUT_OF_BAND_ERROR_PATH": str(work_dir / "oob.json"),
            "SGLANG_TEST_SCRIPTED_RUNTIME_SYS_PATH_ENTRY": os.getcwd(),
            # uvicorn drops idle keep-alive connections after 5 s; a call the
            # harness's HTTP poster sends on one that is closing never arrives
            # (aiohttp: "Server disconnected"), and the script times out.
            "SGLANG_TIMEOUT_KEEP_ALIVE": str(KEEP_ALIVE_S),
            "PYTHONPATH": os.pathsep.join(sys_path + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]),
            "PYTHONUNBUFFERED": "1",
        })
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "sgl_replay.runs.child", str(spec_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, cwd=os.getcwd())
        engine = cls(config, process, log_path, work_dir, zmq_ctx, sock, http_port)
        if control_dir != work_dir:
            engine._control_dir = control_dir
        try:
            engine._await_ready(timeout_s)
        except BaseException as e:
            engine._keep_work_dir = not isinstance(e, _PortTaken)
            engine.stop()
            raise
        return engine

    def _await_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._sock.poll(int(POLL_INTERVAL_S * 1000)):
            self._check_alive("during start-up")
            self._check_port_not_taken()
            if time.monotonic() > deadline:
                raise EngineError(f"engine did not become ready within {timeout_s:.0f}s; "
                                  f"log: {self.log_path}")
        reply = self._sock.recv_pyobj()
        if type(reply).__name__ != "HookReady":
            raise EngineError(f"engine sent {reply!r} instead of its ready handshake")
        # HookReady means the scheduler loop runs; the HTTP port may not be
        # bound yet, and every control primitive posts to it. The server's
        # warmup thread may still be about to send the scheduler its
        # FreezeGCReq: ready once the child says the thread is done
        # (sgl_replay.runs.child), so that the first script's reset pulls it.
        warmed = self._work_dir / "warmed"
        checked = time.monotonic()
        while not (warmed.exists() and _port_open(self.http_port)):
            if time.monotonic() - checked >= POLL_INTERVAL_S:
                self._check_alive("while binding its HTTP port")
                self._check_port_not_taken()
                checked = time.monotonic()
            if time.monotonic() > deadline:
                raise EngineError(f"engine HTTP port {self.http_port} not bound or warmup not done "
                                  f"within {timeout_s:.0f}s; log: {self.log_path}")
            time.sleep(READY_POLL_S)
        self._check_plugins()

    def _check_port_not_taken(self) -> None:
        if PORT_TAKEN_MARKER in self.log_path.read_text(errors="replace"):
            raise _PortTaken(f"engine HTTP port {self.http_port} was taken by another process")

    def _check_plugins(self) -> None:
        """sglang only logs a plugin that fails to import, run or hook. An
        engine missing part of the code under test does not run this
        revision: say so (exit 125) rather than compare without it."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        for k, line in enumerate(lines):
            if any(marker in line for marker in PLUGIN_FAILURE_MARKERS):
                cause = next((l.strip() for l in lines[k + 1:k + 40] if "Error" in l and ":" in l), "")
                raise EngineError(f"sglang plugin failed in the engine: {line.split('] ', 1)[-1]}"
                                  + (f" ({cause})" if cause else ""))

    def _check_alive(self, when: str, died: type = EngineError) -> None:
        code = self._process.poll()
        if code is None and self._tree_alive():
            return
        if code == EXIT_BAD_ENGINE_ARGS:
            raise BadEngineArgs(f"bad engine argument: {self.log_tail(1)}")
        who = self.died_worker or f"the server process (exit {code})"
        if (died is EngineError and self.died_worker
                and WORKER_FAILURE_MARKER not in self.log_path.read_text(errors="replace")):
            died = _DiedSilently
        raise died(f"engine died {when}: {who} exited (log: {self.log_path}); "
                   f"last log lines:\n{self.log_tail()}")

    def _tree_alive(self) -> bool:
        """launch_server can wait on for minutes after its scheduler died
        (seen: start-up blocks on the scheduler's pipe). Its workers are
        multiprocessing children (spawned, or forked by the child's
        forkserver, which counts as one) that later name themselves
        (sglang::scheduler, sglang::detokenizer): once one was seen, its exit
        is the engine's death."""
        import psutil

        try:
            children = psutil.Process(self._process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return False
        running = set()
        for child in children:
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue
                running.add(child.pid)
                title = " ".join(child.cmdline())
                if title.startswith("sglang::") or any(marker in title for marker in WORKER_CMDLINES):
                    self._workers[child.pid] = title if title.startswith("sglang::") else (
                        self._workers.get(child.pid) or "a worker process (pid %d)" % child.pid)
            except psutil.NoSuchProcess:
                pass
        gone = [title for pid, title in self._workers.items()
                if pid not in running and not _pid_running(pid)]
        if gone:
            self.died_worker = gone[0]
        return not gone

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        keep = [l for l in text.splitlines() if l.strip()]
        return "\n".join(keep[-lines:]) if keep else "(empty log)"

    def last_error_line(self) -> str:
        """The line that best says why the engine died: the last exception line."""
        lines = [l.strip() for l in self.log_tail(200).splitlines()]
        for line in reversed(lines):
            if "Error" in line or "Exception" in line or line.startswith("raise "):
                return line
        return lines[-1] if lines else "(empty log)"

    # ----------------------------------------------------------------- run
    def run_script(self, fn_path: str, *args: Any, timeout_s: Optional[float] = None) -> None:
        """Run `module:function(ctx, *args)` as the scheduler's script; return
        when it finished. Raises ScriptFailed with the script's traceback,
        EngineDied when the engine died under it."""
        from sglang.test.scripted_runtime.io_struct import RunScript

        if self._stopped:
            raise EngineError("engine already stopped")
        self._sock.send_pyobj(RunScript(fn_path=fn_path, args=tuple(args)))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._sock.poll(int(POLL_INTERVAL_S * 1000)):
            self._check_alive(f"at script {fn_path}", died=EngineDied)
            if deadline is not None and time.monotonic() > deadline:
                raise ScriptTimedOut(f"script {fn_path} did not finish within {timeout_s:g}s")
        reply = self._sock.recv_pyobj()
        name = type(reply).__name__
        if name == "ScriptFailed":
            raise ScriptFailed(reply.traceback)
        if name != "ScriptSucceeded":
            raise EngineError(f"engine replied {reply!r} to {fn_path}")

    def alive(self) -> bool:
        return not self._stopped and self._process.poll() is None and self._tree_alive()

    # ----------------------------------------------------------------- stop
    def stop(self) -> None:
        """Stop the whole process tree: ask, wait STOP_GRACE_S, then kill."""
        if self._stopped:
            return
        self._stopped = True
        if self._process.poll() is not None or self.died_worker:
            self._keep_work_dir = True  # it died: its log is the evidence
        try:
            if self._process.poll() is None:
                try:
                    from sglang.test.scripted_runtime.io_struct import Shutdown

                    import zmq

                    self._sock.send_pyobj(Shutdown(), flags=zmq.NOBLOCK)
                except Exception:  # noqa: BLE001 — best effort; the kill follows
                    pass
                self._kill_tree(grace_s=STOP_GRACE_S)
        finally:
            self._sock.close(linger=0)
            self._zmq_ctx.term()
            if not self._keep_work_dir:
                shutil.rmtree(self._work_dir, ignore_errors=True)
            if self._control_dir is not None:
                shutil.rmtree(self._control_dir, ignore_errors=True)

    def _kill_tree(self, grace_s: float) -> None:
        import psutil

        try:
            root = psutil.Process(self._process.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        # The engine runs in its own session: one signal reaches every process.
        try:
            os.killpg(self._process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        psutil.wait_procs(alive, timeout=2.0)
        self._process.wait(timeout=2.0)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


_harness_import: Optional[threading.Thread] = None


def _import_harness_messages() -> None:
    """Import sglang's harness message classes in a thread, once per process.
    The engine's first reply is one of them, and unpickling it imports sglang
    (about 5 s on 2 cores) after the engine is ready; meanwhile the engine's
    own start-up imports in one process and leaves a core idle. A failed
    import is left for the reply's unpickling to report."""
    global _harness_import
    if _harness_import is not None or "sglang.test.scripted_runtime.io_struct" in sys.modules:
        return

    def run() -> None:
        try:
            import sglang.test.scripted_runtime.io_struct  # noqa: F401
        except Exception:  # noqa: BLE001 — raised again where the reply is read
            pass

    _harness_import = threading.Thread(target=run, name="sgl-replay-import-sglang", daemon=True)
    _harness_import.start()


def _pid_running(pid: int) -> bool:
    """A second look before calling a worker dead: a process list read while
    processes come and go can miss one that is alive."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
