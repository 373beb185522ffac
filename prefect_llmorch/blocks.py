"""Prefect blocks: the LLM endpoint, and credentials for tools.

Register them with a Prefect server once:

    prefect block register -m prefect_llmorch.blocks

then create documents in the UI or in code:

    from prefect_llmorch.blocks import LLMEndpoint, ToolCredentials

    LLMEndpoint(base_url="https://api.openai.com/v1", model="gpt-4o-mini",
                api_key="sk-...").save("openai")
    LLMEndpoint.load("openai").llm_client().complete([{"role": "user", "content": "hi"}])

    ToolCredentials(secrets={"token": "..."}, values={"region": "eu"}).save("weather")

Secrets are `SecretStr`: they show as `**********` in reprs, `model_dump()`, the UI and
logs, and are revealed only when a client is built (`get_client`) or `reveal()` is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from prefect.blocks.core import Block
from prefect.types import SecretDict
from pydantic import Field, SecretStr, field_validator, model_validator

from prefect_llmorch.llm.client import LLMClient, read_env

if TYPE_CHECKING:
    import openai

__all__ = ["LLMEndpoint", "ToolCredentials"]

# The project has no documentation site of its own yet: point at Prefect's page on using blocks.
DOCUMENTATION_URL = "https://docs.prefect.io/v3/develop/blocks"
# Logos Prefect's own blocks use (square PNGs in Prefect's repository, pinned to a commit):
# the webhook logo for an HTTP endpoint, the secret logo for credentials.
_PREFECT_LOGOS = "https://raw.githubusercontent.com/PrefectHQ/prefect/420d0d6a78bb6df1fc18bcf188fdad43c1d22ea9/assets/block-logos"
ENDPOINT_LOGO_URL = f"{_PREFECT_LOGOS}/webhook.png"
CREDENTIALS_LOGO_URL = f"{_PREFECT_LOGOS}/secret.png"


class LLMEndpoint(Block):
    """An OpenAI-compatible chat completion endpoint and model, with its API key.

    Attributes:
        base_url: the endpoint, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`.
        model: the model name, e.g. `gpt-4o-mini`.
        api_key: the key (secret).
        temperature: default sampling temperature for planning and `self` calls.
        max_tokens: cap on answer length (None: the endpoint's default).
        timeout: seconds for one request.
        planner: "text" (plans in the plan language) or "json" (the JSON plan form,
            asked for under a JSON schema built from the toolbox; for endpoints that
            honour `response_format`, e.g. OpenAI, vLLM, Ollama, llama.cpp).
        joiner: the join step of `llmorch ask` after a plan: "auto" (when the plan ends
            with `join()`), "always" or "off" (`prefect_llmorch.flows.joiner`).
        joiner_rounds: continuations the joiner may write per ask.
        ask_max_tokens: token budget of one ask (prompt + completion over planner,
            repairs, `self` calls and joins; None: none).

    Examples:
        Load a saved endpoint and ask it something:

            from prefect_llmorch.blocks import LLMEndpoint

            llm = LLMEndpoint.load("openai").llm_client()
            print(llm.complete([{"role": "user", "content": "Say hi"}]).text)
    """

    _block_type_name = "LLMOrch LLM Endpoint"
    _block_type_slug = "llmorch-llm-endpoint"
    _documentation_url = DOCUMENTATION_URL  # type: ignore[assignment]
    _logo_url = ENDPOINT_LOGO_URL  # type: ignore[assignment]
    _description = (
        "An OpenAI-compatible chat completion endpoint (base URL, model, API key) used by "
        "prefect-llmorch to plan function calls and to answer `self` calls."
    )
    _code_example = """
    ```python
    from prefect_llmorch.blocks import LLMEndpoint

    endpoint = LLMEndpoint.load("BLOCK_NAME")
    client = endpoint.get_client()  # an openai.OpenAI
    ```
    """

    base_url: str = Field(
        default=..., description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1."
    )
    model: str = Field(default=..., description="Model name, e.g. gpt-4o-mini.")
    api_key: SecretStr = Field(default=..., description="API key for the endpoint (kept secret).")
    temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, description="Default sampling temperature for planning and `self` calls."
    )
    max_tokens: int | None = Field(
        default=None, gt=0, description="Cap on answer length in tokens (empty: the endpoint's default)."
    )
    timeout: float = Field(default=60.0, gt=0, description="Seconds for one request.")
    planner: Literal["text", "json"] = Field(
        default="text",
        description="How plans are asked for: text (the plan language) or json (the JSON plan "
        "form under a JSON schema; needs an endpoint that honours response_format).",
    )
    joiner: Literal["off", "auto", "always"] = Field(
        default="auto",
        description="The join step after a plan: auto (when the plan ends with join()), always, or off.",
    )
    joiner_rounds: int = Field(default=2, ge=0, description="Continuations the joiner may write per ask.")
    ask_max_tokens: int | None = Field(
        default=None, gt=0,
        description="Token budget of one ask: prompt + completion over planner, repairs, self calls and "
        "joins (empty: no budget); at the budget the joiner answers with what it has.",
    )

    @field_validator("base_url", "model")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    def get_client(self) -> "openai.OpenAI":
        """An `openai.OpenAI` client for this endpoint (few retries, the block's timeout)."""
        return self.llm_client().openai

    def llm_client(self, **overrides: Any) -> LLMClient:
        """An `LLMClient` (errors as `LLMError`, token counts) for this endpoint."""
        return LLMClient.from_endpoint(self, **overrides)

    @classmethod
    def from_env(cls, **overrides: Any) -> "LLMEndpoint":
        """An unsaved endpoint from `OPENAI_BASE_URL`, `OPENAI_API_KEY` and `LLMORCH_MODEL`.

        Raises:
            prefect_llmorch.llm.LLMConfigError: naming every variable that is not set.
        """
        base_url, api_key, model = read_env()
        return cls(base_url=base_url, api_key=api_key, model=model, **overrides)


class ToolCredentials(Block):
    """Settings a tool function needs: secrets (tokens, passwords) and plain values.

    A function declared with `@inout(credentials="BLOCK_NAME")` receives
    `ToolCredentials.load("BLOCK_NAME").reveal()` in its `credentials` parameter.

    Attributes:
        secrets: name -> secret value, as a `SecretDict`: masked in reprs, dumps, logs and
            the API/UI (every entry is a secret field, `secrets.*`); see `reveal()`.
        values: name -> non-secret setting (shown in the UI).

    Examples:
        Load saved credentials and read a setting:

        ```python
        from prefect_llmorch.blocks import ToolCredentials

        credentials = ToolCredentials.load("BLOCK_NAME")
        token = credentials.reveal()["token"]
        ```

        Or let a tool function receive them when it is called:

        ```python
        from prefect_llmorch import inout

        @inout(credentials="weather")
        def forecast(city: str, credentials: dict[str, str]) -> str:
            return call_api(city, token=credentials["token"], region=credentials["region"])
        ```
    """

    _block_type_name = "LLMOrch Tool Credentials"
    _block_type_slug = "llmorch-tool-credentials"
    _documentation_url = DOCUMENTATION_URL  # type: ignore[assignment]
    _logo_url = CREDENTIALS_LOGO_URL  # type: ignore[assignment]
    _description = (
        "Secrets and settings for a prefect-llmorch tool function, passed to it in its "
        "`credentials` parameter at call time."
    )

    # A SecretDict, not dict[str, SecretStr]: Prefect marks the former `secrets.*` so the
    # API masks every entry, while the latter would be stored and served in clear text.
    secrets: SecretDict = Field(
        default_factory=lambda: SecretDict({}),
        description="Secret settings, by name (masked in the UI and the API).",
    )
    values: dict[str, str] = Field(
        default_factory=dict, description="Non-secret settings, by name."
    )

    @field_validator("secrets", mode="before")
    @classmethod
    def _plain_strings(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                str(k): v.get_secret_value() if isinstance(v, SecretStr) else str(v)
                for k, v in value.items()
            }
        return value

    @model_validator(mode="after")
    def _names_are_distinct(self) -> "ToolCredentials":
        both = sorted(set(self.secrets.get_secret_value()) & set(self.values))
        if both:
            raise ValueError(f"names given both as secrets and values: {', '.join(both)}")
        return self

    def reveal(self) -> dict[str, str]:
        """Every setting as plain text: values and secrets together, by name."""
        out = dict(self.values)
        out.update(self.secrets.get_secret_value())
        return out
