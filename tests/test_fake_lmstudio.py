"""Specification of the LM Studio stand-in: the wire formats, model state and faults other tests rely on.
Talks to the stand-in only through HTTP (openai client, httpx) and its fixtures; never to a real LM Studio."""

from __future__ import annotations

import base64
import io
import json
import math
import time

import httpx
import openai
import pytest

from tests.fake_lmstudio.app import AUTH_REQUIRED, NO_MODELS_LOADED
from tests.fake_lmstudio.engine import OutputSplitter

LLAMA = "test-org/tiny-llama"
TOOLS = "test-org/tiny-qwen-tools"
REASONER = "test-org/tiny-reasoner"
VISION = "test-org/tiny-vision"
MINILM = "test-org/text-embedding-all-minilm-l6-v2"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
def http(lmstudio):
    with httpx.Client(base_url=lmstudio.base_url, timeout=30) as client:
        yield client


@pytest.fixture
def oai(lmstudio):
    client = openai.OpenAI(base_url=lmstudio.base_url + "/v1", api_key="not-needed", max_retries=0, timeout=30)
    yield client
    client.close()


@pytest.fixture(scope="module")
def tokenizers(lmstudio_models_dir):
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    cache = {}

    def get(key):
        if key not in cache:
            cache[key] = load_tokenizer(lmstudio_models_dir / key)
        return cache[key]

    return get


@pytest.fixture
def has_minilm(lmstudio_models_dir):
    if not (lmstudio_models_dir / MINILM).is_dir():
        pytest.skip("MiniLM weights unavailable, so the stand-in has no embedding model")


def png_data_uri(size=(4, 3), color=(255, 0, 0)) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def sse_events(text: str) -> list:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


# -- probe, listings ---------------------------------------------------------------------------
def test_greeting_answers_like_lmstudio_and_unknown_routes_return_200_with_error(http):
    assert http.get("/lmstudio-greeting").json() == {"lmstudio": True}
    response = http.get("/v2/nothing")
    assert response.status_code == 200
    assert response.json() == {"error": "Unexpected endpoint or method. (GET /v2/nothing)"}


def test_v1_models_lists_all_downloaded_with_jit_and_only_loaded_without(lmstudio, oai):
    ids = {model.id for model in oai.models.list()}
    assert {LLAMA, TOOLS, REASONER, VISION} <= ids
    lmstudio.configure(jit=False)
    assert [model.id for model in oai.models.list()] == []
    lmstudio.load(LLAMA, identifier="my-llama")
    assert [model.id for model in oai.models.list()] == ["my-llama"]


