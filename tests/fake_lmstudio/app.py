"""The stand-in's HTTP surface: LM Studio's OpenAI-compatible /v1, native /api/v0 and /api/v1, auth, faults,
and the /__fake__ control API. Formats what state.py and engine.py produce; it must never make up model output."""
# Over ~450 lines: one HTTP surface per LM Studio generation (OpenAI-compatible, /api/v0, /api/v1 listing,
# errors as LM Studio words them, SSE with faults) plus the control API; rest_v1.py holds v1 REST management.

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid

from jinja2 import TemplateError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .engine import Finish, GenerationParams, ImageError, decode_image_data_uri, image_marker
from . import rest_v1
from .faults import FaultRegistry
from .state import GENERATIONS, QUIRKS, DuplicateIdentifier, LMStudioState, LoadError, ModelNotFound, NotLoaded

RUNTIME = {"name": "mlx-llm-fake-lmstudio", "version": "0.32.2", "supported_formats": ["safetensors"]}
NO_MODELS_LOADED = "No models loaded. Please load a model in the developer page or use the 'lms load' command."
AUTH_REQUIRED = (
    "An LM Studio API token is required to make requests to this server, but none was provided using the "
    "Authorization header using the 'Bearer' scheme (i.e., 'Authorization: Bearer $LM_API_TOKEN'). "
    "Learn more at: https://lmstudio.ai/docs/developer/core/authentication."
)
AUTH_INVALID = (
    "The provided LM Studio API token is invalid. Learn more at: "
    "https://lmstudio.ai/docs/developer/core/authentication."
)
# Paths that answer without a token: the SDK probes the greeting before it can authenticate.
AUTH_EXEMPT = ("/lmstudio-greeting", "/__fake__")
DEFAULT_MAX_TOKENS = 256


class Control:
    """Per-test knobs that are not LM Studio settings: faults, the request log, hung requests."""

    def __init__(self, state: LMStudioState):
        self.state = state
        self.faults = FaultRegistry()
        state.load_fault = self.faults.take_load_fail
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.default_max_tokens = DEFAULT_MAX_TOKENS
        self.hang_release = asyncio.Event()  # hung requests wait on this until the next reset
        # Stored /v1/responses answers by id, in memory only: a restarted server knows none of them.
        self.responses: dict[str, dict] = {}
        # What the model was given on each /v1/responses prediction (roles and text), for tests that must know
        # what it saw (a system prompt, say), not just what the client sent.
        self.generations: list[dict] = []
        # The completion id of every streamed chat chunk, in the order the chunks went out: what a test of
        # interleaving reads (the order clients happen to read them in depends on their threads).
        self.streamed: list[str] = []
        self.last_responses_input = None  # zero_input_on_repeat (state.QUIRKS)

    def release_hangs(self) -> None:
        self.hang_release.set()
        self.hang_release = asyncio.Event()

    def record(self, entry: dict) -> None:
        with self.lock:
            self.requests.append(entry)

    def reset(self, *, unload: bool = True) -> None:
        self.faults.clear()
        self.state.clear_scripts()
        self.state.reset_settings()
        self.default_max_tokens = DEFAULT_MAX_TOKENS
        with self.lock:
            self.requests.clear()
        self.release_hangs()
        self.responses.clear()
        self.generations.clear()
        self.streamed.clear()
        self.last_responses_input = None
        if unload:
            self.state.unload_all()


