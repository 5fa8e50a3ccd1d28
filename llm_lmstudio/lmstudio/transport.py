"""The one HTTP client for LM Studio (and any OpenAI-compatible) servers: /v1/*, /api/v0|v1,
SSE parsing, auth header, timeouts and error mapping. It never prints, and never lets a token into an error."""
# Over ~450 lines on purpose: the sync and async clients, SSE, LM Studio's error shapes and the start-up fetch
# are the one HTTP layer (DESIGN: all HTTP in server.py); split, each piece would import the others.

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any, AsyncIterator, Iterator, TypeVar
from urllib.parse import urlsplit

from llm_lmstudio.core import settings

START_HINT = "is the server running? Start it with `lms server start` or from the LM Studio app"


class LMStudioError(Exception):
    """A failure talking to LM Studio. `str()` is one line that says what happened and what to do."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class Unreachable(LMStudioError):
    """Nothing answered at the address (refused, no route, unknown host)."""


class TimedOut(LMStudioError):
    """The server accepted the connection but did not answer in time."""


class AuthRequired(LMStudioError):
    """The server wants an API token that we did not send, or rejected the one we sent."""


class ModelNotFound(LMStudioError):
    """The server does not know the model, or cannot load it for this kind of request."""


class ModelLoadFailed(LMStudioError):
    """The server knows the model but failed to load it."""


class RequestFailed(LMStudioError):
    """Any other 4xx/5xx answer; the message carries LM Studio's own words."""


class BadResponse(LMStudioError):
    """The server answered with something that is not the JSON we expected."""


class StreamCut(LMStudioError):
    """A streamed answer stopped before it was complete."""


class BadPrompt(LMStudioError):
    """The request cannot be sent as it stands (text that is not UTF-8); nothing reached the server."""


class ResponseNotFound(LMStudioError):
    """The server no longer knows the `previous_response_id` of a stateful turn (restarted, or another server):
    OpenAI's `previous_response_not_found` code, which LM Studio also sends (lmstudio-bug-tracker#1188)."""


class EndpointMissing(LMStudioError):
    """The server does not serve this route: a 404/405 without a model error, or LM Studio's
    200 `{"error": "Unexpected endpoint or method. (POST /x)"}` (lmstudio-bug-tracker#618)."""


# LM Studio 0.4 echoes the first ten characters of a malformed token ("Malformed LM Studio API token
# provided: sk-bogus-E**************", see tests/recorded/SOURCES.md); any prefix this long is the token's.
_SHORTEST_ECHO = 6


