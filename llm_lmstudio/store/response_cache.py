"""The opt-in response cache around every model's execute(): the `cache` option, the key (the answering model and
everything sent to it), replaying hits, storing answers (in cache_store.py). Never stores tool calls or a cut-off answer."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import inspect
import json
import time
from typing import Any, Optional

import llm
from llm.parts import AttachmentPart, StreamEvent, ToolCallPart, ToolResultPart
from pydantic import ConfigDict, Field, ValidationError, field_validator

from llm_lmstudio.core import settings
from llm_lmstudio.store.cache_db import (
    CACHEABLE_EVENTS,
    Hit,
    Store,
    iso,
)
from llm_lmstudio.core.messages import PROVIDER_METADATA_KEY

KEY_VERSION = 1  # bump when the key material changes, so old entries simply stop matching


class CacheOptions(llm.Options):
    """The `cache` option every model of this plugin takes (its Options subclass this)."""

    # Validators are built on first use, not at import: registering models (every `llm` command) never needs them.
    model_config = ConfigDict(defer_build=True)

    def __init__(self, /, **data):
        """Inside a command, a bad -o is one line (llm prints a ValidationError over two lines per option);
        in Python it stays the ValidationError callers catch."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            import click

            if click.get_current_context(silent=True) is None:
                raise
            from llm_lmstudio.core.errors import option_errors

            raise click.ClickException(option_errors(exc)) from None

    cache: Optional[str] = Field(
        default=None,
        description="Response cache: answer a repeat of this exact conversation from the local cache, and keep"
        " this answer for that long (30m, 1h, 7d; off disables it when LMSTUDIO_RESPONSE_CACHE is set)",
    )

    @field_validator("cache")
    @classmethod
    def _check_cache(cls, value):
        if value is not None:
            try:
                settings.parse_duration(value, "cache")
            except settings.SettingsError as exc:
                raise ValueError(str(exc)) from None
        return value


def ttl_for(prompt: llm.Prompt) -> float:
    """Seconds to keep this prompt's answer: the `cache` option wins over $LMSTUDIO_RESPONSE_CACHE; 0 is off."""
    option = getattr(prompt.options, "cache", None)
    if option is not None:
        return settings.parse_duration(option, "cache")
    return settings.response_cache_ttl()


# ---------------------------------------------------------------- what makes two prompts the same


def _attachment_digest(attachment: llm.Attachment) -> dict:
    # the bytes the model sees, not the path or URL they came from
    return {"type": attachment.type, "sha256": hashlib.sha256(attachment.content_bytes()).hexdigest()}


def _part(part) -> Any:
    if isinstance(part, AttachmentPart):
        return {"type": "attachment", "attachment": _attachment_digest(part.attachment) if part.attachment else None}
    data = part.to_dict()
    if _stateful_only(data.get("provider_metadata")):
        del data["provider_metadata"]  # which server-side response it was is not what was said
    return data


def _stateful_only(metadata: Any) -> bool:
    """Only the response id of a stateful turn (stateful.py): a replayed answer simply lacks it, and the next
    turn then sends the full history."""
    return isinstance(metadata, dict) and set(metadata) == {PROVIDER_METADATA_KEY}


def cacheable_prompt(prompt: llm.Prompt) -> bool:
    """False once tools have run in this conversation: their results changed the world, a stored answer would lie."""
    if prompt.tool_results:
        return False
    return not any(isinstance(p, (ToolCallPart, ToolResultPart)) for m in prompt.messages for p in m.parts)


def model_identity(model) -> dict:
    """The model that would answer: its id, and where it runs (the same key on another server is another model)."""
    identity = {"id": model.model_id}
    server = getattr(model, "server", None)
    if getattr(server, "base_url", None):
        identity["server"] = server.base_url
    local = getattr(model, "local", None)
    if getattr(local, "path", None):
        identity["path"] = str(local.path)
    return identity