def test_v0_models_and_model_detail_have_lmstudio_fields(lmstudio, http):
    models = {m["id"]: m for m in http.get("/api/v0/models").json()["data"]}
    tools = models[TOOLS]
    assert tools["type"] == "llm" and tools["compatibility_type"] == "mlx" and tools["arch"] == "qwen2"
    assert tools["state"] == "not-loaded" and tools["capabilities"] == ["tool_use"]
    assert "loaded_context_length" not in tools
    assert models[VISION]["type"] == "vlm"
    assert "capabilities" not in models[LLAMA]
    http.post("/api/v1/models/load", json={"model": TOOLS, "context_length": 2048}).raise_for_status()
    detail = http.get(f"/api/v0/models/{TOOLS}").json()  # the id contains a slash
    assert detail["state"] == "loaded" and detail["loaded_context_length"] == 2048
    assert detail["max_context_length"] == 4096 and detail["object"] == "model"
    missing = http.get("/api/v0/models/test-org/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_v1_native_models_shape_and_loaded_instances(lmstudio, http):
    lmstudio.load(REASONER, identifier="thinker")
    models = {m["key"]: m for m in http.get("/api/v1/models").json()["models"]}
    reasoner = models[REASONER]
    assert reasoner["type"] == "llm" and reasoner["format"] == "mlx" and reasoner["publisher"] == "test-org"
    assert reasoner["loaded_instances"][0]["id"] == "thinker"
    assert reasoner["loaded_instances"][0]["config"]["context_length"] == 4096
    assert reasoner["capabilities"]["reasoning"]["default"] == "on"
    assert reasoner["capabilities"]["vision"] is False
    assert models[VISION]["capabilities"]["vision"] is True
    assert models[TOOLS]["capabilities"]["trained_for_tool_use"] is True
    assert reasoner["size_bytes"] > 0 and reasoner["quantization"]["bits_per_weight"] == 32
    if MINILM in models:
        embedding = models[MINILM]
        assert embedding["type"] == "embedding" and "architecture" not in embedding
        assert "capabilities" not in embedding


# -- loading, JIT, TTL, eviction ---------------------------------------------------------------
def test_rest_load_creates_new_instances_and_unload_removes_them(lmstudio, http):
    first = http.post("/api/v1/models/load", json={"model": LLAMA, "echo_load_config": True}).json()
    assert first["instance_id"] == LLAMA and first["status"] == "loaded" and first["type"] == "llm"
    assert first["load_time_seconds"] >= 0 and first["load_config"]["context_length"] == 4096
    second = http.post("/api/v1/models/load", json={"model": LLAMA}).json()
    assert second["instance_id"] == f"{LLAMA}:2"
    named = lmstudio.load(LLAMA, identifier="llama-b", context_length=1024)
    loaded = {i["identifier"]: i for i in lmstudio.loaded()}
    assert set(loaded) == {LLAMA, f"{LLAMA}:2", "llama-b"}
    assert loaded["llama-b"]["context_length"] == 1024
    assert all(i["ttl_seconds"] is None and not i["jit"] for i in loaded.values())  # REST loads: no TTL
    # Each identifier is a separate instance that answers on its own.
    reply = http.post(
        "/v1/chat/completions", json={"model": named, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    ).json()
    assert reply["model"] == "llama-b"
    assert http.post("/api/v1/models/unload", json={"instance_id": f"{LLAMA}:2"}).json() == {"instance_id": f"{LLAMA}:2"}
    assert {i["identifier"] for i in lmstudio.loaded()} == {LLAMA, "llama-b"}
    gone = http.post("/api/v1/models/unload", json={"instance_id": "nope"})
    assert gone.status_code == 404


def test_inference_jit_loads_with_request_ttl_and_unloads_when_idle(lmstudio, http):
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "ttl": 600}
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    (instance,) = lmstudio.loaded()
    assert instance["jit"] and instance["ttl_seconds"] == 600
    assert lmstudio.age(599) == [] and [i["identifier"] for i in lmstudio.loaded()] == [LLAMA]
    assert lmstudio.age(1) == [LLAMA] and lmstudio.loaded() == []
    # Without a ttl in the request, a JIT load gets the server's default (60 min).
    assert http.post("/v1/chat/completions", json=body | {"ttl": None}).status_code == 200
    assert lmstudio.loaded()[0]["ttl_seconds"] == 3600


def test_idle_timer_resets_on_each_request(lmstudio, http):
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "ttl": 600}
    http.post("/v1/chat/completions", json=body).raise_for_status()
    for _ in range(3):  # 1200 s idle in all, never 600 in a row
        assert lmstudio.age(400) == []
        http.post("/v1/chat/completions", json=body).raise_for_status()
    [instance] = lmstudio.loaded()
    assert instance["identifier"] == LLAMA and instance["ttl_remaining"] > 590
    assert lmstudio.age(600) == [LLAMA]


def test_auto_evict_keeps_only_the_last_jit_model_and_spares_manual_loads(lmstudio, http):
    lmstudio.load(VISION)
    ask = lambda model: http.post(  # noqa: E731
        "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    )
    ask(LLAMA).raise_for_status()
    ask(REASONER).raise_for_status()
    assert {i["identifier"] for i in lmstudio.loaded()} == {VISION, REASONER}
    lmstudio.configure(auto_evict=False)
    ask(LLAMA).raise_for_status()
    assert {i["identifier"] for i in lmstudio.loaded()} == {VISION, REASONER, LLAMA}


def test_concurrent_requests_for_an_unloaded_model_share_one_jit_load(lmstudio, http):
    from concurrent.futures import ThreadPoolExecutor

    body = {"model": REASONER, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: http.post("/v1/chat/completions", json=body).status_code, range(4)))
    assert statuses == [200] * 4
    assert [i["identifier"] for i in lmstudio.loaded()] == [REASONER]