def redact(text: str, token: str | None) -> str:
    """Remove the token, and any echoed start of it, from text that might be shown or logged."""
    if not token:
        return text
    for length in range(len(token), _SHORTEST_ECHO - 1, -1):
        if token[:length] in text:
            text = text.replace(token[:length], "[redacted]")
    return text


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_message_from_body(body: Any) -> tuple[str | None, str | None]:
    """Return (message, code) from LM Studio's error shapes: {"error": {...}}, {"error": "..."} or text."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, str):
            return error, None
        if isinstance(error, dict):
            message = error.get("message")
            # LM Studio's /api/v1 errors name their kind in `type` and have no `code` ({"type": "model_not_found"},
            # "not_implemented": lmstudio-bug-tracker#1462, #1438); OpenAI-shaped ones carry `code`, null or not.
            code = error.get("code") if "code" in error else error.get("type")
            return (str(message) if message is not None else None), (str(code) if code is not None else None)
        return None, None
    if isinstance(body, str) and body.strip():
        return body.strip(), None
    return None, None


def _parse_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def auth_error(base_url: str, *, token_sent: bool, status: int | None = None, code: str | None = None,
               malformed: bool = False) -> AuthRequired:
    """The one wording for a refused or missing token. It never quotes the server, which may echo
    the start of the token back."""
    if not token_sent:
        message = f"LM Studio at {base_url} requires an API token: run `llm keys set lmstudio` or set $LM_API_TOKEN"
    else:
        how = "rejected the API token as malformed" if malformed else "rejected the API token"
        message = (
            f"LM Studio at {base_url} {how}: check it with `llm keys set lmstudio` (or $LM_API_TOKEN) "
            "against Developer → Server Settings → Manage Tokens"
        )
    return AuthRequired(message, status=status, code=code)


def _template_error(message: str, model: str | None) -> str:
    # LM Studio's jinja failures run to several paragraphs of advice; keep the cause and one instruction.
    cause = message.split("This is usually an issue", 1)[0].strip().rstrip(".")
    return (
        f"LM Studio could not apply the prompt template of {model or 'the model'} ({_one_line(cause, 200)}): "
        "use an lmstudio-community build of the model, or fix the template in LM Studio "
        "(My Models > model settings > Prompt Template)"
    )


def error_for_status(
    status: int | None, body: Any, *, base_url: str, token: str | None, model: str | None = None
) -> LMStudioError:
    """Map an error answer to the exception (and one-line message) a user should see.

    `status` is None for an error that arrived inside a 200 stream. Shapes are LM Studio's: 400 for an
    unknown model, "no models loaded" and a failed JIT load (404 before 0.3.6), 200 for an unknown route,
    401 for tokens; see tests/recorded/SOURCES.md."""
    message, code = error_message_from_body(body)
    raw = redact(message or "", token)
    message = _one_line(raw)
    lowered = message.lower()
    if status == 401 or code == "invalid_api_key":
        return auth_error(base_url, token_sent=bool(token), status=status, code=code, malformed="malformed" in lowered)
    if code == "previous_response_not_found" or "previous_response_not_found" in lowered or (
        "not found" in lowered and ("previous response" in lowered or "prediction history node" in lowered)
    ):
        # The code is OpenAI's; LM Studio 0.3.31 words it "Prediction history node with id '…' not found while
        # attempting to build chat history chain" (lmstudio-bug-tracker#1188). Checked before the 404 rule below.
        return ResponseNotFound(f"LM Studio at {base_url} no longer knows the previous response", status=status, code=code)
    if "unexpected endpoint or method" in lowered:
        return EndpointMissing(f"LM Studio at {base_url}: {message}", status=status, code=code)
    if "jinja template" in lowered:
        return RequestFailed(_template_error(raw, model), status=status, code=code)
    if "failed to load" in lowered or "error loading" in lowered:
        if "not embedding" in lowered or "not an llm" in lowered:
            return ModelNotFound(f"LM Studio at {base_url}: {message}", status=status, code=code)
        return ModelLoadFailed(f"LM Studio could not load {model or 'the model'}: {message}", status=status, code=code)
    if code == "model_not_found" or "no models loaded" in lowered or "invalid model identifier" in lowered:
        detail = message or f"model {model!r} not found"
        return ModelNotFound(f"LM Studio at {base_url}: {detail}", status=status, code=code)
    if status in (404, 405):
        # Not LM Studio's model errors (those say so above): this server has no such route.
        return EndpointMissing(f"{base_url} does not serve this endpoint (HTTP {status})", status=status, code=code)
    if status is None:
        return RequestFailed(f"LM Studio at {base_url} stopped the answer: {message or 'unknown error'}", code=code)
    kind = "server error" if status >= 500 else "request rejected"
    detail = message or f"HTTP {status}"
    return RequestFailed(f"LM Studio at {base_url}: {kind} (HTTP {status}): {detail}", status=status, code=code)


def unreachable(base_url: str) -> Unreachable:
    return Unreachable(f"LM Studio is not reachable at {base_url} — {START_HINT}")


def not_lmstudio(base_url: str, detail: str = "no /lmstudio-greeting") -> BadResponse:
    """The one verdict (status, ps, the model list) for an HTTP server that answers but is not LM Studio."""
    return BadResponse(f"{base_url} answered, but it is not LM Studio ({detail})")


def timed_out(base_url: str, seconds: float, *, setting: bool = True) -> TimedOut:
    """`setting`: the wait was LMSTUDIO_TIMEOUT's, so raising it can help (not for fixed, short waits)."""
    hint = " (raise LMSTUDIO_TIMEOUT if the model is slow to load)" if setting else ""
    return TimedOut(f"LM Studio at {base_url} accepted the connection but did not answer within {seconds:g} s{hint}")


