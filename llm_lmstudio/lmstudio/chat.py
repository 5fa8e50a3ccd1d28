"""llm chat models for LM Studio (and OpenAI-compatible) servers: options, history, streaming, tools, schemas, images.
Talks HTTP only through server.py; errors leave as one-line llm.ModelError, never a traceback."""
# Over ~450 lines: options, message building, the <think> splitter and the chunk accumulator are one
# translation between llm and LM Studio's chat completions, shared by the sync and async models.

from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator, Iterator, List, Optional, Union

import click
import llm
from llm.parts import StreamEvent
from llm.utils import simplify_usage_dict
from pydantic import Field, field_validator

from llm_lmstudio.lmstudio import answer_audit, transport
from llm_lmstudio.core import settings
from llm_lmstudio.lmstudio import continuation as stateful
from llm_lmstudio.store.response_cache import CacheOptions, cached
from llm_lmstudio.lmstudio.catalog import CatalogModel
from llm_lmstudio.core.errors import fail_after_logging, warn_json_cut
from llm_lmstudio.core.messages import IMAGE_TYPES, build_messages, tool_specs



class LMStudioOptions(CacheOptions):
    """Sampling options LM Studio's chat completions take (names as LM Studio spells them), and `cache`."""

    temperature: Optional[float] = Field(
        default=None, ge=0, le=2, description="Sampling temperature: 0 is near-deterministic, higher is more random"
    )
    top_p: Optional[float] = Field(default=None, gt=0, le=1, description="Nucleus sampling: keep the smallest set of tokens whose probability adds up to this")
    top_k: Optional[int] = Field(default=None, ge=0, description="Sample only from the k most likely tokens (0 disables)")
    min_p: Optional[float] = Field(default=None, ge=0, le=1, description="Drop tokens less likely than this fraction of the most likely one")
    repeat_penalty: Optional[float] = Field(default=None, gt=0, description="Penalise repeated tokens (1.0 = off)")
    presence_penalty: Optional[float] = Field(default=None, ge=-2, le=2, description="Penalise tokens that already appeared")
    frequency_penalty: Optional[float] = Field(default=None, ge=-2, le=2, description="Penalise tokens by how often they appeared")
    max_tokens: Optional[int] = Field(default=None, ge=1, description="Maximum number of tokens to generate")
    seed: Optional[int] = Field(default=None, description="Random seed, for reproducible sampling")
    stop: Optional[Union[str, List[str]]] = Field(
        default=None, description='Stop sequence, or a JSON list of them: \'["\\n\\n", "END"]\''
    )
    ttl: Optional[int] = Field(
        default=None, ge=1, description="Seconds of idleness after which LM Studio unloads a model this request loads (JIT)"
    )
    draft_model: Optional[str] = Field(default=None, description="Draft model key for speculative decoding")
    stateful: Optional[bool] = Field(
        default=None,
        description="true: continue conversations on the server (LM Studio 0.3.29+ /v1/responses) instead of"
        " resending the history, where it never costs more (default false: docs/compatibility.md)",
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _check_stop(cls, value):
        """Into the form the request carries: a string, or a list parsed from `-o stop '["a", "b"]'`."""
        if isinstance(value, str) and value.startswith("["):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError("stop must be a string or a JSON list of strings") from None
        if isinstance(value, list) and (not value or not all(isinstance(i, str) for i in value)):
            raise ValueError("stop must be a string or a JSON list of strings")
        return value








def build_payload(key: str, prompt: llm.Prompt, stream: bool) -> dict:
    payload: dict[str, Any] = {"model": key, "messages": build_messages(prompt), "stream": stream}
    # Every sampling option is a request field of the same name; only what the user set is sent.
    payload.update(prompt.options.model_dump(exclude_none=True, exclude=set(CacheOptions.model_fields) | {"stateful"}))
    if prompt.schema:
        payload["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "strict": True, "schema": prompt.schema},
        }
    if prompt.tools:
        payload["tools"] = tool_specs(prompt.tools)
    if stream:
        # LM Studio 0.3.18+ ends the stream with a usage chunk; older servers ignore the field.
        payload["stream_options"] = {"include_usage": True}
    return payload


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
    """Consumes chat completion chunks (or one completion) and turns them into llm events and log data."""

    def __init__(self, started: float):
        self.started = started
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
            raise transport.BadResponse("LM Studio answered without any choices")
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

    def finish(self, response: llm.Response, endpoint: str, *, cut: str | None = None) -> None:
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
        log["client"] = self.client_figures(endpoint)
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




def _suggest(key: str) -> str:
    import difflib

    from llm_lmstudio.lmstudio import catalog

    keys = [m.key for m in catalog.models_for_registration() if not m.is_embedding]
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.4)
    if not close:
        close = [k for k in keys if key.split("/")[-1].lower() in k.lower()][:3]
    if close:
        return " — did you mean " + ", ".join(f"lmstudio/{k}" for k in close) + "?"
    return " — list the models with `llm models -q lmstudio`"


class LMStudioModelError(llm.ModelError, click.ClickException):
    """A failed LM Studio request, for chat and embeddings alike; `kind` names the failure (Unreachable,
    TimedOut, ModelNotFound...) for the router. `llm embed` does not catch model errors the way `llm prompt`
    does, so it is also a ClickException: click prints its one line and exits 1."""

    def __init__(self, message: str, kind: str = "RequestFailed", status: int | None = None):
        click.ClickException.__init__(self, message)
        self.kind = kind
        self.status = status