# -- error bodies -----------------------------------------------------------------------------
def error(message, status=400, *, code=None, param=None, type_="invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


def model_not_found(state: LMStudioState, model: str, reason: str | None = None) -> JSONResponse:
    """LM Studio's answer for a model it does not know or cannot load (tests/recorded/errors.json:
    `invalid_model_identifier`, `failed_load_not_embedding`, `failed_jit_load_0_3_5`); 404 before 0.3.6."""
    if reason:
        message = f'Failed to load model "{model}". Error: {reason}'
    else:
        examples = ", ".join(e.key for e in state.downloaded()[:3])
        message = f'Invalid model identifier "{model}". Please specify a valid downloaded model (e.g., {examples}).'
    return error(message, state.generation.error_status, code="model_not_found", param="model")


def not_loaded(state: LMStudioState) -> JSONResponse:
    # The error object with `code: null` (lmstudio-bug-tracker#1730, LM Studio 0.4.8).
    return error(NO_MODELS_LOADED, state.generation.error_status, param="model")


def no_embedding_model(state: LMStudioState) -> JSONResponse:
    # A string `error` for embeddings (lmstudio-bug-tracker#1908, gpt-researcher#1556).
    return JSONResponse({"error": NO_MODELS_LOADED}, state.generation.error_status)


def template_error(exc: Exception) -> str:
    """LM Studio's words for a chat template jinja cannot render (lmstudio-bug-tracker#842)."""
    return (
        f'Error rendering prompt with jinja template: "{exc}".\n\nThis is usually an issue with the model\'s prompt '
        "template. If you are using a popular model, you can try to search the model under lmstudio-community, which "
        "will have fixed prompt templates. If you cannot find one, you are welcome to post this issue to our discord "
        "or issue tracker on GitHub. Alternatively, if you know how to write jinja templates, you can override the "
        "prompt template in My Models > model settings > Prompt Template."
    )


def unknown_route(state: LMStudioState, method: str, path: str) -> JSONResponse:
    # LM Studio answers a route it lacks with 200 and this body, "Returning 200 anyway" (lmstudio-bug-tracker#618,
    # #2085); the 0.3.5 generation answers 404 (see state.GENERATIONS).
    status = 404 if state.generation.error_status == 404 else 200
    return JSONResponse({"error": f"Unexpected endpoint or method. ({method} {path})"}, status)


# A token of the shape LM Studio issues (`sk-lm-XXXXXXXX:YYYY…`, opencode-lmstudio#41); anything else is malformed.
TOKEN_SHAPE = re.compile(r"sk-lm-[A-Za-z0-9]+:[A-Za-z0-9]+")


def malformed_token(token: str) -> str:
    # LM Studio echoes the token's first ten characters (tests/recorded/errors.json: `malformed_token`).
    return f"Malformed LM Studio API token provided: {token[:10]}**************. Ensure you are using a valid token."


# -- middleware: body capture, request log, auth, faults ---------------------------------------
class FakeMiddleware:
    def __init__(self, app, control: Control):
        self.app = app
        self.control = control

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not path.startswith("/__fake__"):
            self._log(method, path, headers, body)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        if path.startswith("/__fake__"):
            return await self.app(scope, replay, send)
        state = self.control.state
        if (path.startswith("/api/v0/") and not state.generation.native_v0) or (
            path.startswith("/api/v1/") and not state.generation.native_v1
        ):
            return await self._send(scope, receive, send, unknown_route(state, method, path))
        token = state.auth_token if state.generation.auth else None
        if token and not path.startswith(AUTH_EXEMPT):
            auth = headers.get("authorization", "")
            sent = auth[7:].strip() if auth.startswith("Bearer ") else ""
            if not sent:
                return await self._json(send, 401, _auth_body(AUTH_REQUIRED))
            if not TOKEN_SHAPE.fullmatch(sent):
                return await self._json(send, 401, {"error": {"code": "invalid_api_key", "message": malformed_token(sent)}})
            if sent != token:
                return await self._json(send, 401, _auth_body(AUTH_INVALID))
        fault = self.control.faults.match(method, path)
        if fault is not None:
            if fault.kind == "hang":
                await self.control.hang_release.wait()
                return await self._json(send, 503, {"error": "fake LM Studio: hung request released by reset"})
            if fault.kind == "slow" and fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.kind == "status":
                return await self._status(send, fault)
            if fault.kind == "malformed" and not _wants_stream(body):
                return await self._raw(send, 200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess', "application/json")
            if fault.kind == "cut" and not _wants_stream(body):
                # Announce a longer body than we send, then return: the server drops the connection mid-body.
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")]})
                await send({"type": "http.response.body", "body": b'{"id": "chatcmpl-cut", "choices": [', "more_body": True})
                return
            scope = dict(scope, fake_fault=fault)
        return await self.app(scope, replay, send)

    @staticmethod
    async def _send(scope, receive, send, response: Response):
        await response(scope, receive, send)

    def _log(self, method, path, headers, body) -> None:
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        data = data if isinstance(data, dict) else {}
        inputs = data.get("input")
        self.control.record(
            {
                "method": method,
                "path": path,
                "model": data.get("model"),
                "authorization": "authorization" in headers,
                "stream": bool(data.get("stream")),
                "body_size": len(body),
                "input_count": (len(inputs) if isinstance(inputs, list) else 1) if inputs is not None else None,
                "draft_model": data.get("draft_model"),
                "ttl": data.get("ttl"),
                "previous_response_id": data.get("previous_response_id"),
                "instructions": data.get("instructions"),
                "messages": len(data["messages"]) if isinstance(data.get("messages"), list) else None,
                "sent": _sent(data.get("messages")),
                "time": time.time(),
            }
        )

    async def _raw(self, send, status, payload: bytes, content_type: str):
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _json(self, send, status, value):
        await self._raw(send, status, json.dumps(value).encode(), "application/json")

    async def _status(self, send, fault):
        if isinstance(fault.body, str):
            await self._raw(send, fault.status, fault.body.encode(), "text/plain; charset=utf-8")
        else:
            body = fault.body if fault.body is not None else {"error": f"fake LM Studio: injected status {fault.status}"}
            await self._json(send, fault.status, body)


def _auth_body(message: str) -> dict:
    return {"error": {"type": "invalid_request", "code": "invalid_api_key", "message": message}}


def _wants_stream(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and bool(data.get("stream"))


# -- request parsing --------------------------------------------------------------------------
class BadRequest(Exception):
    def __init__(self, response: Response):
        self.response = response


async def read_json(request: Request) -> dict:
    raw = await request.body()
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise BadRequest(error("Invalid JSON in request body", 400)) from None
    if not isinstance(data, dict):
        raise BadRequest(error("Request body must be a JSON object", 400))
    return data


def _sent(messages) -> list | None:
    """A chat request's messages for the request log: role and content, each image part as `{"type": "image_url"}`
    (not its data)."""
    if not isinstance(messages, list):
        return None
    sent = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = [p if not isinstance(p, dict) or p.get("type") != "image_url" else {"type": "image_url"} for p in content]
        sent.append({"role": message.get("role"), "content": content})
    return sent


def prepare_messages(messages, entry) -> list[dict]:
    """Flatten content parts to text; images are verified and, for a vision model, become markers."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest(error("'messages' field is required and must be a non-empty array", 400, param="messages"))
    prepared, images = [], 0
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise BadRequest(error("Each message must be an object with a 'role'", 400, param="messages"))
        message = dict(message)
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    texts.append(str(part.get("text", "")))
                elif kind == "image_url":
                    if not entry.vision:
                        raise BadRequest(
                            error("Model does not support images. Please use a model that does.", 400, param="messages")
                        )
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    try:
                        image = decode_image_data_uri(url)
                    except ImageError as exc:
                        raise BadRequest(error(str(exc), 400, param="messages")) from None
                    images += 1
                    texts.append(image_marker(images, image))
                else:
                    raise BadRequest(error(f"Unsupported content part type: {kind!r}", 400, param="messages"))
            message["content"] = "".join(texts)
        prepared.append(message)
    return prepared


def generation_params(data: dict, control: Control, script: str | None) -> GenerationParams:
    stop = data.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    max_tokens = data.get("max_tokens", data.get("max_completion_tokens"))
    if max_tokens is None or max_tokens < 0:
        # LM Studio's -1 means "until EOS or the context is full"; random weights rarely emit EOS, so cap it.
        max_tokens = control.default_max_tokens
    if max_tokens == 0:
        raise BadRequest(error("'max_tokens' must be greater than 0 or -1", 400, param="max_tokens"))
    temperature = data.get("temperature")
    response_format = data.get("response_format") or {}
    schema = None
    if response_format.get("type") == "json_schema":
        schema = response_format["json_schema"]["schema"]
    return GenerationParams(
        json_schema=schema,
        max_tokens=int(max_tokens),
        temperature=0.8 if temperature is None else float(temperature),
        top_p=data.get("top_p"),
        top_k=data.get("top_k"),
        min_p=data.get("min_p"),
        repeat_penalty=data.get("repeat_penalty"),
        presence_penalty=data.get("presence_penalty"),
        frequency_penalty=data.get("frequency_penalty"),
        seed=data.get("seed"),
        stop=[str(s) for s in stop],
        script=script,
    )


def check_response_format(data: dict) -> None:
    response_format = data.get("response_format")
    if response_format is None:
        return
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in ("json_schema", "text"):
        raise BadRequest(error("'response_format.type' must be 'json_schema' or 'text'", 400, param="response_format"))
    if kind == "json_schema":
        schema = response_format.get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("schema"), dict):
            raise BadRequest(
                error("'response_format.json_schema.schema' must be a JSON schema object", 400, param="response_format")
            )


def substitute(state: LMStudioState, model: str, kind: str):
    """The one LLM loaded, when it answers for a model the server cannot serve (unknown, or not loaded with JIT
    off): LM Studio "ignores the requested model name ... when only one model is running" and answers 200 from the
    loaded one (lmstudio-bug-tracker#619 on 0.3.14, #366; the `single_model_fallback` quirk)."""
    if kind == "embeddings" or not state.quirks.get("single_model_fallback"):
        return None
    loaded = state.loaded("llm")
    if len(loaded) != 1 or state.instance(model) is not None:
        return None
    entry = state.entry(model)
    servable = entry is not None and (state.jit or any(i.entry.key == entry.key for i in loaded))
    return None if servable else loaded[0]


async def resolve_instance(state: LMStudioState, model: str | None, *, kind: str, ttl=None):
    """The instance to run on, JIT-loading off the event loop. Raises BadRequest with LM Studio's bodies."""
    stand_in = substitute(state, model, kind) if model else None
    if stand_in is not None:
        state.touch(stand_in)
        return stand_in
    if not model:
        loaded = state.loaded("embedding" if kind == "embeddings" else "llm")
        if loaded:
            state.touch(loaded[0])
            return loaded[0]
        raise BadRequest(not_loaded(state))
    instance = state.instance(model)
    entry = instance.entry if instance else state.entry(model)
    if entry is None:
        raise BadRequest(model_not_found(state, model))
    wrong_type = (kind == "embeddings") != (entry.type == "embeddings")
    if wrong_type:
        raise BadRequest(model_not_found(state, model, "Model is not embedding." if kind == "embeddings" else "Model is not an LLM."))
    try:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: state.resolve(model, ttl=ttl))
    except ModelNotFound:
        raise BadRequest(model_not_found(state, model)) from None
    except NotLoaded:
        raise BadRequest(no_embedding_model(state) if kind == "embeddings" else not_loaded(state)) from None
    except LoadError as exc:
        raise BadRequest(model_not_found(state, model, str(exc))) from None


# -- SSE plumbing -----------------------------------------------------------------------------
class CutConnection(Exception):
    """Raised inside a streaming response to drop the connection without a clean end."""


class SSEResponse:
    """Streams `data:` events from an async generator, applying slow/malformed/cut faults between chunks."""

    def __init__(self, events, fault, cancel: threading.Event):
        self.events = events
        self.fault = fault
        self.cancel = cancel

    async def __call__(self, scope, receive, send):
        async def watch_disconnect():
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.cancel.set()
                    return

        watcher = asyncio.create_task(watch_disconnect())
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    (b"connection", b"keep-alive"),
                ],
            }
        )
        fault = self.fault
        sent = 0
        try:
            async for event in self.events:
                # A stream shorter than `after_chunks` still gets its fault, just before [DONE].
                due = fault is not None and (sent == fault.after_chunks or event == "[DONE]")
                if due and fault.kind == "cut":
                    self.cancel.set()
                    return  # returning mid-body makes the server close the socket: no [DONE], no final chunk
                if due and fault.kind == "malformed":
                    await send({"type": "http.response.body", "body": b'data: {"id": "chatcmpl-broken", "choi\n\n', "more_body": True})
                    fault = None
                if fault is not None and fault.kind == "slow" and fault.chunk_delay and sent:
                    await asyncio.sleep(fault.chunk_delay)
                # A (name, data) pair is a typed event, as /v1/responses streams them (`event:` then `data:`).
                name, event = event if isinstance(event, tuple) else (None, event)
                payload = event if isinstance(event, str) else json.dumps(event)
                head = f"event: {name}\n" if name else ""
                await send({"type": "http.response.body", "body": f"{head}data: {payload}\n\n".encode(), "more_body": True})
                sent += 1
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.cancel.set()
            watcher.cancel()


