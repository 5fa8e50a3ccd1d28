import time

import pytest

from llm_lmstudio import server, settings

http = server  # the tests below read as calls on the HTTP client module


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


def test_one_place_chooses_the_chat_endpoint_and_remembers_what_answered():
    base = "http://chooser.invalid:1"
    assert http.chat_paths(base, "v0") == [http.NATIVE_CHAT, http.OPENAI_CHAT]
    assert http.chat_paths(base, "openai") == [http.OPENAI_CHAT]
    http.chat_path_worked(base, http.OPENAI_CHAT)
    assert http.chat_paths(base, "v0") == [http.OPENAI_CHAT, http.NATIVE_CHAT]


def test_lmstudio_object_error_body_is_model_not_found():
    body = {
        "error": {
            "message": 'Failed to load model "e5". Error: Model is not embedding.',
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    error = http.error_for_status(400, body, base_url="http://h:1", token=None, model="e5")
    assert isinstance(error, http.ModelNotFound)
    assert "Model is not embedding" in str(error)


def test_string_valued_error_body_is_understood():
    body = {"error": "No models loaded. Please load a model in the developer page or use the 'lms load' command."}
    error = http.error_for_status(400, body, base_url="http://h:1", token=None)
    assert isinstance(error, http.ModelNotFound)
    assert "No models loaded" in str(error)


def test_auth_errors_say_what_to_do_and_never_echo_the_token():
    body = {"error": {"code": "invalid_api_key", "message": "bad token sk-lm-SECRET:xyz"}}
    missing = http.error_for_status(401, body, base_url="http://h:1", token=None)
    wrong = http.error_for_status(401, body, base_url="http://h:1", token="sk-lm-SECRET:xyz")
    assert isinstance(missing, http.AuthRequired) and "llm keys set lmstudio" in str(missing)
    assert isinstance(wrong, http.AuthRequired) and "rejected" in str(wrong)
    assert "SECRET" not in str(wrong)


def test_server_errors_are_one_line_with_lmstudio_message():
    error = http.error_for_status(500, {"error": {"message": "GPU\nexploded"}}, base_url="http://h:1", token=None)
    assert isinstance(error, http.RequestFailed)
    assert "\n" not in str(error) and "GPU exploded" in str(error) and "500" in str(error)


def test_refused_server_is_reported_with_its_address(refused_url):
    client = http.Client(settings.Server(settings.normalize_base_url(refused_url), "lmstudio"))
    with pytest.raises(http.Unreachable, match="not reachable at http://127.0.0.1"):
        client.get_json("/v1/models")


def test_hung_server_times_out_within_the_read_timeout(hung_url):
    server = settings.Server(settings.normalize_base_url(hung_url), "lmstudio")
    client = http.Client(server, connect_timeout=0.5, read_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(http.TimedOut, match="did not answer within 0.5 s"):
        client.get_json("/v1/models")
    assert time.monotonic() - started < 3


def test_quick_fetch_honours_its_deadline_on_a_hung_server(hung_url):
    server = settings.Server(settings.normalize_base_url(hung_url), "lmstudio")
    started = time.monotonic()
    with pytest.raises(http.TimedOut):
        http.quick_get_json(server, "/api/v0/models", token=None, deadline=0.2)
    assert time.monotonic() - started < 1.0
