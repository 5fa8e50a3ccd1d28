"""The stand-in's OpenAI-compatible POST /v1/responses (LM Studio 0.3.29+): stateful turns by previous_response_id,
function tools, images, SSE events. Formats what engine.py generates; it must never make up model output."""
# Sources: lmstudio.ai/docs/developer/openai-compat/responses (lmstudio-ai/docs 1_developer/3_openai-compat/
# responses.md: the request, `previous_response_id`, SSE `response.created` / `response.output_text.delta` /
# `response.completed`), which points to platform.openai.com/docs/api-reference/responses for the shapes;
# lmstudio-bug-tracker#1188 (LM Studio 0.3.31's `response.completed` packet: `resp_` + 48 hex ids, reasoning items
# with `reasoning_text` content, and the `previous_response_not_found` error). Releases and bugs that behave otherwise
# are quirks (state.QUIRKS), implemented here with their sources.

from __future__ import annotations

import asyncio
import threading
import time
import uuid

from jinja2 import TemplateError
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .app import (
    BadRequest, Control, SSEResponse, collect, error, generation_params, prepare_messages, read_json,
    resolve_instance, run_chat_in_thread, template_error, unknown_route,
)
from .engine import MLX_LOCK, Finish
from .state import LMStudioState


def _id(prefix: str, length: int = 24) -> str:
    return prefix + (uuid.uuid4().hex + uuid.uuid4().hex)[:length]


def _text_of(content) -> list[dict]:
    """Responses content parts as chat-completion content parts (text, image_url)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    parts = []
    for part in content if isinstance(content, list) else []:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "input_image":
            parts.append({"type": "image_url", "image_url": {"url": part.get("image_url")}})
        else:
            raise BadRequest(error(f"Unsupported content part type: {kind!r}", 400, param="input"))
    return parts


def chat_messages(value) -> list[dict]:
    """`input` (a string, or a list of items) as chat-completion messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise BadRequest(error("'input' must be a string or a non-empty array of items", 400, param="input"))
    messages = []
    for item in value:
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            role = {"developer": "system"}.get(item.get("role"), item.get("role"))
            messages.append({"role": role, "content": _text_of(item.get("content"))})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": str(item.get("output", ""))})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments", "")}}
            if messages and messages[-1]["role"] == "assistant":  # the calls of the answer just before
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            raise BadRequest(error(f"Unsupported input item type: {kind!r}", 400, param="input"))
    return messages


def _object_schema(parameters) -> bool:
    return isinstance(parameters, dict) and parameters.get("type") == "object" and isinstance(parameters.get("properties"), dict)


def chat_tools(tools) -> list[dict] | None:
    """Responses function tools ({"type": "function", "name", "parameters"}) as chat-completion tools."""
    if not tools:
        return None
    converted = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            # Remote MCP tools need the app's opt-in (docs: "Tools and Remote MCP (opt-in)"): off here.
            raise BadRequest(error("Only function tools are enabled on this server", 400, param="tools"))
        if "function" in tool or not _object_schema(tool.get("parameters")):
            # LM Studio 0.4.20 refuses `"parameters": {}` (and the chat-completions layout nested under `function`)
            # with this body, while {"type": "object", "properties": {}} passes (lmstudio-bug-tracker#2254).
            raise BadRequest(error("Invalid input", 400, code="custom", param=f"tools.{index}"))
        function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        converted.append({"type": "function", "function": function})
    return converted