def run_chat_in_thread(engine, messages, tools, params, cancel, state, instance):
    """Run engine.chat in a worker thread; returns an async iterator of its Pieces and the Finish."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def worker():
        state.begin_use(instance)
        try:
            for item in engine.chat(messages, tools=tools, params=params, cancel=cancel):
                loop.call_soon_threadsafe(queue.put_nowait, item)
        except Exception as exc:  # surfaced to the client as an error event / 500
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            state.end_use(instance)
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=worker, name="fake-lmstudio-generate", daemon=True).start()

    async def items():
        while True:
            item = await queue.get()
            if item is None:
                return
            yield item

    return items()


async def collect(items) -> tuple[list, Finish]:
    """A whole (not streamed) prediction: its pieces and its Finish; a failure raises BadRequest with LM Studio's answer."""
    pieces, finish = [], None
    async for item in items:
        if isinstance(item, TemplateError):
            raise BadRequest(JSONResponse({"error": template_error(item)}, 400))
        if isinstance(item, Exception):
            raise BadRequest(error(f"Error during generation: {item}", 500, type_="server_error"))
        if isinstance(item, Finish):
            finish = item
        else:
            pieces.append(item)
    return pieces, finish


# -- chat completions -------------------------------------------------------------------------
def _completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:21]


