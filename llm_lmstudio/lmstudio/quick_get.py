"""A GET of a small JSON document within a hard wall-clock deadline, over the standard library's http.client: the model
listing while llm registers models, and the hung-server probe. Nothing here may import httpx or openai."""

from __future__ import annotations

import http.client
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from llm_lmstudio.core import settings
from llm_lmstudio.lmstudio import errors


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def quick_get_json(server: settings.Server, path: str, *, token: str | None, deadline: float) -> Any:
    """GET a small JSON document within a hard wall-clock deadline (seconds from now).

    Used while llm registers models, where every millisecond counts (the standard library's http.client is already
    imported by llm, httpx would cost ~100 ms to import), and to probe a server that keeps a request waiting.
    """
    end = time.monotonic() + deadline
    parts = urlsplit(server.base_url)
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    remaining = max(end - time.monotonic(), 0.001)
    if parts.scheme == "https":
        import ssl

        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=remaining, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(host, port, timeout=remaining)
    try:
        try:
            connection.connect()
        except OSError:  # socket.timeout included
            raise errors.unreachable(server.base_url) from None
        headers = {"Accept": "application/json", **auth_headers(token)}
        sock = connection.sock  # http.client drops its reference once the response says "close"
        try:
            sock.settimeout(max(end - time.monotonic(), 0.001))
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            chunks = []
            while True:
                sock.settimeout(max(end - time.monotonic(), 0.001))
                piece = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
                if not piece:
                    break
                chunks.append(piece)
                if time.monotonic() > end:
                    raise socket.timeout()
            raw = b"".join(chunks)
        except socket.timeout:
            raise errors.timed_out(server.base_url, deadline, setting=False) from None
        except (OSError, http.client.HTTPException):
            raise errors.StreamCut(f"LM Studio at {server.base_url} closed the connection before answering") from None
        body = errors.parse_body(raw)
        if response.status >= 400:
            raise errors.error_for_status(response.status, body, base_url=server.base_url, token=token)
        if isinstance(body, str):
            raise errors.BadResponse(f"LM Studio at {server.base_url} answered {path} with malformed JSON")
        return body
    finally:
        connection.close()