class Output:
    """The answer's output items, built from the engine's pieces; `feed` returns the stream events for each."""

    def __init__(self, reasoning_whole: bool = False):
        self.items: list[dict] = []
        self.sequence = 0
        # The `reasoning_whole` quirk: reasoning arrives only in `response.reasoning_text.done`, `output_item.done`
        # and `response.completed` (OpenAI's event reference allows a server to send no deltas; #1188 shows
        # LM Studio's reasoning items in `response.completed`).
        self.reasoning_whole = reasoning_whole

    def event(self, kind: str, **fields) -> tuple[str, dict]:
        self.sequence += 1
        return kind, {"type": kind, "sequence_number": self.sequence, **fields}

    def _close(self) -> list:
        if not self.items or self.items[-1].get("status") != "in_progress":
            return []
        item, index = self.items[-1], len(self.items) - 1
        item["status"] = "completed"
        events = []
        if item["type"] == "message":
            text = item["content"][0]["text"]
            events.append(self.event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0, text=text))
            events.append(self.event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=item["content"][0]))
        elif item["type"] == "reasoning":
            text = item["content"][0]["text"]
            events.append(self.event("response.reasoning_text.done", item_id=item["id"], output_index=index, content_index=0, text=text))
        return events + [self.event("response.output_item.done", output_index=index, item=item)]

    def feed(self, piece) -> list:
        kind = {"content": "message", "reasoning": "reasoning"}.get(piece.kind, "function_call")
        events = []
        current = self.items[-1] if self.items and self.items[-1].get("status") == "in_progress" else None
        if kind == "function_call" or current is None or current["type"] != kind:
            events += self._close()
            if kind == "message":
                item = {"id": _id("msg_"), "type": "message", "status": "in_progress", "role": "assistant",
                        "content": [{"type": "output_text", "text": "", "annotations": []}]}
            elif kind == "reasoning":
                item = {"id": _id("rs_"), "type": "reasoning", "status": "in_progress", "summary": [],
                        "content": [{"type": "reasoning_text", "text": ""}]}
            else:
                call = piece.tool_call
                item = {"id": _id("fc_"), "type": "function_call", "status": "in_progress", "call_id": call["id"],
                        "name": call["name"], "arguments": ""}
            self.items.append(item)
            index = len(self.items) - 1
            events.append(self.event("response.output_item.added", output_index=index, item=dict(item)))
            if kind == "message":
                events.append(self.event("response.content_part.added", item_id=item["id"], output_index=index,
                                         content_index=0, part=dict(item["content"][0])))
        item, index = self.items[-1], len(self.items) - 1
        if kind == "function_call":
            arguments = piece.tool_call["arguments"]
            item["arguments"] = arguments
            events.append(self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=arguments))
            events.append(self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index, arguments=arguments))
            events += self._close()
        else:
            item["content"][0]["text"] += piece.text
            delta_kind = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
            if kind == "message" or not self.reasoning_whole:
                events.append(self.event(delta_kind, item_id=item["id"], output_index=index, content_index=0, delta=piece.text))
        return events

    def assistant_message(self) -> dict:
        """What the answer adds to the stored conversation, as a chat-completion message."""
        text = "".join(i["content"][0]["text"] for i in self.items if i["type"] == "message")
        calls = [{"id": i["call_id"], "type": "function", "function": {"name": i["name"], "arguments": i["arguments"]}}
                 for i in self.items if i["type"] == "function_call"]
        message = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
        return message


def _body(response_id: str, data: dict, model: str, created: int, output: Output, finish: Finish | None,
          input_tokens: int | None = None) -> dict:
    done = finish is not None
    status = "in_progress" if not done else ("incomplete" if finish.finish_reason == "length" else "completed")
    body = {
        "id": response_id, "object": "response", "created_at": created, "status": status, "model": model,
        "output": output.items if done else [], "previous_response_id": data.get("previous_response_id"),
        "instructions": data.get("instructions"), "tools": data.get("tools") or [], "tool_choice": "auto",
        "temperature": data.get("temperature"), "top_p": data.get("top_p"),
        "max_output_tokens": data.get("max_output_tokens"), "parallel_tool_calls": True,
        "store": data.get("store", True), "text": {"format": {"type": "text"}}, "truncation": "disabled",
        "metadata": {}, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "usage": None,
    }
    if done:
        read = finish.prompt_tokens if input_tokens is None else input_tokens
        body["usage"] = {"input_tokens": read, "output_tokens": finish.completion_tokens,
                         "total_tokens": read + finish.completion_tokens}
    return body