def _check_body_error(data: Any, *, base_url: str, token: str | None, model: str | None) -> None:
    # LM Studio sometimes answers 200 with an error body ("Returning 200 anyway"): always look.
    # A /v1/responses answer always carries `"error": null` beside its `output`.
    if isinstance(data, dict) and data.get("error") is not None and not any(k in data for k in ("choices", "data", "models", "output")):
        raise error_for_status(200, data, base_url=base_url, token=token, model=model)


# ---------------------------------------------------------------- SSE


class SSEDecoder:
    """Server-Sent Events, fed one line at a time: returns each event's data once its blank line arrives
    (per the SSE spec: `data:` lines joined with newlines, comments and other fields ignored)."""

    def __init__(self):
        self.buffer: list[str] = []

    def feed(self, line: str) -> list[str]:
        line = line.rstrip("\r\n")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return []
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self.buffer.append(value)
        return []

    def flush(self) -> list[str]:
        events = ["\n".join(self.buffer)] if self.buffer else []
        self.buffer = []
        return events


class _StreamState:
    """Turns SSE data strings into JSON chunks, knowing when a stream ended properly."""

    def __init__(self, base_url: str, token: str | None, model: str | None):
        self.base_url = base_url
        self.token = token
        self.model = model
        self.done = False
        self.finished = False  # saw a finish_reason
        self.sse = SSEDecoder()

    def feed_line(self, line: str) -> list[dict]:
        """The JSON chunks completed by one more line of the stream (none after [DONE])."""
        return self._chunks(self.sse.feed(line))

    def end_of_lines(self) -> list[dict]:
        return self._chunks(self.sse.flush())

    def _chunks(self, events: list[str]) -> list[dict]:
        chunks = []
        for data in events:
            if self.done:
                break
            chunk = self.decode(data)
            if chunk is not None:
                chunks.append(chunk)
        return chunks

    def decode(self, data: str) -> dict | None:
        if data.strip() == "[DONE]":
            self.done = True
            return None
        try:
            chunk = json.loads(data)
        except ValueError:
            raise BadResponse(
                f"LM Studio at {self.base_url} sent a malformed stream chunk: {_one_line(redact(data, self.token), 120)}"
            ) from None
        if not isinstance(chunk, dict):
            raise BadResponse(f"LM Studio at {self.base_url} sent a stream chunk that is not a JSON object")
        self.check(chunk)
        return chunk

    def check(self, chunk: dict) -> None:
        """A chat completion chunk: raise the error it carries; note a finish_reason."""
        if "error" in chunk and "choices" not in chunk:
            # An error event inside a 200 stream (a prompt-template failure, for one: zed#45379).
            raise error_for_status(None, chunk, base_url=self.base_url, token=self.token, model=self.model)
        choices = chunk.get("choices")
        if choices is not None and not isinstance(choices, list):
            raise BadResponse(f"LM Studio at {self.base_url} sent a stream chunk whose choices are not a list")
        for choice in choices or []:
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finished = True

    def cut(self, reason: str) -> StreamCut:
        return StreamCut(f"the response from LM Studio at {self.base_url} was cut off mid-stream ({reason})")

    def check_complete(self) -> None:
        if not (self.done or self.finished):
            raise self.cut("the connection closed before the end of the answer")


