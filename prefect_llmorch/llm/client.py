"""A thin, Prefect-free wrapper around the `openai` client for any OpenAI-compatible endpoint.

    >>> from prefect_llmorch.testing import FakeLLM
    >>> with FakeLLM(["four"]) as server:
    ...     llm = LLMClient(server.base_url, "fake", api_key="sk-local")
    ...     llm.complete([{"role": "user", "content": "two plus two?"}])
    Completion(text='four', prompt_tokens=3, completion_tokens=1, finish_reason='stop')

Every failure comes out as `LLMError` with a message that says what happened and where,
and never contains the API key: "cannot reach the LLM endpoint at http://127.0.0.1:9/v1:
connection refused", "the LLM endpoint rejected the API key (401) ...".
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import httpx
import openai
from pydantic import SecretStr

__all__ = ["LLMClient", "Completion", "CompletionStream", "LLMError", "Message", "PLANNER_MODES"]

#: A chat message: `{"role": "system" | "user" | "assistant", "content": str}`.
Message = Mapping[str, Any]



#: How the planner asks an endpoint for plans (`LLMClient.planner`, `--planner`).
PLANNER_MODES = ("text", "json")


class LLMError(RuntimeError):
    """The LLM endpoint could not give an answer.

    Attributes:
        message: what happened, for people (never contains the key).
        kind: `unreachable`, `timeout`, `auth`, `status` (another HTTP error) or `stream`
            (the connection broke while streaming).
        base_url: the endpoint.
        status_code: the HTTP status when there was one.
    """

    def __init__(
        self, message: str, *, kind: str, base_url: str, status_code: int | None = None
    ) -> None:
        self.message = message
        self.kind = kind
        self.base_url = base_url
        self.status_code = status_code
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:  # keep the named fields through pickling
        return (_rebuild_llm_error, (self.message, self.kind, self.base_url, self.status_code))


def _rebuild_llm_error(message: str, kind: str, base_url: str, status_code: int | None) -> LLMError:
    return LLMError(message, kind=kind, base_url=base_url, status_code=status_code)


@dataclass(frozen=True)
class Completion:
    """An answer and the token counts the endpoint reported (0 when it reported none)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: why the endpoint stopped ("stop"; "length": cut off at `max_tokens` or the context's end)
    finish_reason: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class LLMClient:
    """Chat completions against one OpenAI-compatible endpoint and model.

    Thread-safe: one client may serve many concurrent calls (the `openai` client pools
    connections).

    Args:
        base_url: the endpoint, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`.
        model: the model name sent with every request.
        api_key: the key (`str` or `SecretStr`); kept as a `SecretStr`, never shown.
        temperature: default sampling temperature.
        max_tokens: default cap on answer length (None: the endpoint's default).
        timeout: seconds for one request (connect, and each read while streaming).
        max_retries: retries of the `openai` client for connection errors, 408/409/429
            and 5xx. Kept small so that an unreachable endpoint fails fast.
        planner: how the planner asks this endpoint for plans: "text" (the plan
            language) or "json" (the JSON plan form under a JSON schema, for endpoints
            that honour `response_format`).

    Raises:
        ValueError: on empty `base_url`/`model` or a negative timeout.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | SecretStr | None = None,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        timeout: float = 60.0,
        *,
        max_retries: int = 1,
        planner: str = "text",
    ) -> None:
        if planner not in PLANNER_MODES:
            raise ValueError(f"planner must be one of {', '.join(PLANNER_MODES)}, got {planner!r}")
        if not base_url:
            raise ValueError("base_url must be given, e.g. http://127.0.0.1:8000/v1")
        if not model:
            raise ValueError("model must be given")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.temperature = float(temperature)
        self.max_tokens = max_tokens
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.planner = planner
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        # Local servers often need no key, but the openai client insists on one.
        self._api_key = SecretStr(key or "no-key")
        self._client: openai.OpenAI | None = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LLMClient(base_url={self.base_url!r}, model={self.model!r})"

    # Picklable (Prefect may hash or copy task inputs); the connection pool is not carried.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        del state["_client_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client_lock = threading.Lock()

    @classmethod
    def from_endpoint(cls, endpoint: Any, **overrides: Any) -> "LLMClient":
        """Build from an `LLMEndpoint` block (or anything with the same attributes)."""
        settings = dict(
            base_url=endpoint.base_url,
            model=endpoint.model,
            api_key=endpoint.api_key,
            temperature=endpoint.temperature,
            max_tokens=endpoint.max_tokens,
            timeout=endpoint.timeout,
            planner=getattr(endpoint, "planner", "text"),
        )
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def from_env(cls, **overrides: Any) -> "LLMClient":
        """Build from `OPENAI_BASE_URL`, `OPENAI_API_KEY` and `LLMORCH_MODEL`, and the
        request timeout in seconds from `LLMORCH_LLM_TIMEOUT` when set (a model on this
        machine's CPU may take minutes to read a long prompt).

        Raises:
            LLMConfigError: naming every variable that is not set.
            ValueError: `LLMORCH_LLM_TIMEOUT` is not a positive number.
        """
        base_url, api_key, model = read_env()
        timeout = os.environ.get("LLMORCH_LLM_TIMEOUT", "").strip()
        if timeout and "timeout" not in overrides:
            try:
                overrides["timeout"] = float(timeout)
            except ValueError:
                raise ValueError(f"LLMORCH_LLM_TIMEOUT must be a number of seconds, got {timeout!r}") from None
        return cls(base_url, model, api_key, **overrides)

    @property
    def openai(self) -> openai.OpenAI:
        """The underlying `openai.OpenAI` client (created on first use)."""
        with self._client_lock:
            if self._client is None:
                self._client = openai.OpenAI(
                    base_url=self.base_url,
                    api_key=self._api_key.get_secret_value(),
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                )
            return self._client

    def close(self) -> None:
        """Close pooled connections. Safe to call several times."""
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> "LLMClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------------

    def _request(self, messages: Sequence[Message], temperature: float | None, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "temperature": self.temperature if temperature is None else float(temperature),
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        body.update(extra)
        return body

    def complete(self, messages: Sequence[Message], temperature: float | None = None,
                 *, response_format: dict[str, Any] | None = None) -> Completion:
        """Ask for one answer.

        Args:
            messages: the chat messages.
            temperature: overrides the client's default for this request.
            response_format: sent as is (e.g. `{"type": "json_schema", ...}`).

        Returns:
            The text and the token counts the endpoint reported.

        Raises:
            LLMError: the endpoint is unreachable, timed out, rejected the key or failed.
        """
        error: LLMError | None = None
        try:
            extra = {"response_format": response_format} if response_format else {}
            reply = self.openai.chat.completions.create(**self._request(messages, temperature, **extra))
        except (openai.APIError, httpx.HTTPError) as exc:
            error = self._translate(exc)
        if error is not None:  # raised outside `except` so the openai error (whose
            raise error  # request carries the key header) is not kept as __context__
        text = (reply.choices[0].message.content or "") if reply.choices else ""
        usage = reply.usage
        return Completion(
            text=text,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason=reply.choices[0].finish_reason if reply.choices else None,
        )

    def stream(self, messages: Sequence[Message], temperature: float | None = None,
               *, response_format: dict[str, Any] | None = None) -> "CompletionStream":
        """Ask for one answer, streamed (`response_format` as for `complete`).

        Iterate the result for text chunks as they arrive; afterwards `.completion` holds
        the whole text and the token counts (reported in a final usage chunk).

            with llm.stream(messages) as chunks:
                for chunk in chunks:
                    print(chunk, end="")
            chunks.completion.completion_tokens

        Raises:
            LLMError: when opening the stream or while iterating it.
        """
        error: LLMError | None = None
        try:
            raw = self.openai.chat.completions.create(
                **self._request(
                    messages, temperature, stream=True, stream_options={"include_usage": True},
                    **({"response_format": response_format} if response_format else {}),
                )
            )
        except (openai.APIError, httpx.HTTPError) as exc:
            error = self._translate(exc)
        if error is not None:
            raise error
        return CompletionStream(self, raw)

    # -- errors -------------------------------------------------------------------------

    def _translate(self, exc: BaseException) -> LLMError:
        """Turn an openai/httpx exception into an `LLMError` that names no secret."""
        where = self.base_url
        if isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException)):
            return LLMError(
                f"the LLM endpoint at {where} did not answer within {self.timeout:g} s",
                kind="timeout", base_url=where,
            )
        if isinstance(exc, openai.APIConnectionError) or isinstance(exc, httpx.TransportError):
            return LLMError(
                f"cannot reach the LLM endpoint at {where}: {_connection_reason(exc)}",
                kind="unreachable", base_url=where,
            )
        if isinstance(exc, openai.AuthenticationError):
            return LLMError(
                "the LLM endpoint rejected the API key (401); check the api_key of the "
                f"LLMEndpoint block or OPENAI_API_KEY (endpoint {where})",
                kind="auth", base_url=where, status_code=401,
            )
        if isinstance(exc, openai.APIStatusError):
            detail = self._scrub(_error_detail(exc))
            hint = f" (model {self.model!r})" if exc.status_code == 404 else ""
            return LLMError(
                f"the LLM endpoint at {where} answered HTTP {exc.status_code}{hint}: {detail}",
                kind="auth" if exc.status_code == 403 else "status",
                base_url=where, status_code=exc.status_code,
            )
        return LLMError(
            f"the LLM endpoint at {where} sent an answer that cannot be read: "
            f"{self._scrub(str(exc)) or type(exc).__name__}",
            kind="status", base_url=where,
        )

    def _scrub(self, text: str) -> str:
        key = self._api_key.get_secret_value()
        return text.replace(key, "**********") if key else text


class CompletionStream:
    """Text chunks of one streamed answer; `.completion` once it has been read.

    Iterating raises `LLMError` if the connection breaks. `close()` (or leaving the
    `with` block) stops reading early and frees the connection.
    """

    def __init__(self, client: LLMClient, raw: Any) -> None:
        self._client = client
        self._raw = raw
        self._parts: list[str] = []
        self._usage: Any = None
        self._finish: str | None = None
        self._done = False

    def __iter__(self) -> Iterator[str]:
        error: LLMError | None = None
        try:
            for chunk in self._raw:
                if getattr(chunk, "usage", None) is not None:
                    self._usage = chunk.usage
                for choice in chunk.choices or ():
                    self._finish = getattr(choice, "finish_reason", None) or self._finish
                    text = choice.delta.content if choice.delta else None
                    if text:
                        self._parts.append(text)
                        yield text
            self._done = True
        except (openai.APIError, httpx.HTTPError) as exc:
            error = self._client._translate(exc)
            if error.kind == "unreachable":
                error = LLMError(
                    f"the LLM endpoint at {self._client.base_url} broke the stream: "
                    f"{_connection_reason(exc)}",
                    kind="stream", base_url=self._client.base_url,
                )
        finally:
            if not self._done:
                self.close()
        if error is not None:
            raise error

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._parts)

    @property
    def completion(self) -> Completion:
        """The whole answer with token counts (0 if the endpoint reported no usage).

        Raises:
            RuntimeError: if the stream has not been read to the end.
        """
        if not self._done:
            raise RuntimeError("the stream has not been read to the end")
        usage = self._usage
        return Completion(
            text=self.text,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason=self._finish,
        )

    def close(self) -> None:
        """Stop reading and free the connection. Safe to call several times."""
        try:
            self._raw.close()
        except Exception:  # closing a broken connection may fail again; nothing to do
            pass

    def __enter__(self) -> "CompletionStream":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.close()


class LLMConfigError(ValueError):
    """The environment does not say which LLM to use. `missing` names the variables."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(
            f"no LLM configured: set {', '.join(missing)} "
            "(OPENAI_BASE_URL e.g. https://api.openai.com/v1, OPENAI_API_KEY, LLMORCH_MODEL "
            "e.g. gpt-4o-mini), or save an LLMEndpoint block"
        )


ENV_VARS = ("OPENAI_BASE_URL", "OPENAI_API_KEY", "LLMORCH_MODEL")


def read_env(environ: Mapping[str, str] | None = None) -> tuple[str, SecretStr, str]:
    """`(base_url, api_key, model)` from the environment.

    Raises:
        LLMConfigError: naming every one of `OPENAI_BASE_URL`, `OPENAI_API_KEY`,
            `LLMORCH_MODEL` that is unset or empty.
    """
    env = os.environ if environ is None else environ
    missing = [name for name in ENV_VARS if not env.get(name, "").strip()]
    if missing:
        raise LLMConfigError(missing)
    return env["OPENAI_BASE_URL"].strip(), SecretStr(env["OPENAI_API_KEY"].strip()), env["LLMORCH_MODEL"].strip()


def _connection_reason(exc: BaseException) -> str:
    """The root cause of a connection failure in a few words."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    texts: list[str] = []
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        texts.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    joined = " ".join(texts).lower()
    for needle, reason in (
        ("refused", "connection refused"),
        ("name or service not known", "host name not found"),
        ("nodename nor servname", "host name not found"),
        ("temporary failure in name resolution", "host name not found"),
        ("no route to host", "no route to host"),
        ("network is unreachable", "network is unreachable"),
        ("reset by peer", "connection reset by the server"),
        ("incomplete chunked read", "the server closed the connection mid-answer"),
        ("server disconnected", "the server closed the connection"),
        ("certificate", "TLS certificate problem"),
    ):
        if needle in joined:
            return reason
    return next((t for t in reversed(texts) if t and t != "Connection error."), "connection error")


def _error_detail(exc: Any) -> str:
    """The `error.message` of an OpenAI-style error body, else the exception text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return getattr(exc, "message", None) or str(exc)
