"""The stand-in acting as LM Studio 0.4 really behaves: the release and bug quirks a test turns on (state.QUIRKS) and
0.4's own REST answers (type-only errors, variants refused by the REST load, catalog downloads without a quantization,
tool shapes /v1/responses refuses), each against the source its implementation cites."""

from __future__ import annotations

import json

import httpx
import pytest

LLAMA = "test-org/tiny-llama"
TOOLS = "test-org/tiny-qwen-tools"
REASONER = "test-org/tiny-reasoner"


@pytest.fixture
def http(lmstudio):
    with httpx.Client(base_url=lmstudio.base_url, timeout=60) as client:
        yield client


def respond(http, **body) -> httpx.Response:
    return http.post("/v1/responses", json={"model": LLAMA, **body})


def user(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def system(text: str) -> dict:
    return {"type": "message", "role": "system", "content": [{"type": "input_text", "text": text}]}


def sse(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def test_growth_doubles_the_chain_every_turn_then_answers_500_when_the_context_is_full(lmstudio, http):
    lmstudio.configure(responses_growth=True)
    lmstudio.load(LLAMA, context_length=1024)
    lmstudio.script(*["A short answer."] * 8)
    reads, previous, last = [], None, None
    for turn in range(8):
        last = respond(http, input=[user(f"Turn {turn}: tell me more.")], previous_response_id=previous)
        if last.status_code != 200:
            break
        reads.append(last.json()["usage"]["input_tokens"])
        previous = last.json()["id"]
    # lmstudio-bug-tracker#2074: each continued turn re-reads about twice the last one's context ...
    assert len(reads) >= 3 and all(b > 1.8 * a for a, b in zip(reads[1:], reads[2:])), reads
    # ... until it no longer fits the loaded context: HTTP 500, Express's plain "Internal Server Error".
    assert (last.status_code, last.text) == (500, "Internal Server Error")
    lmstudio.configure(responses_growth=False)
    assert respond(http, input=[user("Fresh start.")]).status_code == 200


def test_without_the_quirk_a_chain_grows_by_what_was_said(lmstudio, http):
    lmstudio.script("One.", "Two.", "Three.")
    first = respond(http, input=[user("Hello there.")]).json()
    second = respond(http, input=[user("And again.")], previous_response_id=first["id"]).json()
    third = respond(http, input=[user("Once more.")], previous_response_id=second["id"]).json()
    reads = [r["usage"]["input_tokens"] for r in (first, second, third)]
    assert third["usage"]["input_tokens"] - second["usage"]["input_tokens"] < 1.5 * (reads[1] - reads[0]) + 10


def test_a_system_prompt_on_a_stored_turn_is_a_500_where_lm_studio_rejects_it(lmstudio, http):
    lmstudio.configure(responses_system="reject_on_stored")
    lmstudio.script("Hi.", "Still brief.", "x", "x")
    first = respond(http, input=[system("Be brief."), user("Hello.")])
    assert first.status_code == 200
    second = respond(http, input=[user("Again.")], previous_response_id=first.json()["id"])
    assert second.status_code == 200
    # The chain carries the system prompt it started with (what the model was given on the second turn).
    assert lmstudio.generations()[-1]["messages"][0] == {"role": "system", "content": "Be brief."}
    for extra in ({"instructions": "Be brief."}, {"input": [system("Be brief."), user("Again.")]}):
        body = {"input": [user("Again.")], "previous_response_id": second.json()["id"], **extra}
        refused = respond(http, **body)
        # lmstudio-bug-tracker#2219 (LM Studio 0.4.20, native /api/v1/chat with store=true).
        assert refused.status_code == 500
        assert refused.json()["error"]["message"] == "Only user, assistant and tool roles are supported, got system"


def test_instructions_have_no_effect_where_lm_studio_ignores_them(lmstudio, http):
    lmstudio.script("Hi.", "Hi.")
    assert respond(http, input=[user("Hello.")], instructions="Be brief.").status_code == 200
    assert lmstudio.generations()[-1]["messages"][0] == {"role": "system", "content": "Be brief."}
    lmstudio.configure(responses_system="ignore_instructions")  # lmstudio-bug-tracker#1154 (0.3.30)
    assert respond(http, input=[user("Hello.")], instructions="Be brief.").status_code == 200
    assert [m["role"] for m in lmstudio.generations()[-1]["messages"]] == ["user"]


@pytest.mark.parametrize("whole", [False, True])
def test_reasoning_arrives_as_deltas_or_whole(lmstudio, http, whole):
    lmstudio.configure(reasoning_whole=whole)
    lmstudio.script("<think>Because it is.</think>Yes.")
    events = sse(http.post("/v1/responses", json={"model": REASONER, "input": "Why?", "stream": True}).text)
    kinds = [e["type"] for e in events]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert deltas == ("" if whole else "Because it is.")
    [done] = [e for e in events if e["type"] == "response.reasoning_text.done"]
    assert done["text"] == "Because it is."
    [item] = [e["item"] for e in events if e["type"] == "response.output_item.done" and e["item"]["type"] == "reasoning"]
    assert item["content"] == [{"type": "reasoning_text", "text": "Because it is."}]
    completed = events[-1]["response"]["output"]
    assert kinds[-1] == "response.completed" and [i["type"] for i in completed] == ["reasoning", "message"]
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "Yes."


def test_a_repeated_identical_input_reports_zero_input_tokens(lmstudio, http):
    lmstudio.configure(zero_input_on_repeat=True)
    lmstudio.script("a", "b", "c")
    reads = [respond(http, input=text).json()["usage"]["input_tokens"] for text in ("Tea?", "Tea?", "Coffee?")]
    assert reads[0] > 0 and reads[1] == 0 and reads[2] > 0  # lms#553


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "function", "name": "ping", "description": "", "parameters": {}},
        {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}},
    ],
)
def test_tools_with_empty_parameters_or_the_nested_layout_are_refused(lmstudio, http, tool):
    refused = respond(http, input="Ping?", tools=[tool])
    assert refused.status_code == 400  # lmstudio-bug-tracker#2254 (0.4.20)
    assert refused.json()["error"] | {"message": None} == {
        "message": None, "type": "invalid_request_error", "param": "tools.0", "code": "custom",
    }
    lmstudio.script("pong")
    flat = {"type": "function", "name": "ping", "description": "", "parameters": {"type": "object", "properties": {}}}
    assert respond(http, input="Ping?", tools=[flat]).status_code == 200


