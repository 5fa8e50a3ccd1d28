"""Specifications for llm_lmstudio.store.call_recording (each call's outcome in the call history) and its place beside
the response cache: two wrappers around a model's execute() (store/wrapping.py), each doing one job. Models here are
small llm.Model subclasses run in this process; tests/store/test_response_cache.py walks the same paths through llm
against the stand-in."""

from __future__ import annotations

import asyncio

import llm
import pytest

from llm_lmstudio.store import call_history, call_recording
from llm_lmstudio.store.call_recording import recorded
from llm_lmstudio.store.response_cache import CacheOptions, cached


@pytest.fixture
def calls(monkeypatch):
    """Every record_call made, as (model, ok, error_kind, ttft_ms is not None)."""
    made = []

    def record_call(model, ok, *, error_kind=None, ttft_ms=None, duration_ms=None, **_):
        assert duration_ms is not None and duration_ms >= 0
        made.append((model, ok, error_kind, ttft_ms is not None))
        return True

    monkeypatch.setattr(call_history, "record_call", record_call)
    return made


def scripted(*, model_id="test/answers", fail=None, words=("one", "two"), cache=True, record=True):
    """A model whose execute() yields `words`, then raises `fail` if given, wrapped as asked."""

    def execute(self, prompt, stream, response, conversation=None):
        self.runs += 1
        yield from words
        if fail is not None:
            raise fail

    if record:
        execute = recorded(execute)
    if cache:
        execute = cached(execute)
    kind = type("Scripted", (llm.Model,), {"model_id": model_id, "Options": CacheOptions, "execute": execute, "runs": 0})
    return kind()


def ask(model, text="hi", **options):
    return model.prompt(text, **options).text()


def test_each_call_is_recorded_with_its_outcome_without_any_cache(calls):
    assert ask(scripted()) == "onetwo"
    with pytest.raises(llm.ModelError):
        ask(scripted(model_id="test/fails", fail=llm.ModelError("HTTP 500 from the server")))
    assert calls == [("test/answers", True, None, True), ("test/fails", False, call_history.error_kind(llm.ModelError("x")), True)]


def test_a_failure_before_the_first_token_has_no_time_to_first_token(calls):
    with pytest.raises(ConnectionError):
        ask(scripted(words=(), fail=ConnectionError("refused")))
    assert calls == [("test/answers", False, call_history.error_kind(ConnectionError("refused")), False)]


def test_a_cache_hit_runs_no_model_and_records_no_call(calls, user_path):
    model = scripted()
    assert ask(model, cache="1h") == ask(model, cache="1h") == "onetwo"
    assert model.runs == 1
    assert calls == [("test/answers", True, None, True)]


def test_the_cache_alone_records_nothing_and_the_recorder_alone_caches_nothing(calls, user_path):
    only_cache = scripted(record=False)
    assert ask(only_cache, cache="1h") == ask(only_cache, cache="1h") == "onetwo"
    assert only_cache.runs == 1 and calls == []

    only_recorder = scripted(cache=False, model_id="test/recorded")
    assert ask(only_recorder, cache="1h") == ask(only_recorder, cache="1h") == "onetwo"
    assert only_recorder.runs == 2
    assert calls == [("test/recorded", True, None, True)] * 2


def test_a_model_run_inside_another_records_nothing_and_nor_does_the_outer_one(calls):
    inner = scripted(model_id="test/inner", cache=False)

    def delegate(self, prompt, stream, response, conversation=None):
        yield from inner.prompt(prompt.prompt)  # what the router does with the model it picked

    outer_kind = type("Delegating", (llm.Model,), {"model_id": "test/router", "Options": CacheOptions,
                                                   "execute": cached(recorded(delegate))})
    assert ask(outer_kind()) == "onetwo"
    assert inner.runs == 1
    assert calls == []  # the router records its attempts itself (call_history.record_attempt)
    assert ask(inner) == "onetwo"  # the same model asked directly is recorded
    assert calls == [("test/inner", True, None, True)]


def test_the_routers_decorator_records_nothing_of_its_own_even_a_failure_before_it_delegates(calls):
    inner = scripted(model_id="test/inner", cache=False)

    def route(self, prompt, stream, response, conversation=None):
        if prompt.prompt == "no plan":
            raise llm.ModelError("the router has no model for this prompt")  # before any model ran
        yield from inner.prompt(prompt.prompt)

    router = type("Routing", (llm.Model,), {"model_id": "test/router", "Options": CacheOptions,
                                             "execute": cached(call_recording.delegating(route))})()
    with pytest.raises(llm.ModelError):
        ask(router, "no plan")
    assert ask(router) == "onetwo" and inner.runs == 1
    assert calls == []  # neither the router (a model only in name) nor the model it ran inside it


def test_a_caller_that_stops_early_records_nothing(calls):
    response = scripted(words=("one", "two", "three")).prompt("hi")
    events = iter(response)
    assert next(events) == "one"
    events.close()
    assert calls == []


def test_async_models_are_recorded_the_same_way(calls, user_path):
    async def execute(self, prompt, stream, response, conversation=None):
        self.runs += 1
        for word in ("one", "two"):
            yield word

    kind = type("AsyncScripted", (llm.AsyncModel,), {"model_id": "test/async", "Options": CacheOptions,
                                                     "execute": cached(recorded(execute)), "runs": 0})
    model = kind()

    async def twice():
        return [await model.prompt("hi", cache="1h").text() for _ in range(2)]

    assert asyncio.run(twice()) == ["onetwo", "onetwo"]
    assert model.runs == 1
    assert calls == [("test/async", True, None, True)]


@pytest.mark.parametrize(
    "logged, reason",
    [
        ({"finish_reason": "stop"}, None),
        ({"finish_reason": "length"}, "length"),
        ({"cut": True, "finish_reason": None}, "cut"),
        ({"router": {}, "attempts": [{"ok": False}]}, "cut"),
        ({"router": {}, "attempts": [{"ok": True}], "answer": {"finish_reason": "stop"}}, None),
        ({"router": {}, "attempts": [{"ok": True}], "answer": {"finish_reason": "length"}}, "length"),
        (None, None),
    ],
)
def test_what_counts_as_an_unfinished_answer(logged, reason):
    assert call_recording.unfinished(logged) == reason
