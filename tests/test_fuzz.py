"""Property tests: whatever a server or a config file sends, the plugin makes of it exactly what was sent, or the
plugin's own one-line error: through the parsers, and through `llm` itself (exit code, one line, nothing cached from a
failed answer). Each property runs a bounded, fixed set of examples (seconds; FUZZ_EXAMPLES=N searches further)."""

from __future__ import annotations

import json
import math
import os

import pytest
from hypothesis import HealthCheck, assume, example, given, settings as hsettings, strategies as st

from llm_lmstudio.lmstudio import answer, catalog, embeddings, errors, openai_client
from llm_lmstudio.lmstudio import listing as listings
from llm_lmstudio.core import settings
from llm_lmstudio.router import config as router_config
from llm_lmstudio.lmstudio import health as status
from llm_lmstudio.store import cache_db
from tests.helpers import assert_one_line_error, llm_cli
from tests.recorded.replay import Reply, ReplayServer

FAST = hsettings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "80")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any JSON value: what a misbehaving server or a hand-edited file can put anywhere.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)


def fields_of(names: list[str]):
    """Objects that use the real field names with values of any type, some fields missing, some extra."""
    return st.dictionaries(st.sampled_from(names) | st.text(max_size=8), json_values, max_size=len(names) + 2)


# ---------------------------------------------------------------- SSE


sse_lines = st.lists(
    st.one_of(
        st.just(""),
        st.just("data: [DONE]"),
        st.builds(lambda v: "data: " + json.dumps(v), json_values),
        st.builds(lambda t: "data:" + t, st.text(max_size=30)),
        st.sampled_from([": keep-alive", "event: message", "id: 7", "retry: 10", "data", "data:"]),
        st.text(max_size=30),
    ),
    max_size=12,
)


@FAST
@given(sse_lines)
def test_sse_lines_of_any_shape_become_data_strings_without_raising(lines):
    # The openai client parses the stream (openai._streaming); this is its decoder, fed line by line.
    from openai._streaming import SSEDecoder

    decoder = SSEDecoder()
    events = [event.data for line in lines if (event := decoder.decode(line.rstrip("\r\n")))]
    assert all(isinstance(event, str) for event in events)
    assert len(events) <= len(lines)


@pytest.fixture(scope="module")
def sse_server():
    """A loopback server whose chat completion stream each example sets."""
    with ReplayServer() as server:
        yield server


def _client_stream(server, body: bytes, token: str | None = None):
    """The chunks the plugin's client takes from a chat completion stream with this body (then [DONE])."""
    server.route("POST", "/v1/chat/completions", Reply(body + b"data: [DONE]\n\n", content_type="text/event-stream"))
    client = openai_client.Client(settings.Server(base_url=server.url, prefix="lmstudio"), token=token, read_timeout=5)
    return client.stream("/v1/chat/completions", {"model": "m", "stream": True})


@FAST
@given(json_values)
def test_any_sse_data_is_a_chunk_or_the_plugins_error(sse_server, value):
    token = "sk-lm-tok:secret"
    try:
        chunks = list(_client_stream(sse_server, b"data: " + json.dumps(value).encode() + b"\n\n", token))
    except errors.LMStudioError as exc:
        assert "\n" not in str(exc) and token not in str(exc)
        return
    assert all(isinstance(chunk, dict) for chunk in chunks)


@FAST
@given(st.text(max_size=60))
def test_any_sse_text_is_a_chunk_or_the_plugins_error(sse_server, text):
    try:
        list(_client_stream(sse_server, b"data: " + text.encode() + b"\n\n"))
    except errors.LMStudioError as exc:
        assert "\n" not in str(exc)


# What a chat answer of any shape must become: the content, reasoning and tool-call arguments the server sent, in
# order and nothing else (unless its text opens with "<", where a <think> block may begin), or, only where a chunk is
# not a chat completion chunk (an error object, choices that are not a list), one line of the plugin's own error.


