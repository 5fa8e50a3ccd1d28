"""The router loads the model it chose before prompting it: through the management layer, with the config's TTL and
a progress line on stderr, whether LM Studio's JIT loading is on or off; never a second instance of a loaded model."""

import json
import re

import pytest
import sqlite_utils
from click.testing import CliRunner
from llm.cli import cli

from llm_lmstudio.lmstudio import catalog

PREFS = """
classifier: keyword
prefer:
  creative: [tiny-llama]
ttl: 300
"""


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def last_turn(user_path):
    rows = sorted(sqlite_utils.Database(user_path / "logs.db")["turns"].rows, key=lambda r: r["datetime_utc"])
    return rows[-1]


@pytest.mark.parametrize("jit", [True, False], ids=["jit-on", "jit-off"])
def test_the_router_loads_the_chosen_model_with_the_configured_ttl_and_says_so(lmstudio, user_path, jit):
    (user_path / "lmstudio-router.yaml").write_text(PREFS)
    lmstudio.configure(jit=jit)
    assert not lmstudio.loaded()
    result = run("-m", "router", "Write a haiku about autumn", "-o", "max_tokens", "2")
    assert result.exit_code == 0, result.output
    [instance] = lmstudio.loaded()
    assert instance["model"] == "test-org/tiny-llama"
    assert not instance["jit"] and instance["ttl_seconds"] == 300  # loaded through management, not by JIT
    [line] = [line for line in result.stderr.splitlines() if "loading" in line]
    assert line.startswith(f"llm-lmstudio: loading test-org/tiny-llama on {lmstudio.base_url} for the router "
                           "(unloaded after 300 s idle)… done in ")
    attempt = json.loads(last_turn(user_path)["response_json"])["attempts"][0]
    assert attempt["ok"] and attempt["loaded_by_router"]
    # the listing now knows it is loaded: the next prompt neither loads again nor says so
    again = run("-m", "router", "Write a haiku about spring", "-o", "max_tokens", "2")
    assert again.exit_code == 0 and "loading" not in again.stderr
    assert len(lmstudio.loaded()) == 1


def test_a_model_loaded_behind_the_listings_back_is_not_loaded_twice(lmstudio, user_path):
    (user_path / "lmstudio-router.yaml").write_text(PREFS)
    run("models")  # the listing: nothing loaded
    lmstudio.load("test-org/tiny-llama")  # then loaded elsewhere (the LM Studio app, `lms load`)
    result = run("-m", "router", "Write a haiku about autumn", "-o", "max_tokens", "2")
    assert result.exit_code == 0, result.output
    assert len(lmstudio.loaded()) == 1 and "loading" not in result.stderr


def test_a_model_unloaded_since_the_listing_is_loaded_again_when_jit_is_off(lmstudio, user_path):
    (user_path / "lmstudio-router.yaml").write_text(PREFS)
    lmstudio.configure(jit=False)
    lmstudio.load("test-org/tiny-llama")
    catalog.refresh()  # the listing says loaded...
    lmstudio.reset()  # ...then its TTL ran out (LM Studio answers "No models loaded": JIT is off)
    lmstudio.configure(jit=False)
    result = run("-m", "router", "Write a haiku about autumn", "-o", "max_tokens", "2")
    assert result.exit_code == 0, result.output
    assert "llm-lmstudio: loading test-org/tiny-llama" in result.stderr
    [attempt] = json.loads(last_turn(user_path)["response_json"])["attempts"]
    assert attempt["ok"] and attempt["loaded_by_router"]
    [instance] = lmstudio.loaded()
    assert instance["ttl_seconds"] == 300


def test_a_load_the_guardrails_refuse_counts_against_the_model_and_the_next_one_answers(lmstudio, user_path):
    (user_path / "lmstudio-router.yaml").write_text(PREFS)
    lmstudio.set_fault("load_fail", "/", times=1, message="Not enough memory (guardrails)")
    result = run("-m", "router", "Write a haiku about autumn", "-o", "max_tokens", "2")
    assert result.exit_code == 0, result.output
    first, second = json.loads(last_turn(user_path)["response_json"])["attempts"][:2]
    assert first["model"] == "lmstudio/test-org/tiny-llama" and first["error_kind"] in ("ModelLoadFailed", "LoadRefused")
    assert "llm-lmstudio: loading test-org/tiny-llama" in result.stderr and "failed" in result.stderr
    assert second["ok"]


def test_a_model_the_router_loaded_for_an_attempt_that_failed_is_unloaded_again(lmstudio, user_path):
    (user_path / "lmstudio-router.yaml").write_text(PREFS)
    lmstudio.set_fault("status", "/api/v0/chat", status=503, times=1, body={"error": {"message": "overloaded"}})
    result = run("-m", "router", "Write a haiku about autumn", "-o", "max_tokens", "2")
    assert result.exit_code == 0, result.output
    first, second = json.loads(last_turn(user_path)["response_json"])["attempts"][:2]
    assert first["error_kind"] == "ServerError" and second["ok"]
    # only the model that answered holds memory; the one that failed was loaded for nothing and let go
    assert [i["model"] for i in lmstudio.loaded()] == [second["model"].removeprefix("lmstudio/")]