class _ResponsesStreamState(_StreamState):
    """A /v1/responses stream: typed events (`response.created`, `response.output_text.delta`, …) that end with
    `response.completed` or `response.incomplete`; failures arrive as an `error` event or `response.failed`
    (platform.openai.com/docs/api-reference/responses-streaming, which LM Studio's docs point to)."""

    def check(self, chunk: dict) -> None:
        kind = chunk.get("type")
        if kind == "error":
            failure = chunk.get("error") if isinstance(chunk.get("error"), dict) else chunk
            raise error_for_status(None, {"error": failure}, base_url=self.base_url, token=self.token, model=self.model)
        if kind == "response.failed":
            failure = (chunk.get("response") or {}).get("error") if isinstance(chunk.get("response"), dict) else None
            raise error_for_status(None, {"error": failure or "the answer failed"}, base_url=self.base_url,
                                   token=self.token, model=self.model)
        if kind in ("response.completed", "response.incomplete"):
            self.finished = True


# ---------------------------------------------------------------- clients

T = TypeVar("T")
# LMSTUDIO_TIMEOUT is long (300 s) because a JIT load can be slow. A request still waiting for its first byte
# after PROBE_AFTER seconds asks the server for its model list on another connection (every PROBE_EVERY s):
# a server that answers is busy (loading, or reading a long prompt) and is waited for; one that does not answer
# that either is hung, and the request fails now rather than minutes later.
PROBE_AFTER = 3.0
PROBE_EVERY = 15.0


def _is_json(response) -> bool:
    return response.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


# ---------------------------------------------------------------- which chat endpoint

NATIVE_CHAT = "/api/v0/chat/completions"
OPENAI_CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"  # OpenAI's Responses API, stateful with previous_response_id: LM Studio 0.3.29+


def chat_paths(listing: str) -> list[str]:
    """Where to send a chat completion, best first, for sync and async clients alike.

    LM Studio's native /api/v0 (0.3.6+) adds `stats`, `model_info` and `runtime`; every LM Studio and any
    OpenAI-compatible server has /v1. A model found in the v0 listing tries v0 first, then /v1 when the
    server does not serve v0 (EndpointMissing)."""
    return [NATIVE_CHAT, OPENAI_CHAT] if listing == "v0" else [OPENAI_CHAT]


def _unless_last(paths: list[str], path: str, missing: EndpointMissing) -> None:
    """An endpoint was missing: the caller tries the next one, unless none is left."""
    if path == paths[-1]:
        raise missing


