"""The stateful turn: continue an LM Studio conversation server-side on /v1/responses with previous_response_id,
translating llm's prompt to the Responses API and its answer back to chat-completion chunks; never does HTTP itself."""

from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator, Iterator

import llm
from llm.parts import StreamEvent

from llm_lmstudio.core import files
from llm_lmstudio.lmstudio import stateful_guard, transport
from llm_lmstudio.core import settings
from llm_lmstudio.core.messages import PROVIDER_METADATA_KEY, build_messages, tool_specs

# Where a response's id travels to the next turn: llm stores a part's provider_metadata in logs.db and hands it
# back in prompt.messages, on `llm -c` too (conversation.responses is empty there).
# Options /v1/responses takes under these names; any other sampling option keeps the turn on chat completions,
# whose request carries every LM Studio field.
RESPONSES_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_output_tokens"}
PLUGIN_OPTIONS = {"cache", "stateful"}
# A server without /v1/responses (LM Studio before 0.3.29) is remembered this long, so it pays the extra request
# about once a day; an upgrade is noticed the day after.
MISSING_FOR = 24 * 3600.0
VERDICT_FILE = "no-responses-api.json"


def _verdicts() -> dict[str, float]:
    try:  # a damaged file is moved aside with a warning: every server is asked again
        data = files.read_json(settings.plugin_dir() / VERDICT_FILE, then="each server's /v1/responses is checked again")
    except OSError:
        return {}
    return {k: v for k, v in data.items() if isinstance(v, (int, float))} if data else {}


def lacks_responses(base_url: str) -> bool:
    """Did this server answer that it has no /v1/responses, within MISSING_FOR? (A file, read on continued turns
    only: each `llm -c` is a new process.)"""
    return time.time() - _verdicts().get(base_url, 0.0) < MISSING_FOR


def remember_missing(base_url: str) -> None:
    now = time.time()
    known = {url: at for url, at in _verdicts().items() if now - at < MISSING_FOR}
    known[base_url] = now
    try:
        files.write_text(settings.plugin_dir() / VERDICT_FILE, json.dumps(known))
    except OSError:
        pass  # then the next turn asks again


def _continuation(prompt: llm.Prompt, base_url: str, key: str) -> tuple[str | None, int, str | None] | None:
    """None for a first prompt (it stays on chat completions, which add LM Studio's stats); else the id of the
    previous response of this server and model (None when the last answer has none: the whole history goes
    once, and the server keeps it from then on), the index of the first message the server has not seen, and the
    mark of the system prompt its chain carries."""
    messages = prompt.messages
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role != "assistant":
            continue
        for part in messages[index].parts:
            meta = (getattr(part, "provider_metadata", None) or {}).get(PROVIDER_METADATA_KEY)
            if isinstance(meta, dict) and meta.get("server") == base_url and meta.get("model") == key:
                if isinstance(meta.get("response_id"), str):
                    return meta["response_id"], index + 1, meta.get("system")
        return None, 0, None
    return None


def _content(content: Any) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}] if content else []
    items = []
    for part in _list(content):
        if part.get("type") == "text":
            items.append({"type": "input_text", "text": part["text"]})
        elif part.get("type") == "image_url":
            items.append({"type": "input_image", "image_url": part["image_url"]["url"]})
    return items


def input_items(messages: list[dict], *, system: bool = False) -> list[dict]:
    """Chat-completion messages (messages.build_messages) as Responses input items. The system prompt goes only
    in the turn that starts a chain (`system`), as an input message the chain keeps: LM Studio 0.3.30 ignored
    `instructions` (lmstudio-bug-tracker#1154) and 0.4.20 failed a later stored turn that carried a system prompt
    again (#2219), so it is never `instructions` and never sent twice."""
    items: list[dict] = []
    for message in messages:
        role = message["role"]
        if role == "system":
            if system and message.get("content"):
                items.append({"type": "message", "role": "system", "content": _content(message["content"])})
        elif role == "tool":
            items.append({"type": "function_call_output", "call_id": message["tool_call_id"], "output": message["content"]})
        elif role == "assistant":
            if message.get("content"):
                items.append({"type": "message", "role": "assistant",
                              "content": [{"type": "output_text", "text": message["content"]}]})
            for call in message.get("tool_calls") or []:
                items.append({"type": "function_call", "call_id": call["id"], "name": call["function"]["name"],
                              "arguments": call["function"]["arguments"]})
        elif role == "user":
            content = _content(message.get("content"))
            if content:
                items.append({"type": "message", "role": "user", "content": content})
    return items