# ---------------------------------------------------------------- a token the installed SDK cannot send: REST management

TOKEN = "sk-lm-abcdEFGH:a1B2c3D4e5F6g7H8i9J0"


def token_protected(lmstudio, user_path, monkeypatch, *, token_support: bool, jit: bool = True) -> None:
    """The router config, a listing made while no token was needed, then a server that wants TOKEN, managed through
    an SDK with or without token support (without: LM Studio's REST API, whose load takes no TTL)."""
    import lmstudio as lms

    from tests.helpers import sdk_client

    monkeypatch.setattr(lms, "Client", sdk_client(token_support))
    (user_path / "lmstudio-router.yaml").write_text(PREFS)
    assert run("models").exit_code == 0
    lmstudio.configure(jit=jit, auth_token=TOKEN)


def test_with_rest_management_and_jit_on_the_request_carries_the_ttl_and_no_load_is_announced(lmstudio, user_path, monkeypatch):
    token_protected(lmstudio, user_path, monkeypatch, token_support=False, jit=True)
    monkeypatch.setenv("LM_API_TOKEN", TOKEN)
    result = run("-m", "router", "Write a haiku about autumn", "-o", "max_tokens", "2")
    assert result.exit_code == 0, result.output
    assert "loading" not in result.stderr and "failed" not in result.stderr and "--ttl" not in result.output
    [instance] = lmstudio.loaded()
    assert instance["model"] == "test-org/tiny-llama" and instance["jit"] and instance["ttl_seconds"] == 300
    assert not [r for r in lmstudio.requests() if r["path"] == "/api/v1/models/load"]
    [attempt] = json.loads(last_turn(user_path)["response_json"])["attempts"]
    assert attempt["ok"] and "loaded_by_router" not in attempt


def test_with_rest_management_and_jit_off_the_router_loads_without_a_ttl_and_says_so(lmstudio, user_path, monkeypatch):
    token_protected(lmstudio, user_path, monkeypatch, token_support=False, jit=False)
    monkeypatch.setenv("LM_API_TOKEN", TOKEN)
    result = run("-m", "router", "Write a haiku about autumn", "-o", "max_tokens", "2")
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.stderr.splitlines() if "loading" in line]
    assert re.fullmatch(
        rf"llm-lmstudio: loading test-org/tiny-llama on {re.escape(lmstudio.base_url)} for the router… done in [\d.]+ s "
        r"\(no TTL: LM Studio's REST load cannot set one; `llm lmstudio unload test-org/tiny-llama` frees it\)", line), line
    assert "failed" not in result.stderr and "--ttl" not in result.output
    [instance] = lmstudio.loaded()
    assert instance["model"] == "test-org/tiny-llama" and not instance["jit"] and instance["ttl_seconds"] is None
    chats = [r for r in lmstudio.requests() if "chat" in r["path"]]
    assert len(chats) == 2 and all(r["ttl"] == 300 for r in chats)  # asked, "not loaded", loaded, asked again
    [attempt] = json.loads(last_turn(user_path)["response_json"])["attempts"]
    assert attempt["ok"] and attempt["loaded_by_router"]


@pytest.mark.parametrize("token_support", [True, False], ids=["sdk-with-tokens", "sdk-without-tokens"])
def test_key_is_the_token_for_the_models_the_router_tries_and_for_its_loads(lmstudio, user_path, monkeypatch, token_support):
    # docs/lmstudio.md: `--key` (a token, or the name of a stored key) wins for one prompt; no token is stored here
    token_protected(lmstudio, user_path, monkeypatch, token_support=token_support, jit=False)
    without = run("-m", "router", "Write a haiku about autumn", "-o", "max_tokens", "2")
    assert without.exit_code == 1
    assert "requires an API token: run `llm keys set lmstudio`" in without.output and not lmstudio.loaded()
    result = run("-m", "router", "Write a haiku about autumn", "-o", "max_tokens", "2", "--key", TOKEN)
    assert result.exit_code == 0, result.output
    [instance] = lmstudio.loaded()
    assert instance["model"] == "test-org/tiny-llama"
    assert instance["ttl_seconds"] == (300 if token_support else None)  # loaded by the router, with the key
    assert json.loads(last_turn(user_path)["response_json"])["attempts"][-1]["ok"]
    assert run("keys", "set", "mine", "--value", TOKEN).exit_code == 0  # the name of a stored key works too
    named = run("-m", "router", "Write a haiku about spring", "-o", "max_tokens", "2", "--key", "mine")
    assert named.exit_code == 0, named.output
    for text in (without.output, result.output, named.output):
        assert TOKEN not in text and TOKEN.split(":")[1] not in text
    for path in [user_path / "logs.db", *(user_path / "lmstudio").iterdir()]:
        assert TOKEN.split(":")[1].encode() not in path.read_bytes(), path
