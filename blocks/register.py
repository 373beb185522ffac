"""Register prefect-llmorch's block types on a Prefect server and create example blocks
from environment variables.

    export PREFECT_API_URL=http://127.0.0.1:4200/api
    LLMORCH_SEARCH_API_KEY=... LLMORCH_E2E_MASTER_PASSPHRASE=... \
    OPENAI_BASE_URL=https://api.openai.com/v1 OPENAI_API_KEY=sk-... LLMORCH_MODEL=gpt-4o-mini \
    python blocks/register.py

What it creates (only when its variables are set; existing documents are overwritten):

| variable(s)                                         | block                                    |
|-----------------------------------------------------|------------------------------------------|
| `LLMORCH_SEARCH_API_KEY`                            | ToolCredentials `search-api` (`api_key`) |
| `LLMORCH_E2E_MASTER_PASSPHRASE`                     | ToolCredentials `e2e-master` (`passphrase`) |
| `OPENAI_BASE_URL`, `OPENAI_API_KEY`, `LLMORCH_MODEL`| LLMEndpoint `llm`                        |

More tool blocks: `--tool NAME=ENV_VAR` (repeatable) makes ToolCredentials NAME with the
secret `api_key` read from ENV_VAR. Registering the types alone is also
`prefect block register -m prefect_llmorch.blocks`. Secrets are never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

#: ToolCredentials documents made from the environment: block name -> (variable, secret name).
TOOL_BLOCKS = {
    "search-api": ("LLMORCH_SEARCH_API_KEY", "api_key"),
    "e2e-master": ("LLMORCH_E2E_MASTER_PASSPHRASE", "passphrase"),
}
ENDPOINT_BLOCK = "llm"


def register_types() -> list[str]:
    """Register the block types (what `prefect block register -m prefect_llmorch.blocks` does)."""
    from prefect_llmorch.blocks import LLMEndpoint, ToolCredentials

    names = []
    for block in (LLMEndpoint, ToolCredentials):
        block.register_type_and_schema()
        names.append(block.get_block_type_slug())
    return names


def create_from_env(env: "os._Environ[str] | dict[str, str]" = os.environ, extra: dict[str, tuple[str, str]] | None = None) -> list[str]:
    """Save the example blocks whose variables are set; returns what was saved, as `type/name`."""
    from prefect_llmorch.blocks import LLMEndpoint, ToolCredentials

    saved = []
    for name, (var, key) in {**TOOL_BLOCKS, **(extra or {})}.items():
        value = env.get(var)
        if value:
            ToolCredentials(secrets={key: value}).save(name, overwrite=True)
            saved.append(f"{ToolCredentials.get_block_type_slug()}/{name}")
    if env.get("OPENAI_API_KEY") and env.get("OPENAI_BASE_URL"):
        LLMEndpoint(
            base_url=env["OPENAI_BASE_URL"],
            api_key=env["OPENAI_API_KEY"],
            model=env.get("LLMORCH_MODEL") or "gpt-4o-mini",
        ).save(ENDPOINT_BLOCK, overwrite=True)
        saved.append(f"{LLMEndpoint.get_block_type_slug()}/{ENDPOINT_BLOCK}")
    return saved


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", action="append", default=[], metavar="NAME=ENV_VAR",
                        help="also make ToolCredentials NAME with secret api_key from ENV_VAR")
    parser.add_argument("--types-only", action="store_true", help="only register the block types")
    args = parser.parse_args(argv)
    extra = {}
    for item in args.tool:
        name, sep, var = item.partition("=")
        if not sep or not name or not var:
            parser.error(f"--tool takes NAME=ENV_VAR, got {item!r}")
        extra[name] = (var, "api_key")
    print("registered block types:", ", ".join(register_types()))
    if args.types_only:
        return 0
    saved = create_from_env(os.environ, extra)
    if saved:
        print("saved blocks:", ", ".join(saved))
    else:
        print("no block saved: set LLMORCH_SEARCH_API_KEY, LLMORCH_E2E_MASTER_PASSPHRASE or OPENAI_BASE_URL + OPENAI_API_KEY")
    return 0


if __name__ == "__main__":
    sys.exit(main())
