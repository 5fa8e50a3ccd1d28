"""The OpenAI-compatible endpoints (chat completions on /v1 and LM Studio's /api/v0, /v1/responses, /v1/embeddings)
through the `openai` client: one per server and token (per event loop for async, closed with it), the plugin's timeouts,
no retries. Answers come back as the JSON the server sent, LM Studio's own fields included. It never prints."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Iterator

from llm_lmstudio.core import settings
from llm_lmstudio.lmstudio import errors
from llm_lmstudio.lmstudio.openai_pool import AsyncDoneStream, DoneStream, async_openai, sync_openai
from llm_lmstudio.lmstudio.watch import Watch

NATIVE_CHAT = "/api/v0/chat/completions"
OPENAI_CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"  # OpenAI's Responses API, stateful with previous_response_id: LM Studio 0.3.29+
EMBEDDINGS = "/v1/embeddings"


def chat_paths(listing: str) -> list[str]:
    """Where to send a chat completion, best first.

    LM Studio's native /api/v0 (0.3.6+) adds `stats`, `model_info` and `runtime`; every LM Studio and any
    OpenAI-compatible server has /v1. A model found in the v0 listing tries v0 first, then /v1 when the
    server does not serve v0 (EndpointMissing)."""
    return [NATIVE_CHAT, OPENAI_CHAT] if listing == "v0" else [OPENAI_CHAT]


class Chunks:
    """A chat completion stream's items, checked as they arrive: errors inside the stream raised, the end noted."""

    def __init__(self, base_url: str, token: str | None, model: str | None):
        self.base_url = base_url
        self.token = token
        self.model = model
        self.done = False  # saw [DONE]
        self.finished = False  # saw a finish_reason

    def item(self, chunk: Any) -> dict:
        if not isinstance(chunk, dict):
            raise errors.BadResponse(f"LM Studio at {self.base_url} sent a stream chunk that is not a JSON object")
        self.check(chunk)
        return chunk

    def check(self, chunk: dict) -> None:
        """A chat completion chunk: raise the error it carries; note a finish_reason."""
        if "error" in chunk and "choices" not in chunk:
            # An error event inside a 200 stream (a prompt-template failure, for one: zed#45379).
            raise errors.error_for_status(None, chunk, base_url=self.base_url, token=self.token, model=self.model)
        choices = chunk.get("choices")
        if choices is not None and not isinstance(choices, list):
            raise errors.BadResponse(f"LM Studio at {self.base_url} sent a stream chunk whose choices are not a list")
        for choice in choices or []:
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finished = True

    def malformed(self, data: str) -> errors.BadResponse:
        return errors.BadResponse(
            f"LM Studio at {self.base_url} sent a malformed stream chunk: {errors.one_line(errors.redact(data, self.token), 120)}"
        )

    def cut(self, reason: str) -> errors.StreamCut:
        return errors.StreamCut(f"the response from LM Studio at {self.base_url} was cut off mid-stream ({reason})")

    def check_complete(self) -> None:
        if not (self.done or self.finished):
            raise self.cut("the connection closed before the end of the answer")


class ResponsesEvents(Chunks):
    """A /v1/responses stream: typed events (`response.created`, `response.output_text.delta`, …) that end with
    `response.completed` or `response.incomplete`; failures arrive as an `error` event or `response.failed`
    (platform.openai.com/docs/api-reference/responses-streaming, which LM Studio's docs point to)."""

    def check(self, chunk: dict) -> None:
        kind = chunk.get("type")
        if kind == "error":
            failure = chunk.get("error") if isinstance(chunk.get("error"), dict) else chunk
            raise errors.error_for_status(None, {"error": failure}, base_url=self.base_url, token=self.token, model=self.model)
        if kind == "response.failed":
            failure = (chunk.get("response") or {}).get("error") if isinstance(chunk.get("response"), dict) else None
            raise errors.error_for_status(None, {"error": failure or "the answer failed"}, base_url=self.base_url,
                                          token=self.token, model=self.model)
        if kind in ("response.completed", "response.incomplete"):
            self.finished = True


def _unless_last(paths: list[str], path: str, missing: errors.EndpointMissing) -> None:
    """An endpoint was missing: the caller tries the next one, unless none is left."""
    if path == paths[-1]:
        raise missing


