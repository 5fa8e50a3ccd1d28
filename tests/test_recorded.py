"""The plugin against responses recorded from real LM Studio servers (tests/recorded/SOURCES.md),
replayed over real HTTP on loopback: listings, answers, streams, schemas and every recorded error shape."""

import json

import llm
import pytest
from click.testing import CliRunner
from llm.cli import cli

from tests.helpers import assert_one_line_error as one_line_error, llm_cli as run, log_rows as turns
from tests.recorded.replay import ERRORS, Reply, ReplayServer

NATIVE = "/api/v0/chat/completions"
OPENAI = "/v1/chat/completions"
TOKEN = "sk-lm-J9Fa6fbC:jkFcl7oqhmx5GB1eM5fL"  # the format LM Studio 0.4 issues (opencode-lmstudio#41)


@pytest.fixture
def replay(monkeypatch):
    with ReplayServer() as server:
        server.route("GET", "/api/v0/models", Reply.file("v0_models.json"))
        monkeypatch.setenv("LMSTUDIO_BASE_URL", server.url)
        yield server


# ------------------------------------------------------------------ listings


def test_v0_listing_registers_each_variant_and_every_chat_model_can_use_tools(replay):
    chats = {m.model_id: m for m in llm.get_models() if m.model_id.startswith("lmstudio/")}
    embeddings = {m.model_id for m in llm.get_embedding_models() if m.model_id.startswith("lmstudio/")}
    assert set(chats) == {
        "lmstudio/openai/gpt-oss-20b", "lmstudio/qwen3-4b", "lmstudio/llava-v1.5-7b-llamafile",
        "lmstudio/qwen/qwen3-vl-8b", "lmstudio/qwen/qwen3-vl-30b",
    }
    assert {"lmstudio/text-embedding-nomic-embed-text-v1.5@q4_k_m", "lmstudio/text-embedding-nomic-embed-text-v1.5@q8_0",
            "lmstudio/text-embedding-mxbai-embed-large-v1"} == embeddings
    # llava has no `capabilities` in a listing where others do: LM Studio's default tool use, not a refusal.
    assert all(model.supports_tools for model in chats.values())
    assert str(chats["lmstudio/llava-v1.5-7b-llamafile"]).endswith("(default tool use)")
    assert str(chats["lmstudio/qwen3-4b"]).endswith("(loaded, native tool use)")
    assert chats["lmstudio/llava-v1.5-7b-llamafile"].attachment_types  # type "vlm"


def test_v1_native_listing_has_variants_and_reasoning_options(replay):
    from llm_lmstudio.lmstudio import catalog
    from llm_lmstudio.core import settings

    del replay.routes[("GET", "/api/v0/models")]  # a server without v0: LM Studio answers 200 "Unexpected endpoint"
    replay.route("GET", "/api/v1/models", Reply.file("api_v1_models_docs.json"))
    models = {m.key: m for m in catalog.fetch(settings.servers()[0], token=None, deadline=5)}
    gemma = models["google/gemma-4-26b-a4b"]
    assert gemma.variants == ["google/gemma-4-26b-a4b@q4_k_m"] and gemma.selected_variant == gemma.variants[0]
    assert gemma.reasoning_options == ["off", "on"] and gemma.loaded and gemma.tool_use_kind == "native"
    assert models["text-embedding-nomic-embed-text-v1.5-embedding"].is_embedding
    assert replay.paths() == ["/api/v0/models", "/api/v1/models"]


def test_openai_listing_when_nothing_native_answers(replay):
    from llm_lmstudio.lmstudio import catalog
    from llm_lmstudio.core import settings

    del replay.routes[("GET", "/api/v0/models")]
    replay.route("GET", "/v1/models", Reply.file("v1_models.json"))
    models = {m.key: m for m in catalog.fetch(settings.servers()[0], token=None, deadline=5)}
    assert models["text-embedding-nomic-embed-text-v1.5"].is_embedding
    assert models["qwen2.5-7b-instruct"].tool_use_kind is None  # this listing says nothing about tools


# ------------------------------------------------------------------ answers


