"""GPU discovery with `nvidia-smi` when nobody declared devices: a stand-in `nvidia-smi`
(a real executable on PATH) answers the query the driver's tool answers."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from prefect_llmorch.host.devices import NVIDIA_SMI_QUERY, discover_gpus
from prefect_llmorch.engine.runner import LLMOrchTaskRunner
from prefect_llmorch.schedule.resources import Device


def fake_nvidia_smi(folder: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """`nvidia-smi` on PATH (only there) running `body`; it logs its arguments to args.txt."""
    exe = folder / "nvidia-smi"
    exe.write_text(f'#!/bin/sh\necho "$@" > "{folder}/args.txt"\n{body}\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder / "args.txt"


def test_devices_come_from_nvidia_smi_s_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = fake_nvidia_smi(tmp_path, monkeypatch, "printf '0, 81920\\n1, 40960\\n'")
    assert discover_gpus() == (Device(0, 80.0), Device(1, 40.0))
    assert args.read_text().split() == list(NVIDIA_SMI_QUERY)


def test_without_nvidia_smi_there_are_no_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no nvidia-smi
    assert discover_gpus() == ()


@pytest.mark.parametrize(
    "body, says",
    [("echo 'NVIDIA-SMI has failed' >&2; exit 9", "exited 9 (NVIDIA-SMI has failed)"), ("echo 'zero, lots'", "nvidia-smi line 1")],
)
def test_a_failing_nvidia_smi_is_a_warning_and_no_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, body: str, says: str
) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, body)
    with caplog.at_level(logging.WARNING, logger="prefect_llmorch.host.devices"):
        assert discover_gpus() == ()
    assert says in caplog.text and "no GPU devices are used" in caplog.text


def test_the_runner_uses_discovered_devices_only_when_none_are_declared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = fake_nvidia_smi(tmp_path, monkeypatch, "printf '0, 81920\\n'")
    found = LLMOrchTaskRunner(processors=1, guard="local")
    declared = LLMOrchTaskRunner(processors=1, guard="local", gpus=[{"id": 3, "mem_gb": 24}])
    memory = LLMOrchTaskRunner(processors=1, guard="local", resources={"gpu_mem_gb": 16})
    assert found.gpus == [] and not args.exists()  # nothing is asked before the runner starts
    for runner in (found, declared, memory):
        with runner:
            pass
    assert found.gpus == [{"id": 0, "mem_gb": 80.0}]
    assert declared.gpus == [{"id": 3, "mem_gb": 24.0}] and memory.gpus == [] and memory.resources == {"gpu_mem_gb": 16.0}
    found.use_resources({"gpu_mem_gb": 40})  # a run's own GPU capacity replaces the discovered devices
    assert found.gpus == [] and found.resources == {"gpu_mem_gb": 40.0}