class _Calls:
    """What the sync and async clients share: configuration, and turning the openai client's answers and
    exceptions into dicts and the plugin's errors."""

    def __init__(self, server: settings.Server, *, token: str | None = None, read_timeout: float | None = None):
        limits = settings.timeouts()
        self.server = server
        self.base_url = server.base_url
        self.token = token
        self.connect_timeout = limits.connect
        self.read_timeout = limits.read if read_timeout is None else read_timeout
        self._read_timeout_is_setting = read_timeout is None
        self.watch = Watch(server, token, self.connect_timeout, self.read_timeout)

    def _failed(self, exc: BaseException, path: str, model: str | None, chunks: Chunks | None = None) -> errors.LMStudioError:
        """The plugin's error for an exception out of the openai client (or out of our own checks)."""
        import openai

        if isinstance(exc, errors.LMStudioError):
            return exc
        if isinstance(exc, openai.APIStatusError):
            body = errors.parse_body(exc.response.content)
            return errors.error_for_status(exc.status_code, body, base_url=self.base_url, token=self.token, model=model)
        if isinstance(exc, openai.APIConnectionError):  # APITimeoutError included; the cause is httpx2's
            error = errors.transport_error(exc.__cause__ or exc, base_url=self.base_url, token=self.token,
                                           read_timeout=self.read_timeout, setting=self._read_timeout_is_setting)
            if chunks is not None and isinstance(error, errors.StreamCut):
                return chunks.cut("the connection dropped")
            return error
        if isinstance(exc, json.JSONDecodeError):
            if chunks is not None:
                return chunks.malformed(exc.doc)
            return errors.malformed_json(self.base_url, path, exc.doc, self.token)
        return errors.transport_error(exc, base_url=self.base_url, token=self.token, read_timeout=self.read_timeout,
                                      setting=self._read_timeout_is_setting)

    def _answer(self, body: Any, path: str, model: str | None) -> dict:
        """A whole (not streamed) answer as a dict; LM Studio's 200 error bodies raised."""
        if isinstance(body, str):  # the openai client hands back a body that is not JSON as text
            raise errors.malformed_json(self.base_url, path, body, self.token)
        if not isinstance(body, dict):
            raise errors.BadResponse(f"LM Studio at {self.base_url} answered {path} with JSON that is not an object")
        errors.check_body_error(body, base_url=self.base_url, token=self.token, model=model)
        return body

    def _not_a_stream(self, response, model: str | None) -> errors.LMStudioError:
        """A stream request answered with one JSON document (LM Studio's 200 "Unexpected endpoint"
        body, for one): the server's error, not a stream cut off mid-way."""
        body = errors.parse_body(response.content)
        if isinstance(body, dict) and "error" in body:
            return errors.error_for_status(response.status_code, body, base_url=self.base_url, token=self.token, model=model)
        return errors.BadResponse(f"LM Studio at {self.base_url} answered a streamed request without a stream")


def _is_json(response) -> bool:
    return response.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


class Client(_Calls):
    """The OpenAI-compatible endpoints of one server, synchronously."""

    def _post(self, path: str, payload: dict, stream: bool):
        # cast_to=object: the JSON as the server sent it (LM Studio's stats, model_info and runtime included), not
        # openai's pydantic objects: building and dumping one costs 0.1-0.3 ms, for every chunk, to get the same dict.
        # The body goes pre-encoded (errors.json_body refuses a prompt that is not UTF-8 before anything is sent).
        client, options = sync_openai(self.server, self.token, self.connect_timeout, self.read_timeout)
        return client.post(path, cast_to=object, content=errors.json_body(payload), options=options, stream=stream,
                           stream_cls=DoneStream[object] if stream else None)

    def post(self, path: str, payload: dict) -> dict:
        model = payload.get("model")

        def answer() -> Iterator[dict]:
            yield self._answer(self._post(path, payload, stream=False), path, model)

        try:
            return next(self.watch.first(answer()))
        except Exception as exc:
            raise self._failed(exc, path, model) from None

    def stream(self, path: str, payload: dict, kind: type[Chunks] = Chunks) -> Iterator[dict]:
        """POST with stream=true; yield each item as a dict; raise StreamCut if the stream ends early."""
        yield from self.watch.first(self._stream(path, payload, kind))

    def _stream(self, path: str, payload: dict, kind: type[Chunks]) -> Iterator[dict]:
        model = payload.get("model")
        chunks = kind(self.base_url, self.token, model)
        stream = None
        try:
            stream = self._post(path, payload, stream=True)
            if _is_json(stream.response):
                stream.response.read()
                raise self._not_a_stream(stream.response, model)
            for value in stream:
                yield chunks.item(value)
            chunks.done = stream.done
        except Exception as exc:
            raise self._failed(exc, path, model, chunks) from None
        finally:
            if stream is not None:
                stream.close()
        chunks.check_complete()

    def chat(self, payload: dict, paths: list[str]) -> tuple[str, dict]:
        """POST a chat completion to the first of `paths` (see chat_paths) that serves it: (that path, the answer)."""
        for path in paths:
            try:
                return path, self.post(path, payload)
            except errors.EndpointMissing as exc:
                _unless_last(paths, path, exc)
        raise ValueError("no chat endpoint to try")

    def stream_chat(self, payload: dict, paths: list[str]) -> Iterator[tuple[str, dict]]:
        """Stream a chat completion from the first of `paths` that serves it: (that path, each chunk)."""
        for path in paths:
            stream = self.stream(path, payload)
            try:
                first = next(stream, None)
            except errors.EndpointMissing as exc:
                _unless_last(paths, path, exc)
                continue
            if first is not None:
                yield path, first
                for chunk in stream:
                    yield path, chunk
            return

    def chat_items(self, payload: dict, paths: list[str]) -> Iterator[tuple[str, dict]]:
        """(the path that answered, each chunk) when the payload asks for a stream, else (that path, the answer)."""
        if payload.get("stream"):
            yield from self.stream_chat(payload, paths)
        else:
            yield self.chat(payload, paths)

    def responses(self, payload: dict) -> dict:
        """POST a whole /v1/responses request (EndpointMissing where the server has none)."""
        return self.post(RESPONSES, payload)

    def stream_responses(self, payload: dict) -> Iterator[dict]:
        """Stream a /v1/responses request: its typed events, in order."""
        return self.stream(RESPONSES, payload, ResponsesEvents)

    def embeddings(self, payload: dict) -> dict:
        return self.post(EMBEDDINGS, payload)