def test_the_one_loaded_model_answers_for_a_model_the_server_cannot_serve(lmstudio, http):
    lmstudio.configure(single_model_fallback=True, jit=False)
    lmstudio.load(TOOLS)
    for asked in ("test-org/nothing-like-it", LLAMA):  # unknown; downloaded but not loaded (JIT off)
        lmstudio.script("From the loaded one.")
        answer = http.post("/v1/chat/completions", json={"model": asked, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200 and answer.json()["model"] == TOOLS  # lmstudio-bug-tracker#619
    lmstudio.load(LLAMA)
    refused = http.post("/v1/chat/completions", json={"model": "test-org/nothing-like-it", "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 400  # with two loaded, the model name counts again


def test_the_rest_load_refuses_a_variant_key_in_lm_studios_words(lmstudio, http):
    lmstudio.set_variants(LLAMA, ["q4_k_m", "q8_0"])
    refused = http.post("/api/v1/models/load", json={"model": f"{LLAMA}@q8_0"})
    assert refused.status_code == 404 and refused.json() == {  # lmstudio-bug-tracker#1462
        "error": {"type": "model_not_found", "message": f"Model {LLAMA}@q8_0 not found in downloaded models"},
    }
    assert lmstudio.loaded() == []


def test_api_v1_errors_carry_their_kind_in_type_without_code(lmstudio, http):
    for path, body in (("/api/v1/models/load", {"model": "test-org/nothing"}),
                       ("/api/v1/models/unload", {"instance_id": "nothing"}),
                       ("/api/v1/models/download", {"model": "test-org/nothing-anywhere"})):
        error = http.post(path, json=body).json()["error"]
        assert set(error) == {"type", "message"} and error["type"] == "model_not_found", (path, error)
    assert set(http.get("/api/v1/models/download/status/job_nothing").json()["error"]) == {"type", "message"}


def test_a_quantization_is_refused_for_a_catalog_id_and_taken_for_a_hugging_face_link(lmstudio, http):
    refused = http.post("/api/v1/models/download", json={"model": "test-org/tiny-catalog-chat", "quantization": "4bit"})
    assert refused.json()["error"]["type"] == "not_implemented"  # lmstudio-bug-tracker#1438
    assert "coming soon" in refused.json()["error"]["message"]
    lmstudio.downloads(bytes_per_second=50_000)
    link = http.post("/api/v1/models/download",
                     json={"model": "https://huggingface.co/test-org/Tiny-Download-GGUF", "quantization": "Q8_0"})
    assert link.status_code == 200 and link.json()["status"] == "downloading"


def test_download_options_carry_their_compatibility_type(lmstudio):
    from types import SimpleNamespace

    from tests.fake_lmstudio import rest_v1

    catalog = next(i for i in rest_v1.DOWNLOADABLE if i["identifier"]["type"] == "catalog")
    options = rest_v1.download_options(SimpleNamespace(memory_limit=None), catalog["identifier"])["results"]
    assert [(o["quantization"], o["compatibilityType"]) for o in options] == [("4bit", "safetensors"), ("Q4_K_M", "gguf")]
    assert not any(o["name"].lower().endswith((".gguf", ".safetensors")) for o in options)
