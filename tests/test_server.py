import time

import pytest

from llm_lmstudio import server as http
from llm_lmstudio import settings


def test_sse_parser_joins_multiline_data_and_skips_comments():
    lines = [": keep-alive", "event: message", "data: {\"a\":", "data: 1}", "", "data: [DONE]", ""]
    assert list(http.iter_sse_data(lines)) == ['{"a":\n1}', "[DONE]"]


def test_sse_parser_yields_last_event_without_blank_line():
    assert list(http.iter_sse_data(["data:x"])) == ["x"]


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