def test_jit_off_unloaded_model_and_unknown_model_errors(lmstudio, http):
    messages = [{"role": "user", "content": "hi"}]
    unknown = http.post("/v1/chat/completions", json={"model": "test-org/nope", "messages": messages})
    assert unknown.status_code == 400  # LM Studio 0.3.15+ (tests/recorded/errors.json)
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert unknown.json()["error"]["message"].startswith(
        'Invalid model identifier "test-org/nope". Please specify a valid downloaded model (e.g., '
    )
    lmstudio.configure(jit=False)
    response = http.post("/v1/chat/completions", json={"model": LLAMA, "messages": messages})
    assert response.status_code == 400
    assert response.json()["error"] == {"message": NO_MODELS_LOADED, "type": "invalid_request_error", "param": "model", "code": None}
    assert lmstudio.loaded() == []


# -- chat --------------------------------------------------------------------------------------
def test_chat_usage_counts_come_from_the_real_tokenizer(lmstudio, oai, tokenizers):
    lmstudio.script("Hello there, friend.")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    completion = oai.chat.completions.create(model=LLAMA, messages=messages)
    tokenizer = tokenizers(LLAMA)
    assert completion.choices[0].message.content == "Hello there, friend."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == len(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    assert completion.usage.completion_tokens == len(tokenizer.encode("Hello there, friend.", add_special_tokens=False))
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_streamed_chat_with_include_usage_ends_with_usage_only_chunk(lmstudio, oai):
    # Scripted past max_tokens: a random-weight model may otherwise sample end-of-text early.
    lmstudio.script("one two three four five six seven eight nine ten eleven twelve thirteen fourteen")
    stream = oai.chat.completions.create(
        model=LLAMA,
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    text_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert 1 <= len(text_chunks) <= 8  # one chunk per decoded segment, streamed as produced


def test_streaming_is_not_buffered(lmstudio, http):
    lmstudio.set_fault("slow", "/v1/chat/completions", chunk_delay=0.3)
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "x"}], "max_tokens": 6, "stream": True}
    arrivals = []
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
    assert len(arrivals) >= 4
    assert arrivals[-1] - arrivals[0] >= 0.3 * (len(arrivals) - 2)


def test_scripted_tool_call_round_trip(lmstudio, oai):
    call_text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    lmstudio.script(call_text, "It is sunny in Paris.")
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = oai.chat.completions.create(model=TOOLS, messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id and call.type == "function"
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'},
    ]
    second = oai.chat.completions.create(model=TOOLS, messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "It is sunny in Paris."
    assert second.choices[0].finish_reason == "stop"
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the tool exchange went into the prompt


def test_streamed_tool_call_arrives_as_deltas_accumulating_by_index(lmstudio, oai):
    lmstudio.script(
        'Checking. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    )
    stream = oai.chat.completions.create(
        model=TOOLS, messages=[{"role": "user", "content": "Oslo and Rome?"}], tools=[WEATHER_TOOL], stream=True
    )
    calls, content, finish = {}, "", None
    fragments = 0
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for tool_call in delta.tool_calls or []:
            fragments += 1
            slot = calls.setdefault(tool_call.index, {"name": "", "arguments": ""})
            slot["name"] += tool_call.function.name or ""
            slot["arguments"] += tool_call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and content == "Checking. "
    assert [json.loads(calls[i]["arguments"])["city"] for i in (0, 1)] == ["Oslo", "Rome"]
    assert fragments > 2


def test_tool_markup_without_tools_in_request_stays_content(lmstudio, oai):
    text = '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'
    lmstudio.script(text)
    completion = oai.chat.completions.create(model=TOOLS, messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == text and not completion.choices[0].message.tool_calls


def test_json_schema_response_format_with_script(lmstudio, oai):
    lmstudio.script('{"joke": "Why did the tensor cross the road?"}')
    completion = oai.chat.completions.create(
        model=LLAMA,
        messages=[{"role": "user", "content": "Tell me a joke."}],
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "joke_response",
                "strict": True,
                "schema": {"type": "object", "properties": {"joke": {"type": "string"}}, "required": ["joke"]},
            },
        },
    )
    assert json.loads(completion.choices[0].message.content) == {"joke": "Why did the tensor cross the road?"}
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(
            model=LLAMA, messages=[{"role": "user", "content": "x"}], response_format={"type": "json_object"}
        )


def test_json_schema_without_script_constrains_real_generation(lmstudio, oai):
    schema = {
        "type": "object",
        "properties": {"count": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["count", "ok"],
        "additionalProperties": False,
    }
    for seed in (1, 2, 3):
        completion = oai.chat.completions.create(
            model=LLAMA,
            messages=[{"role": "user", "content": "Count."}],
            seed=seed,
            max_tokens=64,
            response_format={"type": "json_schema", "json_schema": {"name": "count", "schema": schema}},
        )
        value = json.loads(completion.choices[0].message.content)
        assert set(value) == {"count", "ok"}
        assert isinstance(value["count"], int) and isinstance(value["ok"], bool)


def test_same_seed_and_temperature_reproduce_the_same_text(lmstudio, oai):
    def sample(seed):
        completion = oai.chat.completions.create(
            model=LLAMA, messages=[{"role": "user", "content": "Once upon"}], temperature=1.0, seed=seed, max_tokens=24
        )
        return completion.choices[0].message.content

    first, again, other = sample(7), sample(7), sample(8)
    assert first == again
    assert first != other


def test_stop_strings_end_generation_and_never_leak(lmstudio, oai):
    lmstudio.script("alpha beta STOP gamma", "alpha beta STOP gamma")
    completion = oai.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "x"}], stop=["STOP"])
    assert completion.choices[0].message.content == "alpha beta "
    assert completion.choices[0].finish_reason == "stop"
    stream = oai.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "x"}], stop="STOP", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "alpha beta "


