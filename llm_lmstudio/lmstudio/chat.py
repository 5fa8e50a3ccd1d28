"""llm chat models for LM Studio (and OpenAI-compatible) servers: options, the request, streaming, stateful turns,
tools, schemas, images. Talks HTTP only through openai_client.py; errors leave as one-line llm.ModelError."""

from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator, Iterator, List, Optional, Union

import click
import llm
from llm.parts import StreamEvent
from pydantic import Field, field_validator

from llm_lmstudio.core import settings
from llm_lmstudio.core.errors import fail_after_logging
from llm_lmstudio.core.messages import CUT_MARKER, EMPTY_PROMPT, IMAGE_TYPES, build_messages, tool_specs
from llm_lmstudio.lmstudio import continuation as stateful
from llm_lmstudio.lmstudio import errors, openai_client
from llm_lmstudio.lmstudio.answer import Accumulator
from llm_lmstudio.lmstudio.listing import CatalogModel
from llm_lmstudio.store.call_recording import recorded
from llm_lmstudio.store.response_cache import CacheOptions, cached


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


def _suggest(key: str, exc: errors.LMStudioError | None = None) -> str:
    """A hint for a model the server would not serve: how to load it when it is listed, else names close to it
    (never the very key asked for)."""
    import difflib

    from llm_lmstudio.lmstudio import catalog

    if isinstance(exc, errors.NotLoaded):
        return ""  # its message already says how to load it
    keys = [m.key for m in catalog.models_for_registration() if not m.is_embedding]
    if key in keys:
        return f" — LM Studio lists {key} but did not serve it: load it with `llm lmstudio load {key}`"
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


def user_error(exc: errors.LMStudioError, hint: str = "") -> LMStudioModelError:
    return LMStudioModelError(str(exc) + hint, type(exc).__name__, exc.status)


class ServedModel:
    """What every model an LM Studio server serves holds, chat or embedding: its catalog entry, server and llm id,
    and its API token the llm way (`--key`, `llm keys set lmstudio`, $LM_API_TOKEN)."""

    needs_key = settings.KEY_ALIAS
    key_env_var = settings.TOKEN_ENV

    def __init__(self, entry: CatalogModel, server_: settings.Server):
        self.entry = entry
        self.server = server_
        self.model_id = server_.model_id(entry.key)

    def get_key(self, explicit_key: str | None = None) -> str | None:
        """`--key` (a token, or the name of a stored key) first, then settings.api_token()'s sources; None when there is
        no token at all, which LM Studio's default (no authentication) needs: llm itself would refuse to run without one."""
        if getattr(self, "key", None) is not None:  # model.key = "…", set in Python
            return self.key
        if explicit_key:
            return llm.get_key(explicit_key=explicit_key)
        return settings.api_token()


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

    def __str__(self):
        notes = ["loaded"] if self.entry.loaded else []
        if self.entry.tool_use_kind:
            notes.append(f"{self.entry.tool_use_kind} tool use")
        return f"LM Studio: {self.model_id}" + (f" ({', '.join(notes)})" if notes else "")

    # The steps of one prompt, shared by the sync and async models; everything a request learns stays in its
    # own Accumulator (the model object is shared by every prompt, concurrent ones included).

    def _turn(self, prompt: llm.Prompt, stream: bool) -> tuple[stateful.Turn | None, Accumulator]:
        """The stateful turn for this prompt (or None), and the accumulator for its answer."""
        return stateful.plan(self, prompt, stream), Accumulator(time.monotonic(), openai_client.RESPONSES)

    def _request(self, prompt: llm.Prompt, stream: bool) -> tuple[dict, list[str], Accumulator]:
        """The chat completion request (payload, endpoints to try) and the accumulator for its answer."""
        paths = openai_client.chat_paths(self.entry.source)
        payload = build_payload(self.entry.key, prompt, stream)
        if not payload["messages"]:
            # An empty prompt with no system prompt, attachment or history: llm 0.36's own OpenAI plugin also drops
            # an empty user turn (default_plugins/openai_models.py, _append_llm_message: "For user/system, an empty
            # message is pointless - drop it") and sends `messages: []`, which LM Studio refuses with a 400 about a
            # field the user never saw; an empty content string it has refused too (lmstudio-bug-tracker#2).
            raise LMStudioModelError(f"{self.model_id}: {EMPTY_PROMPT}", kind="EmptyPrompt")
        return payload, paths, Accumulator(time.monotonic(), paths[0])

    def _failed(self, exc: errors.LMStudioError) -> LMStudioModelError:
        return user_error(exc, _suggest(self.entry.key, exc) if isinstance(exc, errors.ModelNotFound) else "")

    def _falls_back(self, turn: stateful.Turn, accumulator: Accumulator, exc: errors.LMStudioError) -> bool:
        """A stateful turn refused before any output: True to send the full history to chat completions
        instead (silently: same answer); raises the user's error when that would not help; False once text has
        arrived (the caller keeps it and says the answer was cut)."""
        if accumulator.first_token_at is not None:
            turn.cut_off()
            return False
        if not turn.falls_back(exc):
            raise self._failed(exc) from None
        return True

    def _interrupted(self, accumulator: Accumulator, response, exc: errors.LMStudioError) -> Iterator[StreamEvent]:
        """A failure: with nothing shown yet, the user's error; after text has streamed, pass on what is still
        buffered, keep what arrived, mark it, and fail once it is logged."""
        if accumulator.first_token_at is None:
            raise self._failed(exc) from None
        yield from accumulator.flush()
        reason = str(exc)
        accumulator.finish(response, cut=reason)
        fail_after_logging(f"{reason}; what arrived is shown above and kept in the log")
        yield StreamEvent(type="text", chunk=CUT_MARKER.format(reason=reason))


