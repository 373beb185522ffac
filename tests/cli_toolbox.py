"""The LLMCompiler benchmark tools (search, math), for checking their sample plans."""

from prefect_llmorch import Toolbox, inout


@inout
def search(query: str) -> str:
    return query


@inout
def math(problem: str, context: list = []) -> str:  # noqa: B006 - signature as LLMCompiler's
    return problem


toolbox = Toolbox(search, math)
