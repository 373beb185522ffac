"""A small, real OpenAI-compatible HTTP server that answers from a script.

Tests and the `llmorch demo` command talk to it with the real `openai` client over real
HTTP, streaming included, so nothing is patched:

    >>> with FakeLLM(["s1: search(\\"x\\")"], api_key="sk-test") as llm:
    ...     import openai
    ...     client = openai.OpenAI(base_url=llm.base_url, api_key="sk-test")
    ...     reply = client.chat.completions.create(
    ...         model="fake", messages=[{"role": "user", "content": "plan"}])
    ...     reply.choices[0].message.content
    's1: search("x")'

Endpoints: `POST /v1/chat/completions` (plain JSON, or server-sent events when the request
says `"stream": true`, with a final usage chunk when `stream_options.include_usage` is set,
then `data: [DONE]`) and `GET /v1/models`.

The script is a list of replies consumed in order, one per chat completion request. A
reply is a string, a callable taking the request JSON and returning a string, or a
`FakeError` (an HTTP error with OpenAI's error body). When the script runs out the server
answers with `default` if one was given, else HTTP 500 "fake LLM script exhausted".

`response_format` is honoured the way a constrained decoder would: with
`{"type": "json_schema", "json_schema": {"schema": ...}}` every reply must be JSON valid
under the schema, with `{"type": "json_object"}` a JSON object; a scripted reply that is
not is a script mistake, answered with HTTP 500 naming the violation (a real server could
never produce it). JSON replies stream token by token like text, so clients see partial JSON.

A reply can also be a `ToolCalls` turn: the assistant calls functions instead of answering
(`message.tool_calls`, `finish_reason: "tool_calls"`); several calls in one turn are what a
parallel-function-calling model sends. Streamed, each call arrives as OpenAI sends it: a delta
with its `index`, `id`, `type` and `name`, then its `arguments` JSON token by token. A callable
reply may return a `ToolCalls` too, e.g. built from the tool results the client sent back
(`tool_results(body)`). Tool-call tokens are the function's name (one) and the words of its
arguments JSON.

Tokens are the whitespace-separated pieces of a text; usage counts them the same way
(`prompt_tokens` = words in all message contents, `completion_tokens` = words in the
reply), so tests can predict the numbers. `token_delay` seconds pass before each token
(streaming) or for every token before the whole reply (non-streaming), like a real model.

Nothing here imports pytest or Prefect, and the server never logs a key.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Union

__all__ = [
    "FakeLLM", "FakeError", "RecordedRequest", "Reply", "ToolCall", "ToolCalls", "tool_results",
    "tokens_of", "count_tokens",
]


@dataclass(frozen=True)
class FakeError:
    """A scripted HTTP error, answered with OpenAI's error JSON body.

    Args:
        status: HTTP status code (401, 429, 500, ...).
        message: the `error.message` of the body.
        type: the `error.type` of the body.
        code: the `error.code` of the body.
    """

    status: int = 500
    message: str = "The server had an error while processing your request."
    type: str = "server_error"
    code: str | None = None

    def body(self) -> dict[str, Any]:
        """OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`."""
        return {
            "error": {"message": self.message, "type": self.type, "param": None, "code": self.code}
        }


@dataclass(frozen=True)
class ToolCall:
    """One function call of a scripted assistant turn (OpenAI's `message.tool_calls[i]`).

    Args:
        name: the function's name.
        arguments: its arguments: a dict (sent as its JSON text) or a string sent as it is
            (to script a model that writes broken JSON).
        id: the call's id; None lets the server number it (`call_fake_N`, unique per server).
    """

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name.split() != [self.name]:
            raise ValueError(f"ToolCall.name must be a non-empty word, not {self.name!r}")
        if not isinstance(self.arguments, (dict, str)):
            raise TypeError(f"ToolCall.arguments must be a dict or a string, not {type(self.arguments).__name__}")

    def arguments_json(self) -> str:
        """The `function.arguments` string the server sends."""
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass(frozen=True)
class ToolCalls:
    """A scripted assistant turn that calls functions instead of answering.

    Args:
        calls: the calls, in order (at least one; a list is fine).
        content: text the assistant writes with the calls (none by default: `content` is null).
    """

    calls: tuple[ToolCall, ...]
    content: str = ""

    def __post_init__(self) -> None:
        calls = tuple(self.calls)
        if not calls or not all(isinstance(c, ToolCall) for c in calls):
            raise ValueError("ToolCalls needs one or more ToolCall")
        object.__setattr__(self, "calls", calls)

    def token_count(self) -> int:
        """Tokens of the turn: the content's words, and per call its name and arguments' words."""
        return count_tokens(self.content) + sum(1 + count_tokens(c.arguments_json()) for c in self.calls)


def tool_results(body: dict[str, Any]) -> dict[str, str]:
    """The tool results a request sends back: `tool_call_id` -> content, in message order.

    Handy in a callable reply that builds its next `ToolCalls` from earlier results.
    """
    return {
        str(m.get("tool_call_id")): _content_text(m.get("content"))
        for m in body.get("messages") or []
        if isinstance(m, dict) and m.get("role") == "tool"
    }


#: One scripted answer: text, a turn of tool calls, a function of the request JSON returning
#: either, or an HTTP error.
Reply = Union[str, ToolCalls, Callable[[dict[str, Any]], Union[str, ToolCalls]], FakeError]


@dataclass
class RecordedRequest:
    """One request the server received, for tests to inspect.

    Attributes:
        method: `GET` or `POST`.
        path: the request path, e.g. `/v1/chat/completions`.
        body: the parsed JSON body (empty for GET).
        authorized: whether the request carried the required API key (True when none is
            required). The key itself is never stored.
        received_at: `time.monotonic()` when the request arrived.
        finished_at: `time.monotonic()` when the last byte of the answer was written.
        status: the HTTP status answered.
        reply: the text answered (None for errors; a tool-call turn's content, "" if none).
        tool_calls: the tool calls answered, as sent (`{"id", "type", "function": {"name",
            "arguments"}}`); empty for a text answer.
    """

    method: str
    path: str
    body: dict[str, Any]
    authorized: bool
    received_at: float
    finished_at: float = 0.0
    status: int = 200
    reply: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tools(self) -> list[str]:
        """The names of the functions the request offers (`tools`)."""
        return [str((t.get("function") or {}).get("name")) for t in self.body.get("tools") or [] if isinstance(t, dict)]

    @property
    def tool_results(self) -> dict[str, str]:
        """The tool results the request sends back: `tool_call_id` -> content."""
        return tool_results(self.body)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The chat messages of the request."""
        return list(self.body.get("messages") or [])

    @property
    def model(self) -> str | None:
        return self.body.get("model")

    @property
    def temperature(self) -> float | None:
        return self.body.get("temperature")

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def response_format(self) -> dict[str, Any] | None:
        """The request's `response_format`, if any."""
        return self.body.get("response_format")

    @property
    def max_tokens(self) -> int | None:
        return self.body.get("max_tokens", self.body.get("max_completion_tokens"))

    @property
    def text(self) -> str:
        """All message contents joined by blank lines (handy for `in` assertions)."""
        return "\n\n".join(_content_text(m.get("content")) for m in self.messages)


def tokens_of(text: str) -> list[str]:
    """Split a text into tokens that join back to it exactly.

    Each token is one whitespace-separated word with the whitespace before it; trailing
    whitespace goes with the last token.

        >>> tokens_of("s1: f(1)\\ns2: g(s1)\\n")
        ['s1:', ' f(1)', '\\ns2:', ' g(s1)\\n']
    """
    pieces = re.findall(r"\s*\S+", text)
    if not pieces:
        return [text] if text else []
    tail = text[len("".join(pieces)) :]
    pieces[-1] += tail
    return pieces


def count_tokens(text: str) -> int:
    """The server's token count: the number of whitespace-separated words."""
    return len(text.split())


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": "..."}]
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _conforming(reply: str, fmt: Any) -> str | FakeError:
    """The reply, or a `FakeError` when it breaks the request's `response_format`."""
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_schema", "json_object"):
        return reply

    def broken(why: str) -> FakeError:
        return FakeError(500, f"fake LLM: the scripted reply does not honour response_format "
                              f"{fmt.get('type')}: {why}", "fake_script_error")

    try:
        value = json.loads(reply)
    except json.JSONDecodeError as exc:
        return broken(f"it is not JSON ({exc})")
    if fmt["type"] == "json_object":
        return reply if isinstance(value, dict) else broken("it is not a JSON object")
    schema = (fmt.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        return FakeError(400, "response_format.json_schema.schema must be an object",
                         "invalid_request_error")
    import jsonschema  # a dependency of Prefect's; imported only when a schema is asked for

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        where = "/" + "/".join(str(p) for p in exc.absolute_path)
        return broken(f"at {where}: {exc.message[:300]}")
    except jsonschema.SchemaError as exc:
        return FakeError(400, f"response_format schema is invalid: {exc.message[:300]}",
                         "invalid_request_error")
    return reply


class FakeLLM:
    """A scripted OpenAI-compatible server on 127.0.0.1, run in a background thread.

    Args:
        script: replies consumed in order, one per chat completion request.
        api_key: the key clients must send (`Authorization: Bearer ...`); None accepts any.
            A wrong or missing key gets HTTP 401 with OpenAI's error body and consumes
            nothing from the script.
        token_delay: seconds per token (before each streamed token; for the whole reply
            before a non-streamed answer).
        latency: seconds before the first token (time to first byte).
        model: the model id listed by `GET /v1/models` (requests may name any model).
        default: the reply once the script is exhausted; None means HTTP 500.
        port: port to bind; 0 (default) picks a free one.

    Attributes:
        requests: every request received, in order (`RecordedRequest`).

    Examples:
        >>> with FakeLLM(["hello world"]) as llm:
        ...     llm.base_url.startswith("http://127.0.0.1:")
        True
    """

    def __init__(
        self,
        script: Iterable[Reply] = (),
        *,
        api_key: str | None = None,
        token_delay: float = 0.0,
        latency: float = 0.0,
        model: str = "fake-llm",
        default: Reply | None = None,
        port: int = 0,
    ) -> None:
        if token_delay < 0 or latency < 0:
            raise ValueError("token_delay and latency must be >= 0")
        self._script: deque[Reply] = deque(script)
        self._api_key = api_key
        self.token_delay = token_delay
        self.latency = latency
        self.model = model
        self.default = default
        self._port = port
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._counter = 0
        self._tool_calls = 0  # numbers the tool calls the server names

    def __repr__(self) -> str:  # never shows the key
        state = self.base_url if self._server else "stopped"
        return f"FakeLLM({state}, {len(self._script)} replies left)"

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> "FakeLLM":
        """Bind the port and serve in a daemon thread. Returns self."""
        if self._server is not None:
            raise RuntimeError("FakeLLM is already started")
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", self._port), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-llm-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port. Safe to call several times."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeLLM":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeLLM is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL: `http://127.0.0.1:PORT/v1`."""
        return f"{self.url}/v1"

    # -- script -------------------------------------------------------------------------

    def add(self, *replies: Reply) -> None:
        """Append replies to the script."""
        with self._lock:
            self._script.extend(replies)

    @property
    def remaining(self) -> int:
        """How many scripted replies are left."""
        with self._lock:
            return len(self._script)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The chat completion requests that passed the key check, in order."""
        return [
            r for r in list(self.requests) if r.path.endswith("/chat/completions") and r.authorized
        ]

    def _next_reply(self, body: dict[str, Any]) -> str | ToolCalls | FakeError:
        with self._lock:
            reply = self._script.popleft() if self._script else self.default
            self._counter += 1
        if reply is None:
            return FakeError(500, "fake LLM script exhausted", "server_error")
        if isinstance(reply, (FakeError, ToolCalls)):
            return reply
        if callable(reply):
            value = reply(body)
            return value if isinstance(value, ToolCalls) else str(value)
        return str(reply)

    def _wire_tool_calls(self, turn: ToolCalls) -> list[dict[str, Any]]:
        """The turn's calls as OpenAI sends them, each with an id unique on this server."""
        out = []
        for call in turn.calls:
            with self._lock:
                self._tool_calls += 1
                n = self._tool_calls
            out.append({
                "id": call.id or f"call_fake_{n}", "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json()},
            })
        return out

    def _next_id(self) -> str:
        with self._lock:
            return f"chatcmpl-fake-{self._counter}"

    def _authorized(self, header: str | None) -> bool:
        if self._api_key is None:
            return True
        return header == f"Bearer {self._api_key}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client hung up (e.g. closed a stream early): not a server bug
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Serves one connection; HTTP/1.1 with keep-alive, chunked encoding for streams."""

    fake: FakeLLM  # set on the bound subclass
    protocol_version = "HTTP/1.1"
    server_version = "FakeLLM/1.0"
    timeout = 30  # idle keep-alive connections close after this

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    # -- routing ------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        rec = self._record({})
        if not rec.authorized:
            return self._unauthorized(rec)
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            now = int(time.time())
            models = {
                "object": "list",
                "data": [{"id": self.fake.model, "object": "model", "created": now, "owned_by": "llmorch"}],
            }
            return self._send_json(rec, 200, models)
        return self._not_found(rec)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {}
            rec = self._record(body)
            err = FakeError(400, "request body is not JSON", "invalid_request_error")
            return self._send_json(rec, err.status, err.body())
        rec = self._record(body)
        if not rec.authorized:
            return self._unauthorized(rec)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            return self._not_found(rec)
        if not isinstance(body.get("messages"), list):
            err = FakeError(400, "'messages' is a required property", "invalid_request_error")
            return self._send_json(rec, err.status, err.body())

        reply = self.fake._next_reply(body)
        if isinstance(reply, str):
            reply = _conforming(reply, body.get("response_format"))
        if isinstance(reply, FakeError):
            return self._send_json(rec, reply.status, reply.body())
        if isinstance(reply, ToolCalls):
            return self._tool_turn(rec, body, reply)
        finish = "stop"
        if rec.max_tokens is not None and count_tokens(reply) > rec.max_tokens:  # cut, as a real server does
            reply, finish = "".join(tokens_of(reply)[: rec.max_tokens]), "length"
        rec.reply = reply
        if self.fake.latency:
            time.sleep(self.fake.latency)
        if body.get("stream"):
            self._stream(rec, body, reply, finish)
        else:
            self._complete(rec, body, reply, finish)

    # -- answers ------------------------------------------------------------------------

    def _usage(self, body: dict[str, Any], reply: str) -> dict[str, int]:
        prompt = sum(count_tokens(_content_text(m.get("content"))) for m in body["messages"])
        completion = count_tokens(reply)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _complete(self, rec: RecordedRequest, body: dict[str, Any], reply: str, finish: str = "stop") -> None:
        if self.fake.token_delay:
            time.sleep(self.fake.token_delay * len(tokens_of(reply)))
        payload = {
            "id": self.fake._next_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.fake.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": self._usage(body, reply),
        }
        self._send_json(rec, 200, payload)

    def _stream(self, rec: RecordedRequest, body: dict[str, Any], reply: str, finish: str = "stop") -> None:
        chunk_id = self.fake._next_id()
        created = int(time.time())
        model = body.get("model") or self.fake.model

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: dict | None = None) -> dict:
            choices = [] if delta is None else [
                {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            ]
            out: dict[str, Any] = {
                "id": chunk_id, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": choices,
            }
            if usage is not None or (body.get("stream_options") or {}).get("include_usage"):
                out["usage"] = usage
            return out

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._event(chunk({"role": "assistant", "content": ""}))
            for token in tokens_of(reply):
                if self.fake.token_delay:
                    time.sleep(self.fake.token_delay)
                self._event(chunk({"content": token}))
            self._event(chunk({}, finish))
            if (body.get("stream_options") or {}).get("include_usage"):
                self._event(chunk(None, usage=self._usage(body, reply)))
            self._write_chunk(b"data: [DONE]\n\n")
            self._write_chunk(b"")  # end of chunked body
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-stream
        rec.finished_at = time.monotonic()

    # -- tool calls ---------------------------------------------------------------------

    def _tool_turn(self, rec: RecordedRequest, body: dict[str, Any], turn: ToolCalls) -> None:
        rec.reply = turn.content
        rec.tool_calls = self.fake._wire_tool_calls(turn)
        prompt = sum(count_tokens(_content_text(m.get("content"))) for m in body["messages"])
        completion = turn.token_count()
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        if self.fake.latency:
            time.sleep(self.fake.latency)
        if body.get("stream"):
            return self._stream_tool_turn(rec, body, turn.content, rec.tool_calls, usage)
        if self.fake.token_delay:
            time.sleep(self.fake.token_delay * completion)
        message = {"role": "assistant", "content": turn.content or None, "tool_calls": rec.tool_calls}
        payload = {
            "id": self.fake._next_id(), "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or self.fake.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls", "logprobs": None}],
            "usage": usage,
        }
        self._send_json(rec, 200, payload)

    def _stream_tool_turn(
        self, rec: RecordedRequest, body: dict[str, Any], content: str, calls: list[dict[str, Any]],
        usage: dict[str, int],
    ) -> None:
        """Stream as OpenAI does: per call a delta with index, id, type and name, then the
        arguments JSON token by token (one token delay for the name, one per argument token)."""
        base = {"id": self.fake._next_id(), "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.get("model") or self.fake.model}
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            if include_usage:
                out["usage"] = None
            return out

        delay = self.fake.token_delay
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._event(chunk({"role": "assistant", "content": "" if content else None}))
            for token in tokens_of(content):
                time.sleep(delay)
                self._event(chunk({"content": token}))
            for index, call in enumerate(calls):
                time.sleep(delay)
                head = {"index": index, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}
                self._event(chunk({"tool_calls": [head]}))
                for piece in tokens_of(call["function"]["arguments"]):
                    time.sleep(delay)
                    self._event(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
            self._event(chunk({}, "tool_calls"))
            if include_usage:
                self._event({**base, "choices": [], "usage": usage})
            self._write_chunk(b"data: [DONE]\n\n")
            self._write_chunk(b"")  # end of chunked body
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-stream
        rec.finished_at = time.monotonic()

    # -- plumbing -----------------------------------------------------------------------

    def _record(self, body: dict[str, Any]) -> RecordedRequest:
        rec = RecordedRequest(
            method=self.command,
            path=self.path,
            body=body,
            authorized=self.fake._authorized(self.headers.get("Authorization")),
            received_at=time.monotonic(),
        )
        with self.fake._lock:
            self.fake.requests.append(rec)
        return rec

    def _event(self, payload: dict[str, Any]) -> None:
        self._write_chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _send_json(self, rec: RecordedRequest, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        rec.status = status
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        rec.finished_at = time.monotonic()

    def _unauthorized(self, rec: RecordedRequest) -> None:
        # OpenAI's wording; like OpenAI it never echoes the key it was sent.
        err = FakeError(
            401,
            "Incorrect API key provided. You can find your API key in your endpoint's settings.",
            "invalid_request_error",
            "invalid_api_key",
        )
        self._send_json(rec, err.status, err.body())

    def _not_found(self, rec: RecordedRequest) -> None:
        err = FakeError(404, f"Unknown path {self.path}", "invalid_request_error", "not_found")
        self._send_json(rec, HTTPStatus.NOT_FOUND, err.body())


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - manual use
    """Run a fake server from the command line: `python -m prefect_llmorch.testing.fake_llm`."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("replies", nargs="*", help="scripted replies, in order")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--default", default=None, help="reply once the script is exhausted")
    args = parser.parse_args(argv)
    with FakeLLM(args.replies, token_delay=args.token_delay, default=args.default, port=args.port) as llm:
        print(f"fake LLM at {llm.base_url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":  # pragma: no cover
    main()
