"""The `lmstudio-router` llm model: its options, and running a plan (each model in turn, falling back on failure).
Registered by every llm command, so it stays cheap to import: planning (router.py) loads when a prompt is routed."""

from __future__ import annotations

import time
from typing import Iterator, Optional

import llm
from llm.parts import StreamEvent
from pydantic import Field

from llm_lmstudio.core import settings
from llm_lmstudio.router import config as router_config
from llm_lmstudio.store.response_cache import CacheOptions, cached
from llm_lmstudio.core.messages import IMAGE_TYPES
from llm_lmstudio.router.config import ROUTER_ID, TOOL_CALL_OWNERS


def _inner_prompt(prompt: llm.Prompt, inner, options: dict) -> llm.Prompt:
    fields = getattr(inner.Options, "model_fields", {})
    usable = {k: v for k, v in options.items() if v is not None and k in fields}
    return llm.Prompt(
        prompt._prompt,
        inner,
        fragments=prompt.fragments,
        attachments=prompt.attachments,
        system=prompt._system,
        system_fragments=prompt.system_fragments,
        schema=prompt.schema,
        tools=prompt.tools,
        tool_results=prompt.tool_results,
        messages=prompt.messages,
        options=inner.Options(**usable),  # never the router's own Options: the inner model reads its own fields
        hide_reasoning=prompt.hide_reasoning,
    )


def server_is_down(kind: str, exc: BaseException) -> bool:
    """Did this failure say the whole server is gone or hung, not just this model? Then its other models are
    skipped. A timeout alone may be one slow model; server.py says "looks hung" when, while the request
    waited, the server's model listing did not answer either."""
    return kind == "Unreachable" or (kind == "TimedOut" and "looks hung" in str(exc))


_BRIEF = {"Unreachable": "unreachable", "TimedOut": "timed out", "ModelNotFound": "not found", "ModelLoadFailed": "failed to load",
          "BadResponse": "bad response", "StreamCut": "answer cut off", "AuthRequired": "token refused"}


def brief(attempt: dict) -> str:
    """A few words for one failed attempt, for the one-line summary when every model failed."""
    if attempt.get("skipped"):
        return "skipped: its server did not answer"
    words = _BRIEF.get(attempt.get("error_kind") or "")
    if words is None:
        status = attempt.get("status")
        text = (attempt.get("error") or "failed").split(" — ")[0]
        words = (f"HTTP {status}: " if status else "") + (text if len(text) <= 60 else text[:57] + "...")
    return words


class RouterOptions(CacheOptions):
    task: Optional[str] = Field(default=None, description="Skip classification and route as this task (coding, analysis, ...)")
    temperature: Optional[float] = Field(default=None, ge=0, le=2, description="Sampling temperature, passed to the chosen model")
    top_p: Optional[float] = Field(default=None, gt=0, le=1, description="Nucleus sampling, passed to the chosen model")
    max_tokens: Optional[int] = Field(default=None, ge=1, description="Maximum tokens to generate, passed to the chosen model")
    seed: Optional[int] = Field(default=None, description="Random seed, passed to the chosen model")


class Router(llm.Model):
    model_id = ROUTER_ID
    can_stream = True
    supports_tools = True
    supports_schema = True
    attachment_types = IMAGE_TYPES
    Options = RouterOptions

    def __str__(self):
        return "LM Studio router: picks the best local model for each prompt"

    @cached  # the router owns the entry: the model it delegates to neither caches nor records on its own
    def execute(self, prompt, stream, response, conversation=None) -> Iterator[StreamEvent]:
        from llm_lmstudio.store import call_history
        from llm_lmstudio.core.errors import fail_after_logging
        from llm_lmstudio.router.planning import make_plan

        try:
            config = router_config.load()
        except settings.SettingsError as exc:
            raise llm.ModelError(str(exc)) from None
        plan = make_plan(prompt, config, prompt.options.task)
        if not plan.chain:
            reasons = "; ".join(f"{e['model']}: {e['reason']}" for e in plan.excluded) or "no local models found"
            raise llm.ModelError(f"the router has no model for this prompt ({reasons})")
        options = {k: getattr(prompt.options, k) for k in ("temperature", "top_p", "max_tokens", "seed")}
        attempts: list[dict] = []
        log = {"router": plan.to_json(), "attempts": attempts}
        response.response_json = log
        servers = {c.model_id: c.server for c in plan.candidates}
        down: set[str] = set()
        for model_id in plan.chain:
            started = time.monotonic()
            first_event_at = None
            attempt = {"model": model_id, "ok": False}
            if model_id in servers:
                attempt["server"] = servers[model_id]
            attempts.append(attempt)
            if servers.get(model_id) in down:
                # a hung server would cost a full timeout per model (issue 17: four models, twenty minutes)
                attempt["skipped"] = True
                continue
            try:
                inner = llm.get_model(model_id)
                if isinstance(inner, Router):
                    # `fallback: [router]` (or an alias of it) would nest the whole chain once per level.
                    raise llm.ModelError("the router cannot fall back to itself")
                attempt_options = dict(options)
                if model_id.startswith(("lmstudio/", "lmstudio@")):
                    attempt_options["ttl"] = config.ttl  # a model the router JIT-loads must not stay pinned
                inner_response = llm.Response(_inner_prompt(prompt, inner, attempt_options), inner, stream)
                for event in inner_response.stream_events():
                    if first_event_at is None:
                        first_event_at = time.monotonic()
                    yield event
            except Exception as exc:  # noqa: BLE001 - each failure is recorded, then the next model is tried
                attempt.update(error=str(exc), error_kind=call_history.error_kind(exc))
                if getattr(exc, "status", None):
                    attempt["status"] = exc.status
                if server_is_down(attempt["error_kind"], exc) and servers.get(model_id, "local") != "local":
                    down.add(servers[model_id])
                attempt["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
                call_history.record_attempt(model_id, False, error_kind=attempt["error_kind"], router_turn_id=response.id)
                if first_event_at is not None:
                    # Text has reached the user: retrying elsewhere would splice two answers together.
                    fail_after_logging(f"{model_id} failed after it had started answering: {exc}")
                    yield StreamEvent(type="text", chunk=f"\n[{model_id} stopped: {exc}]\n")
                    return
                continue
            duration = (time.monotonic() - started) * 1000
            ttft = (first_event_at - started) * 1000 if first_event_at is not None else None
            inner_json = inner_response.response_json or {}
            cut = isinstance(inner_json, dict) and inner_json.get("cut")
            attempt.update(ok=not cut, duration_ms=round(duration, 1), ttft_ms=round(ttft, 1) if ttft else None)
            if cut:
                attempt["error"] = inner_json.get("error")
                attempt["error_kind"] = "StreamCut"
            call_history.record_attempt(
                model_id,
                not cut,
                error_kind=attempt.get("error_kind"),
                ttft_ms=ttft,
                duration_ms=duration,
                router_turn_id=response.id,
            )
            usage = inner_response.usage()
            response.set_usage(input=usage.input, output=usage.output, details=usage.details)
            for call in inner_response.tool_calls():
                if call.tool_call_id:
                    TOOL_CALL_OWNERS[call.tool_call_id] = model_id
                response.add_tool_call(call)
            log["answer"] = inner_json
            response.set_resolved_model(model_id)
            return
        summary = ", ".join(f"{a['model']} ({brief(a)})" for a in attempts)
        last = next((a["error"] for a in reversed(attempts) if a.get("error")), "")
        raise llm.ModelError(f"every model the router tried failed: {summary}. Last error: {last}")