def test_native_v0_chat_adds_stats_model_info_and_runtime(lmstudio, http):
    lmstudio.script("Short answer.")
    body = http.post(
        "/api/v0/chat/completions", json={"model": LLAMA, "messages": [{"role": "user", "content": "hi"}]}
    ).json()
    assert body["choices"][0]["message"]["content"] == "Short answer."
    assert body["choices"][0]["message"]["tool_calls"] == []
    stats = body["stats"]
    assert stats["stop_reason"] == "eosFound" and stats["tokens_per_second"] > 0
    assert stats["time_to_first_token"] >= 0 and stats["generation_time"] >= 0
    assert body["model_info"] == {"arch": "llama", "quant": "F32", "format": "mlx", "context_length": 4096}
    assert set(body["runtime"]) == {"name", "version", "supported_formats"}
    lmstudio.script("one two three four five six")  # longer than the limit: it stops at max_tokens, never at EOS
    limited = http.post(
        "/api/v0/chat/completions", json={"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    ).json()
    assert limited["stats"]["stop_reason"] == "maxPredictedTokensReached"
    assert limited["choices"][0]["finish_reason"] == "length" and limited["usage"]["completion_tokens"] == 3


def test_reasoning_model_splits_think_block_into_reasoning_content(lmstudio, oai, http):
    lmstudio.script("<think>Two plus two.</think>It is 4.", "<think>Two plus two.</think>It is 4.")
    completion = oai.chat.completions.create(model=REASONER, messages=[{"role": "user", "content": "2+2?"}])
    message = completion.choices[0].message.model_dump()
    assert message["content"] == "It is 4." and message["reasoning_content"] == "Two plus two."
    response = http.post(
        "/v1/chat/completions",
        json={"model": REASONER, "messages": [{"role": "user", "content": "2+2?"}], "stream": True},
    )
    deltas = [json.loads(e)["choices"][0]["delta"] for e in sse_events(response.text) if e != "[DONE]"]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Two plus two."
    assert "".join(d.get("content", "") for d in deltas) == "It is 4."
    # A model without the reasoning flag keeps the markup in content.
    lmstudio.script("<think>hmm</think>ok")
    plain = oai.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "x"}])
    assert plain.choices[0].message.content == "<think>hmm</think>ok"


def test_images_go_to_vision_models_and_malformed_images_are_rejected(lmstudio, oai, http):
    def ask(model, url):
        return http.post(
            "/v1/chat/completions",
            json={
                "model": model,
                "max_tokens": 2,
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                 {"type": "image_url", "image_url": {"url": url}}]}
                ],
            },
        )

    accepted = ask(VISION, png_data_uri())
    assert accepted.status_code == 200
    text_only = http.post(
        "/v1/chat/completions",
        json={"model": VISION, "max_tokens": 2, "messages": [{"role": "user", "content": "What is this?"}]},
    ).json()
    assert accepted.json()["usage"]["prompt_tokens"] > text_only["usage"]["prompt_tokens"]  # the image is in the prompt
    for bad in ("data:image/png;base64,not*base64", "data:image/png;base64," + base64.b64encode(b"nope").decode(),
                "https://example.com/cat.png"):
        rejected = ask(VISION, bad)
        assert rejected.status_code == 400, bad
        assert rejected.json()["error"]["type"] == "invalid_request_error"
    wrong_model = ask(LLAMA, png_data_uri())
    assert wrong_model.status_code == 400
    assert "does not support images" in wrong_model.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(
            model=VISION,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
        )


