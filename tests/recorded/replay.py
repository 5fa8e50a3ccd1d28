"""A loopback HTTP server that answers with responses recorded from real LM Studio servers (see SOURCES.md).
It serves only what a test routes to it, and answers anything else as LM Studio does; it never reaches the network."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).parent
ERRORS = json.loads((HERE / "errors.json").read_text())


def recorded(name: str) -> bytes:
    return (HERE / name).read_bytes()


class Reply:
    """One recorded answer: a status, a content type and the bytes LM Studio sent."""

    def __init__(self, body: bytes, *, status: int = 200, content_type: str = "application/json; charset=utf-8"):
        self.status, self.body, self.content_type = status, body, content_type

    @classmethod
    def file(cls, name: str) -> "Reply":
        kind = "text/event-stream" if name.endswith(".sse") else "application/json; charset=utf-8"
        return cls(recorded(name), content_type=kind)

    @classmethod
    def stream(cls, *events) -> "Reply":
        """A server-sent event stream: each event a JSON value (or text, sent as it is) on one `data:` line."""
        body = "".join(f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n" for event in events)
        return cls(body.encode(), content_type="text/event-stream")

    @classmethod
    def error(cls, name: str) -> "Reply":
        entry = ERRORS[name]
        return cls(json.dumps(entry["body"]).encode(), status=entry["status"])


class ReplayServer:
    """Routes (method, path) to Replies; every request is kept (path, headers, JSON body) for assertions."""

    def __init__(self):
        self.routes: dict[tuple[str, str], Reply] = {}
        self.requests: list[dict] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # headers and body go out in two writes: no ~40 ms delayed-ACK wait

            def _answer(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                replay.requests.append({"method": self.command, "path": self.path, "body": body,
                                        "authorization": self.headers.get("authorization"),
                                        "headers": {name.lower(): value for name, value in self.headers.items()}})
                reply = replay.routes.get((self.command, self.path)) or replay.unknown_route(self.command, self.path)
                data = reply.body
                if b"{token10}" in data:
                    # LM Studio echoes the first ten characters of a malformed token (SOURCES.md).
                    token = (self.headers.get("authorization") or "").removeprefix("Bearer ")
                    data = data.replace(b"{token10}", token[:10].encode())
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # serve_forever checks for shutdown() once per poll interval: 0.5 s by default, paid by every test at teardown.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, name="lmstudio-replay", daemon=True
        )

    @staticmethod
    def unknown_route(method: str, path: str) -> Reply:
        # LM Studio answers routes it does not serve with 200 and this body (lmstudio-bug-tracker#618).
        return Reply(json.dumps({"error": f"Unexpected endpoint or method. ({method} {path})"}).encode())

    def route(self, method: str, path: str, reply: Reply) -> None:
        self.routes[(method, path)] = reply

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def __enter__(self) -> "ReplayServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