def cache_key(model, prompt: llm.Prompt) -> str:
    options = {k: v for k, v in dict(prompt.options).items() if v is not None and k != "cache"}
    material = {
        "v": KEY_VERSION,
        "model": model_identity(model),
        "system": prompt.system,
        "prompt": prompt.prompt,
        "messages": [{"role": m.role, "parts": [_part(p) for p in m.parts]} for m in prompt.messages],
        "attachments": [_attachment_digest(a) for a in prompt.attachments],
        "options": options,
        "tools": [
            {"name": t.name, "description": t.description, "input_schema": t.input_schema} for t in prompt.tools or ()
        ],
        "schema": prompt.schema,
    }
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def unfinished(response_json: Any) -> str | None:
    """Why a logged answer is not a whole answer (cut off, truncated at max_tokens, router gave up), or None."""
    if not isinstance(response_json, dict):
        return None
    if response_json.get("cut"):
        return "cut"
    if response_json.get("finish_reason") in ("length", "max_tokens"):
        return "length"
    if "attempts" in response_json:  # the router: only an answer it returned is whole
        answer = response_json.get("answer")
        return unfinished(answer) if isinstance(answer, dict) else "cut"
    return None


# ---------------------------------------------------------------- around a model's execute()

# The outermost _Call while its execute() is producing: a model it delegates to (the router's choice)
# neither caches nor records as a call of its own, so the outermost model owns the cache entry.
_INSIDE: contextvars.ContextVar = contextvars.ContextVar("llm_lmstudio_cache_inside", default=None)
_END = object()


@contextlib.contextmanager
def _delegating(call: _Call):
    """While the wrapped execute() runs (between its events, not while the caller holds one)."""
    token = _INSIDE.set(call)
    try:
        yield
    finally:
        _INSIDE.reset(token)


