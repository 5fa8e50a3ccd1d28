"""Fault injection for the stand-in: the per-test fault registry, plus a refused port and a hung TCP server.
Decides which request misbehaves and how; it must never touch model state or generate text itself."""

from __future__ import annotations

import itertools
import socket
import threading
from dataclasses import asdict, dataclass, field

KINDS = ("hang", "slow", "status", "malformed", "cut", "load_fail", "template")


@dataclass
class Fault:
    """One armed fault. `path` is a prefix; `times=None` means every matching request."""

    kind: str
    path: str = "/"
    method: str | None = None
    times: int | None = None
    status: int = 500  # status: the response status
    body: object = None  # status: a JSON value or a string sent as text/plain
    delay: float = 0.0  # slow: seconds before the response starts
    chunk_delay: float = 0.0  # slow: seconds between SSE chunks
    after_chunks: int = 1  # cut / malformed (SSE): how many good chunks come first
    message: str = "Failed to load model"  # load_fail: the loader's error message
    # template: the chat prediction renders a template jinja rejects (a 400, or an error event in a stream)
    id: int = 0
    hits: int = field(default=0)

    def to_dict(self) -> dict:
        return asdict(self)


class FaultRegistry:
    """Thread-safe list of armed faults; the first match wins and consumes one of its `times`."""

    def __init__(self):
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    def add(self, **spec) -> Fault:
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(KINDS)}")
        allowed = set(Fault.__dataclass_fields__) - {"id", "hits"}
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        fault = Fault(**spec)
        if fault.method:
            fault.method = fault.method.upper()
        with self._lock:
            fault.id = next(self._ids)
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[dict]:
        with self._lock:
            return [f.to_dict() for f in self._faults]

    def _take(self, predicate) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if predicate(fault):
                    fault.hits += 1
                    if fault.times is not None and fault.hits >= fault.times:
                        self._faults.remove(fault)
                    return fault
        return None

    def match(self, method: str, path: str) -> Fault | None:
        """The fault for an HTTP request, if any (load failures are matched by `take_load_fail`)."""
        return self._take(
            lambda f: f.kind != "load_fail"
            and path.startswith(f.path)
            and (f.method is None or f.method == method.upper())
        )

    def take_load_fail(self) -> str | None:
        """Message for the next model load to fail with, whichever interface asked for the load."""
        fault = self._take(lambda f: f.kind == "load_fail")
        return fault.message if fault else None


class RefusedPort:
    """A loopback port that refuses connections: bound (so nobody else takes it) but never listening."""

    def __init__(self):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._sock.close()


class HungServer:
    """A TCP server that accepts connections and never reads or answers, before any HTTP is parsed."""

    def __init__(self):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="hung-server", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._held.append(conn)  # keep it open: the client waits for a reply that never comes

    def close(self) -> None:
        self._closed.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        for conn in self._held:
            conn.close()
