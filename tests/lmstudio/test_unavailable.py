"""What a user reads when an `lmstudio/...` model is not there: the reason and what to do (a bad setting, a server
that is down, a rejected token, the wrong kind of model), never a bare "Unknown model"; a bad setting of ours
never breaks another provider's models; and the words of our other messages are right. User-visible cases run
the real `llm` in a subprocess."""

from __future__ import annotations

import json

import pytest

from llm_lmstudio.lmstudio import unavailable
from llm_lmstudio.lmstudio import catalog
from llm_lmstudio.core import settings
from tests.helpers import assert_one_line_error as one_error_line, llm_cli as invoke, llm_process as llm_run
from tests.helpers import model_list_cache

LLAMA = "lmstudio/test-org/tiny-llama"
EMBED = "lmstudio/test-org/text-embedding-all-minilm-l6-v2"
TOKEN = "sk-lm-AVAIL001:availabilityPass01"
WRONG = "sk-lm-WRONG999:notTheRightOne0"


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


# ---------------------------------------------------------------- a bad setting of ours breaks nothing else


@pytest.mark.parametrize("value", ["0", "abc"])
def test_a_bad_embed_batch_size_leaves_other_providers_embedding_models_working(value):
    result = llm_run("embed-models", env={"LMSTUDIO_EMBED_BATCH_SIZE": value, "LMSTUDIO_BASE_URL": "127.0.0.1:9"})
    assert result.returncode == 0, result.stderr
    assert "text-embedding-3-small" in result.stdout  # OpenAI's models are still there
    [line] = stderr_lines(result)
    assert line.startswith(f"llm-lmstudio-mlx: LMSTUDIO_EMBED_BATCH_SIZE='{value}' is not usable")
    assert "whole number of at least 1" in line and "LM Studio models are off" in line


def test_a_bad_setting_still_lets_llm_resolve_another_providers_model(monkeypatch):
    monkeypatch.setenv("LMSTUDIO_EMBED_BATCH_SIZE", "0")
    result = invoke("embed-models", "default", "3-small")
    assert result.exit_code == 0, result.output
    assert invoke("embed-models", "default").output.strip() == "text-embedding-3-small"
    result = invoke("models", "default", "gpt-4o-mini")
    assert result.exit_code == 0, result.output


def test_a_failure_inside_our_registration_turns_off_only_our_models(monkeypatch):
    def broken(named=()):
        raise RuntimeError("catalog exploded")

    monkeypatch.setattr(catalog, "models_for_registration", broken)
    result = invoke("models")
    assert result.exit_code == 0 and "gpt-4o-mini" in result.output
    assert "LM Studio router" in result.output  # the other parts of the hook still ran
    lines = [line for line in result.stderr.splitlines() if line.startswith("llm-lmstudio-mlx:")]
    assert lines == ["llm-lmstudio-mlx: LM Studio chat models are off: RuntimeError: catalog exploded (LLM_LMSTUDIO_DEBUG=1 shows where)"]