def _json_body(payload: dict) -> dict:
    """The request body, encoded as httpx encodes `json=`, refusing text that is not UTF-8 in one line: the
    encoder's own error message holds the whole body, and with it the prompt."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        # Bytes that were not UTF-8 on stdin arrive as lone surrogates U+DC80..U+DCFF (Python's surrogateescape).
        what = f"the byte 0x{code - 0xDC00:02X}" if 0xDC80 <= code <= 0xDCFF else f"the lone surrogate U+{code:04X}"
        raise BadPrompt(
            f"the prompt is not valid UTF-8 text (it contains {what}): convert it first (e.g. `iconv -t UTF-8`), "
            "or attach a binary file with -a"
        ) from None
    return {"content": body, "headers": {"Content-Type": "application/json"}}


def _auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class _ClientBase:
    def __init__(
        self,
        server: settings.Server,
        *,
        token: str | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ):
        limits = settings.timeouts()
        self.server = server
        self.base_url = server.base_url
        self.token = token
        self.chat_path: str | None = None  # the endpoint the last stream_chat used
        self.connect_timeout = connect_timeout if connect_timeout is not None else limits.connect
        self.read_timeout = read_timeout if read_timeout is not None else limits.read
        self._read_timeout_is_setting = read_timeout is None

    def _httpx_kwargs(self) -> dict:
        import httpx

        kwargs: dict = {
            "base_url": self.base_url,
            "headers": _auth_headers(self.token),
            "timeout": httpx.Timeout(self.read_timeout, connect=self.connect_timeout),
            "follow_redirects": False,
        }
        if self.base_url.startswith("http://"):
            # No TLS is ever used for a plain-http server; skip loading a CA bundle (~80 ms).
            kwargs["verify"] = False
        return kwargs

    def _translate(self, exc: Exception) -> LMStudioError:
        import httpx

        if isinstance(exc, LMStudioError):
            return exc
        if isinstance(exc, httpx.ConnectTimeout):
            return unreachable(self.base_url)
        if isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)):
            return timed_out(self.base_url, self.read_timeout, setting=self._read_timeout_is_setting)
        if isinstance(exc, httpx.ConnectError):
            return unreachable(self.base_url)
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
            return StreamCut(f"LM Studio at {self.base_url} closed the connection before the answer was complete")
        if isinstance(exc, httpx.HTTPError):
            return RequestFailed(f"LM Studio at {self.base_url}: {_one_line(redact(str(exc), self.token))}")
        return RequestFailed(f"LM Studio at {self.base_url}: {_one_line(redact(repr(exc), self.token))}")

    def _watching(self) -> bool:
        return self.read_timeout > PROBE_AFTER + self.connect_timeout + 3.0

    def _alive(self) -> bool:
        """Does the server answer a model listing (any HTTP answer counts) on another connection, quickly?"""
        try:
            quick_get_json(self.server, "/v1/models", token=self.token, deadline=self.connect_timeout + PROBE_AFTER)
        except (TimedOut, Unreachable, StreamCut):
            return False
        except LMStudioError:
            pass
        return True

    def _hung(self, started: float) -> TimedOut:
        return TimedOut(
            f"LM Studio at {self.base_url} accepted the connection but did not answer within "
            f"{time.monotonic() - started:.0f} s, nor did its model listing: it looks hung "
            "(restart it: `lms server stop`, then `lms server start`)"
        )

    def _status_error(self, response, model: str | None) -> LMStudioError:
        """The error for a streamed request's failed status (its body already read)."""
        return error_for_status(
            response.status_code, _parse_body(response.content), base_url=self.base_url, token=self.token, model=model
        )

    def _stream_failure(self, exc: Exception, state: "_StreamState") -> LMStudioError:
        """A transport failure during a stream: a dropped connection is a cut stream, the rest as usual."""
        error = self._translate(exc)
        return state.cut("the connection dropped") if isinstance(error, StreamCut) else error

    def _not_a_stream(self, response, model: str | None) -> LMStudioError:
        """A stream request answered with one JSON document (LM Studio's 200 "Unexpected endpoint"
        body, for one): the server's error, not a stream cut off mid-way."""
        body = _parse_body(response.content)
        if isinstance(body, dict) and "error" in body:
            return error_for_status(response.status_code, body, base_url=self.base_url, token=self.token, model=model)
        return BadResponse(f"LM Studio at {self.base_url} answered a streamed request without a stream")

    def _decode_json(self, response, model: str | None) -> Any:
        body = _parse_body(response.content)
        if response.status_code >= 400:
            raise error_for_status(response.status_code, body, base_url=self.base_url, token=self.token, model=model)
        if isinstance(body, str):
            raise BadResponse(
                f"LM Studio at {self.base_url} answered {response.request.url.path} with malformed JSON: "
                f"{_one_line(redact(body, self.token), 120)}"
            )
        _check_body_error(body, base_url=self.base_url, token=self.token, model=model)
        return body


_SYNC_CLIENTS: dict[tuple, Any] = {}


