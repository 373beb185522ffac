"""Example toolboxes and plans, shipped in the wheel (the CLI's default toolbox).

Plans are named on the command line and in flow parameters as `example:NAME`
(`example:kitti` is `kitti.plan` here), so they work from an installed package too.

    >>> open_plan_path("example:kitti").name
    'kitti.plan'
"""

from __future__ import annotations

from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent
PREFIX = "example:"
DEFAULT_TOOLBOX = "prefect_llmorch.examples.toolbox:toolbox"


def example_names() -> list[str]:
    """The shipped example plans, as `example:NAME`."""
    return sorted(PREFIX + p.stem for p in EXAMPLES_DIR.glob("*.plan"))


def open_plan_path(name: str) -> Path:
    """The path of a plan named `example:NAME` or an ordinary path (returned as given).

    Raises:
        FileNotFoundError: for `example:NAME` when no such example is shipped.
    """
    if not name.startswith(PREFIX):
        return Path(name)
    stem = name[len(PREFIX):].removesuffix(".plan")
    path = EXAMPLES_DIR / f"{stem}.plan"
    if not path.is_file():
        raise FileNotFoundError(f"no example plan {name!r}; shipped: {', '.join(example_names())}")
    return path
