"""The opt-in response cache around every model's execute(): the `cache` option, the key (the answering model and
everything sent to it), replaying hits, storing answers (in cache_db.py). Never stores tool calls or a cut-off answer.
Recording each call's outcome is call_recording.py's job, a separate wrapper beneath this one."""

from __future__ import annotations

import contextvars
import hashlib
import json
import time
from typing import Any, Optional

import llm
from llm.parts import AttachmentPart, StreamEvent, ToolCallPart, ToolResultPart
from pydantic import ConfigDict, Field, ValidationError, field_validator

from llm_lmstudio.core import settings
from llm_lmstudio.core.messages import PROVIDER_METADATA_KEY
from llm_lmstudio.store.cache_db import CACHEABLE_EVENTS, Hit, Store, iso
from llm_lmstudio.store.call_recording import unfinished
from llm_lmstudio.store.wrapping import around_execute

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
        " this answer for that long (30m, 1h, 7d; at most 36500d; off disables it when LMSTUDIO_RESPONSE_CACHE is set)",
    )

    @field_validator("cache")
    @classmethod
    def _check_cache(cls, value):
        if value is not None:
            try:
                settings.cache_duration(value, "cache")
            except settings.SettingsError as exc:
                raise ValueError(str(exc)) from None
        return value


def ttl_for(prompt: llm.Prompt) -> float:
    """Seconds to keep this prompt's answer: the `cache` option wins over $LMSTUDIO_RESPONSE_CACHE; 0 is off."""
    option = getattr(prompt.options, "cache", None)
    if option is not None:
        return settings.cache_duration(option, "cache")
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


# ---------------------------------------------------------------- around a model's execute()

# The outermost cache while its execute() is producing: the router owns the entry, a model it delegates to does not
# cache on its own.
_CACHING: contextvars.ContextVar = contextvars.ContextVar("llm_lmstudio_cache_inside", default=None)


class _Cached:
    """One outermost execute(): looks up and replays a hit, or collects the answer and stores it once whole."""

    def __init__(self, model, prompt: llm.Prompt, response):
        self.model = model
        self.prompt = prompt
        self.response = response
        self.events: list[list[str]] = []
        self.storable = True
        self.key: str | None = None
        self.ttl = 0.0
        self.store: Store | None = None
        self.delegated = False

    def begin(self):
        hit = self._lookup()
        return None if hit is None else self._replay(hit)

    def _lookup(self) -> Hit | None:
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

    def _replay(self, hit: Hit):
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

    def saw(self, event) -> None:
        if self.key is None:
            return  # not caching this one
        kind, chunk = ("text", event) if isinstance(event, str) else (event.type, event.chunk)
        metadata = getattr(event, "provider_metadata", None)
        if kind not in CACHEABLE_EVENTS or getattr(event, "redacted", False) or (metadata and not _stateful_only(metadata)):
            self.storable = False  # tool calls and opaque reasoning state cannot be replayed faithfully
            return
        if self.events and self.events[-1][0] == kind:
            self.events[-1][1] += chunk or ""
        elif chunk:
            self.events.append([kind, chunk])

    def finished(self) -> None:
        if (
            self.key is None
            or unfinished(self.response.response_json)
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
        pass  # nothing stored


def cached(execute):
    """Decorate a model's execute() (sync or async generator) with the response cache; put it above
    call_recording.recorded, so that a hit never counts as a call of the model. Only the outermost model caches."""
    return around_execute(execute, _CACHING, _Cached)
