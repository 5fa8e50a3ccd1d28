"""The `lmstudio-router` llm model: its options, and running a plan (each model in turn, falling back on failure).
Registered by every llm command, so it stays cheap to import: planning (router.py) loads when a prompt is routed."""

from __future__ import annotations

import re
import time
from typing import Iterator, Optional

import llm
from llm.parts import StreamEvent
from pydantic import Field

from llm_lmstudio.core import settings
from llm_lmstudio.router import config as router_config
from llm_lmstudio.store.call_recording import delegating
from llm_lmstudio.store.response_cache import CacheOptions, cached
from llm_lmstudio.core.messages import EMPTY_PROMPT, IMAGE_TYPES, build_messages
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
    """Did this failure say the server cannot answer now, not just that this model failed? Then its other models are
    skipped. A connection refused, or a request that timed out: one timeout may be one slow model, but the next one
    on that server would cost the user another full LMSTUDIO_TIMEOUT (300 s by default), and a hung engine hangs
    every model alike (its listing may still answer); the same model on another server is still tried."""
    return kind in ("Unreachable", "TimedOut")


# Failures that say the prompt or the set-up is wrong, not the model: another model would fail the same way (a prompt
# too long for the loaded context; a model the router could not load with JIT loading off), so the plan ends there.
END_PLAN = ("PromptTooLong", "NotLoaded")


def ends_plan(kind: str, exc: BaseException) -> bool:
    """END_PLAN, or a request the server rejected (a 4xx other than 429, "try later"): every model would be sent the
    same request and reject it alike. Not a failure to apply one model's prompt template: another has its own."""
    if kind in END_PLAN:
        return True
    status = getattr(exc, "status", None)
    return (kind == "RequestFailed" and isinstance(status, int) and 400 <= status < 500 and status != 429
            and "prompt template" not in str(exc))

_SKIPPED = {"AuthRequired": "its server refused the token", "TimedOut": "its server timed out"}

_BRIEF = {"Unreachable": "unreachable", "TimedOut": "timed out", "ModelNotFound": "not found", "ModelLoadFailed": "failed to load",
          "BadResponse": "bad response", "StreamCut": "answer cut off", "AuthRequired": "token refused", "NotLoaded": "not loaded",
          "LoadRefused": "load refused", "UnknownModel": "not downloaded"}


class ModelGone(llm.ModelError):
    """A model the plan listed that llm no longer knows (deleted or renamed in LM Studio since it was listed)."""

    kind = "ModelNotFound"  # as call_history.error_kind names it: "not found", never counted against a model


def _model(model_id: str):
    """The planned model, or ModelGone in the router's words rather than llm's bare "Unknown model: ..."."""
    try:
        return llm.get_model(model_id)
    except llm.UnknownModelError:
        family = "mlx" if model_id.startswith("mlx/") else "lmstudio"
        raise ModelGone(f"{model_id} is no longer available: it was listed when the router planned, and is gone since "
                        f"(`llm models -q {family}` shows the models there are)") from None


def brief(attempt: dict) -> str:
    """A few words for one failed attempt, for the one-line summary when every model failed."""
    if attempt.get("skipped"):
        return f"skipped: {attempt.get('skip_reason') or 'its server did not answer'}"
    words = _BRIEF.get(attempt.get("error_kind") or "")
    if attempt.get("error_kind") == "ServerError":
        words = f"server error (HTTP {attempt['status']})" if attempt.get("status") else "server error"
    if words is None:
        # the server's reason, without "LM Studio at URL: " (the summary's `Last error:` names the server) nor the hint
        status = attempt.get("status")
        text = re.sub(r"^LM Studio at \S+?:?\s+", "", (attempt.get("error") or "failed").split(" — ")[0])
        text = text if len(text) <= 200 else text[:199] + "…"
        words = (f"HTTP {status}: " if status and f"HTTP {status}" not in text else "") + text
    return words