async def responses(request: Request) -> Response:
    state: LMStudioState = request.app.state.lmstudio
    control: Control = request.app.state.control
    if not state.generation.responses:
        return unknown_route(state, request.method, request.url.path)
    try:
        data = await read_json(request)
        model = data.get("model")
        previous_id = data.get("previous_response_id")
        previous = control.responses.get(previous_id) if previous_id else None
        if previous_id and previous is None:
            # OpenAI's answer (code `previous_response_not_found`, param `previous_response_id`); LM Studio returns
            # this code with its own wording (lmstudio-bug-tracker#1188).
            return error(f"Previous response with id '{previous_id}' not found.", 400,
                         code="previous_response_not_found", param="previous_response_id")
        instance = await resolve_instance(state, model, kind="llm", ttl=data.get("ttl"))
        new = prepare_messages(chat_messages(data.get("input")), instance.entry)
        tools = chat_tools(data.get("tools"))
        quirks = state.quirks
        if previous and quirks["responses_system"] == "reject_on_stored" and (
            data.get("instructions") or any(m["role"] == "system" for m in new)
        ):
            # LM Studio 0.4.20 on a later turn of a stored chain that carries a system prompt again
            # (lmstudio-bug-tracker#2219, lms#611: its native /api/v1/chat; /v1/responses undocumented either way).
            raise BadRequest(error("Only user, assistant and tool roles are supported, got system", 500,
                                   type_="server_error"))
        # Instructions are not carried over from a previous response (OpenAI's `instructions` reference); LM Studio
        # 0.3.30 ignored them altogether (lmstudio-bug-tracker#1154).
        instructions = data.get("instructions") if quirks["responses_system"] != "ignore_instructions" else None
        system = [{"role": "system", "content": instructions}] if instructions else []
        history = previous["messages"] if previous else []
        if previous and quirks["responses_growth"]:
            # LM Studio 0.4.17 rebuilt a chain that roughly doubled every continued turn (input_tokens 22 -> 65 ->
            # ... -> 3,385 by turn 9, 10-30x what chat completions read) and answered HTTP 500 "Internal Server
            # Error" once it outgrew the loaded context (lmstudio-bug-tracker#2074, fixed in an unnamed update).
            history = history + history
            if not await _fits(instance, system + history + new, tools):
                return PlainTextResponse("Internal Server Error", 500)
        read = None
        if quirks["zero_input_on_repeat"]:
            # /v1/responses reported input_tokens 0 for an input identical to the one before (lms#553).
            read = 0 if data.get("input") == control.last_responses_input else None
            control.last_responses_input = data.get("input")
        control.generations.append({"messages": [{"role": m["role"], "content": m.get("content")} for m in system + history + new]})
        params = generation_params(
            {"max_tokens": data.get("max_output_tokens"), "temperature": data.get("temperature"), "top_p": data.get("top_p")},
            control, state.pop_script(),
        )
    except BadRequest as exc:
        return exc.response
    params.parallel = state.generation.parallel > 1
    cancel = threading.Event()
    items = run_chat_in_thread(instance.engine, system + history + new, tools, params, cancel, state, instance)
    response_id, created = _id("resp_", 48), int(time.time())
    output = Output(bool(quirks["reasoning_whole"]))

    def remember() -> None:
        if data.get("store", True):
            control.responses[response_id] = {"messages": history + new + [output.assistant_message()]}

    if not data.get("stream"):
        try:
            pieces, finish = await collect(items)
        except BadRequest as exc:
            return exc.response
        for piece in pieces:
            output.feed(piece)
        output._close()
        remember()
        return JSONResponse(_body(response_id, data, instance.identifier, created, output, finish, read))

    async def events():
        yield output.event("response.created", response=_body(response_id, data, instance.identifier, created, output, None))
        yield output.event("response.in_progress", response=_body(response_id, data, instance.identifier, created, output, None))
        async for item in items:
            if isinstance(item, (TemplateError, Exception)):
                message = template_error(item) if isinstance(item, TemplateError) else f"Error during generation: {item}"
                yield output.event("error", code="server_error", message=message, param=None)
                return
            if isinstance(item, Finish):
                for event in output._close():
                    yield event
                remember()
                body = _body(response_id, data, instance.identifier, created, output, item, read)
                yield output.event("response.incomplete" if body["status"] == "incomplete" else "response.completed", response=body)
                return
            for event in output.feed(item):
                yield event

    return SSEResponse(events(), request.scope.get("fake_fault"), cancel)


async def _fits(instance, messages: list[dict], tools) -> bool:
    """Whether the templated conversation fits the instance's loaded context (the engine refuses it otherwise)."""

    def build() -> bool:
        try:
            with MLX_LOCK:
                instance.engine.build_prompt(messages, tools)
        except ValueError:
            return False
        return True

    return await asyncio.get_running_loop().run_in_executor(None, build)


async def control_forget(request: Request) -> Response:
    """Forget every stored response, as a restarted LM Studio would."""
    control: Control = request.app.state.control
    forgotten = len(control.responses)
    control.responses.clear()
    return JSONResponse({"forgotten": forgotten})


def routes() -> list[Route]:
    return [
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/__fake__/responses", control_forget, methods=["DELETE"]),
    ]
