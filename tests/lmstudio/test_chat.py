import asyncio
import importlib.metadata
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import llm
import pytest
import sqlite_utils
from click.testing import CliRunner
from llm.cli import cli

from llm_lmstudio.lmstudio import answer, chat
from llm_lmstudio.core.messages import build_messages
from tests.helpers import assert_one_line_error, cache_list_for, llm_cli as run, log_rows as turns

LLAMA = "lmstudio/test-org/tiny-llama"
TOOLS = "lmstudio/test-org/tiny-qwen-tools"
REASONER = "lmstudio/test-org/tiny-reasoner"
VISION = "lmstudio/test-org/tiny-vision"


def test_streamed_prompt_is_logged_with_usage_client_timing_and_resolved_model(lmstudio, user_path):
    lmstudio.script("one two three four")
    result = run("-m", LLAMA, "Hello there", "-o", "max_tokens", "8", "-o", "seed", "3")
    assert result.exit_code == 0, result.output
    [turn] = turns(user_path)
    assert turn["model"] == LLAMA
    assert turn["resolved_model"] == "lmstudio/test-org/tiny-llama"
    assert turn["input_tokens"] > 5 and 2 <= turn["output_tokens"] <= 8  # usage from include_usage
    data = json.loads(turn["response_json"])
    assert "stats" not in data  # LM Studio sends no stats in a stream
    assert data["client"]["time_to_first_token_ms"] > 0 and data["client"]["tokens_per_second"] > 0
    assert "chunks" not in data and "choices" not in data
    assert json.loads(turn["options_json"]) == {"max_tokens": 8, "seed": 3}


def test_non_streamed_prompt(lmstudio, user_path):
    result = run("-m", LLAMA, "Hello", "--no-stream", "-o", "max_tokens", "5")
    assert result.exit_code == 0, result.output
    [turn] = turns(user_path)
    assert 1 <= turn["output_tokens"] <= 5
    [request] = [r for r in lmstudio.requests() if "chat/completions" in r["path"]]
    assert request["stream"] is False
    data = json.loads(turn["response_json"])
    assert data["runtime"]["name"] and data["model_info"]["arch"] == "llama"


def test_seeded_sampling_is_reproducible_and_options_reach_the_server(lmstudio):
    first = run("-m", LLAMA, "Tell me", "-o", "seed", "42", "-o", "temperature", "0.9", "-o", "max_tokens", "12")
    second = run("-m", LLAMA, "Tell me", "-o", "seed", "42", "-o", "temperature", "0.9", "-o", "max_tokens", "12")
    third = run("-m", LLAMA, "Tell me", "-o", "seed", "7", "-o", "temperature", "0.9", "-o", "max_tokens", "12")
    assert first.output == second.output
    assert first.output != third.output


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("temperature", "5", "less than or equal to 2"),
        ("top_p", "0", "greater than 0"),
        ("ttl", "0", "greater than or equal to 1"),
        ("stop", "[1, 2]", "JSON list of strings"),
        ("nope", "1", "this model has no such option (`llm models --options -q MODEL` lists them)"),
        # LM Studio ignores it on chat completions
        ("reasoning_effort", "high", "this model has no such option (`llm models --options -q MODEL` lists them)"),
    ],
)
def test_bad_options_are_refused_before_any_request(lmstudio, option, value, message):
    result = run("-m", LLAMA, "hi", "-o", option, value)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: -o {option} {value}: ") and result.output.count("\n") == 1
    assert message in result.output
    assert not [r for r in lmstudio.requests() if "chat" in r["path"]]


def test_the_request_carries_the_options_the_user_set_in_their_final_form():
    from llm_lmstudio.core import settings
    from llm_lmstudio.lmstudio.listing import CatalogModel

    model = chat.LMStudioChat(CatalogModel(key="k"), settings.Server(base_url="http://127.0.0.1:9", prefix="lmstudio"))
    options = model.Options(stop='["a", "b"]', max_tokens=3, repeat_penalty=1.1, cache="1h")
    payload = chat.build_payload("k", llm.Prompt("x", model=model, options=options), stream=False)
    # `stop` parsed once by the option's validator; `cache` is this plugin's, not LM Studio's.
    assert {k: v for k, v in payload.items() if k not in ("model", "messages", "stream")} == {
        "stop": ["a", "b"], "max_tokens": 3, "repeat_penalty": 1.1
    }


def test_options_are_listed_with_descriptions(lmstudio):
    result = run("models", "--options", "-q", "tiny-llama")
    assert result.exit_code == 0
    for name in ("temperature", "top_k", "min_p", "repeat_penalty", "seed", "stop", "ttl", "draft_model"):
        assert f"{name}:" in result.output
    assert "Seconds of idleness" in result.output