def _load(inner, ttl: int, state: dict, *, untimed: bool = False) -> None:
    """Load an LM Studio model through the management layer before prompting it; state["loaded"] says whether this
    did. False when management cannot (an https server, no SDK): the request then goes out as it is, and LM Studio's
    JIT loading may still load it. Left unset where management cannot set the TTL (LM Studio's REST API): the request
    carries it for JIT loading, and a "not loaded" answer calls this again with `untimed` (load without a TTL)."""
    from llm_lmstudio.management.models import LoadRefused, ManagementError, UnknownModel
    from llm_lmstudio.router import loading

    try:
        identifier = loading.ensure_loaded(inner, ttl, state.get("token"), untimed=untimed)
    except loading.LeftToJit:
        return
    except (LoadRefused, UnknownModel):
        raise
    except (ManagementError, ImportError) as exc:
        state["load_problem"] = str(exc)
        state["loaded"] = False
        return
    if identifier:
        state["loaded_id"] = identifier
    state["loaded"] = bool(identifier)


class RouterOptions(CacheOptions):
    task: Optional[str] = Field(default=None, description="Skip classification and route as this task (coding, analysis, ...)")
    temperature: Optional[float] = Field(default=None, ge=0, le=2, description="Sampling temperature, passed to the chosen model")
    top_p: Optional[float] = Field(default=None, gt=0, le=1, description="Nucleus sampling, passed to the chosen model")
    max_tokens: Optional[int] = Field(default=None, ge=1, description="Maximum tokens to generate, passed to the chosen model")
    seed: Optional[int] = Field(default=None, description="Random seed, passed to the chosen model")


