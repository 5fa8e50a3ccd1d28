import time

import pytest

from llm_lmstudio.lmstudio import transport
from llm_lmstudio.core import settings

http = transport  # the tests below read as calls on the HTTP client module


def sse_events(lines):
    decoder = http.SSEDecoder()
    return [event for line in lines for event in decoder.feed(line)] + decoder.flush()


def test_sse_parser_joins_multiline_data_and_skips_comments():
    lines = [": keep-alive", "event: message", "data: {\"a\":", "data: 1}", "", "data: [DONE]", ""]
    assert sse_events(lines) == ['{"a":\n1}', "[DONE]"]


def test_sse_parser_yields_last_event_without_blank_line():
    assert sse_events(["data:x"]) == ["x"]


def test_an_echoed_start_of_the_token_is_redacted_too():
    token = "sk-lm-J9Fa6fbC:jkFcl7oqhmx5GB1eM5fL"
    echoed = f"Malformed LM Studio API token provided: {token[:10]}**************."
    assert token[:6] not in http.redact(echoed, token)
    assert "J9Fa" not in http.redact(f"full {token} here", token)
    assert http.redact("nothing of it", token) == "nothing of it"


def test_a_malformed_token_error_says_so_without_quoting_the_server():
    token = "sk-lm-J9Fa6fbC:jkFcl7oqhmx5GB1eM5fL"
    body = {"error": {"code": "invalid_api_key", "message": f"Malformed LM Studio API token provided: {token[:10]}****"}}
    error = http.error_for_status(401, body, base_url="http://h:1", token=token)
    assert isinstance(error, http.AuthRequired) and "malformed" in str(error)
    assert token[:6] not in str(error)


def test_unknown_route_answered_with_200_is_an_endpoint_error():
    body = {"error": "Unexpected endpoint or method. (POST /api/v0/chat/completions)"}
    assert isinstance(http.error_for_status(200, body, base_url="http://h:1", token=None), http.EndpointMissing)
    # A bare 404 (0.3.5-era LM Studio, or another OpenAI-compatible server) is the same thing...
    assert isinstance(http.error_for_status(404, "Not Found", base_url="http://h:1", token=None), http.EndpointMissing)
    # ...but 0.3.5's 404 for a model is about the model.
    body = {"error": "No models loaded. Please load a model in the developer page or use the 'lms load' command."}
    assert isinstance(http.error_for_status(404, body, base_url="http://h:1", token=None), http.ModelNotFound)


def test_prompt_template_errors_keep_the_cause_and_one_instruction():
    body = {"error": 'Error rendering prompt with jinja template: "Unknown test: sequence".\n\nThis is usually an '
            "issue with the model's prompt template. If you are using a popular model, you can try..."}
    for status in (400, None):  # a 400 answer, or an error event inside a 200 stream
        message = str(http.error_for_status(status, body, base_url="http://h:1", token=None, model="glm"))
        assert "Unknown test: sequence" in message and "Prompt Template" in message and "\n" not in message


def test_one_place_chooses_the_chat_endpoint():
    assert http.chat_paths("v0") == [http.NATIVE_CHAT, http.OPENAI_CHAT]
    assert http.chat_paths("v1") == http.chat_paths("openai") == [http.OPENAI_CHAT]


def test_api_v1_errors_are_classified_by_their_type():
    # LM Studio's /api/v1 errors carry the kind in `type` and no `code` (lmstudio-bug-tracker#1462, #1438).
    body = {"error": {"type": "model_not_found", "message": "Model pub/m@q4_k_m not found in downloaded models"}}
    error = http.error_for_status(404, body, base_url="http://h:1", token=None)
    assert isinstance(error, http.ModelNotFound) and error.code == "model_not_found"
    assert "not found in downloaded models" in str(error) and "does not serve this endpoint" not in str(error)
    body = {"error": {"type": "not_implemented", "message": "Specifying quantizations ... is coming soon"}}
    error = http.error_for_status(400, body, base_url="http://h:1", token=None)
    assert isinstance(error, http.RequestFailed) and error.code == "not_implemented" and "coming soon" in str(error)
    # An OpenAI-shaped error keeps its `code`, null included (lmstudio-bug-tracker#1730): its type is no kind.
    body = {"error": {"message": "Bad thing", "type": "invalid_request_error", "param": "model", "code": None}}
    assert http.error_for_status(400, body, base_url="http://h:1", token=None).code is None