def test_conversation_continues_with_full_history(lmstudio, user_path):
    assert run("-m", LLAMA, "My name is Ada.", "-s", "Be brief.", "-o", "max_tokens", "4").exit_code == 0
    assert run("-c", "What is my name?", "-o", "max_tokens", "4").exit_code == 0
    first, second = sorted(turns(user_path), key=lambda t: t["datetime_utc"])
    assert second["thread_id"] == first["thread_id"]
    # The server tokenised the whole conversation the second time: system, turn 1, answer 1, turn 2.
    assert second["input_tokens"] > first["input_tokens"] + first["output_tokens"]


def test_build_messages_replays_history_and_replaces_system_on_continue(lmstudio):
    model = llm.get_model(LLAMA)
    conversation = model.conversation()
    conversation.prompt("one", system="sys-1", max_tokens=3).text()
    second = conversation.prompt("two", system="sys-2", max_tokens=3)
    messages = build_messages(second.prompt)
    assert messages[0] == {"role": "system", "content": "sys-2"}
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"] == "two"


def test_chat_command_keeps_context(lmstudio, user_path):
    result = run("chat", "-m", LLAMA, "-o", "max_tokens", "3", input="first\nsecond\nquit\n")
    assert result.exit_code == 0, result.output
    rows = sorted(turns(user_path), key=lambda t: t["datetime_utc"])
    assert len(rows) == 2 and rows[1]["input_tokens"] > rows[0]["input_tokens"]


def test_async_model_streams_and_logs(lmstudio):
    async def go():
        model = llm.get_async_model(LLAMA)
        response = model.prompt("Hello", max_tokens=6)
        pieces = [piece async for piece in response]
        usage = await response.usage()
        return "".join(pieces), usage, response

    text, usage, response = asyncio.run(go())
    assert text and usage.output <= 6 and usage.input > 0
    assert response.resolved_model == "lmstudio/test-org/tiny-llama"


def test_stop_sequence_and_max_tokens_are_honoured(lmstudio):
    lmstudio.script("alpha beta STOP gamma")
    result = run("-m", LLAMA, "go", "-o", "stop", "STOP", "--no-stream")
    assert result.exit_code == 0
    assert result.output.strip() == "alpha beta"


def test_reasoning_arrives_separately_from_the_answer(lmstudio, user_path):
    lmstudio.script("<think>Weighing the options.</think>The answer is 42.")
    result = CliRunner().invoke(cli, ["-m", REASONER, "Why?"])
    assert result.exit_code == 0
    assert "The answer is 42." in result.stdout
    assert "Weighing" not in result.stdout
    logged = json.loads(run("logs", "-n", "1", "--json").output)[0]
    assert logged["reasoning"] == "Weighing the options."
    assert logged["response"] == "The answer is 42."


def test_inline_think_tags_are_split_too():
    splitter = answer.ThinkSplitter()
    pieces = []
    for chunk in ["<thi", "nk>plan", "ning</th", "ink>\nDone", "."]:
        pieces += splitter.feed(chunk)
    pieces += splitter.flush()
    reasoning = "".join(p for k, p in pieces if k == "reasoning")
    text = "".join(p for k, p in pieces if k == "text")
    assert (reasoning, text) == ("planning", "Done.")


def test_gpt_oss_reasoning_field_is_reasoning_streamed_or_not():
    # LM Studio 0.3.23+ moves gpt-oss reasoning to `reasoning` (docs developer/api-changelog; no public recording).
    accumulator = answer.Accumulator(time.monotonic())
    delta = lambda d: {"choices": [{"index": 0, "delta": d, "finish_reason": None}]}  # noqa: E731
    events = [e for d in ({"reasoning": "Add "}, {"reasoning": "them."}, {"content": "4"}) for e in accumulator.feed_chunk(delta(d))]
    assert [(e.type, e.chunk) for e in events] == [("reasoning", "Add "), ("reasoning", "them."), ("text", "4")]
    whole = {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "reasoning": "Add them.", "content": "4"}}]}
    assert [(e.type, e.chunk) for e in answer.Accumulator(time.monotonic()).feed_completion(whole)] == [
        ("reasoning", "Add them."), ("text", "4")
    ]


def test_text_that_merely_mentions_think_is_left_alone():
    splitter = answer.ThinkSplitter()
    pieces = splitter.feed("I <think> so") + splitter.flush()
    assert pieces == [("text", "I <think> so")]