class Router(llm.KeyModel):
    model_id = ROUTER_ID
    # `--key` reaches execute() and goes to the LM Studio models it tries (and their loads); never required (get_key)
    needs_key = settings.KEY_ALIAS
    key_env_var = settings.TOKEN_ENV
    can_stream = True
    supports_tools = True
    supports_schema = True
    attachment_types = IMAGE_TYPES
    Options = RouterOptions

    def __str__(self):
        # the id in the line, so `llm models -q lmstudio-router` finds it (llm matches the query against this text)
        return f"LM Studio router: {ROUTER_ID} (picks the best local model for each prompt)"

    def get_key(self, explicit_key: str | None = None) -> str | None:
        """`--key` (a token, or the name of a stored key) or model.key set in Python, else None: each LM Studio model
        then finds its own token (`llm keys set lmstudio`, $LM_API_TOKEN), and a server without one needs none."""
        if getattr(self, "key", None) is not None:
            return self.key
        return llm.get_key(explicit_key=explicit_key) if explicit_key else None

    @cached  # the router owns the entry: the model it delegates to does not cache on its own
    @delegating  # nor record: the router records each attempt per model it tried, and is never a model in stats
    def execute(self, prompt, stream, response, conversation=None, key=None) -> Iterator[StreamEvent]:
        from llm_lmstudio.core.errors import fail_after_logging
        from llm_lmstudio.router.planning import make_plan
        from llm_lmstudio.store import call_history

        try:
            config = router_config.load()
        except settings.SettingsError as exc:
            raise llm.ModelError(str(exc)) from None
        if not build_messages(prompt):
            # nothing to send (no text, system prompt, attachment or history): every model would refuse it alike,
            # so say so before planning, loading or classifying anything
            raise llm.ModelError(f"{ROUTER_ID}: {EMPTY_PROMPT}")
        plan = make_plan(prompt, config, prompt.options.task)
        if not plan.chain:
            raise llm.ModelError(plan.why_empty())
        options = {k: getattr(prompt.options, k) for k in ("temperature", "top_p", "max_tokens", "seed")}
        attempts: list[dict] = []
        log = {"router": plan.to_json(), "attempts": attempts}
        response.response_json = log
        candidates = {c.model_id: c for c in plan.candidates}
        skipped: dict[str, str] = {}  # server -> why its remaining models are not tried
        for model_id in plan.chain:
            candidate = candidates.get(model_id)
            server = candidate.server if candidate else None
            started = time.monotonic()
            state: dict = {"first_event_at": None}
            attempt = {"model": model_id, "ok": False}
            if server:
                attempt["server"] = server
            attempts.append(attempt)
            if server in skipped:
                # a hung server would cost a full timeout per model (issue 17: four models, twenty minutes)
                attempt.update(skipped=True, skip_reason=skipped[server])
                continue
            try:
                inner_response = yield from self._attempt(prompt, stream, model_id, candidate, options, config, state, key)
            except Exception as exc:  # noqa: BLE001 - each failure is recorded, then the next model is tried
                kind = call_history.error_kind(exc)
                attempt.update(error=str(exc), error_kind=kind, duration_ms=round((time.monotonic() - started) * 1000, 1))
                if getattr(exc, "status", None):
                    attempt["status"] = exc.status
                if server and server != "local" and (server_is_down(kind, exc) or kind in _SKIPPED):
                    skipped[server] = _SKIPPED.get(kind, "its server did not answer")
                call_history.record_attempt(model_id, False, error_kind=kind, router_turn_id=response.id)
                if state.get("loaded_id") and state["first_event_at"] is None:
                    from llm_lmstudio.router import loading

                    loading.unload(llm.get_model(model_id), state["loaded_id"], state.get("token"))
                if state["first_event_at"] is not None:
                    # Text has reached the user: retrying elsewhere would splice two answers together.
                    fail_after_logging(f"{model_id} failed after it had started answering: {exc}")
                    yield StreamEvent(type="text", chunk=f"\n[{model_id} stopped: {exc}]\n")
                    return
                if ends_plan(kind, exc):
                    problem = state.get("load_problem")
                    raise llm.ModelError(f"{exc}" + (f" (the router could not load it: {problem})" if problem else "")) from None
                continue
            first_event_at = state["first_event_at"]
            duration = (time.monotonic() - started) * 1000
            ttft = (first_event_at - started) * 1000 if first_event_at is not None else None
            inner_json = inner_response.response_json or {}
            cut = isinstance(inner_json, dict) and inner_json.get("cut")
            attempt.update(ok=not cut, duration_ms=round(duration, 1), ttft_ms=round(ttft, 1) if ttft else None)
            if state.get("loaded"):
                attempt["loaded_by_router"] = True
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

    def _attempt(self, prompt, stream, model_id: str, candidate, options: dict, config, state: dict, key=None):
        """One model's try: load it first if it is an LM Studio model not loaded, then stream its answer; yields its
        events and returns its response. A "not loaded" answer (unloaded since the listing, or left to JIT loading
        and JIT loading is off) loads it and asks once more. `key` (--key) is the token of LM Studio models only."""
        from llm_lmstudio.store import call_history

        inner = _model(model_id)
        if isinstance(inner, Router):
            # `fallback: [router]` (or an alias of it) would nest the whole chain once per level.
            raise llm.ModelError("the router cannot fall back to itself")
        attempt_options = dict(options)
        served = model_id.startswith(("lmstudio/", "lmstudio@")) and getattr(inner, "entry", None) is not None
        if served:
            state["token"] = inner.get_key(key)  # what the model itself sends: --key, else the configured token
            attempt_options["ttl"] = config.ttl  # should LM Studio JIT-load it after all, it must not stay pinned
            if candidate is not None and not candidate.loaded:
                _load(inner, config.ttl, state)
        while True:
            inner_prompt = _inner_prompt(prompt, inner, attempt_options)
            inner_response = llm.Response(inner_prompt, inner, stream, key=key if served else None)
            try:
                for event in inner_response.stream_events():
                    if state["first_event_at"] is None:
                        state["first_event_at"] = time.monotonic()
                    yield event
                return inner_response
            except Exception as exc:
                retry = (served and state["first_event_at"] is None and "loaded" not in state
                         and call_history.error_kind(exc) == "NotLoaded")
                if not retry:
                    raise
                _load(inner, config.ttl, state, untimed=True)
                if not state.get("loaded"):
                    raise
