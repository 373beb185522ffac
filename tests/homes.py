"""PREFECT_HOMEs for tests that start the embedded server in a subprocess.

A server on a fresh PREFECT_HOME first runs Prefect's database migrations: ~10 s of every
such start, in each of ~25 tests. `migrated_home` gives a test its own home holding a copy
of a database migrated once per session, so its server starts in seconds; the test still
has its own database and ledger. A user's first run (a fresh home) stays tested: CI's
installed-wheel step (tests/test_wheel.py), and tests that call the helpers without it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

_template: Path | None = None


def _migrated() -> Path:
    """The session's migrated database (created on first use)."""
    global _template
    if _template is None:
        home = Path(tempfile.mkdtemp(prefix="llmorch-template-home-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
        env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "server", "database", "upgrade", "-y"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        single = home / "template.db"
        with sqlite3.connect(home / "prefect.db") as src, sqlite3.connect(single) as dst:
            src.backup(dst)  # one file: the WAL folded in
        _template = single
    return _template


def migrated_home(home: Path) -> Path:
    """`home`, created, with a copy of the session's migrated database as its `prefect.db`
    (unless it has one). Returns `home`."""
    home.mkdir(parents=True, exist_ok=True)
    db = home / "prefect.db"
    if not db.exists():
        db.write_bytes(_migrated().read_bytes())
    return home