# -- embeddings --------------------------------------------------------------------------------
@pytest.mark.minilm  # uses the stand-in's MiniLM embedding model
def test_embeddings_input_validation_and_error_bodies(lmstudio, http):
    tokens = http.post("/v1/embeddings", json={"model": MINILM, "input": [[1, 2, 3]]})
    assert tokens.status_code == 400
    assert tokens.json()["error"]["message"] == "'input' field must be a string or an array of strings"
    not_embedding = http.post("/v1/embeddings", json={"model": LLAMA, "input": "hi"})
    assert not_embedding.json() == {
        "error": {
            "message": f'Failed to load model "{LLAMA}". Error: Model is not embedding.',
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    lmstudio.configure(jit=False)
    none_loaded = http.post("/v1/embeddings", json={"model": MINILM, "input": "hi"})
    assert none_loaded.json() == {"error": NO_MODELS_LOADED}
    assert http.post("/v1/embeddings", json={"input": "hi"}).json() == {"error": NO_MODELS_LOADED}


@pytest.mark.minilm
def test_embeddings_string_and_list_with_indexes_and_real_semantics(lmstudio, oai, has_minilm):
    single = oai.embeddings.create(model=MINILM, input="A cat sits on the mat")
    assert len(single.data) == 1 and single.data[0].index == 0 and len(single.data[0].embedding) == 384
    texts = ["A cat sits on the mat", "A kitten rests on a rug", "Stock markets fell sharply today"]
    batch = oai.embeddings.create(model=MINILM, input=texts)
    assert [item.index for item in batch.data] == [0, 1, 2]
    assert batch.usage.prompt_tokens > 0
    vectors = [item.embedding for item in batch.data]

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    assert cosine(vectors[0], single.data[0].embedding) == pytest.approx(1.0, abs=1e-4)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
    log = [r for r in lmstudio.requests() if r["path"] == "/v1/embeddings"]
    assert [r["input_count"] for r in log] == [1, 3]


# -- faults ------------------------------------------------------------------------------------
def test_hang_fault_never_answers_until_reset(lmstudio, http):
    lmstudio.set_fault("hang", "/v1/models")
    with pytest.raises(httpx.ReadTimeout):
        http.get("/v1/models", timeout=httpx.Timeout(5, read=0.5))
    assert http.get("/api/v0/models").status_code == 200  # other paths are unaffected
    lmstudio.reset()
    assert http.get("/v1/models").status_code == 200


def test_slow_fault_delays_the_response_a_limited_number_of_times(lmstudio, http):
    lmstudio.set_fault("slow", "/v1/models", delay=0.6, times=1)
    started = time.monotonic()
    assert http.get("/v1/models").status_code == 200
    assert time.monotonic() - started >= 0.6
    started = time.monotonic()
    http.get("/v1/models")
    assert time.monotonic() - started < 0.5


def test_status_fault_returns_chosen_status_and_body(lmstudio, http, oai):
    lmstudio.set_fault("status", "/v1/chat", status=503, body={"error": "overloaded"}, times=1)
    lmstudio.set_fault("status", "/api/v0/models", method="GET", status=500, body="Internal Server Error")
    response = http.post("/v1/chat/completions", json={"model": LLAMA, "messages": []})
    assert response.status_code == 503 and response.json() == {"error": "overloaded"}
    text = http.get("/api/v0/models")
    assert text.status_code == 500 and text.text == "Internal Server Error"
    assert text.headers["content-type"].startswith("text/plain")
    assert http.get("/api/v0/models/" + LLAMA).status_code == 500  # prefix match
    # times=1: the chat fault is used up
    assert oai.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "x"}], max_tokens=1)


