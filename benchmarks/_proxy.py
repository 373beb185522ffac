"""A recording pass-through proxy for an OpenAI-compatible server, for the benchmarks that talk
to a real model: our code is unchanged, the proxy sits where the network is. Per request to
the chat endpoint it records when it was sent, when its first streamed token arrived and when
its answer ended; streamed answers pass on chunk by chunk, as from the server itself."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

__all__ = ["Recorder", "model_client", "proxy"]


class Recorder:
    """Per request to the model's chat endpoint: {"sent", "first", "end"} in epoch seconds."""

    def __init__(self) -> None:
        self.requests: list[dict[str, float | None]] = []
        self.lock = threading.Lock()

    def reset(self) -> None:
        with self.lock:
            self.requests = []

    def count(self) -> int:
        with self.lock:
            return len(self.requests)


def proxy(upstream: str, recorder: Recorder, *, cache_prompt: bool = True) -> ThreadingHTTPServer:
    """Start the proxy to `upstream` on a free port of 127.0.0.1 (`.server_address[1]`;
    `.shutdown()` stops it). `cache_prompt=False` asks llama.cpp not to reuse the prompt it
    kept from the previous request (for latencies that do not depend on the order of runs)."""
    target = urllib.parse.urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _forward(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            chat = "chat/completions" in self.path
            if body and chat and not cache_prompt:
                doc = json.loads(body)
                doc["cache_prompt"] = False
                body = json.dumps(doc).encode()
            row: dict[str, float | None] = {"sent": time.time(), "first": None, "end": None}
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=900)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            conn.request(method, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                    self.send_header(k, v)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while chunk := resp.read1(65536):
                if row["first"] is None and b'"content":"' in chunk and b'"content":""' not in chunk:
                    row["first"] = time.time()
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            row["end"] = time.time()
            row["first"] = row["first"] or row["end"]  # not streamed: the whole answer at once
            conn.close()
            if chat:
                with recorder.lock:
                    recorder.requests.append(row)

        def do_POST(self) -> None:
            self._forward("POST")

        def do_GET(self) -> None:
            self._forward("GET")

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that closed its keep-alive connection: nothing to report

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@contextmanager
def model_client(base_url: str | None, threads: int | None, recorder: Recorder, *, model: str | None = None,
                 cache_prompt: bool = True) -> Iterator[Any]:
    """An `LLMClient` for the model at `base_url` (None: the project's local model, started
    here on a free port and stopped after) behind the recording proxy; closed after."""
    from prefect_llmorch.llm import local
    from prefect_llmorch.llm.client import LLMClient

    server = None if base_url else local.start(port=0, threads=threads)
    http_proxy = proxy(base_url or server.base_url, recorder, cache_prompt=cache_prompt)  # type: ignore[union-attr]
    client = LLMClient(f"http://127.0.0.1:{http_proxy.server_address[1]}/v1", model or local.MODEL_ALIAS,
                       local.API_KEY, timeout=900)
    try:
        yield client
    finally:
        client.close()
        http_proxy.shutdown()
        if server is not None and server.started_in:
            local.stop(server.port)
