"""The registered `lmstudio-router` model: cheap to register, its options checked when a prompt uses them.
Routing itself (planning, falling back, logging) is specified in test_router.py."""

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from llm_lmstudio.router import model


def test_registering_the_router_loads_neither_its_planning_nor_option_validators(refused_url):
    # Every `llm` command that looks up a model registers the router: what only routing needs waits for a prompt.
    code = (
        "import sys, llm\n"
        "model = llm.get_model('router')\n"
        "from llm_lmstudio.lmstudio import chat\nfrom llm_lmstudio.router import config as router_config\n"
        "print(model.model_id, 'llm_lmstudio.router.planning' in sys.modules,\n"
        "      [c.__name__ for c in (type(model).Options, chat.LMStudioOptions, router_config.RouterConfig) if c.__pydantic_complete__])"
    )
    env = dict(os.environ, LMSTUDIO_BASE_URL=refused_url)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "lmstudio-router False []"


def test_deferred_options_still_refuse_bad_values_with_the_field_named():
    options = model.Router().Options(task="coding", temperature=1.5)
    assert (options.task, options.temperature) == ("coding", 1.5)
    with pytest.raises(ValidationError, match="temperature"):
        model.Router().Options(temperature=5)
    with pytest.raises(ValidationError, match="cache"):
        model.Router().Options(cache="soon")
    assert {"task", "cache", "temperature"} <= set(model.Router().Options.model_json_schema()["properties"])


# ---------------------------------------------------------------- running a plan against the stand-in

import json  # noqa: E402

import sqlite_utils  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from llm.cli import cli  # noqa: E402

from llm_lmstudio.lmstudio import catalog  # noqa: E402

LLAMA = "lmstudio/test-org/tiny-llama"
TOKEN = "sk-lm-router:secretpasskey"


