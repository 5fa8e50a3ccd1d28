"""Security: the API token never leaves the Authorization header — not into logs.db, error messages, --json
output, debug output or the plugin's own files; only http(s) base URLs are accepted; and the router config
cannot send a prompt to a cloud model it does not list under `fallback`."""

from __future__ import annotations

import json
import shutil
import sqlite3

import llm
import pytest
from click.testing import CliRunner
from llm.cli import cli
from llm.plugins import pm

from llm_lmstudio.core import settings
from tests.fast_logs import logs_db, migrated_logs_db  # noqa: F401 - fixtures
from tests.helpers import llm_cli

LLAMA_KEY = "test-org/tiny-llama"
LLAMA = f"lmstudio/{LLAMA_KEY}"
EMBED = "lmstudio/test-org/text-embedding-all-minilm-l6-v2"
# A sentinel that is easy to grep for, in LM Studio's token format (sk-lm-<8-character client id>:<20-character
# passkey>, which lmstudio >= 1.6 checks before sending it).
SENTINEL = "sk-lm-SENTINEL:s3ntinelPassw0rdAbCd"
CLIENT_ID, PASSKEY = SENTINEL.split(":", 1)


class Transcript:
    """Everything the user (or a script) could see or find on disk afterwards."""

    def __init__(self):
        self.outputs: list[str] = []

    def run(self, *args, input=None) -> "object":
        result = llm_cli(*args, input=input, catch_exceptions=True)
        self.outputs.append(f"$ llm {' '.join(args)}\n{result.output}\n{result.stderr}\n{result.exception!r}")
        return result

    def text(self) -> str:
        return "\n".join(self.outputs)


def disk_text(user_path) -> str:
    """logs.db as SQL, and every other file llm or the plugin wrote, except llm's own key store."""
    parts = []
    for path in sorted(user_path.rglob("*")):
        if not path.is_file() or path.name == "keys.json":
            continue
        if path.suffix == ".db":
            with sqlite3.connect(path) as conn:
                parts.append("\n".join(conn.iterdump()))
        else:
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def assert_no_token(*texts: str) -> None:
    for text in texts:
        assert CLIENT_ID not in text and PASSKEY not in text


@pytest.fixture
def debug(monkeypatch):
    monkeypatch.setenv("LLM_LMSTUDIO_DEBUG", "1")
    monkeypatch.setenv("LMSTUDIO_TIMEOUT", "30")


@pytest.fixture
def migrated(logs_db):
    return logs_db


@pytest.mark.minilm  # uses the stand-in's MiniLM embedding model
@pytest.mark.parametrize("where", ["env", "llm keys"])
def test_token_in_use_appears_nowhere_the_user_can_see_or_find(lmstudio, user_path, monkeypatch, debug, migrated, where):
    lmstudio.configure(auth_token=SENTINEL)
    if where == "env":
        monkeypatch.setenv("LM_API_TOKEN", SENTINEL)
    else:
        (user_path / "keys.json").write_text(json.dumps({"lmstudio": SENTINEL}))
    (user_path / "lmstudio-router.yaml").write_text("prefer:\n  creative: [tiny-llama]\n")
    t = Transcript()
    assert t.run("models").exit_code == 0
    assert t.run("-m", LLAMA, "hello", "-o", "max_tokens", "3").exit_code == 0
    assert t.run("-m", LLAMA, "hello", "--no-stream", "-o", "max_tokens", "3").exit_code == 0
    assert t.run("-m", LLAMA, "hello", "--async", "-o", "max_tokens", "3").exit_code == 0
    assert t.run("-m", "router", "Write a poem about rain", "-o", "max_tokens", "3").exit_code == 0
    assert t.run("embed", "-m", EMBED, "-c", "hello").exit_code == 0
    assert t.run("lmstudio", "route", "--json", "Write a poem").exit_code == 0
    assert t.run("lmstudio", "status", "--json").exit_code == 0
    assert t.run("lmstudio", "status").exit_code == 0
    # Management sends the token too: over the SDK (lmstudio >= 1.6), or else over LM Studio's v1 REST API.
    for command in (["ps", "--json"], ["ls", "--json"], ["load", "tiny-llama", "--json"], ["unload", "--all", "--json"]):
        assert t.run("lmstudio", *command).exit_code == 0
    assert t.run("logs", "--json", "-n", "0").exit_code == 0
    # The token was really in use (`status` also asks once without it, to learn whether it is required).
    used = [r for r in lmstudio.requests() if r["path"].endswith(("/chat/completions", "/embeddings"))]
    assert len(used) >= 5 and all(r["authorization"] for r in used)
    assert_no_token(t.text(), disk_text(user_path))