def test_tool_call_round_trips_through_llm_chain(lmstudio, user_path):
    lmstudio.script(
        '<tool_call>\n{"name": "llm_version", "arguments": {}}\n</tool_call>',
        "You are running the version I was told.",
    )
    result = run("-m", TOOLS, "-T", "llm_version", "Which llm version?", "--td")
    assert result.exit_code == 0, result.output
    assert "You are running the version I was told." in result.output
    logged = json.loads(run("logs", "-n", "2", "--json").output)
    calls = [c for row in logged for c in row["tool_calls"]]
    results = [r for row in logged for r in row["tool_results"]]
    assert calls and calls[0]["name"] == "llm_version"
    assert results and results[0]["output"] == importlib.metadata.version("llm")


def test_tool_call_streamed_and_async(lmstudio):
    lmstudio.script('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')

    def get_weather(city: str) -> str:
        "Weather for a city"
        return f"sunny in {city}"

    async def go():
        model = llm.get_async_model(TOOLS)
        response = model.prompt("weather?", tools=[llm.Tool.function(get_weather)])
        await response.text()
        return await response.tool_calls()

    [call] = asyncio.run(go())
    assert call.name == "get_weather" and call.arguments == {"city": "Paris"}


def test_models_without_native_tool_use_get_lmstudio_default_tool_use(lmstudio):
    # LM Studio's default tool use: a [TOOL_REQUEST] system prompt for models it has no parser for.
    lmstudio.script('[TOOL_REQUEST]{"name": "llm_version", "arguments": {}}[END_TOOL_REQUEST]', "Told you.")
    result = run("-m", LLAMA, "-T", "llm_version", "Which llm version?")
    assert result.exit_code == 0, result.output
    assert "Told you." in result.output
    first, second = [r for r in lmstudio.requests() if "chat" in r["path"] or r["path"] == "/v1/responses"]
    assert first["body_size"] < second["body_size"]  # the tool result went back to the model


def test_schema_sends_json_schema_and_returns_json(lmstudio):
    lmstudio.script('{"name": "Cleo", "age": 3}')
    result = run("-m", LLAMA, "--schema", "name, age int", "A cat", "--no-stream")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"name": "Cleo", "age": 3}


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_attachments_go_to_vision_models_only(lmstudio, tmp_path):
    image = tmp_path / "red.png"
    image.write_bytes(_png())
    ok = run("-m", VISION, "Describe", "-a", str(image), "-o", "max_tokens", "4")
    assert ok.exit_code == 0, ok.output
    refused = run("-m", LLAMA, "Describe", "-a", str(image))
    assert refused.exit_code == 1 and "attachments" in refused.output


def chat_sent(lmstudio) -> list:
    """The messages of each chat completion request the stand-in received."""
    return [r["sent"] for r in lmstudio.requests() if "chat/completions" in r["path"]]


def test_an_empty_prompt_with_an_image_sends_the_image_alone(lmstudio, tmp_path):
    # as llm's OpenAI plugin does: the user turn carries the attachments, and no empty text part
    image = tmp_path / "red.png"
    image.write_bytes(_png())
    lmstudio.script("A red square.")
    result = run("-m", VISION, "", "-a", str(image))
    assert result.exit_code == 0 and result.output == "A red square.\n"
    assert chat_sent(lmstudio) == [[{"role": "user", "content": [{"type": "image_url"}]}]]


def test_an_empty_prompt_with_a_system_prompt_is_answered(lmstudio):
    lmstudio.script("Hello there.")
    result = run("-m", LLAMA, "", "-s", "Greet the user.")
    assert result.exit_code == 0 and result.output == "Hello there.\n"
    assert chat_sent(lmstudio) == [[{"role": "system", "content": "Greet the user."}]]


