"""prefect_llmorch/llm/local.py without starting the model: what `start`, `stop` and
`status` do around it (ports, pid files), and, with the extra installed, the assembly of the
model file from the part wheels (1.1 GB written twice: marked real_llm)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from prefect_llmorch.llm import local


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMORCH_LOCAL_LLM_DIR", str(tmp_path))
    return tmp_path


def test_start_refuses_a_port_held_by_something_else_without_touching_the_model(cache: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(local.LocalLLMUnavailable, match=f"port {port} .* is taken by something that is not"):
            local.start(port)
    assert not (cache / local.MODEL_FILE).exists()


def test_stop_never_signals_a_process_that_is_not_our_server(cache: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (cache / "server-4321.pid").write_text(f"{other.pid}\n")  # e.g. a pid reused by the system
        assert local.stop(4321) is None
        assert other.poll() is None  # still running
        assert not (cache / "server-4321.pid").exists()  # the stale file is gone
    finally:
        other.kill()
        other.wait()


def test_status_of_a_port_where_nothing_answers(cache: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    info = local.status(port)
    assert info["answers"] is False and info["pid"] is None and info["base_url"] == f"http://127.0.0.1:{port}/v1"
    out = subprocess.run([sys.executable, "-m", "prefect_llmorch.cli", "local-llm", "status", "--port", str(port)],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "LLMORCH_LOCAL_LLM_DIR": str(cache)})
    assert out.returncode == 1 and "answers: False" in out.stdout


@pytest.mark.real_llm
def test_the_parts_join_into_the_model_and_a_changed_file_is_joined_again(cache: Path) -> None:
    if local.missing_packages():
        pytest.skip(f"the local-llm extra is not installed (missing {local.missing_packages()[0]}, ...)")
    parts = local.part_paths()
    assert [p.name for p in parts] == [f"part{i:02d}.bin" for i in range(1, 23)]
    model = local.assemble()
    assert model.stat().st_size == local.MODEL_SIZE
    with open(model, "r+b") as f:  # one byte changed, size kept
        f.seek(1000)
        f.write(b"\xff")
    again = local.assemble()
    digest = hashlib.sha256()
    with open(again, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    assert digest.hexdigest() == local.MODEL_SHA256
    assert sorted(p.name for p in cache.iterdir()) == [".assemble.lock", local.MODEL_FILE, local.MODEL_FILE + ".verified"]
    again.unlink()  # pytest keeps the last runs' tmp_path: not 1.1 GB of them
