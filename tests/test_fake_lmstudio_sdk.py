"""The real, unmodified `lmstudio` SDK against the stand-in's websocket protocol (tests/fake_lmstudio/sdk_ws.py):
listing, loading with progress, get-or-load, unloading, handles, TTL, several instances, and LM Studio's errors."""

import httpx
import lmstudio as lms
import pytest

LLAMA = "test-org/tiny-llama"
QWEN = "test-org/tiny-qwen-tools"
VISION = "test-org/tiny-vision"
EMBEDDING = "test-org/text-embedding-all-minilm-l6-v2"
TOKEN = "sk-lm-abcdEFGH:" + "a1B2c3D4e5F6g7H8i9J0"


@pytest.fixture
def client(lmstudio):
    previous = lms.get_sync_api_timeout()
    lms.set_sync_api_timeout(30)  # a protocol bug must fail the test, not hang the run
    with lms.Client(lmstudio.host_port) as client:
        yield client
    lms.set_sync_api_timeout(previous)


@pytest.mark.minilm  # the stand-in's downloads include MiniLM
def test_sdk_lists_downloaded_models_with_llm_and_embedding_namespaces(client):
    everything = {m.model_key: m for m in client.list_downloaded_models()}
    assert {LLAMA, QWEN, VISION, EMBEDDING} <= set(everything)
    assert everything[LLAMA].type == "llm"
    assert everything[EMBEDDING].type == "embedding"
    # LM Studio's "vlm" is an LLM with vision on the SDK side.
    assert everything[VISION].type == "llm" and everything[VISION].info.vision is True
    assert everything[QWEN].info.trained_for_tool_use is True
    llms = {m.model_key for m in client.llm.list_downloaded()}
    embeddings = {m.model_key for m in client.embedding.list_downloaded()}
    assert EMBEDDING in embeddings and EMBEDDING not in llms
    assert {LLAMA, QWEN, VISION} <= llms
    assert {m.model_key for m in client.list_downloaded_models("embedding")} == embeddings
    info = everything[LLAMA].info
    assert info.format == "safetensors"  # how LM Studio reports MLX models
    assert info.size_bytes > 0 and info.max_context_length > 0 and info.display_name


def test_sdk_load_new_instance_reports_progress_ttl_and_load_config(client, lmstudio):
    progress = []
    handle = client.llm.load_new_instance(
        LLAMA,
        "my-llama",
        ttl=600,
        config={"contextLength": 1024, "gpu": {"ratio": 0.5}},
        on_load_progress=progress.append,
    )
    assert handle.identifier == "my-llama"
    assert len(progress) >= 2 and progress[-1] == 1.0
    assert all(a < b for a, b in zip(progress, progress[1:])), progress
    info = handle.get_info()
    assert (info.identifier, info.model_key, info.context_length) == ("my-llama", LLAMA, 1024)
    assert info.instance_reference
    config = handle.get_load_config()
    assert config.context_length == 1024 and config.gpu.ratio == 0.5
    assert handle.get_context_length() == 1024
    # The TTL is the server's to enforce: the stand-in holds it, and newer servers report it as ttlMs.
    [loaded] = lmstudio.loaded()
    assert (loaded["identifier"], loaded["ttl_seconds"], loaded["jit"]) == ("my-llama", 600, False)
    [raw] = client.llm.remote_call("listLoaded")
    assert raw["ttlMs"] == 600_000 and raw["lastUsedTime"] > 0


def test_sdk_load_without_ttl_stays_loaded_indefinitely(client, lmstudio):
    client.llm.load_new_instance(LLAMA, ttl=None)
    [loaded] = lmstudio.loaded()
    assert loaded["ttl_seconds"] is None
    [raw] = client.llm.remote_call("listLoaded")
    assert raw["ttlMs"] is None


def test_sdk_several_instances_of_one_model_get_distinct_identifiers(client):
    first = client.llm.load_new_instance(LLAMA)
    second = client.llm.load_new_instance(LLAMA)
    named = client.llm.load_new_instance(LLAMA, "third")
    assert [first.identifier, second.identifier, named.identifier] == [LLAMA, f"{LLAMA}:2", "third"]
    loaded = {h.identifier for h in client.llm.list_loaded()}
    assert loaded == {LLAMA, f"{LLAMA}:2", "third"}
    references = {h.get_info().instance_reference for h in client.llm.list_loaded()}
    assert len(references) == 3


def test_sdk_model_gets_a_loaded_instance_or_loads_one_just_in_time(client, lmstudio):
    lmstudio.load(LLAMA, identifier="already-here")
    assert client.llm.model(LLAMA).identifier == "already-here"
    assert len(lmstudio.loaded()) == 1
    progress = []
    fresh = client.llm.model(QWEN, ttl=120, on_load_progress=progress.append)
    assert fresh.identifier == QWEN and progress[-1] == 1.0
    by_id = {i["identifier"]: i for i in lmstudio.loaded()}
    assert by_id[QWEN]["jit"] is True and by_id[QWEN]["ttl_seconds"] == 120