def test_non_streamed_answer_keeps_inline_think_apart_from_the_answer(replay, user_path):
    replay.route("POST", NATIVE, Reply.file("v0_chat_qwen3_think.json"))
    result = CliRunner().invoke(cli, ["-m", "lmstudio/qwen3-4b", "Give me a cheerful greeting", "--no-stream"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == '"Hi there! Have a wonderful day! 🌞 😊"'
    [turn] = turns(user_path)
    logged = json.loads(run("logs", "-n", "1", "--json").output)[0]
    assert logged["reasoning"].startswith("Okay, the user wants a cheerful greeting") and "</think>" not in logged["reasoning"]
    assert (turn["input_tokens"], turn["output_tokens"]) == (17, 348)
    data = json.loads(turn["response_json"])
    assert data["stats"]["stop_reason"] == "eosFound"  # non-streamed v0 answers carry LM Studio's stats
    assert data["client"]["endpoint"] == NATIVE


def test_streamed_answer_without_stats_logs_client_timing(replay, user_path):
    replay.route("POST", NATIVE, Reply.file("v0_stream_llava.sse"))
    result = run("-m", "lmstudio/llava-v1.5-7b-llamafile", "Tell a short story.")
    assert result.exit_code == 0, result.output
    assert result.output == "\nOnce upon a time,\n"
    [turn] = turns(user_path)
    data = json.loads(turn["response_json"])
    assert "stats" not in data and data["finish_reason"] == "stop"
    assert data["client"]["time_to_first_token_ms"] >= 0
    assert "tokens_per_second" not in data["client"]  # this server sent no usage to count tokens with
    assert turn["resolved_model"] == "lmstudio/llava-v1.5-7b"
    [request] = [r for r in replay.requests if r["path"] == NATIVE]
    assert request["body"]["stream_options"] == {"include_usage": True}


def test_streamed_reasoning_content_is_reasoning(replay, user_path):
    replay.route("POST", NATIVE, Reply.file("v1_stream_reasoning_content.sse"))
    result = CliRunner().invoke(cli, ["-m", "lmstudio/openai/gpt-oss-20b", "write a joke"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == ""
    logged = json.loads(run("logs", "-n", "1", "--json").output)[0]
    assert logged["reasoning"] == "le? An"


def test_schema_answer_after_falling_back_from_an_unknown_native_route(replay):
    # Only /v1 is routed: /api/v0 gets LM Studio's 200 "Unexpected endpoint" body, and the plugin moves on.
    replay.route("POST", OPENAI, Reply.file("v1_chat_schema.json"))
    result = run("-m", "lmstudio/llava-v1.5-7b-llamafile", "--schema", "sentiment, confidence float",
                 "Analyze the sentiment of this sentence: 'I love sunny days!'", "--no-stream")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"sentiment": "positive", "confidence": 0.95}
    assert [p for p in replay.paths() if "chat" in p] == [NATIVE, OPENAI]
    [request] = [r for r in replay.requests if r["path"] == OPENAI]
    assert request["body"]["response_format"]["type"] == "json_schema"


def test_async_model_falls_back_and_streams_too(replay):
    import asyncio

    replay.route("POST", OPENAI, Reply.file("v0_stream_llava.sse"))

    async def go():
        model = llm.get_async_model("lmstudio/llava-v1.5-7b-llamafile")
        return await model.prompt("Tell a short story.").text()

    assert asyncio.run(go()) == "\nOnce upon a time,"


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    "name, needles",
    [
        # the replay lists the very model asked for: the hint says how to load it, never "did you mean" that model
        ("invalid_model_identifier", ["Invalid model identifier", "LM Studio lists qwen3-4b but did not serve it"]),
        ("no_models_loaded_string", ["No models loaded"]),
        ("no_models_loaded_object", ["No models loaded"]),
        ("failed_load_not_embedding", ["Model is not embedding"]),
        ("failed_jit_load_0_3_5", ["could not load", "insufficient system resources"]),
        ("auth_required", ["requires an API token", "llm keys set lmstudio"]),
        ("jinja_template", ["prompt template", "Cannot pass both content and thinking", "Prompt Template"]),
    ],
)
def test_each_recorded_error_is_one_line_and_a_failure(replay, name, needles, stream):
    replay.route("POST", NATIVE, Reply.error(name))
    args = ["-m", "lmstudio/qwen3-4b", "hi"] + ([] if stream else ["--no-stream"])
    line = one_line_error(run(*args), *needles)
    assert "cut off" not in line and "This is usually an issue" not in line
    assert ERRORS[name]["status"] in (400, 401, 404)


def test_unknown_route_on_a_stream_request_is_not_a_cut_stream(replay):
    # Neither chat endpoint is routed: both answer 200 {"error": "Unexpected endpoint or method. ..."}.
    line = one_line_error(run("-m", "lmstudio/qwen3-4b", "hi"), "Unexpected endpoint or method. (POST /v1/chat/completions)")
    assert "cut off" not in line


def test_a_malformed_token_echoed_back_is_never_shown(replay, monkeypatch, user_path):
    monkeypatch.setenv("LM_API_TOKEN", TOKEN)
    replay.route("POST", NATIVE, Reply.error("malformed_token"))
    result = run("-m", "lmstudio/qwen3-4b", "hi")
    one_line_error(result, "rejected the API token as malformed")
    assert TOKEN[:6] not in result.output
    assert [r for r in replay.requests if r["path"] == NATIVE][0]["authorization"] == f"Bearer {TOKEN}"


def test_an_error_event_inside_a_stream_keeps_what_arrived(replay, user_path):
    events = Reply.file("v0_stream_llava.sse").body.split(b"\n\n")[:3]
    failure = json.dumps(ERRORS["jinja_template"]["body"]).encode()
    replay.route("POST", NATIVE, Reply(b"\n\n".join(events + [b"data: " + failure, b""]), content_type="text/event-stream"))
    result = run("-m", "lmstudio/qwen3-4b", "hi")
    one_line_error(result, "prompt template", "kept in the log", stdout=None)
    assert result.output.startswith("\nOnce upon")
    assert json.loads(turns(user_path)[0]["response_json"])["cut"] is True
    logged = json.loads(run("logs", "-n", "1", "--json").output)[0]
    assert logged["response"].startswith("\nOnce upon") and "[response cut off" in logged["response"]
