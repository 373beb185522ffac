"""The embedded Prefect server: one per process, in a session of its own, never outliving it.

Without `PREFECT_API_URL`, Prefect would start a temporary API server (uvicorn + SQLite) as a
child process on first use of the API. That child shares our process group, so a terminal's
Ctrl-C (SIGINT to the whole foreground group) stops it at the moment our run needs it most:
to record the cancelled states and publish the report. It also inherits our standard output
(a script's `| tee log` never closes while it runs on) and, started by two threads at once,
it started twice on one SQLite file.

`ensure_server()` starts the same app Prefect's temporary server runs
(`prefect.server.api.server:create_app`, UI off; wrapped by `host/app.py`, which tries a
request again when SQLite refused it as locked, instead of Prefect's client waiting 2 s), once
per process, under a lock in PREFECT_HOME (two processes on a fresh home would both run the
database migrations):

- in a new session (`start_new_session`): a signal to our process group never reaches it;
- with its output in `PREFECT_HOME/llmorch-server.log`, not ours;
- pointed at by this process: `PREFECT_API_URL` is set in the environment and Prefect's
  global settings are refreshed (`prefect.context.refresh_global_settings_context`), so every
  thread and every child process (compute workers) uses this one server;
- stopped when this process exits normally (the last stage of `host/process.PROCESS`'s
  exit: kept slots are given back before, through it), and by a watchdog, in a session of
  its own too, when this process is killed (`kill -9`);
- watched: if it dies under us (killed, out of memory), `server_gone()` says so (its pid, how
  it ended, its log), the callbacks of `when_gone` run at once (a run's `Execution` stops its
  calls), and a *tombstone* answers at its address: every request gets `410 Gone` with that
  message, at once. Without it, each of Prefect's clients that had connected would try its
  request again for about a minute (`PREFECT_CLIENT_MAX_RETRIES` 5, 2 + 4 + 8 + 16 + 32 s:
  a refused connection is retried once a client has connected), one request after another,
  so a run took minutes to end; a 410 is not retried. Only our own child's death does this:
  a busy server answering 503 is still retried as before. Later runs of this process fail at
  once (`ensure_server` raises `ServerGone`): the database may hold the flow run half done.

    server = ensure_server()      # None when PREFECT_API_URL names a server
    server.url, server.pid, server.seconds
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prefect_llmorch.host.interrupt import SIGNALS
from prefect_llmorch.host.process import PROCESS, Stage

__all__ = [
    "EmbeddedServer", "ServerGone", "embedded_server", "ensure_server", "reap_when_gone", "server_gone", "serves",
    "server_instance", "server_key", "start_ephemeral_server", "when_gone",
]

logger = logging.getLogger("prefect_llmorch.host.server")

#: The app factory the embedded server runs: Prefect's (`prefect.server.api.server:create_app`,
#: what its temporary server runs), trying a request again when SQLite refused it as locked.
SERVER_APP = "prefect_llmorch.host.app:create_app"

# Runs in its own session (so a Ctrl-C or a kill of our process group spares it): waits for
# the parent to exit, then ends each server process that is still the one it was told about
# (same pid and creation time, so a recycled pid is never killed).
_WATCHDOG = r"""
import os, select, signal, sys, time
import psutil
parent = int(sys.argv[1])
targets = [tuple(map(float, a.split(":"))) for a in sys.argv[2:]]
try:
    fd = os.pidfd_open(parent)
    select.select([fd], [], [])
except (AttributeError, OSError):  # no pidfd: poll
    while psutil.pid_exists(parent) and psutil.Process(parent).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.5)
procs = []
for pid, created in targets:
    try:
        p = psutil.Process(int(pid))
        if abs(p.create_time() - created) < 0.01:
            procs.append(p)
    except psutil.Error:
        pass
for p in procs:
    try:
        p.terminate()
    except psutil.Error:
        pass
gone, alive = psutil.wait_procs(procs, timeout=5)
for p in alive:
    try:
        p.kill()
    except psutil.Error:
        pass
"""


@dataclass(frozen=True)
class EmbeddedServer:
    """The Prefect API server this process started: its URL, pid and how long the start took."""

    url: str
    pid: int
    seconds: float
    log: Path

    @property
    def pids(self) -> tuple[int, ...]:
        return (self.pid,)


class ServerGone(RuntimeError):
    """This process's embedded Prefect server died under it: nothing more can be recorded."""


