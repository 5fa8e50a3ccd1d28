"""API tokens the llm way: `--key` (a token, or the name of a stored key) for one prompt or embedding, then
`llm keys set lmstudio`, $LM_API_TOKEN and $LMSTUDIO_API_TOKEN; no key at all for a server that needs none.
The token never shows: not in output, errors or the log."""

import json

import llm
import pytest
from click.testing import CliRunner
from llm.cli import cli

from tests.fast_logs import logs_db, migrated_logs_db  # noqa: F401 - fixtures
from tests.test_security import disk_text

LLAMA = "lmstudio/test-org/tiny-llama"
EMBED = "lmstudio/test-org/text-embedding-all-minilm-l6-v2"
# LM Studio's token format (sk-lm-<8-character client id>:<20-character passkey>).
SECRET = "sk-lm-KEYTEST1:keyPassw0rdAbCdEfGhIj"
WRONG = "sk-lm-WRONG999:notTheRightOne123456"


def run(*args):
    return CliRunner().invoke(cli, list(args))


def chats(lmstudio) -> list[dict]:
    return [r for r in lmstudio.requests() if r["path"].endswith("/chat/completions")]


def assert_never_shown(user_path, *results):
    seen = "\n".join(f"{r.output}\n{r.exception!r}" for r in results) + disk_text(user_path)
    for secret in (SECRET, WRONG):
        client_id, passkey = secret.split(":")
        assert client_id not in seen and passkey not in seen


@pytest.fixture
def auth(lmstudio, user_path, logs_db):
    # The model list is cached while the server still answers without a token (llm registers models before it
    # reads --key), as it is for a user who listed the models before turning authentication on.
    assert run("models").exit_code == 0
    lmstudio.configure(auth_token=SECRET)
    lmstudio.clear_requests()
    return lmstudio


@pytest.mark.parametrize("mode", [[], ["--no-stream"], ["--async"]], ids=["stream", "no-stream", "async"])
def test_a_token_given_with_key_is_used_for_that_prompt(auth, user_path, mode):
    refused = run("-m", LLAMA, "hi", "-o", "max_tokens", "3", *mode)
    assert refused.exit_code == 1 and "requires an API token" in refused.output
    result = run("-m", LLAMA, "hi", "--key", SECRET, "-o", "max_tokens", "3", *mode)
    assert result.exit_code == 0, result.output
    assert result.output.strip()
    assert [r["authorization"] for r in chats(auth)] == [False, True]
    assert_never_shown(user_path, refused, result)


def test_key_can_name_a_stored_key(auth, user_path):
    (user_path / "keys.json").write_text(json.dumps({"work-lmstudio": SECRET}))
    result = run("-m", LLAMA, "hi", "--key", "work-lmstudio", "-o", "max_tokens", "3")
    assert result.exit_code == 0, result.output
    assert_never_shown(user_path, result)


def test_key_wins_over_a_token_from_the_environment(auth, user_path, monkeypatch):
    monkeypatch.setenv("LM_API_TOKEN", WRONG)
    rejected = run("-m", LLAMA, "hi", "-o", "max_tokens", "3")
    assert rejected.exit_code == 1
    [line] = [line for line in rejected.output.splitlines() if line.startswith("Error:")]
    assert "rejected the API token" in line
    result = run("-m", LLAMA, "hi", "--key", SECRET, "-o", "max_tokens", "3")
    assert result.exit_code == 0, result.output
    assert_never_shown(user_path, rejected, result)


def test_a_wrong_key_is_one_line_that_never_quotes_it(auth, user_path):
    result = run("-m", LLAMA, "hi", "--key", WRONG)
    assert result.exit_code == 1 and "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith("Error: ") and "rejected the API token" in line
    assert_never_shown(user_path, result)


@pytest.mark.parametrize("source", ["llm keys set lmstudio", "LM_API_TOKEN", "LMSTUDIO_API_TOKEN"])
def test_the_token_sources_of_before_still_work(auth, user_path, monkeypatch, source):
    if source.startswith("llm keys"):
        (user_path / "keys.json").write_text(json.dumps({"lmstudio": SECRET}))
    else:
        monkeypatch.setenv(source, SECRET)
    result = run("-m", LLAMA, "hi", "-o", "max_tokens", "3")
    assert result.exit_code == 0, result.output
    assert_never_shown(user_path, result)


def test_embeddings_take_key_too(auth, user_path):
    result = run("embed", "-m", EMBED, "--key", SECRET, "-c", "hello")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)) == 384
    refused = run("embed", "-m", EMBED, "-c", "hello")
    assert refused.exit_code == 1 and "requires an API token" in refused.output
    assert_never_shown(user_path, result, refused)


def test_a_server_without_authentication_needs_no_key_at_all(lmstudio, user_path):
    model = llm.get_model(LLAMA)
    assert (model.needs_key, model.key_env_var) == ("lmstudio", "LM_API_TOKEN")
    assert llm.get_embedding_model(EMBED).needs_key == "lmstudio"
    for mode in ([], ["--no-stream"], ["--async"]):
        result = run("-m", LLAMA, "hi", "-o", "max_tokens", "3", *mode)
        assert result.exit_code == 0, result.output
    assert [r["authorization"] for r in chats(lmstudio)] == [False, False, False]
