"""What counts against a model: only failures it caused, fading with a six-hour half-life, outweighed by later
successes (direct prompts included). Checked on the arithmetic, then end to end: real failures from the stand-in,
real direct prompts, the router's ranking read back through `llm lmstudio route --explain`. The clock is set, never waited on."""

import json

import pytest
from click.testing import CliRunner
from llm.cli import cli

from llm_lmstudio.store import call_history, reliability

LLAMA = "lmstudio/test-org/tiny-llama"
TOOLS = "lmstudio/test-org/tiny-qwen-tools"
HOUR = 3600.0
T0 = 1_900_000_000.0


def test_only_failures_the_model_caused_count():
    record = reliability.weigh([(0, "AuthRequired", 0, "router"), (0, "PromptTooLong", 0, "direct"), (0, "NotLoaded", 0, "router"),
                                (0, "Unreachable", 0, "router"), (0, "ServerError", 0, "router"), (0, "StreamCut", 0, "direct")])
    assert [kind for kind, _, _ in record.counted] == ["ServerError", "StreamCut"]
    assert record.ignored == {"AuthRequired": 1, "NotLoaded": 1, "PromptTooLong": 1, "Unreachable": 1}
    assert record.failures == 2.0 and record.penalty == pytest.approx(50 * 2 / 4)


def test_a_failure_weighs_half_after_each_half_life_and_nothing_past_the_horizon():
    assert reliability.weigh([(0, "TimedOut", 6 * HOUR, "router")]).failures == pytest.approx(0.5)
    assert reliability.weigh([(0, "TimedOut", 24 * HOUR, "router")]).failures == pytest.approx(1 / 16)
    assert reliability.weigh([(0, "TimedOut", 61 * HOUR, "router")]).counted == ()
    assert reliability.Reliability().penalty == 0.0


def clock_at(monkeypatch, when: float) -> None:
    monkeypatch.setattr(call_history, "clock", lambda: when)


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def history_of(model_id: str) -> dict:
    result = run("lmstudio", "route", "--json", "--explain", "--task", "coding", "Write a Python function")
    return {c["model"]: c for c in json.loads(result.output)["candidates"]}[model_id]


def test_failures_fade_with_age_and_later_direct_successes_outweigh_them(lmstudio, user_path, monkeypatch):
    (user_path / "lmstudio-router.yaml").write_text("classifier: keyword\nprefer:\n  coding: [tiny-qwen-tools]\n")
    run("models")
    clock_at(monkeypatch, T0)
    for _ in range(2):  # two 500s from the preferred model: the router falls back each time
        lmstudio.set_fault("status", "/api/v0/chat", status=500, times=1, body={"error": {"message": "engine crashed"}})
        assert run("-m", "router", "Write a Python function that adds two numbers", "-o", "max_tokens", "2").exit_code == 0
    fresh = history_of(TOOLS)
    assert [c["kind"] for c in fresh["history"]["counted"]] == ["ServerError", "ServerError"]
    assert fresh["history"]["penalty"] == pytest.approx(50 * 2 / (2 + 0 + 2), abs=0.01)
    assert any(r.startswith("2 recent failures (ServerError 0s ago, ServerError 0s ago) weighing 2.0 vs 0.0 successes (-25.0)")
               for r in fresh["reasons"])

    clock_at(monkeypatch, T0 + 6 * HOUR)  # one half-life later
    aged = history_of(TOOLS)["history"]
    assert aged["failures_weight"] == pytest.approx(1.0) and aged["penalty"] == pytest.approx(50 * 1 / 3, abs=0.01)

    for _ in range(5):  # five prompts sent straight to the model, all answered
        assert run("-m", TOOLS, "hi", "-o", "max_tokens", "2").exit_code == 0
    forgiven = history_of(TOOLS)
    assert forgiven["history"]["successes_weight"] == pytest.approx(5.0)
    assert forgiven["history"]["penalty"] == pytest.approx(50 * 1 / (1 + 5 + 2), abs=0.01)
    clock_at(monkeypatch, T0 + 48 * HOUR)
    assert history_of(TOOLS)["history"]["penalty"] < 0.3  # two days on, a 500 of the past says nothing


def test_a_penalty_of_zero_is_never_shown(lmstudio, user_path):
    (user_path / "lmstudio-router.yaml").write_text("classifier: keyword\n")
    run("models")
    assert run("-m", LLAMA, "hi", "-o", "max_tokens", "2").exit_code == 0  # a success, no failure: no penalty line
    result = run("lmstudio", "route", "--explain", "--task", "coding", "Write a Python function")
    assert "-0.0" not in result.output and "−0.0" not in result.output
    assert "history: failures weigh 0.00 against 1.00 successes (each halves every 6 h) -> penalty 0.0" in result.output