def _tool_call_json(call: dict) -> dict:
    return {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}


def _stats(finish: Finish) -> dict:
    return {
        "tokens_per_second": finish.tokens_per_second,
        "time_to_first_token": round(finish.time_to_first_token, 3),
        "generation_time": round(finish.generation_time, 3),
        "stop_reason": finish.stop_reason,
    }


def _usage(finish: Finish) -> dict:
    return {
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": finish.prompt_tokens + finish.completion_tokens,
    }


def _model_info(instance) -> dict:
    entry = instance.entry
    return {"arch": entry.arch, "quant": entry.quantization, "format": entry.format, "context_length": instance.context_length}


async def chat_completions(request: Request, *, native: bool) -> Response:
    state: LMStudioState = request.app.state.lmstudio
    control: Control = request.app.state.control
    try:
        data = await read_json(request)
        model = data.get("model")
        instance_hint = state.instance(model) if model else None
        entry = instance_hint.entry if instance_hint else (state.entry(model) if model else None)
        if model and entry is None and substitute(state, model, "llm") is None:
            raise BadRequest(model_not_found(state, model))
        if entry is not None:
            messages = prepare_messages(data.get("messages"), entry)
        check_response_format(data)
        instance = await resolve_instance(state, model, kind="llm", ttl=data.get("ttl"))
        if entry is None:
            messages = prepare_messages(data.get("messages"), instance.entry)
        params = generation_params(data, control, state.pop_script())
    except BadRequest as exc:
        return exc.response
    fault = request.scope.get("fake_fault")
    params.parallel = state.generation.parallel > 1
    params.broken_template = fault is not None and fault.kind == "template"
    tools = data.get("tools") or None
    if data.get("tool_choice") == "none":
        tools = None
    cancel = threading.Event()
    items = run_chat_in_thread(instance.engine, messages, tools, params, cancel, state, instance)
    completion_id, created = _completion_id(), int(time.time())
    model_name = instance.identifier
    reasoning_model = instance.entry.reasoning

    if not data.get("stream"):
        content, reasoning, tool_calls = [], [], []
        try:
            pieces, finish = await collect(items)
        except BadRequest as exc:
            return exc.response
        for item in pieces:
            if item.kind == "content":
                content.append(item.text)
            elif item.kind == "reasoning":
                reasoning.append(item.text)
            else:
                tool_calls.append(_tool_call_json(item.tool_call))
        message = {"role": "assistant", "content": "".join(content)}
        if reasoning_model:
            message["reasoning_content"] = "".join(reasoning)
        if tool_calls or native:
            message["tool_calls"] = tool_calls
        body = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model_name,
            "choices": [{"index": 0, "logprobs": None, "finish_reason": finish.finish_reason, "message": message}],
            "usage": _usage(finish),
            "stats": _stats(finish) if native else {},
        }
        # Recorded answers: /v1 has `system_fingerprint` and empty `stats` (tests/recorded/v1_chat_schema.json);
        # /api/v0 has stats, `model_info` and `runtime` instead (v0_chat_qwen3_think.json).
        if native:
            body["model_info"] = _model_info(instance)
            body["runtime"] = RUNTIME
        else:
            body["system_fingerprint"] = model_name
        return JSONResponse(body)

    # A usage chunk only where LM Studio sends one (0.3.18+); older servers ignore stream_options.
    include_usage = bool((data.get("stream_options") or {}).get("include_usage")) and state.generation.include_usage

    def chunk(delta: dict, finish_reason=None) -> dict:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "system_fingerprint": model_name,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    async def events():
        tool_index = 0
        async for item in items:
            if isinstance(item, TemplateError):
                # Inside a stream the 200 has gone out: the failure arrives as an event (zed#45379).
                yield {"error": template_error(item)}
                return
            if isinstance(item, Exception):
                yield {"error": {"message": f"Error during generation: {item}", "type": "server_error"}}
                return
            if isinstance(item, Finish):
                # The last chunk is an empty delta with finish_reason and no `stats`, on /api/v0 too
                # (tests/recorded/v0_stream_llava.sse): LM Studio sends stats only in whole answers.
                yield chunk({}, item.finish_reason)
                if include_usage:
                    usage_chunk = chunk({})
                    usage_chunk["choices"] = []
                    usage_chunk["usage"] = _usage(item)
                    yield usage_chunk
                yield "[DONE]"
                return
            # Every delta repeats the role (tests/recorded/v0_stream_llava.sse, v1_stream_reasoning_content.sse).
            role = {"role": "assistant"}
            control.streamed.append(completion_id)
            if item.kind == "content":
                yield chunk(role | {"content": item.text})
            elif item.kind == "reasoning":
                yield chunk(role | {"reasoning_content": item.text})
            else:
                call = item.tool_call
                head = {"index": tool_index, "id": call["id"], "type": "function",
                        "function": {"name": call["name"], "arguments": ""}}
                yield chunk(role | {"tool_calls": [head]})
                # Arguments arrive in fragments, as LM Studio streams them; clients must accumulate by index.
                arguments = call["arguments"]
                step = max(1, len(arguments) // 4)
                for start in range(0, len(arguments), step):
                    fragment = {"index": tool_index, "function": {"arguments": arguments[start : start + step]}}
                    yield chunk({"tool_calls": [fragment]})
                tool_index += 1

    return SSEResponse(events(), fault, cancel)


async def v1_chat(request: Request) -> Response:
    return await chat_completions(request, native=False)


async def v0_chat(request: Request) -> Response:
    return await chat_completions(request, native=True)


# -- embeddings -------------------------------------------------------------------------------
async def embeddings(request: Request) -> Response:
    state: LMStudioState = request.app.state.lmstudio
    try:
        data = await read_json(request)
        texts = data.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise BadRequest(error("'input' field must be a string or an array of strings", 400, param="input"))
        model = data.get("model")
        if not model and not state.loaded("embedding"):
            raise BadRequest(no_embedding_model(state))
        instance = await resolve_instance(state, model, kind="embeddings", ttl=data.get("ttl"))
    except BadRequest as exc:
        return exc.response
    loop = asyncio.get_running_loop()
    state.begin_use(instance)
    try:
        vectors, tokens = await loop.run_in_executor(None, instance.engine.embed, texts)
    finally:
        state.end_use(instance)
    return JSONResponse(
        {
            "object": "list",
            "data": [{"object": "embedding", "embedding": vector, "index": i} for i, vector in enumerate(vectors)],
            "model": instance.identifier,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


# -- model listings ---------------------------------------------------------------------------
async def greeting(request: Request) -> Response:
    return JSONResponse({"lmstudio": True})


async def v1_models(request: Request) -> Response:
    state: LMStudioState = request.app.state.lmstudio
    if state.jit:
        ids = [entry.key for entry in state.downloaded()]
    else:
        ids = [instance.identifier for instance in state.loaded()]
    return JSONResponse(
        {"data": [{"id": i, "object": "model", "owned_by": "organization_owner"} for i in ids], "object": "list"}
    )


def v0_model(state: LMStudioState, entry) -> dict:
    instances = [i for i in state.loaded() if i.entry.key == entry.key]
    body = {
        "id": entry.key,
        "object": "model",
        "type": entry.type,
        "publisher": entry.publisher,
        "arch": entry.arch,
        "compatibility_type": entry.format,
        "quantization": entry.quantization,
        # "loading" while a load runs: asserted by issue 12 of this project; no public recording shows it.
        "state": "loaded" if instances else ("loading" if entry.key in state.loading else "not-loaded"),
        "max_context_length": entry.max_context_length,
    }
    if instances:
        body["loaded_context_length"] = instances[0].context_length
    # `capabilities` (0.3.16+) only on rows LM Studio has a native tool parser for (tests/recorded/v0_models.json).
    if entry.trained_for_tool_use and state.generation.capabilities:
        body["capabilities"] = ["tool_use"]
    return body


async def v0_models(request: Request) -> Response:
    state: LMStudioState = request.app.state.lmstudio
    # A model with variants is one row per variant (`...nomic-embed-text-v1.5@q4_k_m`, `...@q8_0`), as real
    # 0.4 servers list them (recorded listings quoted in issue 12).
    rows = [v0_model(state, v) for e in state.downloaded() for v in (state.variants(e.key)[0] or [e])]
    return JSONResponse({"object": "list", "data": rows})


async def v0_model_detail(request: Request) -> Response:
    state: LMStudioState = request.app.state.lmstudio
    model = request.path_params["model"]
    instance = state.instance(model)
    entry = instance.entry if instance else state.entry(model)
    if entry is None:
        return error(f'Model "{model}" not found', 404, code="model_not_found", param="model")
    return JSONResponse(v0_model(state, entry))


def _bits(quantization: str | None) -> int | None:
    if not quantization:
        return None
    digits = "".join(ch for ch in quantization if ch.isdigit())
    return int(digits) if digits else None


def v1_model(state: LMStudioState, entry) -> dict:
    is_embedding = entry.type == "embeddings"
    body = {
        "type": "embedding" if is_embedding else "llm",
        "publisher": entry.publisher,
        "key": entry.key,
        "display_name": entry.display_name,
    }
    if not is_embedding:
        body["architecture"] = entry.arch
    body |= {
        "quantization": {"name": entry.quantization, "bits_per_weight": _bits(entry.quantization)}
        if entry.quantization
        else None,
        "size_bytes": entry.size_bytes,
        "params_string": entry.params_string,
        "loaded_instances": [
            {"id": i.identifier, "config": rest_v1.load_config(i)}
            for i in state.loaded()
            if i.entry.key == entry.key
        ],
        "max_context_length": entry.max_context_length,
        "format": entry.format,
    }
    if not is_embedding:
        capabilities = {"vision": entry.vision, "trained_for_tool_use": entry.trained_for_tool_use}
        if entry.reasoning:
            capabilities["reasoning"] = {"allowed_options": ["on"], "default": "on"}
        body["capabilities"] = capabilities
        body["description"] = None
    variants, selected = state.variants(entry.key)
    if variants:  # docs: developer/rest/list (`variants`, `selected_variant`)
        body["variants"] = [v.key for v in variants]
        body["selected_variant"] = selected
    return body


async def v1_models_native(request: Request) -> Response:
    state: LMStudioState = request.app.state.lmstudio
    return JSONResponse({"models": [v1_model(state, e) for e in state.downloaded()]})


async def unexpected_endpoint(request: Request) -> Response:
    return unknown_route(request.app.state.lmstudio, request.method, request.url.path)


# -- /__fake__ control API --------------------------------------------------------------------
def _config_view(control: Control) -> dict:
    state = control.state
    return {
        "jit": state.jit,
        "auto_evict": state.auto_evict,
        "default_jit_ttl": state.default_jit_ttl,
        "auth_token": state.auth_token,
        "version": state.generation.name,
        "load_fail": state.load_fail,
        "load_seconds": state.load_seconds,
        "memory_limit": state.memory_limit,
        "default_max_tokens": control.default_max_tokens,
        **state.quirks,
    }


async def control_config(request: Request) -> Response:
    control: Control = request.app.state.control
    if request.method == "POST":
        data = await request.json()
        unknown = set(data) - set(_config_view(control))
        if unknown:
            return JSONResponse({"error": f"unknown config keys: {sorted(unknown)}"}, 400)
        for key, value in data.items():
            if key == "default_max_tokens":
                control.default_max_tokens = int(value)
            elif key == "load_seconds":
                control.state.load_seconds = float(value)
            elif key in QUIRKS:
                control.state.quirks[key] = value
            elif key == "version":
                if value not in GENERATIONS:
                    return JSONResponse({"error": f"version must be one of {sorted(GENERATIONS)}"}, 400)
                control.state.generation = GENERATIONS[value]
            else:
                setattr(control.state, key, value)
    return JSONResponse(_config_view(control))


async def control_reset(request: Request) -> Response:
    control: Control = request.app.state.control
    data = json.loads(await request.body() or b"{}")
    control.reset(unload=data.get("unload", True))
    return JSONResponse({"ok": True})


async def control_faults(request: Request) -> Response:
    control: Control = request.app.state.control
    if request.method == "POST":
        try:
            fault = control.faults.add(**(await request.json()))
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(fault.to_dict())
    if request.method == "DELETE":
        control.faults.clear()
    return JSONResponse({"faults": control.faults.list()})


async def control_script(request: Request) -> Response:
    state: LMStudioState = request.app.state.lmstudio
    if request.method == "POST":
        data = await request.json()
        outputs = data.get("outputs")
        if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
            return JSONResponse({"error": "'outputs' must be a list of strings"}, 400)
        state.add_scripts(outputs)
    elif request.method == "DELETE":
        state.clear_scripts()
    return JSONResponse({"outputs": state.scripts()})


async def control_requests(request: Request) -> Response:
    control: Control = request.app.state.control
    with control.lock:
        if request.method == "DELETE":
            control.requests.clear()
        return JSONResponse({"requests": list(control.requests)})


async def control_generations(request: Request) -> Response:
    control: Control = request.app.state.control
    return JSONResponse({"generations": list(control.generations)})


async def control_state(request: Request) -> Response:
    state: LMStudioState = request.app.state.lmstudio
    return JSONResponse(
        {
            "loaded": [
                {
                    "identifier": i.identifier,
                    "model": i.entry.key,
                    "type": i.entry.type,
                    "jit": i.jit,
                    "ttl_seconds": i.ttl_seconds,
                    "ttl_remaining": state.ttl_remaining(i),
                    "context_length": i.context_length,
                    "config": i.config,
                    "gpu_ratio": i.gpu_ratio,
                    "status": i.status,
                    "instance_reference": i.instance_reference,
                }
                for i in state.loaded()
            ],
            "downloaded": [e.key for e in state.downloaded()],
            "streamed": list(request.app.state.control.streamed),
        }
    )


async def control_age(request: Request) -> Response:
    state: LMStudioState = request.app.state.lmstudio
    data = await request.json()
    return JSONResponse({"unloaded": state.age(float(data["seconds"]))})


async def control_load(request: Request) -> Response:
    """Load with the options only the SDK offers (identifier, ttl), for tests that need such an instance."""
    state: LMStudioState = request.app.state.lmstudio
    data = await request.json()
    try:
        instance = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: state.load(
                data["model"],
                identifier=data.get("identifier"),
                ttl=data.get("ttl"),
                context_length=data.get("context_length"),
                jit=bool(data.get("jit", False)),
            ),
        )
    except ModelNotFound:
        return JSONResponse({"error": f"no such model {data['model']!r}"}, 404)
    except DuplicateIdentifier as exc:
        return JSONResponse({"error": str(exc)}, 409)
    except LoadError as exc:
        return JSONResponse({"error": str(exc)}, 500)
    return JSONResponse({"identifier": instance.identifier, "context_length": instance.context_length})


def create_app(state: LMStudioState) -> FakeMiddleware:
    from . import responses_api  # it builds on this module's request parsing and SSE

    control = Control(state)
    routes = [
        Route("/lmstudio-greeting", greeting),
        Route("/v1/models", v1_models),
        Route("/v1/chat/completions", v1_chat, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/api/v0/models", v0_models),
        Route("/api/v0/models/{model:path}", v0_model_detail),
        Route("/api/v0/chat/completions", v0_chat, methods=["POST"]),
        Route("/api/v0/embeddings", embeddings, methods=["POST"]),
        Route("/api/v1/models", v1_models_native),
        *rest_v1.routes(),
        *responses_api.routes(),
        Route("/__fake__/config", control_config, methods=["GET", "POST"]),
        Route("/__fake__/reset", control_reset, methods=["POST"]),
        Route("/__fake__/faults", control_faults, methods=["GET", "POST", "DELETE"]),
        Route("/__fake__/script", control_script, methods=["GET", "POST", "DELETE"]),
        Route("/__fake__/requests", control_requests, methods=["GET", "DELETE"]),
        Route("/__fake__/state", control_state),
        Route("/__fake__/generations", control_generations),
        Route("/__fake__/load", control_load, methods=["POST"]),
        Route("/__fake__/age", control_age, methods=["POST"]),
    ]
    try:
        from .sdk_ws import websocket_routes
    except ImportError:  # the SDK websocket protocol lives in its own module, written separately
        websocket_routes = None
    if websocket_routes is not None:
        routes.extend(websocket_routes(state))
    routes.append(
        Route("/{path:path}", unexpected_endpoint, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    )
    app = Starlette(routes=routes)
    app.state.lmstudio = state
    app.state.control = control
    return FakeMiddleware(app, control)
