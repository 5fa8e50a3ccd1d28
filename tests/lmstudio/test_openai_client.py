"""The OpenAI-compatible endpoints through the openai client: which chat endpoint a model uses, server-sent events as
LM Studio sends them, what a request learns kept to that request (concurrent prompts), async clients closed with their loop."""

import asyncio
import json

import llm
import pytest
from click.testing import CliRunner
from llm.cli import cli

from llm_lmstudio.core import settings
from llm_lmstudio.lmstudio import openai_client, openai_pool
from tests.recorded.replay import Reply, ReplayServer

LLAMA = "lmstudio/test-org/tiny-llama"
UNKNOWN_V0_ROUTE = {"error": "Unexpected endpoint or method. (POST /api/v0/chat/completions)"}


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def chat_paths(server: ReplayServer) -> list[str]:
    return [path for path in server.paths() if "chat" in path]


def test_sse_parser_joins_multiline_data_and_skips_comments():
    # The openai client parses the stream (openai._streaming); this is its decoder, fed line by line.
    from openai._streaming import SSEDecoder

    decoder = SSEDecoder()
    lines = [": keep-alive", "event: message", "data: {\"a\":", "data: 1}", "", "data: [DONE]", ""]
    assert [event.data for line in lines if (event := decoder.decode(line))] == ['{"a":\n1}', "[DONE]"]


def test_a_stream_whose_last_event_lacks_its_blank_line_still_ends_properly():
    chunk = {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}
    with ReplayServer() as server:
        server.route("POST", openai_client.OPENAI_CHAT, Reply(f"data: {json.dumps(chunk)}\n\ndata: [DONE]".encode(),
                                                              content_type="text/event-stream"))
        client = openai_client.Client(settings.Server(base_url=server.url, prefix="lmstudio"))
        assert list(client.stream(openai_client.OPENAI_CHAT, {"model": "m", "stream": True})) == [chunk]


def test_a_model_from_the_v0_listing_asks_api_v0_and_any_other_model_only_v1(monkeypatch, user_path):
    with ReplayServer() as server:
        server.route("GET", "/api/v0/models", Reply.file("v0_models.json"))
        server.route("POST", openai_client.NATIVE_CHAT, Reply.file("v0_chat_llava.json"))
        monkeypatch.setenv("LMSTUDIO_BASE_URL", server.url)
        assert run("-m", "lmstudio/llava-v1.5-7b-llamafile", "hi", "--no-stream").exit_code == 0
        assert chat_paths(server) == [openai_client.NATIVE_CHAT]
    with ReplayServer() as server:  # a server with only the OpenAI-compatible listing (not LM Studio, or an old one)
        server.route("GET", "/v1/models", Reply.file("v1_models.json"))
        server.route("POST", openai_client.OPENAI_CHAT, Reply.file("v0_chat_llava.json"))
        monkeypatch.setenv("LMSTUDIO_BASE_URL", server.url)
        assert run("-m", "lmstudio/qwen2.5-7b-instruct", "hi", "--no-stream").exit_code == 0
        assert chat_paths(server) == [openai_client.OPENAI_CHAT]


def test_two_concurrent_async_prompts_on_one_model_each_log_their_own_endpoint(lmstudio):
    # The first of the two requests to reach /api/v0 is told the route does not exist (LM Studio's 200 "Unexpected
    # endpoint" body) and falls back to /v1; the other is answered on /api/v0. Both streams then run side by side,
    # chunk after chunk, so that each prompt is still streaming while the other one learns its endpoint.
    lmstudio.set_fault("status", "/api/v0/chat", status=200, body=UNKNOWN_V0_ROUTE, times=1)
    lmstudio.set_fault("slow", "/", chunk_delay=0.05)
    lmstudio.script("one two three four five six", "one two three four five six")

    async def go():
        model = llm.get_async_model(LLAMA)
        responses = [model.prompt("count"), model.prompt("count")]
        texts = await asyncio.gather(*(response.text() for response in responses))
        return texts, [response.response_json for response in responses]

    texts, logs = asyncio.run(go())
    assert texts == ["one two three four five six"] * 2
    served = [request["path"] for request in lmstudio.requests() if "chat" in request["path"]]
    assert sorted(served) == ["/api/v0/chat/completions", "/api/v0/chat/completions", "/v1/chat/completions"]
    assert sorted(log["client"]["endpoint"] for log in logs) == ["/api/v0/chat/completions", "/v1/chat/completions"]


def test_an_async_client_closes_with_its_event_loop(lmstudio):
    async def go():
        model = llm.get_async_model(LLAMA)
        await model.prompt("hi", max_tokens=2).text()
        await model.prompt("hi again", max_tokens=2).text()
        return openai_pool.async_clients(asyncio.get_running_loop())

    [client] = asyncio.run(go())  # one client for both prompts of the loop
    assert client.is_closed()
    assert openai_pool.async_clients() == []
    [again] = asyncio.run(go())  # a new loop gets a client of its own
    assert again is not client and again.is_closed()


def test_openai_settings_meant_for_openai_never_reach_lmstudio(monkeypatch):
    # What the openai client would read from the environment and send (its key, organisation, project, headers).
    for name in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.setenv(name, "meant-for-openai")
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "X-Proxy-Auth: meant-for-openai\nAuthorization: Bearer meant-for-openai")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9")
    with ReplayServer() as server:
        server.route("POST", openai_client.OPENAI_CHAT, Reply.file("v0_chat_llava.json"))
        for token in (None, "sk-lm-abcdefgh:passkey0123456789abcd"):
            client = openai_client.Client(settings.Server(base_url=server.url, prefix="lmstudio"), token=token)
            client.chat({"model": "m", "messages": [], "stream": False}, [openai_client.OPENAI_CHAT])
    first, second = server.requests
    assert "authorization" not in first["headers"]
    assert second["headers"]["authorization"] == "Bearer sk-lm-abcdefgh:passkey0123456789abcd"
    assert not [value for request in server.requests for value in request["headers"].values() if "meant-for-openai" in value]
