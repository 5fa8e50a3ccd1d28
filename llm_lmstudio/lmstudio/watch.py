"""The hung-server watch: while a request waits for its first answer, ask the server for its model list on another
connection, and fail the request early when that goes unanswered too. It never decides how long a busy server may take."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Iterator, TypeVar

from llm_lmstudio.core import settings
from llm_lmstudio.lmstudio import errors
from llm_lmstudio.lmstudio.quick_get import quick_get_json

T = TypeVar("T")
# LMSTUDIO_TIMEOUT is long (300 s) because a JIT load can be slow. A request still waiting for its first byte
# after PROBE_AFTER seconds asks the server for its model list on another connection (every PROBE_EVERY s):
# a server that answers is busy (loading, or reading a long prompt) and is waited for; one that does not answer
# that either is hung, and the request fails now rather than minutes later.
PROBE_AFTER = 3.0
PROBE_EVERY = 15.0


class Watch:
    """The watch for requests to one server with one token and these timeouts."""

    def __init__(self, server: settings.Server, token: str | None, connect_timeout: float, read_timeout: float):
        self.server = server
        self.token = token
        self.connect_timeout = connect_timeout
        # Only a read timeout that outlasts a probe is worth watching (status and short timeouts are not).
        self.active = read_timeout > PROBE_AFTER + connect_timeout + 3.0

    def alive(self) -> bool:
        """Does the server answer a model listing (any HTTP answer counts) on another connection, quickly?"""
        try:
            quick_get_json(self.server, "/v1/models", token=self.token, deadline=self.connect_timeout + PROBE_AFTER)
        except (errors.TimedOut, errors.Unreachable, errors.StreamCut):
            return False
        except errors.LMStudioError:
            pass
        return True

    def first(self, items: Iterator[T]) -> Iterator[T]:
        """`items`, whose first one is awaited in a helper thread while the server is probed."""
        if not self.active:
            yield from items
            return
        import threading

        box: dict[str, Any] = {}
        arrived = threading.Event()

        def first():
            try:
                box["item"] = next(items)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = exc
            arrived.set()

        started = time.monotonic()
        threading.Thread(target=first, name="lmstudio-first-answer", daemon=True).start()
        wait = PROBE_AFTER
        while not arrived.wait(wait):
            if not self.alive() and not arrived.is_set():
                # The helper thread stays blocked until the read timeout; nothing waits for it.
                raise errors.hung(self.server.base_url, time.monotonic() - started)
            wait = PROBE_EVERY
        if isinstance(box.get("error"), StopIteration):
            return
        if "error" in box:
            raise box["error"]
        yield box["item"]
        yield from items

    async def afirst(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """`items`, whose first one is awaited while the server is probed."""
        import asyncio

        if not self.active:
            async for item in items:
                yield item
            return
        started = time.monotonic()
        first = asyncio.ensure_future(items.__anext__())
        wait = PROBE_AFTER
        while not (await asyncio.wait({first}, timeout=wait))[0]:
            if not await asyncio.to_thread(self.alive) and not first.done():
                first.cancel()
                raise errors.hung(self.server.base_url, time.monotonic() - started)
            wait = PROBE_EVERY
        try:
            item = first.result()
        except StopAsyncIteration:
            return
        yield item
        async for item in items:
            yield item