class Turn:
    """One prompt sent to /v1/responses: its payload, and the translation of the answer for chat.Accumulator."""

    def __init__(self, model, payload: dict, previous: str | None, system: str | None = None):
        self.base_url = model.server.base_url
        self.key = model.entry.key
        self.payload = payload
        self.previous = previous
        self.system = system  # stateful_guard.system_mark of the system prompt the chain carries
        self.watch = stateful_guard.Watch(self.base_url, previous, payload["input"])
        self.response_id: str | None = None
        self.answered_by: str | None = None
        self.calls: dict[int, bool] = {}  # output index of each function call -> its arguments arrived as deltas
        self.reasoned: set[int] = set()  # output indexes whose reasoning has been passed on

    # -- the answer, as chat-completion chunks ----------------------------------------------
    def _meta(self, response: Any) -> dict:
        if isinstance(response, dict):
            if isinstance(response.get("id"), str):
                self.response_id = response["id"]
            if isinstance(response.get("model"), str):
                self.answered_by = response["model"]
        chunk: dict[str, Any] = {"choices": []}
        if self.response_id:
            chunk["id"] = self.response_id
        if self.answered_by:
            chunk["model"] = self.answered_by
        return chunk

    @staticmethod
    def _delta(delta: dict) -> dict:
        return {"choices": [{"index": 0, "delta": delta}]}

    def _call(self, index: int, item: dict, *, arguments: bool) -> dict:
        call = {"index": index, "id": item.get("call_id") or item.get("id"), "function": {"name": item.get("name") or ""}}
        if arguments and isinstance(item.get("arguments"), str):
            call["function"]["arguments"] = item["arguments"]
        return self._delta({"tool_calls": [call]})

    def chunks(self, event: dict) -> list[dict]:
        """The chat-completion chunks one Responses stream event stands for (most events stand for none)."""
        kind = event.get("type")
        index = event.get("output_index") if isinstance(event.get("output_index"), int) else 0
        item = event.get("item") if isinstance(event.get("item"), dict) else {}
        delta = event.get("delta") if isinstance(event.get("delta"), str) else ""
        if kind in ("response.created", "response.in_progress"):
            return [self._meta(event.get("response"))]
        if kind == "response.output_text.delta" and delta:
            return [self._delta({"content": delta})]
        if kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta") and delta:
            self.reasoned.add(index)
            return [self._delta({"reasoning_content": delta})]
        whole = self._whole_reasoning(kind, index, event, item)
        if whole:
            return [self._delta({"reasoning_content": whole})]
        if kind == "response.output_item.added" and item.get("type") == "function_call":
            self.calls[index] = False
            return [self._call(index, item, arguments=False)]
        if kind == "response.function_call_arguments.delta" and delta:
            self.calls[index] = True
            return [self._delta({"tool_calls": [{"index": index, "function": {"arguments": delta}}]})]
        if kind == "response.output_item.done" and item.get("type") == "function_call" and not self.calls.get(index):
            # A server that sends a call whole, without argument deltas.
            self.calls[index] = True
            return [self._call(index, item, arguments=True)]
        if kind in ("response.completed", "response.incomplete"):
            response = event.get("response") if isinstance(event.get("response"), dict) else {}
            output = [i if isinstance(i, dict) else {} for i in _list(response.get("output"))]
            chunks = [self._delta({"reasoning_content": text}) for index, item in enumerate(output)
                      if (text := self._whole_reasoning("response.output_item.done", index, {}, item))]
            end = self._meta(response)
            end["choices"] = [{"index": 0, "delta": {}, "finish_reason": self._finish_reason(response)}]
            if isinstance(response.get("usage"), dict):
                end["usage"] = _usage(response["usage"])
            return chunks + [end]
        return []

    def _whole_reasoning(self, kind: str, index: int, event: dict, item: dict) -> str:
        """Reasoning a server sends whole (`response.reasoning_text.done`, a reasoning item in `output_item.done`
        or `response.completed`) rather than as deltas: passed on once per output item, never twice."""
        if index in self.reasoned:
            return ""
        if kind == "response.reasoning_text.done" and isinstance(event.get("text"), str):
            text = event["text"]
        elif kind == "response.output_item.done" and item.get("type") == "reasoning":
            parts = [p for p in _list(item.get("content")) + _list(item.get("summary")) if isinstance(p, dict)]
            text = "".join(p["text"] for p in parts if isinstance(p.get("text"), str))
        else:
            return ""
        if text:
            self.reasoned.add(index)
        return text

    def _finish_reason(self, response: dict) -> str:
        if response.get("status") == "incomplete":
            return "length"
        output = response.get("output") if isinstance(response.get("output"), list) else []
        calls = self.calls or any(isinstance(i, dict) and i.get("type") == "function_call" for i in output)
        return "tool_calls" if calls else "stop"

    def completion(self, body: dict) -> dict:
        """A whole Responses answer as one chat completion."""
        text, reasoning, calls = [], [], []
        for item in body.get("output") if isinstance(body.get("output"), list) else []:
            if not isinstance(item, dict):
                continue
            content = item.get("content")
            if isinstance(content, str):  # the shape LM Studio's /api/v1/chat uses for a message
                content = [{"type": "output_text", "text": content}]
            parts = [p for p in _list(content) + _list(item.get("summary")) if isinstance(p, dict)]
            if item.get("type") == "message":
                text += [p["text"] for p in parts if p.get("type") == "output_text" and isinstance(p.get("text"), str)]
            elif item.get("type") == "reasoning":
                reasoning += [p["text"] for p in parts if isinstance(p.get("text"), str)]
            elif item.get("type") == "function_call":
                self.calls[len(calls)] = True
                calls.append({"id": item.get("call_id") or item.get("id"),
                              "function": {"name": item.get("name") or "", "arguments": item.get("arguments") or ""}})
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text), "tool_calls": calls}
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
        completion = self._meta(body) | {
            "choices": [{"index": 0, "message": message, "finish_reason": self._finish_reason(body)}]
        }
        if isinstance(body.get("usage"), dict):
            completion["usage"] = _usage(body["usage"])
        return completion

    # -- what the next turn needs -------------------------------------------------------------
    def tag(self, event: StreamEvent) -> StreamEvent:
        """Carry the response id on every part of the answer (llm keeps the last one per part)."""
        if self.response_id:
            event.provider_metadata = {PROVIDER_METADATA_KEY: {"response_id": self.response_id, "server": self.base_url,
                                                               "model": self.key, "system": self.system}}
        return event

    def finish(self, accumulator, response: llm.Response) -> None:
        """Usage, tool calls and the log as on chat completions, plus which response this was and what it continued."""
        accumulator.finish(response, transport.RESPONSES)
        self.watch.finished(self.response_id, accumulator.usage)
        if isinstance(response.response_json, dict):
            response.response_json["stateful"] = {
                "response_id": self.response_id,
                "previous_response_id": self.previous,
                "server": self.base_url,
                "model": self.key,
            }

    def falls_back(self, exc: transport.LMStudioError) -> bool:
        """Should this turn, refused or failed before any output, go to chat completions with the full history
        instead (and nothing be shown)? See stateful_guard.Watch.falls_back."""
        if isinstance(exc, transport.EndpointMissing):
            remember_missing(self.base_url)
        return self.watch.falls_back(exc)

    def cut_off(self) -> None:
        """The answer stopped mid-stream: the next turn does not continue it server-side."""
        self.watch.cut(self.response_id)


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _usage(usage: dict) -> dict:
    """Responses usage in chat-completion names, so llm's usage and the log read the same on both endpoints."""
    mapped: dict[str, Any] = {
        "prompt_tokens": usage.get("input_tokens"),
        "completion_tokens": usage.get("output_tokens"),
        "total_tokens": usage.get("total_tokens"),
    }
    for source, target in (("input_tokens_details", "prompt_tokens_details"), ("output_tokens_details", "completion_tokens_details")):
        if isinstance(usage.get(source), dict):
            mapped[target] = usage[source]
    return {k: v for k, v in mapped.items() if v is not None}