def test_malformed_fault_sends_invalid_json_and_invalid_sse(lmstudio, http):
    lmstudio.set_fault("malformed", "/v1/models", times=1)
    broken = http.get("/v1/models")
    assert broken.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        broken.json()
    lmstudio.set_fault("malformed", "/v1/chat/completions", after_chunks=1, times=1)
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "stream": True}
    events = sse_events(http.post("/v1/chat/completions", json=body).text)
    json.loads(events[0])
    with pytest.raises(json.JSONDecodeError):
        json.loads(events[1])
    assert events[-1] == "[DONE]"


def test_cut_fault_drops_the_stream_without_done(lmstudio, http, oai):
    lmstudio.set_fault("cut", "/v1/chat/completions", after_chunks=2)
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "x"}], "max_tokens": 10, "stream": True}
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    received.append(line)
    assert len(received) == 2 and "data: [DONE]" not in received
    with pytest.raises(openai.APIError):
        list(oai.chat.completions.create(model=LLAMA, messages=body["messages"], max_tokens=10, stream=True))
    with pytest.raises(httpx.RemoteProtocolError):  # a non-streamed response is cut mid-body
        http.post("/v1/chat/completions", json=body | {"stream": False})


def test_stream_faults_still_fire_when_the_stream_is_shorter_than_after_chunks(lmstudio, http):
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "x"}], "stream": True}
    lmstudio.script("ok", "ok")
    lmstudio.set_fault("malformed", "/v1/chat/completions", after_chunks=50, times=1)
    events = sse_events(http.post("/v1/chat/completions", json=body).text)
    assert events[-1] == "[DONE]"
    with pytest.raises(json.JSONDecodeError):
        json.loads(events[-2])
    lmstudio.set_fault("cut", "/v1/chat/completions", after_chunks=50, times=1)
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            received.extend(line for line in response.iter_lines() if line.startswith("data: "))
    assert received and "data: [DONE]" not in received


def test_load_fail_fault_and_setting_make_loads_fail(lmstudio, http):
    lmstudio.set_fault("load_fail", message="Out of memory", times=1)
    failed = http.post("/v1/chat/completions", json={"model": LLAMA, "messages": [{"role": "user", "content": "x"}]})
    assert failed.status_code == 400
    assert failed.json()["error"]["message"] == f'Failed to load model "{LLAMA}". Error: Out of memory'
    assert lmstudio.loaded() == []
    assert http.post("/api/v1/models/load", json={"model": LLAMA}).status_code == 200  # fault used up
    lmstudio.configure(load_fail="Insufficient system resources")
    refused = http.post("/api/v1/models/load", json={"model": TOOLS})
    assert refused.status_code == 500 and "Insufficient system resources" in refused.json()["error"]["message"]


