"""The GPU devices of this machine, when nobody declared them.

`LLMOrchTaskRunner(gpus=None)` with no `gpu_mem_gb` capacity asks `nvidia-smi` (when it is
on PATH) for each device's index and memory; the reading itself is the pure
`schedule.resources.gpus_from_nvidia_smi`. Without `nvidia-smi` (no GPU, or a container
without the driver's tools) there are no devices and nothing is run. A failing or hanging
`nvidia-smi` is a warning, not an error: the run goes on as if there were no devices, and a
call that needs GPU memory then fails before anything runs, as it would on a machine
without one.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from prefect_llmorch.schedule.resources import BadResource, Device, gpus_from_nvidia_smi

__all__ = ["NVIDIA_SMI_QUERY", "discover_gpus"]

#: The arguments given to `nvidia-smi` (memory in MiB, one `index, memory` line per device).
NVIDIA_SMI_QUERY = ("--query-gpu=index,memory.total", "--format=csv,noheader,nounits")

_log = logging.getLogger(__name__)


def discover_gpus(timeout: float = 10.0) -> tuple[Device, ...]:
    """This machine's GPU devices as `nvidia-smi` lists them; `()` without `nvidia-smi`."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run([exe, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _log.warning("GPU discovery: %s failed (%s); no GPU devices are used", exe, exc)
        return ()
    if out.returncode != 0:
        first = (out.stderr or out.stdout).strip().splitlines()[:1]
        _log.warning("GPU discovery: %s exited %d (%s); no GPU devices are used", exe, out.returncode, first[0] if first else "no output")
        return ()
    try:
        return gpus_from_nvidia_smi(out.stdout)
    except BadResource as exc:
        _log.warning("GPU discovery: %s; no GPU devices are used", exc)
        return ()