class AsyncClient(_Calls):
    """The OpenAI-compatible endpoints of one server, for an event loop."""

    async def _post(self, path: str, payload: dict, stream: bool):
        client, options = await async_openai(self.server, self.token, self.connect_timeout, self.read_timeout)
        return await client.post(path, cast_to=object, content=errors.json_body(payload), options=options, stream=stream,
                                 stream_cls=AsyncDoneStream[object] if stream else None)

    async def post(self, path: str, payload: dict) -> dict:
        model = payload.get("model")

        async def answer() -> AsyncIterator[dict]:
            yield self._answer(await self._post(path, payload, stream=False), path, model)

        try:
            async for body in self.watch.afirst(answer()):
                return body
        except Exception as exc:
            raise self._failed(exc, path, model) from None
        raise errors.BadResponse(f"LM Studio at {self.base_url} answered {path} with nothing")

    async def stream(self, path: str, payload: dict, kind: type[Chunks] = Chunks) -> AsyncIterator[dict]:
        async for chunk in self.watch.afirst(self._stream(path, payload, kind)):
            yield chunk

    async def _stream(self, path: str, payload: dict, kind: type[Chunks]) -> AsyncIterator[dict]:
        model = payload.get("model")
        chunks = kind(self.base_url, self.token, model)
        stream = None
        try:
            stream = await self._post(path, payload, stream=True)
            if _is_json(stream.response):
                await stream.response.aread()
                raise self._not_a_stream(stream.response, model)
            async for value in stream:
                yield chunks.item(value)
            chunks.done = stream.done
        except Exception as exc:
            raise self._failed(exc, path, model, chunks) from None
        finally:
            if stream is not None:
                await stream.close()
        chunks.check_complete()

    async def chat(self, payload: dict, paths: list[str]) -> tuple[str, dict]:
        for path in paths:
            try:
                return path, await self.post(path, payload)
            except errors.EndpointMissing as exc:
                _unless_last(paths, path, exc)
        raise ValueError("no chat endpoint to try")

    async def stream_chat(self, payload: dict, paths: list[str]) -> AsyncIterator[tuple[str, dict]]:
        for path in paths:
            stream = self.stream(path, payload)
            try:
                first = await anext(stream, None)
            except errors.EndpointMissing as exc:
                _unless_last(paths, path, exc)
                continue
            if first is not None:
                yield path, first
                async for chunk in stream:
                    yield path, chunk
            return

    async def chat_items(self, payload: dict, paths: list[str]) -> AsyncIterator[tuple[str, dict]]:
        if payload.get("stream"):
            async for item in self.stream_chat(payload, paths):
                yield item
        else:
            yield await self.chat(payload, paths)

    async def responses(self, payload: dict) -> dict:
        return await self.post(RESPONSES, payload)

    def stream_responses(self, payload: dict) -> AsyncIterator[dict]:
        return self.stream(RESPONSES, payload, ResponsesEvents)

    async def embeddings(self, payload: dict) -> dict:
        return await self.post(EMBEDDINGS, payload)