def test_auth_token_required_with_lmstudio_401_body(lmstudio, http):
    lmstudio.configure(auth_token="sk-lm-test:secret")
    expected = {"error": {"type": "invalid_request", "code": "invalid_api_key", "message": AUTH_REQUIRED}}
    for method, path in (("GET", "/v1/models"), ("GET", "/api/v0/models"), ("GET", "/api/v1/models"),
                         ("POST", "/v1/chat/completions"), ("POST", "/api/v1/models/load")):
        response = http.request(method, path, json={} if method == "POST" else None)
        assert response.status_code == 401 and response.json() == expected, path
    wrong = http.get("/v1/models", headers={"Authorization": "Bearer sk-lm-wrong"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    good = http.get("/v1/models", headers={"Authorization": "Bearer sk-lm-test:secret"})
    assert good.status_code == 200
    assert [r["authorization"] for r in lmstudio.requests()][-2:] == [True, True]
    assert lmstudio.requests()[0]["authorization"] is False


def test_refused_url_refuses_connections(refused_url):
    with pytest.raises(httpx.ConnectError):
        httpx.get(refused_url + "/v1/models", timeout=2)


def test_hung_url_accepts_but_never_answers(hung_url):
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(hung_url + "/v1/models", timeout=httpx.Timeout(2, read=0.3))
    assert time.monotonic() - started < 2


def test_request_log_records_what_tests_need(lmstudio, http):
    http.post("/v1/chat/completions", json={"model": LLAMA, "messages": [{"role": "user", "content": "x"}],
                                            "max_tokens": 1, "stream": True, "draft_model": "test-org/tiny-reasoner"})
    (entry,) = lmstudio.requests()
    assert entry["method"] == "POST" and entry["path"] == "/v1/chat/completions" and entry["model"] == LLAMA
    assert entry["stream"] is True and entry["body_size"] > 0 and entry["authorization"] is False
    assert entry["draft_model"] == "test-org/tiny-reasoner"


# -- output parsing (no server) ----------------------------------------------------------------
def test_output_splitter_holds_back_markers_split_across_chunks():
    splitter = OutputSplitter(reasoning=True, tool_markers=None, tool_parser=None, tools=None)
    pieces = []
    for chunk in ["<th", "ink>dee", "p</thi", "nk>answer <", "b>"]:
        pieces += splitter.feed(chunk)
    pieces += splitter.feed("", final=True)
    reasoning = "".join(p.text for p in pieces if p.kind == "reasoning")
    content = "".join(p.text for p in pieces if p.kind == "content")
    assert (reasoning, content) == ("deep", "answer <b>")


def test_output_splitter_returns_unparseable_tool_call_as_content():
    splitter = OutputSplitter(reasoning=False, tool_markers=("<tool_call>", "</tool_call>"),
                              tool_parser=lambda text, tools: json.loads(text), tools=[])
    pieces = splitter.feed("<tool_call>not json</tool_call>", final=True)
    assert [(p.kind, p.text) for p in pieces] == [("content", "<tool_call>not json</tool_call>")]
    assert splitter.tool_calls == 0


# -- checked against responses recorded from real LM Studio servers (tests/recorded) -------------
def recorded(name: str):
    from tests.recorded.replay import HERE

    text = (HERE / name).read_text()
    return [json.loads(e) for e in sse_events(text) if e != "[DONE]"] if name.endswith(".sse") else json.loads(text)


def test_v0_listing_rows_have_the_recorded_fields(lmstudio, http):
    real = recorded("v0_models.json")["data"]
    known = set().union(*(row.keys() for row in real))
    lmstudio.load(LLAMA)
    rows = http.get("/api/v0/models").json()["data"]
    assert rows and all(set(row) <= known for row in rows)
    assert {k for row in rows for k in row} == known
    # As recorded: `capabilities` only on rows LM Studio parses tools for natively.
    tools = {row["id"]: row.get("capabilities") for row in rows}
    assert tools[TOOLS] == ["tool_use"] and tools[LLAMA] is None


def test_answers_and_streams_have_the_recorded_shapes(lmstudio, http):
    messages = [{"role": "user", "content": "hi"}]
    lmstudio.script("Hello there.", "Once upon a time.", "{}")
    answer = http.post("/api/v0/chat/completions", json={"model": LLAMA, "messages": messages}).json()
    real = recorded("v0_chat_qwen3_think.json")
    assert set(answer) == set(real)
    assert set(answer["choices"][0]) == set(real["choices"][0]) and set(answer["stats"]) == set(real["stats"])
    stream = http.post("/api/v0/chat/completions", json={"model": LLAMA, "messages": messages, "stream": True})
    chunks = [json.loads(e) for e in sse_events(stream.text) if e != "[DONE]"]
    real_chunks = recorded("v0_stream_llava.sse")
    assert sse_events(stream.text)[-1] == "[DONE]"
    assert all(set(c) == set(real_chunks[0]) for c in chunks)  # no `stats` anywhere in a stream
    assert all(c["choices"][0]["delta"].get("role") == "assistant" for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["delta"] == {} == real_chunks[-1]["choices"][0]["delta"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    schema = {"type": "json_schema", "json_schema": {"name": "o", "schema": {"type": "object"}}}
    body = {"model": LLAMA, "messages": messages, "response_format": schema}
    assert set(http.post("/v1/chat/completions", json=body).json()) == set(recorded("v1_chat_schema.json"))


def test_error_shapes_match_the_recorded_ones(lmstudio, http):
    from tests.recorded.replay import ERRORS

    unknown = http.post("/chat/completions", json={})
    assert (unknown.status_code, unknown.json()) == (ERRORS["unknown_route"]["status"], ERRORS["unknown_route"]["body"])
    bad = http.post("/v1/chat/completions", json={"model": "o4-mini", "messages": [{"role": "user", "content": "x"}]})
    real = ERRORS["invalid_model_identifier"]
    assert bad.status_code == real["status"] and set(bad.json()["error"]) == set(real["body"]["error"])
    assert bad.json()["error"]["message"].split("(e.g.,")[0] == real["body"]["error"]["message"].split("(e.g.,")[0]
    lmstudio.configure(auth_token="sk-lm-AbCdEfGh:abcdefghijklmnopqrst")
    malformed = http.get("/v1/models", headers={"Authorization": "Bearer lm-studio-placeholder"})
    expected = ERRORS["malformed_token"]["body"]["error"]["message"].replace("{token10}", "lm-studio-")
    assert malformed.status_code == 401 and malformed.json()["error"]["message"] == expected


def test_a_broken_prompt_template_is_a_400_or_an_error_event_in_the_stream(lmstudio, http):
    messages = [{"role": "user", "content": "hi"}]
    lmstudio.set_fault("template", "/v1/chat/completions", times=2)
    plain = http.post("/v1/chat/completions", json={"model": LLAMA, "messages": messages})
    assert plain.status_code == 400
    assert plain.json()["error"].startswith("Error rendering prompt with jinja template: \"No filter named")
    streamed = http.post("/v1/chat/completions", json={"model": LLAMA, "messages": messages, "stream": True})
    assert streamed.status_code == 200
    [event] = [json.loads(e) for e in sse_events(streamed.text)]
    assert "This is usually an issue with the model's prompt template" in event["error"]


@pytest.mark.parametrize(
    "version, v0, v1, capabilities, usage_chunk, error_status",
    [("0.3.5", 404, 404, False, False, 404), ("0.3.15", 200, 200, False, False, 400), ("0.4", 200, 200, True, True, 400)],
)
def test_acts_as_an_older_or_newer_lmstudio(lmstudio, http, version, v0, v1, capabilities, usage_chunk, error_status):
    lmstudio.configure(version=version)
    listing = http.get("/api/v0/models")
    assert listing.status_code == v0
    native = http.get("/api/v1/models")
    assert native.status_code == v1 and ("models" in native.json()) == (version == "0.4")
    if v0 == 200:
        assert any("capabilities" in row for row in listing.json()["data"]) == capabilities
    lmstudio.script("one two three")
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "x"}], "stream": True,
            "stream_options": {"include_usage": True}}
    chunks = [json.loads(e) for e in sse_events(http.post("/v1/chat/completions", json=body).text) if e != "[DONE]"]
    assert any("usage" in c for c in chunks) == usage_chunk
    missing = http.post("/v1/chat/completions", json=dict(body, model="test-org/nope", stream=False))
    assert missing.status_code == error_status


def test_04_interleaves_concurrent_streams_and_older_servers_queue_them(lmstudio):
    import threading

    def sent(version: str) -> list[str]:
        """Which answer each streamed chunk belonged to, in the order the server sent them (the order two client
        threads happen to read them in is theirs, not the server's)."""
        lmstudio.reset()
        lmstudio.configure(version=version)
        lmstudio.load(LLAMA)
        lmstudio.script(*[" ".join(["word"] * 96)] * 2)  # long enough that two answers at once overlap

        def consume(name):
            body = {"model": LLAMA, "messages": [{"role": "user", "content": name}], "stream": True}
            with httpx.Client(base_url=lmstudio.base_url, timeout=60) as client:
                with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    for _ in response.iter_lines():
                        pass

        threads = [threading.Thread(target=consume, args=(n,)) for n in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return lmstudio.streamed()

    def switches(order):
        return sum(1 for x, y in zip(order, order[1:]) if x != y)

    assert switches(sent("0.4")) > 2  # tokens of both answers alternate on the wire
    assert switches(sent("0.3.15")) == 1  # one whole answer, then the other


def test_a_model_being_loaded_is_listed_as_loading(lmstudio, http):
    import threading

    rows = []
    lmstudio.configure(load_seconds=1.0)  # a tiny model loads in milliseconds: widen the window to observe it
    loader = threading.Thread(target=lmstudio.load, args=(TOOLS,))
    loader.start()
    while loader.is_alive():
        rows += [r["state"] for r in http.get("/api/v0/models").json()["data"] if r["id"] == TOOLS]
    loader.join()
    assert "loading" in rows and http.get(f"/api/v0/models/{TOOLS}").json()["state"] == "loaded"