def run(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def error_line(result) -> str:
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    return line


def test_the_router_is_listed_by_llm_models(lmstudio):
    result = run("models", "-q", "lmstudio-router")
    assert result.exit_code == 0
    assert result.output.splitlines() == ["LM Studio router: lmstudio-router (picks the best local model for each prompt) (aliases: router)"]


def test_an_unreachable_server_is_named_and_route_exits_non_zero(refused_url, user_path, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)
    (user_path / "lmstudio-router.yaml").write_text("classifier: keyword\n")
    prompt = run("-m", "router", "hi")
    assert prompt.exit_code == 1
    assert error_line(prompt).startswith(f"Error: the router has no model for this prompt: LM Studio is not reachable at {refused_url} — ")
    route = run("lmstudio", "route", "hi")
    assert route.exit_code == 1
    assert f"  server: LM Studio is not reachable at {refused_url}" in route.output
    assert error_line(route) == error_line(prompt)
    assert json.loads(run("lmstudio", "route", "--json", "hi").stdout)["chain"] == []


def test_an_auth_failure_skips_that_servers_other_models_and_counts_against_none(lmstudio, user_path):
    (user_path / "lmstudio-router.yaml").write_text("classifier: keyword\nprefer:\n  creative: [tiny-llama]\n")
    assert run("models").exit_code == 0  # listed while no token was needed
    lmstudio.configure(version="0.4", auth_token=TOKEN)
    result = run("-m", "router", "Write a haiku about autumn", "-o", "max_tokens", "2")
    assert result.exit_code == 1
    line = error_line(result)
    assert "requires an API token: run `llm keys set lmstudio`" in line and TOKEN not in result.output
    assert line.count("(token refused)") == 1 and line.count("(skipped: its server refused the token)") >= 3
    assert not [r for r in lmstudio.requests() if "chat" in r["path"]]  # no model was prompted after the refusal
    lmstudio.configure(version="0.4", auth_token=None)
    plan = json.loads(run("lmstudio", "route", "--json", "--explain", "--task", "creative", "x").output)
    history = {c["model"]: c["history"] for c in plan["candidates"]}[LLAMA]
    assert history["penalty"] == 0 and history["counted"] == []
    assert history["not_counted"] == {"AuthRequired": {"count": 1, "why": "the API token"}}


def test_a_prompt_too_long_for_the_loaded_context_ends_the_plan_and_counts_against_none(lmstudio, user_path):
    (user_path / "lmstudio-router.yaml").write_text("classifier: keyword\nprefer:\n  creative: [tiny-llama]\n")
    run("models")  # listed with its full context, not loaded
    lmstudio.load("test-org/tiny-llama", context_length=32)  # then loaded with a small one (e.g. in the app)
    result = run("-m", "router", "Write a poem about " + "the quiet sea and the loud gulls, " * 6, "--no-stream")
    assert result.exit_code == 1
    line = error_line(result)
    assert "does not fit the context test-org/tiny-llama is loaded with (32 tokens)" in line
    assert "--context-length" in line and "every model" not in line
    assert len([r for r in lmstudio.requests() if "chat" in r["path"]]) == 1  # no other model tried: it would not help
    plan = json.loads(run("lmstudio", "route", "--json", "--explain", "--task", "creative", "x").output)
    history = {c["model"]: c["history"] for c in plan["candidates"]}[LLAMA]
    assert history["penalty"] == 0 and list(history["not_counted"]) == ["PromptTooLong"]


def test_a_model_that_cannot_be_loaded_with_jit_off_ends_the_plan_in_one_line(lmstudio, user_path, monkeypatch):
    from llm_lmstudio.router import loading

    (user_path / "lmstudio-router.yaml").write_text("classifier: keyword\nprefer:\n  creative: [tiny-llama]\n")
    lmstudio.configure(jit=False)
    run("models")

    def no_sdk(model, ttl, token=None, **_):
        raise ImportError("No module named 'lmstudio'")

    monkeypatch.setattr(loading, "ensure_loaded", no_sdk)  # as without the SDK installed
    result = run("-m", "router", "Write a haiku about autumn", "--no-stream")
    assert result.exit_code == 1
    line = error_line(result)
    assert "No models loaded ('test-org/tiny-llama' is not loaded and JIT loading is off)" in line
    assert "load it with `llm lmstudio load test-org/tiny-llama`" in line and "could not load it: No module named 'lmstudio'" in line


def test_two_router_config_files_and_wrong_kind_models_are_refused_up_front(lmstudio, user_path):
    (user_path / "lmstudio-router.yaml").write_text("classifier: keyword\n")
    (user_path / "lmstudio-router.json").write_text('{"classifier": "embedding"}')
    for args in (["-m", "router", "hi"], ["lmstudio", "route", "hi"]):
        result = run(*args)
        assert result.exit_code == 1
        assert error_line(result) == (f"Error: {user_path}: both lmstudio-router.yaml and lmstudio-router.json exist and the router "
                                      "reads only one: merge them into one file, delete the other")
    (user_path / "lmstudio-router.json").unlink()
    run("models")
    for key, model_id, wrong in (("embedding_model", LLAMA, "a chat model"),
                                 ("classifier_model", "lmstudio/test-org/text-embedding-all-minilm-l6-v2", "an embedding model")):
        (user_path / "lmstudio-router.yaml").write_text(f"{key}: {model_id}\n")
        for args in (["-m", "router", "hi"], ["lmstudio", "route", "hi"]):
            result = run(*args)
            assert result.exit_code == 1
            assert f"lmstudio-router.yaml: '{key}' names {model_id}, which is {wrong}: name " in error_line(result)
    assert not [r for r in lmstudio.requests() if "chat" in r["path"] or "embeddings" in r["path"]]


# ---------------------------------------------------------------- the router is never a model in the call history


from llm_lmstudio.router.config import ROUTER_ID  # noqa: E402


def recorded_models() -> list[str]:
    return [row["model"] for row in json.loads(run("lmstudio", "stats", "--json").output)["models"]]


def test_a_router_failure_before_any_model_answers_records_no_call_of_the_router(lmstudio, refused_url, user_path, monkeypatch):
    # docs/cache-and-stats.md: stats are per model that answered or failed; the router tries models, it is not one
    (user_path / "lmstudio-router.yaml").write_text("classifier: keyword\n")
    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)
    result = run("-m", "router", "Write a haiku about autumn")
    assert result.exit_code == 1 and error_line(result).startswith("Error: the router has no model for this prompt: ")
    assert recorded_models() == []
    # every attempt failed before any model was prompted (each load refused): recorded per model, not as the router
    monkeypatch.setenv("LMSTUDIO_BASE_URL", lmstudio.base_url)
    lmstudio.set_fault("load_fail", "/", message="Not enough memory (guardrails)")
    result = run("-m", "router", "Write a haiku about autumn")
    assert result.exit_code == 1 and error_line(result).startswith("Error: every model the router tried failed: ")
    assert not [r for r in lmstudio.requests() if "chat" in r["path"]]
    models = recorded_models()
    assert models and ROUTER_ID not in models and all(m.startswith("lmstudio/") for m in models)


