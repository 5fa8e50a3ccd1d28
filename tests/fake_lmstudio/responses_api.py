"""The stand-in's OpenAI-compatible POST /v1/responses (LM Studio 0.3.29+): stateful turns by previous_response_id,
function tools, images, SSE events. Formats what engine.py generates; it must never make up model output."""
# Sources: lmstudio.ai/docs/developer/openai-compat/responses (lmstudio-ai/docs 1_developer/3_openai-compat/
# responses.md: the request, `previous_response_id`, SSE `response.created` / `response.output_text.delta` /
# `response.completed`), which points to platform.openai.com/docs/api-reference/responses for the shapes;
# lmstudio-bug-tracker#1188 (LM Studio 0.3.31's `response.completed` packet: `resp_` + 48 hex ids, reasoning items
# with `reasoning_text` content, and the `previous_response_not_found` error).

from __future__ import annotations

import threading
import time
import uuid

from jinja2 import TemplateError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .app import (
    BadRequest, Control, SSEResponse, collect, error, generation_params, prepare_messages, read_json,
    resolve_instance, run_chat_in_thread, template_error, unknown_route,
)
from .engine import Finish
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


def chat_tools(tools) -> list[dict] | None:
    """Responses function tools ({"type": "function", "name", "parameters"}) as chat-completion tools."""
    if not tools:
        return None
    converted = []
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            # Remote MCP tools need the app's opt-in (docs: "Tools and Remote MCP (opt-in)"): off here.
            raise BadRequest(error("Only function tools are enabled on this server", 400, param="tools"))
        function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        converted.append({"type": "function", "function": function})
    return converted


class Output:
    """The answer's output items, built from the engine's pieces; `feed` returns the stream events for each."""

    def __init__(self):
        self.items: list[dict] = []
        self.sequence = 0

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


def _body(response_id: str, data: dict, model: str, created: int, output: Output, finish: Finish | None) -> dict:
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
        body["usage"] = {"input_tokens": finish.prompt_tokens, "output_tokens": finish.completion_tokens,
                         "total_tokens": finish.prompt_tokens + finish.completion_tokens}
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
        # Instructions are not carried over from a previous response (OpenAI's `instructions` reference).
        system = [{"role": "system", "content": data["instructions"]}] if data.get("instructions") else []
        history = previous["messages"] if previous else []
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
    output = Output()

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
        return JSONResponse(_body(response_id, data, instance.identifier, created, output, finish))

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
                body = _body(response_id, data, instance.identifier, created, output, item)
                yield output.event("response.incomplete" if body["status"] == "incomplete" else "response.completed", response=body)
                return
            for event in output.feed(item):
                yield event

    return SSEResponse(events(), request.scope.get("fake_fault"), cancel)


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