def test_an_empty_prompt_continues_a_conversation(lmstudio):
    lmstudio.script("First.", "More.")
    assert run("-m", LLAMA, "Tell me a story.").exit_code == 0
    result = run("-c", "")
    assert result.exit_code == 0 and result.output == "More.\n"
    assert chat_sent(lmstudio)[-1] == [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": "First."}]


def test_an_empty_prompt_with_nothing_else_is_refused_before_any_request(lmstudio, user_path):
    import sqlite3

    from llm_lmstudio.store import call_history

    run("models")
    lmstudio.clear_requests()
    result = run("-m", LLAMA, "")
    assert_one_line_error(result, f"{LLAMA}: the prompt is empty: write a prompt, or give a system prompt (-s) or an attachment (-a)")
    assert chat_sent(lmstudio) == []
    assert run("-m", LLAMA, "hi", "-o", "max_tokens", "2").exit_code == 0
    # the refusal was the user's input, not a call of the model: only the answered call is recorded
    conn = sqlite3.connect(user_path / "lmstudio" / call_history.STORE_FILE)
    assert conn.execute("select ok, error_kind from lmstudio_calls").fetchall() == [(1, None)]


def test_jit_load_passes_ttl_so_the_model_is_not_pinned(lmstudio):
    assert not lmstudio.loaded()
    assert run("-m", LLAMA, "hi", "-o", "ttl", "600", "-o", "max_tokens", "2").exit_code == 0
    [instance] = lmstudio.loaded()
    assert instance["jit"] and instance["ttl_seconds"] == 600
    assert lmstudio.age(600) == ["test-org/tiny-llama"] and not lmstudio.loaded()  # idle for its TTL: unloaded


# ------------------------------------------------------------------ older and newer LM Studio


def test_a_server_without_the_native_api_gets_chat_completions_on_v1(lmstudio, user_path):
    run("models")  # listed from /api/v0 while the server had it
    lmstudio.configure(version="0.3.5")  # no /api/v0 at all: a bare 404
    lmstudio.script("From v1.")
    result = run("-m", LLAMA, "hi")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "From v1."
    assert [r["path"] for r in lmstudio.requests() if "chat" in r["path"]] == [
        "/api/v0/chat/completions", "/v1/chat/completions"
    ]


def test_a_0_3_5_server_is_listed_and_answers_through_v1_only(lmstudio, user_path):
    lmstudio.configure(version="0.3.5")
    lmstudio.script("Plain.")
    model = llm.get_model(LLAMA)
    assert model.entry.source == "openai" and model.entry.tool_use_kind is None and model.supports_tools
    assert model.prompt("hi").text() == "Plain."
    assert [r["path"] for r in lmstudio.requests() if "chat" in r["path"]] == ["/v1/chat/completions"]


def test_before_0_3_18_a_stream_has_no_usage_so_no_token_rate(lmstudio, user_path):
    lmstudio.configure(version="0.3.15")
    lmstudio.script("one two three four")
    result = run("-m", LLAMA, "hi")
    assert result.exit_code == 0, result.output
    [turn] = turns(user_path)
    client = json.loads(turn["response_json"])["client"]
    assert turn["output_tokens"] is None and "tokens_per_second" not in client and client["time_to_first_token_ms"] > 0


def test_a_broken_prompt_template_is_one_line_streamed_or_not(lmstudio):
    run("models")
    lmstudio.set_fault("template", "/api/v0/chat", times=2)
    for extra in ([], ["--no-stream"]):
        line = assert_one_line_error(run("-m", LLAMA, "hi", *extra), "prompt template", "No filter named")
        assert "cut off" not in line


# ------------------------------------------------------------------ errors: one line, non-zero exit


def test_server_down(lmstudio, refused_url, monkeypatch):
    run("models")  # cache the list while the server is up
    cache_list_for(refused_url, like=lmstudio.base_url)
    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)
    assert_one_line_error(run("-m", LLAMA, "hi"), "not reachable at", "lms server start")