def test_a_routed_answer_is_recorded_under_the_model_that_answered_only(lmstudio, user_path):
    (user_path / "lmstudio-router.yaml").write_text("classifier: keyword\nprefer:\n  creative: [tiny-llama]\n")
    result = run("-m", "router", "Write a haiku about autumn", "-o", "max_tokens", "2")
    assert result.exit_code == 0, result.output
    assert recorded_models() == [LLAMA]  # not ROUTER_ID as well


def test_an_empty_prompt_is_refused_before_any_model_is_loaded_or_asked(lmstudio, user_path):
    from llm_lmstudio.core.messages import EMPTY_PROMPT

    (user_path / "lmstudio-router.yaml").write_text("classifier: keyword\n")
    run("models")
    before = len(lmstudio.requests())
    result = run("-m", "router", "")
    assert result.exit_code == 1
    assert error_line(result) == f"Error: {ROUTER_ID}: {EMPTY_PROMPT}"
    assert lmstudio.requests()[before:] == [] and lmstudio.loaded() == []
    # a system prompt alone is something to send: routed and answered
    result = run("-m", "router", "", "-s", "Say hello", "-o", "max_tokens", "2")
    assert result.exit_code == 0, result.output


def test_a_request_the_server_rejects_ends_the_plan_with_its_reason(lmstudio, user_path):
    # A 400 is about the request: every model would refuse it alike, so none is loaded and tried after the first.
    (user_path / "lmstudio-router.yaml").write_text("classifier: keyword\nprefer:\n  creative: [tiny-llama]\n")
    run("models")
    lmstudio.set_fault("status", "/api/v0/chat", status=400, body={"error": "bad request: invalid parameter"})
    result = run("-m", "router", "Write a haiku about autumn", "--no-stream")
    assert result.exit_code == 1
    assert error_line(result) == f"Error: LM Studio at {lmstudio.base_url}: request rejected (HTTP 400): bad request: invalid parameter"
    assert len([r for r in lmstudio.requests() if "chat" in r["path"]]) == 1
    plan = json.loads(run("lmstudio", "route", "--json", "--explain", "--task", "creative", "x").output)
    history = {c["model"]: c["history"] for c in plan["candidates"]}[LLAMA]
    assert history["penalty"] == 0 and list(history["not_counted"]) == ["RequestFailed"]


def test_each_attempt_in_the_summary_shows_the_servers_reason(lmstudio, user_path):
    (user_path / "lmstudio-router.yaml").write_text("classifier: keyword\nprefer:\n  creative: [tiny-llama]\nmax_attempts: 2\n")
    run("models")
    lmstudio.set_fault("status", "/api/v0/chat", status=429, body={"error": "too many requests, the server is busy: try again later"})
    result = run("-m", "router", "Write a haiku about autumn", "--no-stream")
    assert result.exit_code == 1
    summary = error_line(result).split(". Last error: ")[0]
    assert summary.startswith("Error: every model the router tried failed: ")
    assert f"{LLAMA} (request rejected (HTTP 429): too many requests, the server is busy: try again later), " in summary
    assert "LM Studio at" not in summary


def test_a_model_gone_since_the_plan_is_named_not_found_never_llms_unknown_model(lmstudio, user_path):
    from tests.helpers import model_list_cache

    gone = "lmstudio/test-org/tiny-gone"
    (user_path / "lmstudio-router.yaml").write_text(
        "classifier: keyword\nprefer:\n  creative: [tiny-llama, test-org/tiny-gone]\nmax_attempts: 2\n")
    run("models")
    with model_list_cache() as servers:  # listed when the plan was made; deleted in LM Studio since
        models = servers[lmstudio.base_url]["models"]
        models.append(dict(next(m for m in models if m["key"] == "test-org/tiny-llama"), key="test-org/tiny-gone"))
    lmstudio.set_fault("status", "/api/v0/chat", status=500, body={"error": "engine crashed"})
    # loading tiny-llama for the first attempt lists the server's models again: tiny-gone is not among them
    result = run("-m", "router", "Write a haiku about autumn", "--no-stream")
    assert result.exit_code == 1
    line = error_line(result)
    assert f"{LLAMA} (server error (HTTP 500)), {gone} (not found). Last error: " in line
    assert line.endswith(f"Last error: {gone} is no longer available: it was listed when the router planned, and is gone since "
                         "(`llm models -q lmstudio` shows the models there are)")
