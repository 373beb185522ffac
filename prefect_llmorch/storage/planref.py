"""Large plan text kept out of flow-run parameters.

Prefect's API refuses a flow run whose parameters are too large (a 422 for a plan over
512 KB, with the whole plan in the traceback). `run_plan` therefore passes a plan longer than
`PLAN_PARAMETER_LIMIT` as a short reference, and the flow reads the text back:

    <llmorch-plan sha256=9f86d0... bytes=1048576 path=/home/u/.prefect/llmorch-plans/9f86d0....plan>

The file is content-addressed in `PREFECT_HOME/llmorch-plans/` (the same plan is stored
once) and is kept after the run, so the flow run's parameters stay readable. Its digest is
checked when it is read. No plan text starts with `<llmorch-plan ` (`<` starts only
`<END_OF_PLAN>`), so a reference cannot be mistaken for a plan or the other way round.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

__all__ = ["PLAN_PARAMETER_LIMIT", "PlanReferenceError", "plan_parameter", "plan_text", "plans_dir"]

#: Plans up to this many bytes (UTF-8) are passed as they are; longer ones by reference.
PLAN_PARAMETER_LIMIT = 64 * 1024

_REF = re.compile(r"<llmorch-plan sha256=([0-9a-f]{64}) bytes=(\d+) path=(.+)>\Z")


class PlanReferenceError(ValueError):
    """A plan reference whose file is missing or does not hold that plan."""


def plans_dir() -> Path:
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()) / "llmorch-plans"


def plan_parameter(text: str, limit: int = PLAN_PARAMETER_LIMIT) -> str:
    """`text` itself when it is small, else a reference to a stored copy (see module doc)."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    digest = hashlib.sha256(data).hexdigest()
    folder = plans_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.plan"
    if not (path.exists() and path.stat().st_size == len(data)):
        # Written under a temporary name and renamed: a concurrent run never reads half a file.
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".plan-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return f"<llmorch-plan sha256={digest} bytes={len(data)} path={path}>"


def plan_text(value: str) -> str:
    """The plan a flow-run parameter stands for: the value itself, or the referenced text.

    Raises:
        PlanReferenceError: the referenced file is gone or holds another text.
    """
    m = _REF.match(value) if value.startswith("<llmorch-plan ") else None
    if m is None:
        return value
    digest, size, path = m.group(1), int(m.group(2)), Path(m.group(3))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PlanReferenceError(f"the plan of this run ({size} bytes, sha256 {digest[:12]}...) "
                                 f"cannot be read from {path}: {exc.strerror or exc}") from None
    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
        raise PlanReferenceError(f"{path} no longer holds the plan of this run "
                                 f"(sha256 {digest[:12]}..., {size} bytes)")
    return data.decode("utf-8", "surrogatepass")