def test_sdk_get_or_load_evicts_the_previous_jit_model_but_not_manual_loads(client, lmstudio):
    lmstudio.load(LLAMA, identifier="manual")
    client.llm.model(QWEN, ttl=60)
    client.llm.model(VISION, ttl=60)
    assert {i["identifier"] for i in lmstudio.loaded()} == {"manual", VISION}


def test_sdk_unload_by_identifier_and_through_a_handle(client, lmstudio):
    kept = client.llm.load_new_instance(LLAMA, "kept")
    gone = client.llm.load_new_instance(LLAMA, "gone")
    client.llm.unload("gone")
    assert [i["identifier"] for i in lmstudio.loaded()] == ["kept"]
    with pytest.raises(lms.LMStudioServerError):
        gone.get_info()
    kept.unload()
    assert lmstudio.loaded() == []
    assert client.list_loaded_models() == []


@pytest.mark.minilm  # uses the stand-in's MiniLM embedding model
def test_sdk_embedding_namespace_loads_lists_and_unloads(client, lmstudio):
    progress = []
    handle = client.embedding.load_new_instance(EMBEDDING, on_load_progress=progress.append)
    assert progress[-1] == 1.0
    assert [h.identifier for h in client.embedding.list_loaded()] == [EMBEDDING]
    assert client.llm.list_loaded() == []
    assert [h.identifier for h in client.list_loaded_models("embedding")] == [EMBEDDING]
    info = handle.get_info()
    assert info.type == "embedding" and info.context_length <= info.max_context_length
    client.embedding.unload(EMBEDDING)
    assert lmstudio.loaded() == []


def test_sdk_loading_an_unknown_model_is_a_server_error_naming_it(client):
    with pytest.raises(lms.LMStudioServerError) as caught:
        client.llm.load_new_instance("test-org/no-such-model")
    assert 'Cannot find a model with path "test-org/no-such-model"' in str(caught.value)
    assert caught.value.server_error.display_data["code"] == "generic.pathNotFound"


@pytest.mark.minilm  # uses the stand-in's MiniLM embedding model
def test_sdk_loading_an_embedding_model_as_an_llm_is_refused(client):
    with pytest.raises(lms.LMStudioServerError) as caught:
        client.llm.load_new_instance(EMBEDDING)
    assert caught.value.server_error.display_data["code"] == "generic.domainMismatch"


def test_sdk_duplicate_identifier_is_refused_with_lm_studios_message(client, lmstudio):
    client.llm.load_new_instance(LLAMA, "twin")
    with pytest.raises(lms.LMStudioServerError) as caught:
        client.llm.load_new_instance(QWEN, "twin")
    assert caught.value.server_error.title == 'Model with identifier "twin" already loaded'
    assert [i["model"] for i in lmstudio.loaded()] == [LLAMA]


def test_sdk_load_failure_carries_the_loaders_message(client, lmstudio):
    lmstudio.configure(load_fail="Model loading was stopped due to insufficient system resources.")
    with pytest.raises(lms.LMStudioServerError) as caught:
        client.llm.load_new_instance(LLAMA)
    assert caught.value.server_error.title == "Model loading was stopped due to insufficient system resources."
    assert lmstudio.loaded() == []


def test_sdk_info_for_an_identifier_that_is_not_loaded_is_model_not_found(client):
    with pytest.raises(lms.LMStudioModelNotFoundError):
        client.llm.get_model_info("nothing-loaded")
    with pytest.raises(lms.LMStudioServerError) as caught:
        client.llm.unload("nothing-loaded")
    assert caught.value.server_error.display_data["code"] == "generic.identifierNotFound"


def test_http_jit_load_with_ttl_is_visible_to_the_sdk(client, lmstudio):
    response = httpx.post(
        f"{lmstudio.base_url}/v1/chat/completions",
        json={"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "ttl": 90},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    [raw] = client.llm.remote_call("listLoaded")
    assert raw["identifier"] == LLAMA and raw["ttlMs"] == 90_000
    [loaded] = lmstudio.loaded()
    assert loaded["jit"] is True and 0 < loaded["ttl_remaining"] <= 90


def test_sdk_without_a_token_is_refused_when_the_server_requires_one(lmstudio):
    lmstudio.configure(auth_token=TOKEN)
    with lms.Client(lmstudio.host_port) as client:
        with pytest.raises(lms.LMStudioServerError) as caught:
            client.list_loaded_models()
    assert str(caught.value).startswith("Authentication failed")


def test_stand_in_accepts_a_token_sent_the_way_token_aware_sdks_send_it(lmstudio):
    # lmstudio >= 1.6 splits "sk-lm-<id>:<key>" into the auth message's two fields; 1.5.0 cannot be told
    # to, so build that message with the SDK's own formatter.
    lmstudio.configure(auth_token=TOKEN)
    client_id, passkey = TOKEN.removeprefix("sk-lm-").split(":")
    with lms.Client(lmstudio.host_port) as client:
        client._auth_details = client._format_auth_message(client_id, passkey)
        assert {m.model_key for m in client.llm.list_downloaded()} >= {LLAMA}