class _Embedded:
    """This process's embedded server (held by `PROCESS`): the server, its process, whether
    it died under us and whom to tell; and the TLS contexts of `api_client`'s clients."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.server: EmbeddedServer | None = None
        self.process: subprocess.Popen[bytes] | None = None
        #: set once the embedded server died under us (not stopped by us): what to tell the user
        self.gone: ServerGone | None = None
        #: told at once when it dies (`when_gone`): each run's `Execution` stops its calls
        self.on_gone: dict[int, Callable[[ServerGone], None]] = {}
        #: (skip verification, CA file) -> context: Prefect builds one per client, loading the
        #: CA bundle, for each run's records
        self.tls: dict[tuple[bool, str | None], Any] = {}

    def stop(self) -> None:
        """Stop the server this process started (at exit: kept slots were given back first).
        Not under `lock`: a thread still starting a server at exit must not hold the exit."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        from prefect_llmorch.host.app import DRAIN_SECONDS

        proc.terminate()  # uvicorn's graceful shutdown: Prefect's services record what they were sent first
        try:
            proc.wait(timeout=DRAIN_SECONDS + 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _embedded() -> _Embedded:
    return PROCESS.hold(_Embedded)


def embedded_server() -> EmbeddedServer | None:
    """The server `ensure_server` started in this process, if any."""
    return _embedded().server


def serves(url: object) -> bool:
    """Whether `url` is the API of this process's embedded server (one owner for the check:
    heartbeats, the records' wait, the guard's clearing and the death watch all ask it)."""
    server = _embedded().server
    return bool(url) and server is not None and str(url).rstrip("/").startswith(server.url.rstrip("/"))


def server_gone(url: str | None = None) -> ServerGone | None:
    """The error to raise when this process's embedded server died under it, else None; with
    `url`, only when that is the dead server's address (a run on another server goes on)."""
    embedded = _embedded()
    gone, server = embedded.gone, embedded.server
    if gone is None or server is None:
        return None
    if url is not None and not serves(url):
        return None
    return gone


def when_gone(callback: Callable[[ServerGone], None]) -> Callable[[], None]:
    """Call `callback(error)` (from the watcher's thread) when the embedded server dies, or at
    once if it is dead already; returns what cancels that."""
    embedded = _embedded()
    with embedded.lock:
        gone = embedded.gone
        if gone is None:
            key = id(callback)
            embedded.on_gone[key] = callback

            def forget() -> None:
                with embedded.lock:
                    embedded.on_gone.pop(key, None)

            return forget
    callback(gone)
    return lambda: None


def _how_it_ended(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _watch(proc: subprocess.Popen[bytes], server: EmbeddedServer, port: int) -> None:
    """Wait for the server process; if it died while still ours (not `stop`ped), record
    why, answer at its address with the tombstone, and tell `when_gone`'s callbacks."""
    embedded = _embedded()
    code = proc.wait()
    with embedded.lock:
        if embedded.process is not proc:  # stopped by us at exit, or replaced
            return
        gone = embedded.gone = ServerGone(
            f"Prefect's server went away: this process's embedded Prefect server (pid {server.pid}, {server.url}) "
            f"{_how_it_ended(code)} during the run; its log: {server.log}. Nothing more of this run can be recorded "
            "in Prefect; run it again (a new process starts a new server)"
        )
        callbacks = list(embedded.on_gone.values())
        embedded.on_gone.clear()
    _tombstone(port, str(gone))  # first: a client whose request was refused asks again in ~2 s
    logger.error("%s", gone)
    for callback in callbacks:
        try:
            callback(gone)
        except Exception as exc:  # one callback failing never keeps the others from running
            logger.debug("a server-gone callback failed: %s", exc)


def _tombstone(port: int, message: str) -> None:
    """Answer every request at the dead server's port with `410 Gone` and `message`, so
    Prefect's clients fail at once instead of retrying a refused connection for a minute."""
    import http.server

    body = json.dumps({"detail": message}).encode()

    class Gone(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:  # read what was sent: closing with unread data resets the connection (retried)
                self.rfile.read(length)
            self.send_response(410)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
            pass

    try:
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Gone)
    except OSError as exc:  # the port was taken meanwhile: clients then retry until they give up
        logger.warning("could not answer at the dead Prefect server's port %s (%s): Prefect's requests "
                       "may take a minute each to fail", port, exc)
        return
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True, name="llmorch-server-gone").start()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reap_when_gone(pids: list[int]) -> subprocess.Popen[bytes] | None:
    """Start a watchdog that ends `pids` (and only those processes) when this process exits."""
    import psutil

    targets = []
    for pid in pids:
        try:
            targets.append(f"{pid}:{psutil.Process(pid).create_time()!r}")
        except psutil.Error:
            continue
    if not targets:
        return None
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), *targets],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def _home() -> Path:
    from prefect.settings import get_current_settings

    home = Path(get_current_settings().home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"the embedded Prefect server exited with code {proc.returncode} while starting "
                                   f"(its log: {log}):\n{tail}")
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the embedded Prefect server did not answer within {timeout:.0f} s (its log: {log}); "
                                   "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or set PREFECT_API_URL")
            time.sleep(0.05)


