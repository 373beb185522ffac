"""A temporary PostgreSQL cluster on 127.0.0.1 for tests that run Prefect's server on
PostgreSQL, the database Prefect recommends for production (docs/deploy.md).

`postgres_cluster()` runs Debian's `postgresql` binaries (`/usr/lib/postgresql/<version>/bin`,
else `initdb` on PATH): `initdb` with a random password in a fresh temporary directory,
`pg_ctl start` on a free port (TCP on 127.0.0.1 only, its socket in that directory), and at
the end `pg_ctl stop` and the directory removed. PostgreSQL refuses to run as root, so as
root the server's own commands run as the `postgres` user (`runuser`), which owns the
directory. `PostgresUnavailable` says why it cannot start here (no binaries, no such user);
a cluster that is there but fails to start is an error, with its log.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from prefect_llmorch.testing.server import free_port

USER = "postgres"  # the cluster's superuser, and the system user that runs it when we are root


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be started on this machine; `str()` says why and how to fix it."""


@dataclass
class Cluster:
    port: int
    password: str
    bin: Path
    directory: Path  # data/, the socket, server.log

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of `database` for Prefect (`PREFECT_API_DATABASE_CONNECTION_URL`)."""
        return f"postgresql+asyncpg://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database `name` (letters, digits, `_`); return its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _")
        env = {**os.environ, "PGPASSWORD": self.password}  # a client over TCP: any user may run it
        _run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name], env=env)
        return self.url(name)

    @property
    def log(self) -> Path:
        return self.directory / "server.log"


def find_bin() -> Path:
    """The directory of `initdb` and `pg_ctl`: the newest of Debian's, else the one on PATH."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb): neither /usr/lib/postgresql/<version>/bin nor PATH has them; "
        "install them with `apt-get install postgresql`"
    )


def _as_owner() -> list[str]:
    """The command prefix that runs the server's commands as a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(USER)
    except KeyError:
        raise PostgresUnavailable(f"running as root, and there is no {USER!r} user to run PostgreSQL as (PostgreSQL refuses root)") from None
    prefix = ["runuser", "-u", USER, "--"]
    try:
        check = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise PostgresUnavailable(f"running as root, and there is no `runuser` to run PostgreSQL as {USER!r}") from None
    if check.returncode != 0:
        raise PostgresUnavailable(f"`runuser -u {USER}` does not work here: {check.stderr.strip()}")
    return prefix


def _run(cmd: list[str], log: Path | None = None, **kwargs) -> None:  # noqa: ANN003
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, **kwargs)
    if out.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-2000:]}{out.stderr[-2000:]}{tail}")


@contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    """A fresh cluster on a free port of 127.0.0.1 until the block ends; then stopped and removed."""
    bin_ = find_bin()
    owner = _as_owner()
    directory = Path(tempfile.mkdtemp(prefix="llmorch-pg-"))
    data = directory / "data"
    password = secrets.token_hex(16)
    cluster = Cluster(free_port(), password, bin_, directory)
    started = False
    try:
        (directory / "password").write_text(password + "\n")
        if owner:
            user = pwd.getpwnam(USER)
            for path in (directory, directory / "password"):
                os.chown(path, user.pw_uid, user.pw_gid)
        # cwd: the server's user may not enter ours (root's home).
        run = dict(cwd=directory, log=cluster.log)
        _run([*owner, str(bin_ / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={directory / 'password'}",
              "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"], **run)
        started = True
        # Its own session: the terminal's Ctrl-C (sent to the test's process group) is not its.
        _run([*owner, str(bin_ / "pg_ctl"), "-D", str(data), "-l", str(cluster.log), "-w", "-t", "60",
              "-o", f"-h 127.0.0.1 -p {cluster.port} -k {directory}", "start"], start_new_session=True, **run)
        yield cluster
    finally:
        if started:
            _stop(owner, bin_, data)
        shutil.rmtree(directory, ignore_errors=True)


def _stop(owner: list[str], bin_: Path, data: Path) -> None:
    """`pg_ctl stop -m fast`; if the postmaster outlives it, kill it by the pid in its pid file."""
    subprocess.run([*owner, str(bin_ / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"],
                   capture_output=True, timeout=60, cwd=data.parent, stdin=subprocess.DEVNULL)
    pidfile = data / "postmaster.pid"
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text().split()[0])
    try:
        os.kill(pid, signal.SIGKILL)  # its children (backends) exit when the postmaster dies
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


if __name__ == "__main__":  # .ci/run: can the tests on PostgreSQL run here? (exit 0 either way)
    try:
        with postgres_cluster() as cluster:
            print(f"CI: PostgreSQL ({cluster.bin}) starts here: the tests on PostgreSQL run")
    except PostgresUnavailable as exc:
        print(f"CI: PostgreSQL cannot be started here: {exc}; the tests on PostgreSQL will be skipped")
    except RuntimeError as exc:
        print(f"CI: PostgreSQL is installed but did not start; the tests on PostgreSQL will fail:\n{exc}")
