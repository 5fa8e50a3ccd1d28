"""One answer from a chat completions (or translated Responses) stream: chunks, or one whole completion, into llm
events; `<think>` text a server left inline split off as reasoning; usage, figures and the log. It never does HTTP."""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import llm
from llm.parts import StreamEvent
from llm.utils import simplify_usage_dict

from llm_lmstudio.core.errors import warn_json_cut
from llm_lmstudio.lmstudio import answer_audit, errors


class ThinkSplitter:
    """Routes `<think>…</think>` text that a server left inline in `content` to reasoning."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self):
        self.state = "start"  # start -> thinking -> answer
        self.pending = ""
        self.thought = False  # some reasoning was emitted

    def feed(self, text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        self.pending += text
        while self.pending:
            if self.state == "start":
                stripped = self.pending.lstrip()
                if stripped.startswith(self.OPEN):
                    self.pending = stripped[len(self.OPEN) :]
                    self.state = "thinking"
                elif self.OPEN.startswith(stripped):
                    break  # could still become "<think>": wait for more
                else:
                    self.state = "answer"
            elif self.state == "thinking":
                if not self.thought:
                    # Real servers put a newline after <think> (tests/recorded/v0_chat_qwen3_think.json).
                    self.pending = self.pending.lstrip("\n")
                    if not self.pending:
                        break
                index = self.pending.find(self.CLOSE)
                if index >= 0:
                    if index:
                        self.thought = True
                        out.append(("reasoning", self.pending[:index]))
                    self.pending = self.pending[index + len(self.CLOSE) :].lstrip("\n")
                    self.state = "answer"
                    continue
                # keep a possible partial "</think>" back
                keep = max((n for n in range(1, len(self.CLOSE)) if self.pending.endswith(self.CLOSE[:n])), default=0)
                emit = self.pending[: len(self.pending) - keep]
                if emit:
                    self.thought = True
                    out.append(("reasoning", emit))
                self.pending = self.pending[len(emit) :]
                break
            else:
                out.append(("text", self.pending))
                self.pending = ""
        return out

    def flush(self) -> list[tuple[str, str]]:
        rest, self.pending = self.pending, ""
        if not rest:
            return []
        return [("reasoning" if self.state == "thinking" else "text", rest)]


META_KEYS = ("id", "object", "created", "model", "system_fingerprint", "stats", "model_info", "runtime")


# A server may send any JSON type where the OpenAI shape has an object, a list or a string: read what fits, skip the rest.
def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else ""


class Accumulator:
    """Consumes chat completion chunks (or one completion) of one request and turns them into llm events and log data.
    `endpoint` is the path that answered this request (it lands in the log)."""

    def __init__(self, started: float, endpoint: str | None = None):
        self.started = started
        self.endpoint = endpoint
        self.first_token_at: float | None = None
        self.meta: dict[str, Any] = {}
        self.usage: dict | None = None
        self.finish_reason: str | None = None
        self.tool_calls: dict[int, dict] = {}
        self.splitter = ThinkSplitter()
        self.text_chars = 0

    def _mark_first(self):
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()

    def _text(self, content: str) -> Iterator[StreamEvent]:
        for kind, piece in self.splitter.feed(content):
            if kind == "text":
                self.text_chars += len(piece)
            yield StreamEvent(type=kind, chunk=piece)

    def _keep_meta(self, data: dict):
        for key in META_KEYS:
            value = data.get(key)
            if value not in (None, {}, ""):
                self.meta[key] = value
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]

    def feed_chunk(self, chunk: dict) -> Iterator[StreamEvent]:
        self._keep_meta(chunk)
        for choice in _as_list(chunk.get("choices")):
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            delta = _as_dict(choice.get("delta"))
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self._mark_first()
                yield StreamEvent(type="reasoning", chunk=reasoning)
            content = delta.get("content")
            if isinstance(content, str) and content:
                self._mark_first()
                yield from self._text(content)
            for call in _as_list(delta.get("tool_calls")):
                if not isinstance(call, dict):
                    continue
                self._mark_first()
                index = call.get("index")
                if not isinstance(index, int):
                    index = len(self.tool_calls)
                function = _as_dict(call.get("function"))
                current = self.tool_calls.get(index)
                if current is None:
                    current = {"id": _as_text(call.get("id")) or None, "name": _as_text(function.get("name")), "arguments": ""}
                    self.tool_calls[index] = current
                    yield StreamEvent(type="tool_call_name", chunk=current["name"], tool_call_id=current["id"])
                elif _as_text(function.get("name")) and not current["name"]:
                    current["name"] = function["name"]
                if _as_text(call.get("id")) and not current["id"]:
                    current["id"] = call["id"]
                arguments = function.get("arguments")
                if isinstance(arguments, str) and arguments:
                    current["arguments"] += arguments
                    yield StreamEvent(type="tool_call_args", chunk=arguments, tool_call_id=current["id"])

    def feed_completion(self, data: dict) -> Iterator[StreamEvent]:
        self._keep_meta(data)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise errors.BadResponse("LM Studio answered without any choices")
        choice = choices[0]
        self.finish_reason = choice.get("finish_reason")
        message = _as_dict(choice.get("message"))
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            yield StreamEvent(type="reasoning", chunk=reasoning)
        for index, call in enumerate(_as_list(message.get("tool_calls"))):
            if not isinstance(call, dict):
                continue
            function = _as_dict(call.get("function"))
            arguments = function.get("arguments")
            if isinstance(arguments, (dict, list)):
                arguments = json.dumps(arguments)
            entry = {"id": _as_text(call.get("id")) or None, "name": _as_text(function.get("name")), "arguments": _as_text(arguments)}
            self.tool_calls[index] = entry
            yield StreamEvent(type="tool_call_name", chunk=entry["name"], tool_call_id=entry["id"])
            if entry["arguments"]:
                yield StreamEvent(type="tool_call_args", chunk=entry["arguments"], tool_call_id=entry["id"])
        content = message.get("content")
        if isinstance(content, str) and content:
            yield from self._text(content)

    def flush(self) -> Iterator[StreamEvent]:
        for kind, piece in self.splitter.flush():
            if kind == "text":
                self.text_chars += len(piece)
            yield StreamEvent(type=kind, chunk=piece)

    def client_figures(self, endpoint: str) -> dict:
        """What this client measured itself (LM Studio sends no `stats` in a stream): the endpoint,
        time to first token and, when the server reported the output token count, tokens per second."""
        figures: dict[str, Any] = {"endpoint": endpoint}
        if self.first_token_at is None:
            return figures
        figures["time_to_first_token_ms"] = round((self.first_token_at - self.started) * 1000, 1)
        output = (self.usage or {}).get("completion_tokens")
        elapsed = time.monotonic() - self.first_token_at
        if isinstance(output, int) and output > 1 and elapsed > 0:
            # The first token's arrival starts the clock, so it is not counted in the rate.
            figures["tokens_per_second"] = round((output - 1) / elapsed, 2)
        return figures

    def feed(self, item: dict, stream: bool) -> Iterator[StreamEvent]:
        """One stream chunk, or the whole completion of a request that was not streamed."""
        return self.feed_chunk(item) if stream else self.feed_completion(item)

    def finish(self, response: llm.Response, endpoint: str | None = None, *, cut: str | None = None) -> None:
        for entry in self.tool_calls.values():
            try:
                arguments = json.loads(entry["arguments"] or "{}")
            except ValueError:
                arguments = {"_raw": entry["arguments"]}
            if not isinstance(arguments, dict):
                arguments = {"value": arguments}
            response.add_tool_call(llm.ToolCall(name=entry["name"], arguments=arguments, tool_call_id=entry["id"]))
        if self.usage:
            details = simplify_usage_dict(
                {k: v for k, v in self.usage.items() if k not in ("prompt_tokens", "completion_tokens", "total_tokens")}
            )
            response.set_usage(
                input=answer_audit.measured_input(self.usage), output=self.usage.get("completion_tokens"),
                details=details or None,
            )
        if self.finish_reason == "length" and response.prompt.schema and not cut:
            warn_json_cut(response)
        log = dict(self.meta)
        log["finish_reason"] = self.finish_reason
        if self.usage:
            log["usage"] = self.usage
        log["client"] = self.client_figures(endpoint or self.endpoint)
        if cut:
            log["cut"] = True
            log["error"] = cut
        response.response_json = log
        answered_by = self.meta.get("model")
        if isinstance(answered_by, str) and answered_by:
            # One convention on every path (direct, router, mlx/): the llm model id of what answered,
            # here the instance LM Studio names (e.g. lmstudio/qwen/qwen3-4b:2 when several are loaded).
            response.set_resolved_model(response.model.server.model_id(answered_by))
            answer_audit.check_model(response, response.model.entry.key, answered_by)