def test_a_timeout_setting_that_is_not_a_number_is_one_line_for_status():
    result = llm_run("lmstudio", "status", env={"LMSTUDIO_TIMEOUT": "abc"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert stderr_lines(result) == [
        "Error: LMSTUDIO_TIMEOUT='abc' is not a number: set it to a number of seconds greater than 0 (default 300), "
        "or unset it"
    ]


@pytest.mark.parametrize(
    "command",
    [["status"], ["ps"], ["ls"], ["load", "tiny-llama"], ["unload", "--all"], ["status", "--json"]],
    ids=lambda c: " ".join(c),
)
@pytest.mark.parametrize(
    "name, value, words",
    [
        ("LMSTUDIO_TIMEOUT", "abc", "number of seconds greater than 0 (default 300)"),
        ("LMSTUDIO_CONNECT_TIMEOUT", "-1", "number of seconds greater than 0 (default 2)"),
        ("LMSTUDIO_BASE_URL", "ftp://x", "only http and https are allowed (host:port or http(s)://host:port)"),
    ],
)
def test_every_settings_error_is_one_line_naming_the_variable_and_what_it_accepts(monkeypatch, command, name, value, words):
    monkeypatch.setenv(name, value)
    line = one_error_line(invoke("lmstudio", *command))
    assert line.startswith(f"Error: {name}") and words in line


def test_a_bad_server_option_is_reported_as_the_option_not_the_variable():
    line = one_error_line(invoke("lmstudio", "ps", "--server", "garbage://"))
    assert line.startswith("Error: --server 'garbage://' uses the scheme 'garbage': only http and https are allowed")


# ---------------------------------------------------------------- "Unknown model" is never the whole story


@pytest.mark.parametrize(
    "env, words",
    [
        ({"LMSTUDIO_CACHE_TTL": "0"}, "LMSTUDIO_CACHE_TTL='0' is not usable: set it to a number of seconds greater than 0"),
        ({"LMSTUDIO_TIMEOUT": "abc"}, "LMSTUDIO_TIMEOUT='abc' is not a number"),
        ({"LMSTUDIO_CONNECT_TIMEOUT": "-1"}, "LMSTUDIO_CONNECT_TIMEOUT='-1' is not usable"),
        ({"LMSTUDIO_BASE_URL": "ftp://x"}, "LMSTUDIO_BASE_URL='ftp://x' uses the scheme 'ftp': only http and https"),
        ({"LMSTUDIO_BASE_URL": "http://[::1"}, "LMSTUDIO_BASE_URL='http://[::1' is not a valid address: use host:port"),
        ({"LMSTUDIO_BASE_URL": "localhost:99999"}, "LMSTUDIO_BASE_URL='localhost:99999' has an invalid port: use a port from 1"),
    ],
    ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else None,
)
def test_an_lmstudio_model_behind_a_bad_setting_says_which_setting_and_what_it_accepts(monkeypatch, env, words):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for mode in ([], ["--async"]):
        line = one_error_line(invoke("-m", LLAMA, "hello", *mode))
        assert line.startswith(f"Error: {LLAMA} is not available: ") and words in line


def test_a_server_that_is_down_on_a_fresh_user_folder_is_named_with_what_to_do(refused_url):
    result = llm_run("-m", LLAMA, "hello", env={"LMSTUDIO_BASE_URL": refused_url})
    assert result.returncode == 1
    assert stderr_lines(result) == [
        f"Error: {LLAMA} is not available: LM Studio is not reachable at {refused_url} — is the server running? "
        "Start it with `lms server start` or from the LM Studio app"
    ]


def test_llm_chat_with_a_missing_model_says_why_without_a_traceback(refused_url):
    result = llm_run("chat", "-m", LLAMA, input="hello\nquit\n", env={"LMSTUDIO_BASE_URL": refused_url})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert stderr_lines(result) == [
        f"llm-lmstudio-mlx: {LLAMA} is not available: LM Studio is not reachable at {refused_url} — is the server "
        "running? Start it with `lms server start` or from the LM Studio app",
        f"Error: '{LLAMA}' is not a known model",
    ]


def test_a_rejected_token_is_named_instead_of_unknown_model(lmstudio, monkeypatch):
    lmstudio.configure(auth_token=TOKEN)
    monkeypatch.setenv("LM_API_TOKEN", WRONG)
    line = one_error_line(invoke("-m", LLAMA, "hello"))
    assert f"{LLAMA} is not available: LM Studio at {lmstudio.base_url} rejected the API token" in line
    assert WRONG not in line and "notTheRightOne" not in line


def test_a_fixed_token_takes_effect_at_once_not_when_the_cached_failure_expires(lmstudio, monkeypatch):
    lmstudio.configure(auth_token=TOKEN)
    monkeypatch.setenv("LMSTUDIO_CACHE_TTL", "600")
    assert "requires an API token" in one_error_line(invoke("-m", LLAMA, "hello"))
    monkeypatch.setenv("LM_API_TOKEN", TOKEN)
    lmstudio.script("fixed")
    result = invoke("-m", LLAMA, "hello")
    assert result.exit_code == 0 and result.output.strip() == "fixed", result.output
    assert TOKEN not in (settings.plugin_dir() / catalog.CACHE_FILE).read_text()


def test_a_changed_base_url_never_serves_the_old_servers_list(lmstudio, refused_url, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_CACHE_TTL", "600")
    assert LLAMA in invoke("models").output
    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)
    assert LLAMA not in invoke("models").output
    assert f"LM Studio is not reachable at {refused_url}" in one_error_line(invoke("-m", LLAMA, "hello"))


def test_a_model_missing_from_a_cached_list_is_asked_for_again_before_giving_up(lmstudio, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_CACHE_TTL", "600")
    assert invoke("models").exit_code == 0
    # As if the list had been cached (still fresh) before the model was downloaded.
    with model_list_cache() as servers:
        entry = servers[lmstudio.base_url]
        entry["models"] = [m for m in entry["models"] if m["key"] != "test-org/tiny-llama"]
        entry["fetched_at"] -= 10
    lmstudio.script("found it")
    result = invoke("-m", LLAMA, "hello")
    assert result.exit_code == 0 and result.output.strip() == "found it", result.output


def test_a_model_the_server_does_not_have_says_so_and_where_to_look(lmstudio):
    line = one_error_line(invoke("-m", "lmstudio/test-org/no-such-model", "hello"))
    assert line == (
        f"Error: lmstudio/test-org/no-such-model is not available: LM Studio at {lmstudio.base_url} does not list "
        "test-org/no-such-model (`llm models -q lmstudio` shows the models it has, `llm lmstudio ls` the downloaded ones)"
    )


@pytest.mark.parametrize("typed", ["lmstudio/test-org/tiny-lama", "lmstudio/tiny-llama", "lmstudio/Test-Org/Tiny-Lama"])
def test_a_typo_or_a_short_name_is_offered_the_listed_model(lmstudio, typed):
    # docs/router.md, "Hints in model errors": close names for a model LM Studio does not list
    line = one_error_line(invoke("-m", typed, "hello"))
    key = typed.removeprefix("lmstudio/")
    assert line == (
        f"Error: {typed} is not available: LM Studio at {lmstudio.base_url} does not list {key}; did you mean "
        f"{LLAMA}? (`llm models -q lmstudio` shows the models it has, `llm lmstudio ls` the downloaded ones)"
    )


def test_close_names_never_offer_the_name_typed_and_prefer_the_same_name():
    keys = ["qwen/qwen3-4b", "qwen/qwen3-8b", "lmstudio-community/qwen3-4b", "test-org/tiny-llama", "test-org/tiny-reasoner"]
    assert unavailable.close_names("qwen3-4b", keys) == ["qwen/qwen3-4b", "lmstudio-community/qwen3-4b"]
    assert unavailable.close_names("test-org/tiny-lama", keys) == ["test-org/tiny-llama"]  # not every test-org/tiny-*
    assert unavailable.close_names("qwen/qwen3-4b", keys) == ["lmstudio-community/qwen3-4b"]
    assert unavailable.close_names("test-org/no-such-model", keys) == []


def test_a_server_prefix_that_is_not_configured_says_how_to_add_it(lmstudio):
    line = one_error_line(invoke("-m", "lmstudio@gpu-box:1234/test-org/tiny-llama", "hello"))
    assert "names the server gpu-box:1234, which is not configured: add it to LMSTUDIO_BASE_URL" in line


@pytest.mark.minilm  # uses the stand-in's MiniLM embedding model
def test_an_embedding_model_used_for_chat_says_how_to_use_it(lmstudio):
    line = one_error_line(invoke("-m", EMBED, "hello"))
    assert line == f"Error: {EMBED} is an embedding model: use it with `llm embed -m {EMBED}`"


def test_a_chat_model_used_for_embeddings_gets_a_clear_error_not_llms_no_default_model(lmstudio):
    result = llm_run("embed", "-m", LLAMA, "-c", "hello")
    assert result.returncode == 1
    assert stderr_lines(result) == [
        f"Error: {LLAMA} is a chat model, not an embedding model: `llm embed-models` lists the embedding models"
    ]


def test_an_alias_or_default_model_that_points_at_a_missing_model_says_why(lmstudio, refused_url, monkeypatch, user_path):
    (user_path / "aliases.json").write_text(json.dumps({"fast": LLAMA}))
    (user_path / "default_model.txt").write_text(LLAMA)
    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)
    for args in (["-m", "fast", "hello"], ["hello"]):
        assert f"Error: {LLAMA} is not available: LM Studio is not reachable" in one_error_line(invoke(*args))


def test_llm_models_lists_no_stand_in_when_a_model_is_unavailable(refused_url, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)
    result = invoke("models")
    assert result.exit_code == 0
    assert "lmstudio/" not in result.output and "not available" not in result.output
    assert "llm-lmstudio" not in result.stderr  # a server that is down is not news unless asked about


def test_stand_ins_accept_any_option_attachment_or_schema_and_still_say_why(refused_url, monkeypatch, tmp_path):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)
    image = tmp_path / "pixel.png"
    image.write_bytes(bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"))
    line = one_error_line(invoke("-m", LLAMA, "hi", "-o", "temperature", "0.5", "-a", str(image), "--schema", "a int"))
    assert "LM Studio is not reachable" in line


def test_debug_names_the_failed_listing_on_every_run_not_only_the_first(refused_url):
    env = {"LMSTUDIO_BASE_URL": refused_url, "LLM_LMSTUDIO_DEBUG": "1"}
    for _ in range(2):
        result = llm_run("models", env=env)
        assert result.returncode == 0
        assert [line for line in stderr_lines(result) if "llm-lmstudio" in line] == [
            f"llm-lmstudio-mlx: the last model listing of {refused_url} failed: LM Studio is not reachable at "
            f"{refused_url} — is the server running? Start it with `lms server start` or from the LM Studio app"
        ]


def test_requested_ids_outside_any_command_are_none():
    assert unavailable.requested_ids("chat") == unavailable.requested_ids("embedding") == []


@pytest.mark.parametrize(
    "args, chat, embedding",
    [
        (["-m", LLAMA, "hi"], [LLAMA], []),
        (["prompt", "--model", LLAMA, "hi"], [LLAMA], []),
        (["chat", "-m", LLAMA], [LLAMA], []),
        (["embed", "-m", EMBED, "-c", "hi"], [], [EMBED]),
        (["-m", "lmstudio@gpu-box:1234/test-org/tiny-llama", "hi"], ["lmstudio@gpu-box:1234/test-org/tiny-llama"], []),
        (["-m", "tiny", "hi"], [LLAMA], []),  # an alias of ours, through llm's aliases.json
        (["hi"], [LLAMA], []),  # no -m: the default model the prompt falls back to
        (["embed", "-c", "hi"], [], [EMBED]),  # no -m: the default embedding model
        (["-m", "gpt-4o-mini", "hi"], [], []),  # another provider's model
        (["-c", "and then?"], [], []),  # continuing: the model is the conversation's, not a name asked for
        (["models"], [], []),  # listing asks for no model
    ],
    ids=["prompt", "prompt-named", "chat", "embed", "other-server", "alias", "default", "default-embedding",
         "other-provider", "continue", "models"],
)
def test_requested_ids_are_the_lmstudio_models_the_command_asks_for(refused_url, user_path, monkeypatch, args, chat, embedding):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)  # nothing registers: every asked-for id is looked up
    (user_path / "aliases.json").write_text(json.dumps({"tiny": LLAMA}))
    (user_path / "default_model.txt").write_text(LLAMA)
    (user_path / "default_embedding_model.txt").write_text(EMBED)
    seen = {"chat": [], "embedding": []}  # every answer, for the hooks llm calls (it registers embedding models lazily)
    asked = []
    requested = unavailable.requested_ids

    def spy(kind):
        ids = requested(kind)
        asked.append(kind)
        seen[kind].extend(ids)
        return ids

    monkeypatch.setattr(unavailable, "requested_ids", spy)
    invoke(*args, catch_exceptions=True)  # the command itself fails (nothing is reachable): what it asked for counts
    assert ("embedding" if args[0] == "embed" else "chat") in asked
    assert {kind: set(ids) for kind, ids in seen.items()} == {"chat": set(chat), "embedding": set(embedding)}


# ---------------------------------------------------------------- the right words


@pytest.mark.minilm
def test_loading_an_embedding_model_says_to_use_it_with_llm_embed(lmstudio):
    result = invoke("lmstudio", "load", "text-embedding-all-minilm-l6-v2")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"Use it with: llm embed -m {EMBED}"
    chat = invoke("lmstudio", "load", "tiny-llama")
    assert chat.output.splitlines()[-1] == f"Use it with: llm -m {LLAMA}"


def test_the_loaded_marker_never_reaches_a_model_name_in_an_error(lmstudio, tmp_path):
    lmstudio.load("test-org/tiny-llama")
    assert "(loaded" in invoke("models", "-q", "tiny-llama").output  # the listing shows it
    image = tmp_path / "pixel.png"
    image.write_bytes(bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"))
    lmstudio.set_fault("status", "/api/v0/chat", status=500, body={"error": "engine crashed"})
    errors = [
        invoke("-m", LLAMA, "hello"),
        invoke("-m", LLAMA, "hello", "-a", str(image)),
        invoke("-m", LLAMA, "hello", "-o", "no_such_option", "1"),
    ]
    for result in errors:
        assert result.exit_code == 1 and "(loaded" not in result.output, result.output