def plan(model, prompt: llm.Prompt, stream: bool) -> Turn | None:
    """The /v1/responses turn for this continued conversation, or None when it goes to chat completions with the
    full history: a first prompt, stateful not asked for (`-o stateful true`: off by default, see
    docs/compatibility.md), not LM Studio, a server without /v1/responses or that the guard stopped, a schema, or an
    option Responses lacks."""
    options = prompt.options.model_dump(exclude_none=True)
    if options.get("stateful") is not True or model.entry.source not in ("v0", "v1") or prompt.schema:
        return None
    if set(options) - PLUGIN_OPTIONS - set(RESPONSES_OPTIONS):
        return None
    found = _continuation(prompt, model.server.base_url, model.entry.key)
    if found is None or lacks_responses(model.server.base_url) or stateful_guard.stopped(model.server.base_url):
        return None
    previous, start, chain_system = found
    system_messages = build_messages(prompt, [m for m in prompt.messages if m.role == "system"])
    system = stateful_guard.system_mark(next((m["content"] for m in system_messages if m["role"] == "system"), None))
    if previous and (system != chain_system or stateful_guard.broken(previous)):
        # A new system prompt (`llm -c -s ...`) cannot join a stored chain, and a failed id is not tried again:
        # the whole history starts a new chain.
        previous, start = None, 0

    # Only the part the server has not seen is translated (attachments earlier in the chain are not encoded again).
    items = input_items(build_messages(prompt, prompt.messages[start:] if previous else None), system=not previous)
    if not items:
        return None
    payload: dict[str, Any] = {"model": model.entry.key, "input": items, "stream": stream, "store": True}
    if previous:
        payload["previous_response_id"] = previous
    for name, field in RESPONSES_OPTIONS.items():
        if name in options:
            payload[field] = options[name]
    if prompt.tools:
        payload["tools"] = stateful_guard.responses_tools(tool_specs(prompt.tools))
    return Turn(model, payload, previous, system)


def run(turn: Turn, client: "transport.Client", stream: bool, accumulator) -> Iterator[StreamEvent]:
    if stream:
        for event in client.stream_responses(turn.payload):
            for chunk in turn.chunks(event):
                for out in accumulator.feed_chunk(chunk):
                    yield turn.tag(out)
    else:
        for out in accumulator.feed_completion(turn.completion(client.responses(turn.payload))):
            yield turn.tag(out)
    for out in accumulator.flush():
        yield turn.tag(out)


async def run_async(turn: Turn, client: "transport.AsyncClient", stream: bool, accumulator) -> AsyncIterator[StreamEvent]:
    if stream:
        async for event in client.stream_responses(turn.payload):
            for chunk in turn.chunks(event):
                for out in accumulator.feed_chunk(chunk):
                    yield turn.tag(out)
    else:
        for out in accumulator.feed_completion(turn.completion(await client.responses(turn.payload))):
            yield turn.tag(out)
    for out in accumulator.flush():
        yield turn.tag(out)
