"""Blocks: the key stays secret; save/load and registration against a Prefect test server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from urllib.request import urlopen

import openai
import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr, ValidationError

from llm_fixtures import KEY, MODEL, fake_llm  # noqa: F401 - fixture
from prefect_llmorch.blocks import LLMEndpoint, ToolCredentials
from prefect_llmorch.llm.client import LLMClient, LLMConfigError

TOKEN = "tok-llmorch-SECRET-41b7"


def endpoint(base_url: str = "http://127.0.0.1:9/v1") -> LLMEndpoint:
    return LLMEndpoint(base_url=base_url, model=MODEL, api_key=KEY)


def test_endpoint_key_is_a_secret_in_repr_str_and_dumps():
    block = endpoint()
    assert isinstance(block.api_key, SecretStr)
    assert block.api_key.get_secret_value() == KEY
    for shown in (repr(block), str(block), str(block.model_dump()), block.model_dump_json()):
        assert KEY not in shown
    assert "**********" in block.model_dump_json()


def test_endpoint_defaults_and_validation():
    block = endpoint()
    assert (block.temperature, block.max_tokens, block.timeout) == (0.0, None, 60.0)
    with pytest.raises(ValidationError):
        LLMEndpoint(base_url=" ", model=MODEL, api_key=KEY)
    with pytest.raises(ValidationError):
        LLMEndpoint(base_url="http://x/v1", model=MODEL, api_key=KEY, timeout=0)
    with pytest.raises(ValidationError) as info:
        LLMEndpoint(base_url="http://x/v1", model=MODEL, api_key=KEY, temperature=-1)
    assert KEY not in str(info.value)


def test_block_type_slugs():
    assert LLMEndpoint.get_block_type_slug() == "llmorch-llm-endpoint"
    assert ToolCredentials.get_block_type_slug() == "llmorch-tool-credentials"
    assert LLMEndpoint.model_json_schema()["secret_fields"] == ["api_key"]


def test_get_client_returns_an_openai_client_that_talks_to_the_endpoint(fake_llm):
    fake_llm.add("pong")
    client = endpoint(fake_llm.base_url).get_client()
    assert isinstance(client, openai.OpenAI)
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "ping"}])
    assert reply.choices[0].message.content == "pong"


def test_llm_client_uses_the_endpoint_settings(fake_llm):
    fake_llm.add("ok")
    block = LLMEndpoint(
        base_url=fake_llm.base_url, model=MODEL, api_key=KEY, temperature=0.4, max_tokens=32, timeout=5
    )
    client = block.llm_client()
    assert isinstance(client, LLMClient)
    assert client.complete([{"role": "user", "content": "hi"}]).text == "ok"
    request = fake_llm.chat_requests[0]
    assert (request.temperature, request.max_tokens) == (0.4, 32)


def test_from_env_reads_the_three_variables(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("LLMORCH_MODEL", MODEL)
    block = LLMEndpoint.from_env(timeout=5)
    assert (block.base_url, block.model, block.timeout) == ("http://127.0.0.1:8000/v1", MODEL, 5)
    assert block.api_key.get_secret_value() == KEY


def test_from_env_without_variables_says_which_are_missing(monkeypatch):
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "LLMORCH_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(LLMConfigError, match="set OPENAI_BASE_URL, OPENAI_API_KEY, LLMORCH_MODEL"):
        LLMEndpoint.from_env()


def test_tool_credentials_reveal_values_and_secrets_but_repr_masks_them():
    creds = ToolCredentials(secrets={"token": TOKEN}, values={"region": "eu"})
    assert creds.reveal() == {"region": "eu", "token": TOKEN}
    for shown in (repr(creds), str(creds.model_dump()), creds.model_dump_json()):
        assert TOKEN not in shown
    assert ToolCredentials().reveal() == {}
    assert ToolCredentials(secrets={"n": SecretStr("s"), "port": 5432}).reveal() == {"n": "s", "port": "5432"}


def test_tool_credentials_secrets_are_a_wildcard_secret_field():
    assert ToolCredentials.model_json_schema()["secret_fields"] == ["secrets.*"]


def test_tool_credentials_reject_a_name_that_is_both_secret_and_value():
    with pytest.raises(ValidationError, match="both as secrets and values: token"):
        ToolCredentials(secrets={"token": TOKEN}, values={"token": "plain"})


def test_endpoint_saves_and_loads_with_the_key_masked_on_the_server(prefect_harness):
    from prefect.client.orchestration import get_client

    endpoint(base_url="http://127.0.0.1:8000/v1").save("test-endpoint", overwrite=True)
    loaded = LLMEndpoint.load("test-endpoint")
    assert isinstance(loaded.api_key, SecretStr)
    assert loaded.api_key.get_secret_value() == KEY
    assert (loaded.base_url, loaded.model) == ("http://127.0.0.1:8000/v1", MODEL)
    assert KEY not in repr(loaded)

    with get_client(sync_client=True) as client:
        doc = client.read_block_document_by_name("test-endpoint", "llmorch-llm-endpoint", include_secrets=False)
    assert KEY not in json.dumps(doc.data, default=str)


def test_tool_credentials_save_and_load(prefect_harness):
    from prefect.client.orchestration import get_client

    ToolCredentials(secrets={"token": TOKEN}, values={"region": "eu"}).save("test-creds", overwrite=True)
    loaded = ToolCredentials.load("test-creds")
    assert loaded.reveal() == {"region": "eu", "token": TOKEN}
    assert TOKEN not in repr(loaded)
    with get_client(sync_client=True) as client:
        doc = client.read_block_document_by_name("test-creds", "llmorch-tool-credentials", include_secrets=False)
    assert TOKEN not in json.dumps(doc.data, default=str)
    assert doc.data["values"] == {"region": "eu"}


def test_blocks_register_with_the_prefect_cli(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    cli = [sys.executable, "-m", "prefect", "block", "register", "-m", "prefect_llmorch.blocks"]
    done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    with get_client(sync_client=True) as client:
        for slug in ("llmorch-llm-endpoint", "llmorch-tool-credentials"):
            assert client.read_block_type_by_slug(slug).slug == slug


class TestBlockStandardSuite(BlockStandardTestSuite):
    """Prefect's shipped checks for collection blocks (description, documentation URL, field
    descriptions ending with a period, a code example that loads `BLOCK_NAME`, the logo)."""

    @pytest.fixture(params=[LLMEndpoint, ToolCredentials], ids=lambda b: b.__name__)
    def block(self, request) -> type[Block]:
        return request.param

    def test_has_a_valid_image(self, block: type[Block]) -> None:
        # The suite's own check opens the logo URL and measures it with Pillow: it needs both.
        pytest.importorskip("PIL", reason="Pillow is not installed (the suite measures the logo with it)")
        try:
            urlopen(str(block._logo_url), timeout=10).close()
        except OSError as exc:
            pytest.skip(f"cannot fetch the logo URL here (no network?): {exc}")
        super().test_has_a_valid_image(block)

