"""Test toolbox and cluster helper for the Dask runner (`tests/test_dask.py`).

Dask worker processes import this module (PYTHONPATH includes the repo root and `tests/`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psutil

from prefect_llmorch import Toolbox, compute
from toolboxes import crunch, fetch

ROOT = Path(__file__).resolve().parent.parent


@compute(cost=0.5)
def stamp(seconds: float = 0.5, marker: str = "") -> dict:
    """Burn `seconds` of CPU; return where and when: pid, wall-clock start and end.

    With `marker` (a directory), first create `<marker>/<pid>-<start>` so a test can see
    the call has started on that process.
    """
    start = time.time()
    if marker:
        Path(marker, f"{os.getpid()}-{start:.6f}").touch()
    t = time.thread_time()
    while time.thread_time() - t < seconds:
        pass
    return {"pid": os.getpid(), "start": start, "end": time.time()}


@compute
def reject(value: object) -> object:
    """Fails on the Dask worker: a tool's own exception."""
    raise ValueError(f"cannot use {value!r}")


@compute
def leave(code: int) -> int:
    """Exits on the Dask worker (`sys.exit`): a tool's SystemExit."""
    raise SystemExit(code)


toolbox = Toolbox(stamp, crunch, fetch, reject, leave)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    return env


def _dask_cli() -> list[str]:
    exe = Path(sys.executable).with_name("dask")
    return [str(exe)] if exe.exists() else [shutil.which("dask") or "dask"]


def kill_tree(proc: subprocess.Popen | psutil.Process) -> None:
    """Kill a process and all its descendants (a `dask worker` runs its worker under a nanny)."""
    try:
        p = psutil.Process(proc.pid)
        procs = p.children(recursive=True) + [p]
    except psutil.NoSuchProcess:
        return
    for q in procs:
        try:
            q.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


class DaskCLICluster:
    """A `dask scheduler` and `dask worker` processes started with the documented commands."""

    def __init__(
        self, n_workers: int = 2, processors_per_worker: int = 1, nanny: bool = True, resources: str = "",
        threads: int | None = None,
    ) -> None:
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.n_workers = n_workers
        self.processors_per_worker = processors_per_worker
        self.nanny = nanny
        self.resources = resources  # more worker resources, e.g. "gpu_mem_gb=40"
        self.threads = threads or processors_per_worker  # more threads than processors: only resources bound them
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def _spawn(self, args: list[str], name: str, logdir: Path) -> subprocess.Popen:
        log = logdir / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            return subprocess.Popen(_dask_cli() + args, env=worker_env(), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    def start(self, logdir: Path, timeout: float = 90.0) -> None:
        from distributed import Client

        self.scheduler = self._spawn(
            ["scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"], "scheduler", logdir
        )
        for i in range(self.n_workers):
            args = [
                "worker", self.address, "--host", "127.0.0.1", "--nthreads", str(self.threads),
                "--resources", ",".join(filter(None, [f"processor={self.processors_per_worker}", self.resources])),
                "--no-dashboard",
                "--name", f"w{i}",
            ]
            if not self.nanny:
                args.append("--no-nanny")
            self.workers.append(self._spawn(args, f"worker{i}", logdir))
        deadline = time.monotonic() + timeout
        while True:  # the scheduler may not listen yet: retry connecting until the deadline
            try:
                with Client(self.address, timeout=5, set_as_default=False) as c:
                    c.wait_for_workers(self.n_workers, timeout=max(1.0, deadline - time.monotonic()))
                return
            except (OSError, TimeoutError):
                if time.monotonic() > deadline or self.scheduler.poll() is not None:
                    raise RuntimeError(f"Dask cluster did not start; see {logdir}") from None

    def worker_pids(self) -> dict[int, int]:
        """pid of each worker's *worker* process (under the nanny) -> index of its `dask worker`."""
        out = {}
        for i, w in enumerate(self.workers):
            try:
                p = psutil.Process(w.pid)
                for q in [p] + p.children(recursive=True):
                    out[q.pid] = i
            except psutil.NoSuchProcess:
                pass
        return out

    def stop(self) -> None:
        for w in self.workers:
            kill_tree(w)
        if self.scheduler is not None:
            kill_tree(self.scheduler)


@contextmanager
def dask_cli_cluster(logdir: Path, **kwargs) -> Iterator[DaskCLICluster]:
    cluster = DaskCLICluster(**kwargs)
    try:
        cluster.start(logdir)
        yield cluster
    finally:
        cluster.stop()