def _streamed(server, chunks: list):
    """The events the chat model makes of these streamed chunks (through the openai client, over loopback HTTP), or
    the error it raises."""
    body = b"".join(b"data: " + json.dumps(value).encode() + b"\n\n" for value in chunks)
    accumulator = answer.Accumulator(0.0)
    events = []
    try:
        for chunk in _client_stream(server, body):
            events += accumulator.feed_chunk(chunk)
        events += accumulator.flush()
    except errors.LMStudioError as exc:
        return events, exc
    return events, None


def _strings(items, *keys: str) -> str:
    """The text the dict items carry at the first of `keys` each sets (a value that is not text carries none)."""
    out = []
    for item in items:
        if isinstance(item, dict):
            value = next((item[k] for k in keys if item.get(k)), None)
            out.append(value if isinstance(value, str) else "")
    return "".join(out)


def _dicts(value) -> list:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _assert_sent_text_arrives(events: list, messages: list[dict]) -> None:
    kinds = {event.type for event in events}
    assert kinds <= {"text", "reasoning", "tool_call_name", "tool_call_args"} and all(isinstance(e.chunk, str) for e in events)
    arguments = "".join(e.chunk for e in events if e.type == "tool_call_args")
    calls = [c for m in messages for c in _dicts(m.get("tool_calls"))]
    assert arguments == "".join(a for c in calls if isinstance(a := (c.get("function") or {}).get("arguments") if isinstance(c.get("function"), dict) else None, str))
    content = _strings(messages, "content")
    if not content.lstrip().startswith("<"):
        assert "".join(e.chunk for e in events if e.type == "text") == content
        assert "".join(e.chunk for e in events if e.type == "reasoning") == _strings(messages, "reasoning_content", "reasoning")


def _deltas(chunks: list) -> list[dict]:
    return [c.get("delta") if isinstance(c.get("delta"), dict) else {} for chunk in chunks for c in _dicts(chunk.get("choices"))]


def _well_formed(chunk: dict) -> bool:
    # An error report (an `error` and no `choices`, as LM Studio sends one inside a 200 stream) or choices that are
    # not a list make a chunk that is not a chat completion chunk.
    error_report = "error" in chunk and "choices" not in chunk
    return not error_report and (chunk.get("choices") is None or isinstance(chunk["choices"], list))


@FAST
@given(st.lists(fields_of(["id", "model", "choices", "usage", "stats", "error", "delta"]), max_size=4))
@example([{"choices": True}])
@example([{"choices": [{"delta": {"content": "Hel"}}]}, {"choices": [{"delta": {"content": "lo"}, "finish_reason": "stop"}]}])
def test_streamed_chunks_of_any_shape_become_what_was_sent_or_one_line(sse_server, chunks):
    events, error = _streamed(sse_server, chunks)
    if all(_well_formed(c) for c in chunks):
        assert error is None
        _assert_sent_text_arrives(events, _deltas(chunks))
    else:
        assert isinstance(error, errors.LMStudioError) and "\n" not in str(error)


choice_shapes = fields_of(["index", "delta", "message", "finish_reason"])
delta_shapes = fields_of(["content", "reasoning_content", "reasoning", "tool_calls", "role"])
call_shapes = fields_of(["index", "id", "type", "function"])


@FAST
@given(
    st.lists(
        st.fixed_dictionaries(
            {"choices": st.lists(st.fixed_dictionaries({"delta": st.fixed_dictionaries({"tool_calls": st.lists(call_shapes | json_values, max_size=3)}) | delta_shapes}) | choice_shapes, max_size=2)}
        ),
        max_size=4,
    )
)
@example([{"choices": [{"delta": {"tool_calls": [{"index": [1], "function": "get_weather", "id": 7}]}}]}])
@example([{"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": '{"a":'}}]}}]},
          {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}}]}])
