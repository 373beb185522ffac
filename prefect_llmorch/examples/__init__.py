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


#: The toolbox of each shipped example whose functions are not all in the default toolbox
#: (tests/test_cli.py checks every example against its toolbox).
EXAMPLE_TOOLBOXES = {
    "agnews": "prefect_llmorch.examples.agnews:toolbox",
    "e2e": "prefect_llmorch.examples.e2e:toolbox",
    "seo_audit": "prefect_llmorch.examples.seo:toolbox",
}


def example_names() -> list[str]:
    """The shipped example plans, as `example:NAME`."""
    return sorted(PREFIX + p.stem for p in EXAMPLES_DIR.glob("*.plan"))


def example_toolbox(name: str) -> str:
    """The `--toolbox` an example (`example:NAME`) runs with."""
    return EXAMPLE_TOOLBOXES.get(name[len(PREFIX):] if name.startswith(PREFIX) else name, DEFAULT_TOOLBOX)


def examples_help() -> str:
    """The shipped examples for `--help`: those of the default toolbox, then the others with their `-t`.

    >>> examples_help().startswith("shipped examples: example:kitti")
    True
    """
    names = example_names()
    plain = [n for n in names if example_toolbox(n) == DEFAULT_TOOLBOX]
    other = [f"{n} (-t {example_toolbox(n)})" for n in names if example_toolbox(n) != DEFAULT_TOOLBOX]
    return "shipped examples: " + ", ".join(sorted(plain, key=lambda n: (n != "example:kitti", n)) + other)


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