def test_token_in_commands_that_succeed_appears_in_no_json_output(lmstudio, user_path, monkeypatch, debug, migrated):
    # The server does not insist on a token, so the SDK commands run to the end with one configured.
    monkeypatch.setenv("LM_API_TOKEN", SENTINEL)
    t = Transcript()
    for command in (
        ["load", "tiny-llama", "--json"],
        ["ps", "--json"],
        ["ls", "--json"],
        ["status", "--json"],
        ["route", "--json", "hello"],
        ["unload", "--all", "--json"],
    ):
        result = t.run("lmstudio", *command)
        assert result.exit_code == 0, result.output
        json.loads(result.stdout)
    assert_no_token(t.text(), disk_text(user_path))


def test_a_rejected_token_is_not_quoted_in_any_error(lmstudio, user_path, monkeypatch, debug, migrated):
    lmstudio.configure(auth_token="sk-lm-other000:theServersOwnToken")
    monkeypatch.setenv("LM_API_TOKEN", SENTINEL)
    t = Transcript()
    t.run("models")
    for args in (["-m", LLAMA, "hi"], ["-m", LLAMA, "hi", "--no-stream"], ["embed", "-m", EMBED, "-c", "hi"]):
        result = t.run(*args)
        # The list could not be fetched with a rejected token, so the model is unknown or rejected: either way, one line.
        assert result.exit_code == 1 and "Traceback" not in result.output
    status = t.run("lmstudio", "status", "--json")
    assert json.loads(status.stdout)["servers"][0]["token_accepted"] is False
    assert_no_token(t.text(), disk_text(user_path))


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"message": f"Bad header: Authorization: Bearer {SENTINEL}"}},
        {"error": f"invalid token {SENTINEL}"},
        f"<html>proxy rejected Bearer {SENTINEL}</html>",
    ],
    ids=["error-object", "error-string", "text-body"],
)
def test_a_server_that_echoes_the_token_back_does_not_get_it_shown(lmstudio, user_path, monkeypatch, debug, migrated, body):
    monkeypatch.setenv("LM_API_TOKEN", SENTINEL)
    t = Transcript()
    assert t.run("models").exit_code == 0
    lmstudio.set_fault("status", "/api/v0/chat", status=400, body=body)
    lmstudio.set_fault("status", "/v1/embeddings", status=502, body=body)
    chat = t.run("-m", LLAMA, "hi")
    assert chat.exit_code == 1 and "[redacted]" in chat.output
    assert t.run("-m", LLAMA, "hi", "--no-stream").exit_code == 1
    assert t.run("embed", "-m", EMBED, "-c", "hi").exit_code == 1
    assert t.run("-m", "router", "Write a poem about rain").exit_code == 1
    # The model listing echoes it too, while the cache is refreshed in debug mode.
    lmstudio.set_fault("status", "/", status=500, body=body)
    shutil.rmtree(settings.plugin_dir())
    assert t.run("models").exit_code == 0
    status = t.run("lmstudio", "status", "--json")
    assert json.loads(status.stdout)["servers"][0]["error"]
    assert_no_token(t.text(), disk_text(user_path))


# ---------------------------------------------------------------- base URLs


BAD_SCHEMES = ["ftp://lmstudio.lan:1234", "file:///etc/passwd", "ws://localhost:1234", "wss://h:1", "unix:///tmp/lms.sock",
               "http+unix://%2Ftmp%2Fs", "FILE://localhost/x", "gopher://h:70"]


@pytest.mark.parametrize("url", BAD_SCHEMES)
def test_base_urls_with_other_schemes_are_refused(url):
    with pytest.raises(settings.SettingsError, match="only http and https are allowed"):
        settings.normalize_base_url(url)