def test_tool_call_deltas_of_any_shape_become_the_arguments_sent(sse_server, chunks):
    events, error = _streamed(sse_server, chunks)
    assert error is None  # every chunk here is a chat completion chunk, however odd its deltas
    _assert_sent_text_arrives(events, _deltas(chunks))
    calls = [c for delta in _deltas(chunks) for c in _dicts(delta.get("tool_calls"))]
    assert (not calls) == (not [e for e in events if e.type == "tool_call_name"])  # a call sent is a call announced


@FAST
@given(fields_of(["id", "model", "choices", "usage", "stats", "error"]) | st.fixed_dictionaries({"choices": st.lists(choice_shapes | json_values, max_size=2)}))
@example({"choices": [{"message": True}]})
@example({"choices": [{"message": {"content": "Hi", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}}]})
def test_a_completion_of_any_shape_is_what_was_sent_or_one_line(body):
    accumulator = answer.Accumulator(0.0)
    choices = body.get("choices")
    try:
        events = list(accumulator.feed_completion(body)) + list(accumulator.flush())
    except errors.LMStudioError as exc:
        assert "\n" not in str(exc)
        assert not (isinstance(choices, list) and choices and isinstance(choices[0], dict))  # only without a choice
        return
    message = choices[0].get("message") if isinstance(choices[0].get("message"), dict) else {}
    calls = _dicts(message.get("tool_calls"))
    assert [e.type for e in events if e.type == "tool_call_name"] == ["tool_call_name"] * len(calls)
    sent = [c["function"].get("arguments") if isinstance(c.get("function"), dict) else None for c in calls]
    # arguments arrive as sent: text as it is, a JSON object or list serialised
    expected = "".join(a if isinstance(a, str) else json.dumps(a) if isinstance(a, (dict, list)) else "" for a in sent)
    assert "".join(e.chunk for e in events if e.type == "tool_call_args") == expected
    content = message.get("content") if isinstance(message.get("content"), str) else ""
    if not content.lstrip().startswith("<"):
        assert "".join(e.chunk for e in events if e.type == "text") == content


@pytest.fixture(scope="module")
def replayed_lmstudio():
    """A loopback server with a recorded LM Studio model list (tests/recorded), whose chat answer each example sets."""
    with ReplayServer() as server:
        server.route("GET", "/api/v0/models", Reply.file("v0_models.json"))
        yield server


