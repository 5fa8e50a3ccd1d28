"""Records each model call's outcome (answered or the kind of failure, time to first token, duration) in the
plugin's call history (call_history.py), which the router ranks on and `llm lmstudio stats` reports. Wraps a model's
execute() beneath the response cache: a cache hit never reaches the model, so it is never recorded as a call."""

from __future__ import annotations

import contextvars
import time
from typing import Any

from llm_lmstudio.store.wrapping import around_execute

# The outermost recorder while its execute() is producing: the router records each attempt it makes itself
# (call_history.record_attempt), so a model it delegates to does not record, and neither does the router (delegating).
_RECORDING: contextvars.ContextVar = contextvars.ContextVar("llm_lmstudio_recording", default=None)


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


class _Recorder:
    def __init__(self, model, prompt, response):
        self.model_id = model.model_id
        self.response = response
        self.started = time.monotonic()
        self.first_at: float | None = None
        self.delegated = False

    def begin(self) -> None:
        return None  # always runs the model

    def saw(self, event) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()

    def finished(self) -> None:
        cut = unfinished(self.response.response_json) == "cut"
        self._record(not cut, "StreamCut" if cut else None)

    def failed(self, exc: Exception) -> None:
        from llm_lmstudio.store import call_history

        kind = call_history.error_kind(exc)
        if kind not in call_history.NOTHING_SENT:
            self._record(False, kind)

    def _record(self, ok: bool, error_kind: str | None) -> None:
        from llm_lmstudio.store import call_history

        if self.delegated:
            return  # the router: each model it tried recorded its own attempt
        ended = time.monotonic()
        ttft = (self.first_at - self.started) * 1000 if self.first_at is not None else None
        call_history.record_call(self.model_id, ok, error_kind=error_kind, ttft_ms=ttft, duration_ms=(ended - self.started) * 1000)


def recorded(execute):
    """Decorate a model's execute() (sync or async generator) so that each outermost call's outcome is recorded."""
    return around_execute(execute, _RECORDING, _Recorder)


class _Delegator(_Recorder):
    """The router's watcher: it records nothing, whatever happens. Its attempts are recorded per real model; a
    failure before any model was prompted (no plan, every load refused) is not a model's call either."""

    def _record(self, ok: bool, error_kind: str | None) -> None:
        return None


def delegating(execute):
    """Decorate the router's execute(): a model run inside it records nothing (the router records each attempt with
    call_history.record_attempt), and the router itself is never recorded as a model."""
    return around_execute(execute, _RECORDING, _Delegator)