def ensure_server() -> EmbeddedServer | None:
    """Start this process's embedded Prefect server, once, when no `PREFECT_API_URL` is set.

    Returns None when a server is configured (nothing to start), else the server (the same
    one on every call). Raises `RuntimeError` when it cannot start, with its log's tail.
    """
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, get_current_settings

    embedded = _embedded()
    with embedded.lock:
        if embedded.gone is not None and serves(get_current_settings().api.url):
            # its database may hold a run half done; a new process starts a new server
            raise ServerGone(str(embedded.gone))
        if embedded.server is not None and embedded.process is not None and embedded.process.poll() is None:
            return embedded.server
        if get_current_settings().api.url:
            return None
        import fcntl

        import prefect.context

        t0 = time.perf_counter()
        home = _home()
        log = home / "llmorch-server.log"
        # Serialised per PREFECT_HOME: two servers starting on one fresh SQLite file both
        # run Prefect's migrations, and one fails.
        with open(home / "llmorch-server.lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                port = _free_port()
                url = f"http://127.0.0.1:{port}/api"
                env = {
                    **os.environ,
                    **get_current_settings().to_environment_variables(exclude_unset=True),
                    # what Prefect's own temporary server runs with: no UI, no background services
                    "PREFECT_UI_ENABLED": "0",
                    "PREFECT__SERVER_EPHEMERAL": "1",
                    "PREFECT__SERVER_FINAL": "1",
                }
                env.pop("PREFECT_API_URL", None)
                # A Ctrl-C to the terminal's process group that lands between the fork and the
                # child's setsid killed the server as it started: the signals are blocked across
                # the fork (here they stay pending, not lost), and the server discards what
                # reached it before it had its own session (`host/app.create_app`).
                blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
                try:
                    with open(log, "ab") as out:
                        proc = subprocess.Popen(
                            [sys.executable, "-m", "uvicorn", "--factory", SERVER_APP, "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "error", "--lifespan", "on"],
                            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                            start_new_session=True, close_fds=True,
                        )
                except BaseException:
                    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                    raise
                try:
                    # A Ctrl-C that came while they were blocked is raised by this call: inside
                    # the `try`, so the server it interrupts is killed, not left with no watchdog.
                    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                    reap_when_gone([proc.pid])
                    _wait_healthy(proc, url, log, float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
                except BaseException:  # a Ctrl-C while it starts (before the watchdog has it): not left behind
                    proc.kill()
                    raise
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
        embedded.process = proc
        server = embedded.server = EmbeddedServer(url=url, pid=proc.pid, seconds=time.perf_counter() - t0, log=log)
        threading.Thread(target=_watch, args=(proc, server, port), daemon=True, name="llmorch-server-watch").start()
        PROCESS.at_exit(Stage.SERVER, embedded.stop)
        os.environ["PREFECT_API_URL"] = url
        prefect.context.refresh_global_settings_context()
        return server


def start_ephemeral_server() -> EmbeddedServer | None:
    """`ensure_server()` (the name the CLI has used)."""
    return ensure_server()


def api_client() -> Any:
    """A new sync Prefect client of the current API (`get_client(sync_client=True)`, to be
    entered), for a thread with no flow run's client to share: its TLS context is built once
    per TLS settings, as Prefect's client builds it (verification off when
    `PREFECT_API_TLS_INSECURE_SKIP_VERIFY`, else `PREFECT_API_SSL_CERT_FILE` or certifi's
    bundle). Prefect builds a new one per client, loading the CA bundle: ~25 ms of the
    process's CPU for each run's records sent after its answer."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY

    skip = bool(PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value())
    key = (skip, None if skip else PREFECT_API_SSL_CERT_FILE.value())
    contexts = _embedded().tls
    context = contexts.get(key)
    if context is None:
        context = contexts.setdefault(key, _tls_context(*key))
    return get_client(sync_client=True, httpx_settings={"verify": context})


def _tls_context(skip_verify: bool, cert_file: str | None) -> Any:
    import ssl

    if skip_verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    import certifi

    return ssl.create_default_context(cafile=cert_file or certifi.where())


def server_key() -> str:
    """Which Prefect API this process talks to now: its URL, or "ephemeral" (Prefect's default);
    the key of what is remembered per server (kept slots, the cost history)."""
    from prefect.settings import get_current_settings

    return str(get_current_settings().api.url or "ephemeral")


def server_instance(url: str) -> str:
    """Which server answers at `url`: the URL, and the pid when it is this process's embedded
    server. Two embedded servers of one PREFECT_HOME may use the same port one after the
    other; leases live in the memory of the one that granted them."""
    mine = _embedded().server
    return f"{url}#pid={mine.pid}" if mine is not None and serves(url) else url