def user_error(exc: transport.LMStudioError, hint: str = "") -> LMStudioModelError:
    return LMStudioModelError(str(exc) + hint, type(exc).__name__, exc.status)


CUT_MARKER = "\n[response cut off: {reason}]\n"




class ServedModel:
    """What every model an LM Studio server serves holds, chat or embedding: its catalog entry, server and llm id."""

    def __init__(self, entry: CatalogModel, server_: settings.Server):
        self.entry = entry
        self.server = server_
        self.model_id = server_.model_id(entry.key)


class _ChatBase(ServedModel):
    can_stream = True
    supports_schema = True
    # LM Studio gives every chat model tool use: native where it knows the model's template, its default
    # prompt-based tool use otherwise (lmstudio.ai/docs/developer/openai-compat/tools).
    supports_tools = True
    Options = LMStudioOptions

    def __init__(self, entry: CatalogModel, server_: settings.Server):
        super().__init__(entry, server_)
        self.attachment_types = IMAGE_TYPES if entry.vision else frozenset()
        self._endpoint = transport.chat_paths(entry.source)[0]

    def __str__(self):
        notes = ["loaded"] if self.entry.loaded else []
        if self.entry.tool_use_kind:
            notes.append(f"{self.entry.tool_use_kind} tool use")
        return f"LM Studio: {self.model_id}" + (f" ({', '.join(notes)})" if notes else "")

    def _paths(self) -> list[str]:
        return transport.chat_paths(self.entry.source)

    def _failed(self, exc: transport.LMStudioError) -> LMStudioModelError:
        return user_error(exc, _suggest(self.entry.key) if isinstance(exc, transport.ModelNotFound) else "")

    def _falls_back(self, turn: stateful.Turn, accumulator: "Accumulator", exc: transport.LMStudioError) -> bool:
        """A stateful turn refused before any output: True to send the full history to chat completions
        instead (silently: same answer); raises the user's error when that would not help; False once text has
        arrived (the caller keeps it and says the answer was cut)."""
        if accumulator.first_token_at is not None:
            self._endpoint = transport.RESPONSES
            turn.cut_off()
            return False
        if not turn.falls_back(exc):
            raise self._failed(exc) from None
        return True

    def _interrupted(self, accumulator: "Accumulator", response, exc: transport.LMStudioError) -> Iterator[StreamEvent]:
        """A failure after text has streamed: pass on what is still buffered, keep what arrived, mark it, and
        fail once it is logged."""
        yield from accumulator.flush()
        reason = str(exc)
        accumulator.finish(response, self._endpoint, cut=reason)
        fail_after_logging(f"{reason}; what arrived is shown above and kept in the log")
        yield StreamEvent(type="text", chunk=CUT_MARKER.format(reason=reason))


class LMStudioChat(_ChatBase, llm.Model):
    @cached
    def execute(self, prompt, stream, response, conversation=None) -> Iterator[StreamEvent]:
        client = transport.Client(self.server, token=settings.api_token())
        turn = stateful.plan(self, prompt, stream)
        if turn is not None:
            accumulator = Accumulator(time.monotonic())
            try:
                yield from stateful.run(turn, client, stream, accumulator)
                return turn.finish(accumulator, response)
            except transport.LMStudioError as exc:
                if not self._falls_back(turn, accumulator, exc):
                    yield from self._interrupted(accumulator, response, exc)
                    return
        payload = build_payload(self.entry.key, prompt, stream)
        accumulator = Accumulator(time.monotonic())
        try:
            if stream:
                for chunk in client.stream_chat(payload, self._paths()):
                    self._endpoint = client.chat_path
                    yield from accumulator.feed_chunk(chunk)
            else:
                self._endpoint, body = client.chat(payload, self._paths())
                yield from accumulator.feed_completion(body)
            yield from accumulator.flush()
        except transport.LMStudioError as exc:
            if accumulator.first_token_at is None:
                raise self._failed(exc) from None
            yield from self._interrupted(accumulator, response, exc)
            return
        accumulator.finish(response, self._endpoint)


class LMStudioAsyncChat(_ChatBase, llm.AsyncModel):
    @cached
    async def execute(self, prompt, stream, response, conversation=None) -> AsyncIterator[StreamEvent]:
        client = transport.AsyncClient(self.server, token=settings.api_token())
        turn = stateful.plan(self, prompt, stream)
        if turn is not None:
            accumulator = Accumulator(time.monotonic())
            try:
                async for event in stateful.run_async(turn, client, stream, accumulator):
                    yield event
                turn.finish(accumulator, response)
                return
            except transport.LMStudioError as exc:
                if not self._falls_back(turn, accumulator, exc):
                    for event in self._interrupted(accumulator, response, exc):
                        yield event
                    return
        payload = build_payload(self.entry.key, prompt, stream)
        accumulator = Accumulator(time.monotonic())
        try:
            if stream:
                async for chunk in client.stream_chat(payload, self._paths()):
                    self._endpoint = client.chat_path
                    for event in accumulator.feed_chunk(chunk):
                        yield event
            else:
                self._endpoint, body = await client.chat(payload, self._paths())
                for event in accumulator.feed_completion(body):
                    yield event
            for event in accumulator.flush():
                yield event
        except transport.LMStudioError as exc:
            if accumulator.first_token_at is None:
                raise self._failed(exc) from None
            for event in self._interrupted(accumulator, response, exc):
                yield event
            return
        accumulator.finish(response, self._endpoint)