def test_hung_server_times_out(lmstudio, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_TIMEOUT", "1")
    run("models")
    lmstudio.set_fault("hang", "/api/v0/chat")
    started = time.monotonic()
    assert_one_line_error(run("-m", LLAMA, "hi"), "did not answer within 1 s")
    assert time.monotonic() - started < 10


def test_token_missing_then_wrong_then_right(lmstudio, user_path, monkeypatch):
    secret = "sk-lm-SENTINEL123:abcdef"
    run("models")
    lmstudio.configure(auth_token=secret)
    assert_one_line_error(run("-m", LLAMA, "hi"), "requires an API token", "llm keys set lmstudio")
    monkeypatch.setenv("LM_API_TOKEN", "sk-lm-wrong:zzz")
    wrong = run("-m", LLAMA, "hi")
    assert_one_line_error(wrong, "rejected the API token")
    assert "sk-lm-wrong" not in wrong.output
    (user_path / "keys.json").write_text(json.dumps({"lmstudio": secret}))
    ok = run("-m", LLAMA, "hi", "-o", "max_tokens", "3")
    assert ok.exit_code == 0, ok.output
    assert [r for r in lmstudio.requests() if "chat" in r["path"]][-1]["authorization"]
    dump = "\n".join(sqlite_utils.Database(user_path / "logs.db").iterdump())
    assert "SENTINEL123" not in dump


def test_model_that_vanished_is_never_offered_as_its_own_suggestion(lmstudio):
    run("models")
    lmstudio.set_fault(
        "status",
        "/api/v0/chat",
        status=404,
        body={"error": {"message": 'Model "test-org/tiny-llama" not found', "code": "model_not_found"}},
    )
    result = run("-m", LLAMA, "hi")
    assert_one_line_error(result, "not found", "LM Studio lists test-org/tiny-llama but did not serve it: "
                                               "load it with `llm lmstudio load test-org/tiny-llama`")
    assert "did you mean" not in result.output


def test_a_model_lm_studio_does_not_list_gets_close_keys_suggested(lmstudio):
    from llm_lmstudio.lmstudio import chat

    assert chat._suggest("test-org/tiny-lama").startswith(" — did you mean lmstudio/test-org/tiny-llama")
    assert "did you mean" not in chat._suggest("test-org/tiny-llama")


def test_model_that_fails_to_load(lmstudio):
    lmstudio.configure(load_fail="Not enough memory to load this model (guardrails)")
    assert_one_line_error(run("-m", LLAMA, "hi"), "could not load", "guardrails")


def test_server_error_carries_lmstudio_message(lmstudio):
    run("models")
    lmstudio.set_fault("status", "/api/v0/chat", status=500, body={"error": {"message": "Engine crashed"}})
    assert_one_line_error(run("-m", LLAMA, "hi"), "HTTP 500", "Engine crashed")


def test_malformed_json_is_reported(lmstudio):
    run("models")
    lmstudio.set_fault("malformed", "/api/v0/chat")
    assert_one_line_error(run("-m", LLAMA, "hi", "--no-stream"), "malformed")
    lmstudio.set_fault("malformed", "/api/v0/chat", after_chunks=2)
    streamed = run("-m", LLAMA, "hi")
    assert_one_line_error(streamed, "malformed", "kept in the log", stdout=None)
    assert "[response cut off" in streamed.output


def test_stream_cut_keeps_what_arrived_and_says_so(lmstudio, user_path):
    run("models")
    lmstudio.script("one two three four five six seven eight nine ten")
    lmstudio.set_fault("cut", "/api/v0/chat", after_chunks=4)
    result = run("-m", LLAMA, "count")
    assert_one_line_error(result, "cut off mid-stream", "kept in the log", stdout=None)
    assert result.output.startswith("one")
    [turn] = turns(user_path)
    data = json.loads(turn["response_json"])
    assert data["cut"] is True
    logged = json.loads(run("logs", "-n", "1", "--json").output)[0]
    assert logged["response"].startswith("one") and "[response cut off" in logged["response"]


def test_a_cut_answer_goes_back_to_the_model_without_the_cut_off_marker(lmstudio, user_path):
    lmstudio.script("PARTIAL ANSWER HERE AND MORE TEXT TO COME", "NEXT")
    lmstudio.set_fault("cut", "/api/v0/chat", after_chunks=2, times=1)
    cut = run("-m", LLAMA, "hi")
    assert cut.exit_code == 1 and "[response cut off" in cut.stdout
    partial = cut.stdout.split("\n[response cut off")[0]
    lmstudio.clear_requests()
    assert run("-c", "continue").exit_code == 0
    [request] = [r for r in lmstudio.requests() if r["path"] == "/api/v0/chat/completions"]
    assert request["sent"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": partial},  # only what the model produced
        {"role": "user", "content": "continue"},
    ]


# ------------------------------------------------------------------ a plain OpenAI-compatible server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlx_lm_server(tiny_llama_path, tmp_path_factory):
    port = _free_port()
    hf_cache = tmp_path_factory.mktemp("hf-cache")
    env = dict(os.environ, HF_HUB_CACHE=str(hf_cache), HF_HUB_OFFLINE="1")
    log = open(hf_cache / "server.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlx_lm.server", "--model", str(tiny_llama_path), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("mlx_lm.server did not start:\n" + (hf_cache / "server.log").read_text())
        time.sleep(0.2)
    yield url, str(tiny_llama_path)
    process.terminate()
    process.wait(timeout=10)


def test_plain_openai_compatible_server_works_for_chat(mlx_lm_server, monkeypatch, user_path):
    url, key = mlx_lm_server
    monkeypatch.setenv("LMSTUDIO_BASE_URL", url)
    model_id = f"lmstudio/{key}"
    assert model_id in run("models").output
    streamed = run("-m", model_id, "Hello", "-o", "max_tokens", "6")
    assert streamed.exit_code == 0, streamed.output
    plain = run("-m", model_id, "Hello", "-o", "max_tokens", "6", "--no-stream")
    assert plain.exit_code == 0, plain.output
    rows = turns(user_path)
    assert len(rows) == 2 and all(r["output_tokens"] for r in rows)
    assert all(json.loads(r["response_json"])["client"]["endpoint"] == "/v1/chat/completions" for r in rows)