class _Call:
    """One outermost execute(): looks up, replays or collects, then stores and records the outcome."""

    def __init__(self, model, prompt: llm.Prompt, response):
        self.model = model
        self.prompt = prompt
        self.response = response
        self.started = time.monotonic()
        self.first_at: float | None = None
        self.events: list[list[str]] = []
        self.storable = True
        self.key: str | None = None
        self.ttl = 0.0
        self.store: Store | None = None
        self.delegated = False  # set when a decorated model runs inside this one

    def lookup(self) -> Hit | None:
        try:
            self.ttl = ttl_for(self.prompt)
            if not self.ttl or not cacheable_prompt(self.prompt):
                return None
            self.store = Store()
        except settings.SettingsError as exc:
            raise llm.ModelError(str(exc)) from None
        try:
            self.key = cache_key(self.model, self.prompt)
        except Exception:  # noqa: BLE001 - an unreadable attachment: the model itself says what is wrong
            return None
        return self.store.get(self.key)

    def replay(self, hit: Hit):
        for kind, chunk in hit.payload["events"]:
            yield StreamEvent(type=kind, chunk=chunk)
        usage = hit.payload.get("usage") or {}
        self.response.set_usage(input=usage.get("input"), output=usage.get("output"), details=usage.get("details"))
        stored = hit.payload.get("response_json")
        log = dict(stored) if isinstance(stored, dict) else {}
        log["cache"] = {
            "hit": True,
            "first_produced": iso(hit.created),
            "first_response_id": hit.payload.get("response_id"),
            "expires": iso(hit.expires),
        }
        self.response.response_json = log
        if hit.payload.get("resolved_model"):
            self.response.set_resolved_model(hit.payload["resolved_model"])

    def pull(self, events):
        """The wrapped execute()'s next event (or _END), seen on its way to the caller."""
        with _delegating(self):
            event = next(events, _END)
        if event is not _END:
            self._saw(event)
        return event

    async def apull(self, events):
        with _delegating(self):
            event = await anext(events, _END)
        if event is not _END:
            self._saw(event)
        return event

    def _saw(self, event) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()
        kind, chunk = ("text", event) if isinstance(event, str) else (event.type, event.chunk)
        metadata = getattr(event, "provider_metadata", None)
        if kind not in CACHEABLE_EVENTS or getattr(event, "redacted", False) or (metadata and not _stateful_only(metadata)):
            self.storable = False  # tool calls and opaque reasoning state cannot be replayed faithfully
            return
        if self.events and self.events[-1][0] == kind:
            self.events[-1][1] += chunk or ""
        elif chunk:
            self.events.append([kind, chunk])

    @contextlib.contextmanager
    def outcome(self):
        """Around the whole production: a failure is recorded and passes on; a whole run is stored and recorded.
        A caller that stops early (GeneratorExit is no Exception) has neither recorded nor stored."""
        try:
            yield
        except Exception as exc:
            self.failed(exc)
            raise
        self.finished()

    def finished(self) -> None:
        ended = time.monotonic()
        reason = unfinished(self.response.response_json)
        self._record(reason != "cut", "StreamCut" if reason == "cut" else None, ended)
        if (
            self.key is None
            or reason
            or not self.storable
            or self.response._tool_calls  # tool_calls() would force the response we are still producing
            or not any(kind == "text" for kind, _ in self.events)
        ):
            return
        created = time.time()
        payload = {
            "events": self.events,
            "usage": {
                "input": self.response.input_tokens,
                "output": self.response.output_tokens,
                "details": self.response.token_details,
            },
            "response_json": self.response.response_json,
            "resolved_model": self.response.resolved_model,
            "response_id": self.response.id,
        }
        if self.store.put(self.key, self.model.model_id, payload, self.ttl, now=created) and isinstance(
            self.response.response_json, dict
        ):
            self.response.response_json["cache"] = {"hit": False, "stored": True, "expires": iso(created + self.ttl)}

    def failed(self, exc: Exception) -> None:
        from llm_lmstudio.store import call_history

        self._record(False, call_history.error_kind(exc), time.monotonic())

    def _record(self, ok: bool, error_kind: str | None, ended: float) -> None:
        from llm_lmstudio.store import call_history

        if self.delegated:
            return  # the router: each model it tried recorded its own attempt
        ttft = (self.first_at - self.started) * 1000 if self.first_at is not None else None
        call_history.record_call(self.model.model_id, ok, error_kind=error_kind, ttft_ms=ttft, duration_ms=(ended - self.started) * 1000)


def _outermost(model, prompt: llm.Prompt, response) -> _Call | None:
    """A _Call when no decorated model is producing already; inside one (the router), None: the outer one acts."""
    outer = _INSIDE.get()
    if outer is not None:
        outer.delegated = True
        return None
    return _Call(model, prompt, response)


def cached(execute):
    """Decorate a model's execute() (sync or async generator) with the response cache and outcome recording.
    Only the outermost decorated model acts; models it delegates to run untouched. The steps live in _Call;
    the two drivers below differ only in how they pull events, because llm drives async models with `async for`."""
    if inspect.isasyncgenfunction(execute):

        @functools.wraps(execute)
        async def run_async(self, prompt, stream, response, conversation=None):
            call = _outermost(self, prompt, response)
            if call is None:
                async for event in execute(self, prompt, stream, response, conversation):
                    yield event
                return
            hit = call.lookup()
            if hit is not None:
                for event in call.replay(hit):
                    yield event
                return
            events = execute(self, prompt, stream, response, conversation)
            async with contextlib.aclosing(events):
                with call.outcome():
                    while (event := await call.apull(events)) is not _END:
                        yield event

        return run_async

    @functools.wraps(execute)
    def run(self, prompt, stream, response, conversation=None):
        call = _outermost(self, prompt, response)
        if call is None:
            yield from execute(self, prompt, stream, response, conversation)
            return
        hit = call.lookup()
        if hit is not None:
            yield from call.replay(hit)
            return
        events = execute(self, prompt, stream, response, conversation)
        with contextlib.closing(events), call.outcome():
            while (event := call.pull(events)) is not _END:
                yield event

    return run