class LMStudioChat(_ChatBase, llm.KeyModel):
    @cached
    @recorded
    def execute(self, prompt, stream, response, conversation=None, key=None) -> Iterator[StreamEvent]:
        client = openai_client.Client(self.server, token=key)
        turn, accumulator = self._turn(prompt, stream)
        if turn is not None:
            try:
                yield from stateful.run(turn, client, stream, accumulator)
                return turn.finish(accumulator, response)
            except errors.LMStudioError as exc:
                if not self._falls_back(turn, accumulator, exc):
                    yield from self._interrupted(accumulator, response, exc)
                    return
        payload, paths, accumulator = self._request(prompt, stream)
        try:
            for endpoint, item in client.chat_items(payload, paths):
                accumulator.endpoint = endpoint
                yield from accumulator.feed(item, stream)
            yield from accumulator.flush()
        except errors.LMStudioError as exc:
            yield from self._interrupted(accumulator, response, exc)
            return
        accumulator.finish(response)


class LMStudioAsyncChat(_ChatBase, llm.AsyncKeyModel):
    @cached
    @recorded
    async def execute(self, prompt, stream, response, conversation=None, key=None) -> AsyncIterator[StreamEvent]:
        client = openai_client.AsyncClient(self.server, token=key)
        turn, accumulator = self._turn(prompt, stream)
        if turn is not None:
            try:
                async for event in stateful.run_async(turn, client, stream, accumulator):
                    yield event
                turn.finish(accumulator, response)
                return
            except errors.LMStudioError as exc:
                if not self._falls_back(turn, accumulator, exc):
                    for event in self._interrupted(accumulator, response, exc):
                        yield event
                    return
        payload, paths, accumulator = self._request(prompt, stream)
        try:
            async for endpoint, item in client.chat_items(payload, paths):
                accumulator.endpoint = endpoint
                for event in accumulator.feed(item, stream):
                    yield event
            for event in accumulator.flush():
                yield event
        except errors.LMStudioError as exc:
            for event in self._interrupted(accumulator, response, exc):
                yield event
            return
        accumulator.finish(response)