@pytest.mark.parametrize("url", BAD_SCHEMES[:3])
def test_other_schemes_stop_every_interface_with_one_line_and_no_request(lmstudio, user_path, monkeypatch, url):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", f"{lmstudio.base_url},{url}")
    for args in (["lmstudio", "status"], ["lmstudio", "ps"], ["-m", LLAMA, "hi"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        [line] = [line for line in result.output.splitlines() if line.strip()]
        assert line.startswith("Error: ")
    monkeypatch.setenv("LMSTUDIO_BASE_URL", lmstudio.base_url)
    result = CliRunner().invoke(cli, ["lmstudio", "ps", "--server", url])
    assert result.exit_code == 1 and "only http and https are allowed" in result.output
    # Registration stays silent (llm must keep working with its other models) and registers nothing from it.
    monkeypatch.setenv("LMSTUDIO_BASE_URL", url)
    listing = CliRunner().invoke(cli, ["models"])
    assert listing.exit_code == 0 and "lmstudio/" not in listing.output
    assert not lmstudio.requests()


# ---------------------------------------------------------------- the router config and cloud models


@pytest.fixture
def clouds():
    """Two registered non-local models (and a non-local embedding model) that record what they are sent."""
    received: dict[str, list] = {"cloud-a": [], "cloud-b": [], "cloud-embed": []}

    def chat_model(name):
        class Cloud(llm.Model):
            model_id = name
            can_stream = True
            supports_tools = True
            supports_schema = True

            def execute(self, prompt, stream, response, conversation=None):
                received[name].append(prompt.prompt)
                yield f"{name} answer"

        return Cloud()

    class CloudEmbed(llm.EmbeddingModel):
        model_id = "cloud-embed"

        def embed_batch(self, items):
            items = list(items)
            received["cloud-embed"].extend(items)
            return ([1.0, 0.0] for _ in items)

    class Plugin:
        __name__ = "CloudsPlugin"

        @llm.hookimpl
        def register_models(self, register):
            register(chat_model("cloud-a"))
            register(chat_model("cloud-b"))

        @llm.hookimpl
        def register_embedding_models(self, register):
            register(CloudEmbed())

    pm.register(Plugin(), name="clouds-plugin")
    try:
        yield received
    finally:
        pm.unregister(name="clouds-plugin")


CONFIGS_THAT_NAME_CLOUD_A_OUTSIDE_FALLBACK = [
    "prefer:\n  creative: [cloud-a]\n  general: [cloud-a]\n",
    "tasks:\n  creative: [cloud-a, 'write a poem with cloud-a']\n",
    "keywords:\n  creative: [cloud-a, poem]\n",
    "exclude: [tiny-llama]\nprefer:\n  creative: [cloud-a]\n",
    "fallback: [cloud-b]\nprefer:\n  creative: [cloud-a]\n",
    "max_attempts: 1\nprefer:\n  creative: [cloud-a]\n",
]


@pytest.mark.parametrize("config", CONFIGS_THAT_NAME_CLOUD_A_OUTSIDE_FALLBACK)
def test_router_never_sends_a_prompt_to_a_cloud_model_the_config_does_not_list_as_fallback(
    lmstudio, user_path, migrated, clouds, config
):
    (user_path / "lmstudio-router.yaml").write_text(config)
    assert CliRunner().invoke(cli, ["models"]).exit_code == 0
    # Every local model fails, so only a fallback could answer.
    lmstudio.set_fault("status", "/api/v0/chat", status=503, body={"error": {"message": "overloaded"}})
    result = CliRunner().invoke(cli, ["-m", "router", "Write a poem about rain", "--no-stream"])
    plan = json.loads(CliRunner().invoke(cli, ["lmstudio", "route", "--json", "Write a poem about rain"]).output)
    assert clouds["cloud-a"] == [] and "cloud-a" not in plan["chain"]
    assert clouds["cloud-embed"] == []  # nor was the prompt embedded by a cloud model to classify it
    if "fallback: [cloud-b]" in config:
        assert result.exit_code == 0 and clouds["cloud-b"] == ["Write a poem about rain"]
        assert plan["chain"][-1] == "cloud-b"
    else:
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert clouds["cloud-b"] == [] and all(settings.is_local_model_id(m) for m in plan["chain"])


def test_router_config_cannot_name_a_cloud_embedding_model_for_classifying(lmstudio, user_path, clouds):
    (user_path / "lmstudio-router.yaml").write_text("embedding_model: cloud-embed\n")
    result = CliRunner().invoke(cli, ["-m", "router", "Write a poem about rain"])
    assert result.exit_code == 1 and "'embedding_model' must be a local model" in result.output
    assert clouds == {"cloud-a": [], "cloud-b": [], "cloud-embed": []}


@pytest.mark.parametrize("itself", ["lmstudio-router", "router"])
def test_router_config_cannot_make_the_router_fall_back_to_itself(lmstudio, user_path, migrated, itself):
    # A loop would retry every local model once per nesting level until Python's recursion limit.
    (user_path / "lmstudio-router.yaml").write_text(f"fallback: [{itself}]\n")
    assert CliRunner().invoke(cli, ["models"]).exit_code == 0
    lmstudio.set_fault("status", "/api/v0/chat", status=503, body={"error": {"message": "overloaded"}})
    result = CliRunner().invoke(cli, ["-m", "router", "Write a poem about rain", "--no-stream"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]  # stderr also says what it loaded
    assert "every model the router tried failed" in line and "itself" in line
    chats = [r for r in lmstudio.requests() if "chat" in r["path"]]
    assert len(chats) == len({r["model"] for r in chats})  # each local model tried once, not once per level
