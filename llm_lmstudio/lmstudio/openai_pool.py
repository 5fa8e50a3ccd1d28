"""The openai clients this process keeps: one per server, token and timeouts for sync calls, one per event loop for
async calls (closed when that loop shuts down). They send LM Studio its token, if any, and none of the OPENAI_* settings."""

from __future__ import annotations

import os
from typing import Any, TypeVar

import openai

from llm_lmstudio.core import settings

_T = TypeVar("_T")


class DoneStream(openai.Stream[_T]):
    """openai's stream, noting whether the server ended it with `data: [DONE]` (the stream then ended properly even
    when no chunk carried a finish_reason, as in tests/recorded/v1_stream_reasoning_content.sse)."""

    done = False

    def _iter_events(self):
        for event in super()._iter_events():
            self.done = self.done or event.data.startswith("[DONE]")
            yield event


class AsyncDoneStream(openai.AsyncStream[_T]):
    done = False

    async def _iter_events(self):
        async for event in super()._iter_events():
            self.done = self.done or event.data.startswith("[DONE]")
            yield event


def _headers(token: str | None) -> dict[str, Any]:
    """Headers for every request to one server. The openai client would otherwise add OPENAI_ORG_ID, OPENAI_PROJECT_ID
    and OPENAI_CUSTOM_HEADERS (settings meant for OpenAI) to requests that go to LM Studio."""
    custom = os.environ.get("OPENAI_CUSTOM_HEADERS", "")
    headers: dict[str, Any] = {line.split(":", 1)[0].strip(): openai.Omit() for line in custom.splitlines() if ":" in line}
    headers.update({"OpenAI-Organization": openai.Omit(), "OpenAI-Project": openai.Omit()})
    headers["Authorization"] = f"Bearer {token}" if token else openai.Omit()
    return headers


def _request_options(token: str | None) -> dict:
    # Each event of a stream comes as it was sent and the plugin decides what is an error (openai_client.Chunks):
    # in its "legacy" mode the client would also fail a chunk that carries `choices` beside an `error`.
    # Without a token no Authorization header goes out at all (LM Studio's default needs none); the openai client
    # accepts that only when each request says so.
    options: dict = {"stream_mode": "events"}
    if not token:
        options["headers"] = {"Authorization": openai.Omit()}
    return options


def _config(server: settings.Server, token: str | None, connect: float, read: float, http_client) -> dict:
    timeout = openai.Timeout(read, connect=connect)
    return {
        # The token goes in the Authorization header below; api_key only has to be something other than
        # $OPENAI_API_KEY, which the client would otherwise read (and send to LM Studio).
        "api_key": token or "no-token",
        "base_url": server.base_url + "/",
        "timeout": timeout,
        "max_retries": 0,  # a retry would double the wait on a hung or overloaded server; the plugin decides
        "default_headers": _headers(token),
        "http_client": http_client(
            timeout=timeout,
            follow_redirects=False,
            # No TLS is ever used for a plain-http server: skip loading a CA bundle (~80 ms).
            **({"verify": False} if server.base_url.startswith("http://") else {}),
        ),
    }


_SYNC: dict[tuple, openai.OpenAI] = {}


def sync_openai(server: settings.Server, token: str | None, connect: float, read: float) -> tuple[openai.OpenAI, dict]:
    """The process's client for this server and token (kept for keep-alive), and the options each request takes."""
    key = (server.base_url, token, connect, read)
    client = _SYNC.get(key)
    if client is None:
        client = _SYNC[key] = openai.OpenAI(**_config(server, token, connect, read, openai.DefaultHttpx2Client))
    return client, _request_options(token)


# (id of the loop, server, token, timeouts) -> (the loop, its client); an entry leaves when its loop shuts down.
_ASYNC: dict[tuple, tuple[Any, openai.AsyncOpenAI, Any]] = {}


async def async_openai(server: settings.Server, token: str | None, connect: float, read: float) -> tuple[openai.AsyncOpenAI, dict]:
    """The running event loop's client for this server and token, and the options each request takes."""
    import asyncio

    loop = asyncio.get_running_loop()
    key = (id(loop), server.base_url, token, connect, read)
    entry = _ASYNC.get(key)
    if entry is None or entry[0] is not loop:
        for stale in [k for k, (other, _, _) in _ASYNC.items() if other.is_closed()]:
            del _ASYNC[stale]  # a loop closed without shutting down its async generators
        client = openai.AsyncOpenAI(**_config(server, token, connect, read, openai.DefaultAsyncHttpx2Client))
        holder = _closed_with_the_loop(key, client)
        entry = _ASYNC[key] = (loop, client, holder)
        await holder.asend(None)
    return entry[1], _request_options(token)


async def _closed_with_the_loop(key: tuple, client: openai.AsyncOpenAI):
    """Waits, suspended, for the life of the loop: asyncio closes every pending async generator when the loop shuts
    down (asyncio.run calls loop.shutdown_asyncgens()), which closes the client and its connections."""
    try:
        yield
    finally:
        if _ASYNC.get(key, (None, None))[1] is client:
            del _ASYNC[key]
        await client.close()


def async_clients(loop=None) -> list[openai.AsyncOpenAI]:
    """The open async clients (of one event loop, or of all): none once their loops have shut down."""
    return [client for other, client, _ in _ASYNC.values() if loop is None or other is loop]