@hsettings(FAST, max_examples=max(FAST.max_examples // 2, 1),
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(fields_of(["id", "model", "choices", "usage", "error"]) | st.fixed_dictionaries({"choices": st.lists(st.fixed_dictionaries({"delta": delta_shapes}), max_size=2)}), max_size=4))
@example([{"choices": [{"delta": {"content": "Hello"}, "finish_reason": "stop"}]}])
@example([{"choices": [{"delta": {"content": "Hel"}}]}, {"error": {"message": "Model unloaded."}}])
def test_any_stream_through_llm_prints_what_was_sent_or_one_line_and_caches_no_failure(replayed_lmstudio, user_path, monkeypatch, chunks):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", replayed_lmstudio.url)
    stream = b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"
    replayed_lmstudio.route("POST", "/api/v0/chat/completions", Reply(stream, content_type="text/event-stream"))
    cache = cache_db.Store()
    before = cache.stats()["entries"]
    prompt = f"prompt {len(replayed_lmstudio.requests)}"  # a new prompt each time: never answered from the cache
    result = llm_cli("-m", "lmstudio/qwen3-4b", prompt, "-o", "cache", "1h", catch_exceptions=True)
    if all(_well_formed(chunk) for chunk in chunks):
        assert result.exit_code == 0, result.output
        content = _strings(_deltas(chunks), "content")
        if not content.lstrip().startswith("<"):
            assert result.stdout == content + "\n"
    else:
        assert_one_line_error(result, stdout=None)  # what streamed before the bad chunk stays on stdout
        assert cache.stats()["entries"] == before  # nothing of a failed answer is kept to replay


# ---------------------------------------------------------------- error bodies


@FAST
@given(st.integers(min_value=400, max_value=599), json_values | st.text(max_size=80))
def test_any_error_body_maps_to_one_line_without_the_token(status, body):
    token = "sk-lm-SENTINEL0:fuzzsecret"
    if isinstance(body, str):
        body = body + token  # a proxy that echoes the Authorization header back
    error = errors.error_for_status(status, body, base_url="http://h:1", token=token, model="m")
    assert isinstance(error, errors.LMStudioError)
    assert "\n" not in str(error) and token not in str(error)


# ---------------------------------------------------------------- model lists


V0_FIELDS = ["id", "object", "type", "publisher", "arch", "compatibility_type", "quantization", "state",
             "max_context_length", "loaded_context_length", "capabilities"]
V1_FIELDS = ["type", "publisher", "key", "display_name", "architecture", "quantization", "size_bytes", "params_string",
             "loaded_instances", "max_context_length", "format", "capabilities", "description"]


def listing(key: str, fields: list[str]):
    return st.dictionaries(st.just(key) | st.text(max_size=6), st.lists(fields_of(fields) | json_values, max_size=4) | json_values, max_size=3)


@FAST
@given(listing("data", V0_FIELDS) | json_values)
def test_v0_model_list_of_any_shape_parses_to_models(body):
    models = listings.parse_v0(body)
    assert all(isinstance(m.key, str) and m.key for m in models)


@FAST
@given(listing("models", V1_FIELDS) | json_values)
@example({"models": [{"key": "a", "loaded_instances": True}]})
def test_v1_model_list_of_any_shape_parses_to_models(body):
    models = listings.parse_v1(body)
    assert all(isinstance(m.key, str) and m.key for m in models)


@FAST
@given(
    st.fixed_dictionaries(
        {
            "models": st.lists(
                st.fixed_dictionaries(
                    {
                        "key": st.text(min_size=1, max_size=8),
                        "loaded_instances": st.lists(fields_of(["id", "config"]) | json_values, max_size=3) | json_values,
                        "capabilities": fields_of(["vision", "trained_for_tool_use", "reasoning"]) | json_values,
                        "quantization": fields_of(["name", "bits_per_weight"]) | json_values,
                    }
                ),
                max_size=3,
            )
        }
    )
)
def test_v1_nested_fields_of_any_type_parse_to_models(body):
    models = listings.parse_v1(body)
    assert len(models) == len(body["models"])


@FAST
@given(listing("data", ["id", "object", "owned_by", "created"]) | json_values)
def test_openai_model_list_of_any_shape_parses_to_models(body):
    models = listings.parse_openai(body)
    assert all(m.type in ("llm", "embeddings") for m in models)


@FAST
@given(listing("models", V1_FIELDS) | listing("data", V0_FIELDS) | json_values)
@example({"models": [{"key": "a", "loaded_instances": 5}]})
def test_status_counts_models_in_any_listing_shape(body):
    downloaded, loaded = status.count_models(body)
    assert (downloaded is None) == (loaded is None)


@FAST
@given(json_values, st.integers(min_value=1, max_value=3))
@example(None, 1)
@example({"data": [{"index": 0, "embedding": ["0.5"]}]}, 1)
def test_embedding_answers_of_any_shape_are_vectors_or_the_plugins_error(body, expected):
    try:
        vectors = embeddings.vectors_from(body, expected, "http://h:1")
    except errors.LMStudioError:
        return
    assert len(vectors) == expected and all(isinstance(x, float) for v in vectors for x in v)


# ---------------------------------------------------------------- the on-disk cache


# Examples share one user directory (fixtures are set up once per test, not per example).
PER_TEST_FIXTURES = hsettings(FAST, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
cache_files = json_values | st.fixed_dictionaries(
    {
        "version": st.just(catalog.CACHE_VERSION),
        "servers": st.dictionaries(
            st.sampled_from(["http://127.0.0.1:9"]) | st.text(max_size=5),
            fields_of(["fetched_at", "status", "error", "models"]) | json_values,
            max_size=2,
        ),
    }
)


@PER_TEST_FIXTURES
@given(cache_files)
@example(value={"version": catalog.CACHE_VERSION, "servers": {"http://127.0.0.1:9": True}})
@example(value={"version": catalog.CACHE_VERSION, "servers": {"http://127.0.0.1:9": {"fetched_at": "soon", "models": 3}}})
def test_a_cache_file_of_any_content_never_breaks_registration(user_path, monkeypatch, value):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LMSTUDIO_DISCOVERY_BUDGET", "0.01")
    # A stale "timeout" entry is refreshed in a detached process: not what this property is about.
    monkeypatch.setattr(catalog, "_spawn_background_refresh", lambda: None)
    (settings.plugin_dir() / catalog.CACHE_FILE).write_text(json.dumps(value))
    models = catalog.models_for_registration()
    assert all(isinstance(m, listings.CatalogModel) for m in models)
    catalog.server_status("http://127.0.0.1:9")


# ---------------------------------------------------------------- settings and the router config


ROUTER_KEYS = ["classifier", "embedding_model", "prefer", "exclude", "fallback", "tasks", "keywords", "ttl", "max_attempts"]


@FAST
@given(fields_of(ROUTER_KEYS) | json_values)
def test_router_config_of_any_shape_is_valid_or_one_line_naming_the_file(data):
    try:
        config = router_config.parse_router_config(data, name="lmstudio-router.yaml")
    except settings.SettingsError as exc:
        assert "lmstudio-router.yaml" in str(exc) and "\n" not in str(exc)
        return
    assert config.embedding_model is None or settings.is_local_model_id(config.embedding_model)
    assert config.ttl >= 1 and config.max_attempts >= 1


@PER_TEST_FIXTURES
@given(
    st.binary(max_size=200) | st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.sampled_from(router_config.ROUTER_CONFIG_NAMES),
)
@example(raw=b"\x80", name="lmstudio-router.yaml")
def test_router_config_file_of_any_bytes_loads_or_fails_with_a_settings_error(user_path, raw, name):
    for other in router_config.ROUTER_CONFIG_NAMES:
        (user_path / other).unlink(missing_ok=True)
    (user_path / name).write_bytes(raw)
    try:
        router_config.load()
    except settings.SettingsError as exc:
        assert name in str(exc) and "\n" not in str(exc)


@FAST
@given(st.text(max_size=40))
@example("[")
@example("file:///etc/passwd")
def test_any_base_url_is_normalised_to_http_or_refused(value):
    try:
        url = settings.normalize_base_url(value)
    except settings.SettingsError as exc:
        assert "\n" not in str(exc)
        return
    assert url.startswith(("http://", "https://"))


@FAST
@given(st.text(max_size=12) | st.sampled_from(["nan", "inf", "-inf", "1e999", "0", "-1", "0.5", " 2 "]))
def test_timeouts_from_any_environment_value_are_finite_and_positive_or_refused(value):
    assume("\x00" not in value)
    old = os.environ.get("LMSTUDIO_TIMEOUT")
    os.environ["LMSTUDIO_TIMEOUT"] = value
    try:
        try:
            limits = settings.timeouts()
        except settings.SettingsError as exc:
            assert "LMSTUDIO_TIMEOUT" in str(exc)
            return
        # An infinite or NaN timeout would be an unbounded wait in disguise.
        assert math.isfinite(limits.read) and limits.read > 0
    finally:
        if old is None:
            os.environ.pop("LMSTUDIO_TIMEOUT", None)
        else:
            os.environ["LMSTUDIO_TIMEOUT"] = old


@pytest.mark.parametrize("value", ["nan", "inf", "1e999"])
def test_non_finite_timeouts_are_refused_with_the_variable_named(monkeypatch, value):
    monkeypatch.setenv("LMSTUDIO_TIMEOUT", value)
    with pytest.raises(settings.SettingsError, match="LMSTUDIO_TIMEOUT"):
        settings.timeouts()