class Client(_ClientBase):
    """Synchronous client. The underlying httpx client is shared per process and server, for keep-alive."""

    def _http(self):
        key = (self.base_url, self.token, self.connect_timeout, self.read_timeout)
        client = _SYNC_CLIENTS.get(key)
        if client is None:
            import httpx

            client = httpx.Client(**self._httpx_kwargs())
            _SYNC_CLIENTS[key] = client
        return client

    def get_json(self, path: str, *, model: str | None = None) -> Any:
        try:
            response = self._http().get(path)
            return self._decode_json(response, model)
        except Exception as exc:
            raise self._translate(exc) from None

    def post_json(self, path: str, payload: dict) -> Any:
        model = payload.get("model")

        def answer() -> Iterator[Any]:
            yield self._decode_json(self._http().post(path, **_json_body(payload)), model)

        try:
            return next(self._first_watched(answer()))
        except Exception as exc:
            raise self._translate(exc) from None

    def _first_watched(self, items: Iterator[T]) -> Iterator[T]:
        """`items`, whose first one is awaited in a helper thread while the server is probed (see PROBE_AFTER)."""
        if not self._watching():
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
            if not self._alive() and not arrived.is_set():
                # The helper thread stays blocked until the read timeout; nothing waits for it.
                raise self._hung(started)
            wait = PROBE_EVERY
        if isinstance(box.get("error"), StopIteration):
            return
        if "error" in box:
            raise box["error"]
        yield box["item"]
        yield from items

    def stream(self, path: str, payload: dict, events: type[_StreamState] = _StreamState) -> Iterator[dict]:
        """POST with stream=true; yield each JSON chunk; raise StreamCut if the stream ends early."""
        yield from self._first_watched(self._stream(path, payload, events))

    def responses(self, payload: dict) -> dict:
        """POST a whole /v1/responses request (EndpointMissing where the server has none)."""
        return self.post_json(RESPONSES, payload)

    def stream_responses(self, payload: dict) -> Iterator[dict]:
        """Stream a /v1/responses request: its typed events, in order."""
        return self.stream(RESPONSES, payload, _ResponsesStreamState)

    def _stream(self, path: str, payload: dict, events: type[_StreamState]) -> Iterator[dict]:
        model = payload.get("model")
        state = events(self.base_url, self.token, model)
        try:
            with self._http().stream("POST", path, **_json_body(payload)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._status_error(response, model)
                if _is_json(response):
                    response.read()
                    raise self._not_a_stream(response, model)
                for line in response.iter_lines():
                    yield from state.feed_line(line)
                    if state.done:
                        return
                yield from state.end_of_lines()
        except LMStudioError:
            raise
        except Exception as exc:
            raise self._stream_failure(exc, state) from None
        state.check_complete()

    def chat(self, payload: dict, paths: list[str]) -> tuple[str, dict]:
        """POST a chat completion to the first of `paths` (see chat_paths) that serves it."""
        for path in paths:
            try:
                return path, self.post_json(path, payload)
            except EndpointMissing as exc:
                _unless_last(paths, path, exc)
        raise ValueError("no chat endpoint to try")

    def stream_chat(self, payload: dict, paths: list[str]) -> Iterator[dict]:
        """Stream a chat completion from the first of `paths` that serves it; `self.chat_path` names it."""
        for path in paths:
            self.chat_path = path
            stream = self.stream(path, payload)
            try:
                first = next(stream, None)
            except EndpointMissing as exc:
                _unless_last(paths, path, exc)
                continue
            if first is not None:
                yield first
                yield from stream
            return

    def greeting(self) -> bool:
        """True when the server says it is LM Studio; False for any other HTTP server."""
        try:
            body = self.get_json("/lmstudio-greeting")
        except (EndpointMissing, ModelNotFound, RequestFailed, BadResponse):
            return False
        return isinstance(body, dict) and body.get("lmstudio") is True


_ASYNC_CLIENTS: dict[tuple, Any] = {}


class AsyncClient(_ClientBase):
    """Asynchronous client, one httpx.AsyncClient per event loop and server."""

    def _http(self):
        import asyncio

        loop = asyncio.get_running_loop()
        key = (id(loop), self.base_url, self.token, self.connect_timeout, self.read_timeout)
        entry = _ASYNC_CLIENTS.get(key)
        if entry is None or entry[0] is not loop:
            import httpx

            entry = (loop, httpx.AsyncClient(**self._httpx_kwargs()))
            _ASYNC_CLIENTS[key] = entry
        return entry[1]

    async def get_json(self, path: str, *, model: str | None = None) -> Any:
        try:
            response = await self._http().get(path)
            return self._decode_json(response, model)
        except Exception as exc:
            raise self._translate(exc) from None

    async def post_json(self, path: str, payload: dict) -> Any:
        model = payload.get("model")

        async def answer() -> AsyncIterator[Any]:
            yield self._decode_json(await self._http().post(path, **_json_body(payload)), model)

        try:
            async for body in self._first_watched(answer()):
                return body
        except Exception as exc:
            raise self._translate(exc) from None

    async def _first_watched(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """`items`, whose first one is awaited while the server is probed (see PROBE_AFTER)."""
        import asyncio

        if not self._watching():
            async for item in items:
                yield item
            return
        started = time.monotonic()
        first = asyncio.ensure_future(items.__anext__())
        wait = PROBE_AFTER
        while not (await asyncio.wait({first}, timeout=wait))[0]:
            if not await asyncio.to_thread(self._alive) and not first.done():
                first.cancel()
                raise self._hung(started)
            wait = PROBE_EVERY
        try:
            item = first.result()
        except StopAsyncIteration:
            return
        yield item
        async for item in items:
            yield item

    async def stream(self, path: str, payload: dict, events: type[_StreamState] = _StreamState) -> AsyncIterator[dict]:
        async for chunk in self._first_watched(self._stream(path, payload, events)):
            yield chunk

    async def responses(self, payload: dict) -> dict:
        return await self.post_json(RESPONSES, payload)

    def stream_responses(self, payload: dict) -> AsyncIterator[dict]:
        return self.stream(RESPONSES, payload, _ResponsesStreamState)

    async def _stream(self, path: str, payload: dict, events: type[_StreamState]) -> AsyncIterator[dict]:
        model = payload.get("model")
        state = events(self.base_url, self.token, model)
        try:
            async with self._http().stream("POST", path, **_json_body(payload)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._status_error(response, model)
                if _is_json(response):
                    await response.aread()
                    raise self._not_a_stream(response, model)
                async for line in response.aiter_lines():
                    for chunk in state.feed_line(line):
                        yield chunk
                    if state.done:
                        return
                for chunk in state.end_of_lines():
                    yield chunk
        except LMStudioError:
            raise
        except Exception as exc:
            raise self._stream_failure(exc, state) from None
        state.check_complete()


    async def chat(self, payload: dict, paths: list[str]) -> tuple[str, dict]:
        for path in paths:
            try:
                return path, await self.post_json(path, payload)
            except EndpointMissing as exc:
                _unless_last(paths, path, exc)
        raise ValueError("no chat endpoint to try")

    async def stream_chat(self, payload: dict, paths: list[str]) -> AsyncIterator[dict]:
        for path in paths:
            self.chat_path = path
            stream = self.stream(path, payload)
            try:
                first = await anext(stream, None)
            except EndpointMissing as exc:
                _unless_last(paths, path, exc)
                continue
            if first is not None:
                yield first
                async for chunk in stream:
                    yield chunk
            return


# ---------------------------------------------------------------- discovery fetch


def quick_get_json(server: settings.Server, path: str, *, token: str | None, deadline: float) -> Any:
    """GET a small JSON document within a hard wall-clock deadline (seconds from now).

    Used while llm registers models, where every millisecond counts: the standard library's
    http.client is already imported by llm, httpx would cost ~100 ms to import.
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
        except socket.timeout:
            raise unreachable(server.base_url) from None
        except OSError:
            raise unreachable(server.base_url) from None
        headers = {"Accept": "application/json", **_auth_headers(token)}
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
            raise timed_out(server.base_url, deadline, setting=False) from None
        except (OSError, http.client.HTTPException):
            raise StreamCut(f"LM Studio at {server.base_url} closed the connection before answering") from None
        body = _parse_body(raw)
        if response.status >= 400:
            raise error_for_status(response.status, body, base_url=server.base_url, token=token)
        if isinstance(body, str):
            raise BadResponse(f"LM Studio at {server.base_url} answered {path} with malformed JSON")
        return body
    finally:
        connection.close()
