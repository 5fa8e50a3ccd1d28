"""management_rest.py: model management over LM Studio 0.4's v1 REST API with the Bearer token (what an SDK
without token support falls back to), over real HTTP against the stand-in."""

import pytest

from llm_lmstudio.management import manager
from llm_lmstudio.management import rest as management_rest
from llm_lmstudio.lmstudio import errors

LLAMA = "test-org/tiny-llama"
EMBEDDING = "test-org/text-embedding-all-minilm-l6-v2"
TOKEN = "sk-lm-abcdEFGH:a1B2c3D4e5F6g7H8i9J0"


@pytest.fixture
def rest(lmstudio):
    lmstudio.configure(auth_token=TOKEN)
    return management_rest.RestSession(manager.pick_server(), TOKEN)


def test_load_sends_every_setting_the_rest_api_takes_with_the_token(rest, lmstudio):
    wanted = manager.LoadSettings(
        context_length=1024, flash_attention=True, eval_batch_size=128, num_experts=2, offload_kv_cache=False
    )
    assert rest.load(LLAMA, "llm", wanted, None) == LLAMA
    [state] = lmstudio.loaded()
    assert state["context_length"] == 1024
    assert state["config"] == {"flash_attention": True, "eval_batch_size": 128, "num_experts": 2, "offload_kv_cache_to_gpu": False}
    [request] = [r for r in lmstudio.requests() if r["path"] == "/api/v1/models/load"]
    assert request["authorization"]
    [instance] = rest.loaded()
    assert (instance.identifier, instance.model, instance.type, instance.context_length, instance.ttl) == (LLAMA, LLAMA, "llm", 1024, None)
    rest.unload(LLAMA, "llm")
    assert lmstudio.loaded() == []


def test_settings_only_the_sdk_can_send_are_refused_before_any_request(rest, lmstudio):
    lmstudio.clear_requests()
    with pytest.raises(manager.Unsupported, match="--gpu, --ttl cannot be sent: .* requires an API token"):
        rest.load(LLAMA, "llm", manager.LoadSettings(gpu=0.5, ttl=60), None)
    with pytest.raises(manager.Unsupported, match="no memory estimate"):
        rest.estimate(LLAMA, "llm", manager.LoadSettings())
    assert lmstudio.requests() == [] and lmstudio.loaded() == []


@pytest.mark.minilm  # uses the stand-in's MiniLM embedding model
def test_listing_comes_from_api_v1_models(rest, lmstudio):
    lmstudio.load(EMBEDDING)
    models = {m.key: m for m in rest.downloaded()}
    assert models[EMBEDDING].type == "embedding" and models["test-org/tiny-vision"].type == "vlm"
    assert models["test-org/tiny-qwen-tools"].tool_use and models[LLAMA].size_bytes > 0
    assert [(i.identifier, i.type) for i in rest.loaded()] == [(EMBEDDING, "embedding")]


def test_unknown_model_and_rejected_token_are_one_line_errors(rest, lmstudio):
    with pytest.raises(errors.ModelNotFound, match="Model test-org/nothing-here not found in downloaded models"):
        rest.load("test-org/nothing-here", "llm", manager.LoadSettings(), None)
    wrong = management_rest.RestSession(manager.pick_server(), "sk-lm-wrongone:" + "x" * 20)
    with pytest.raises(errors.AuthRequired, match="rejected the API token"):
        wrong.loaded()


def test_unknown_types_and_formats_in_the_v1_listing_are_kept():
    body = {"models": [
        {"type": "llm", "key": "intel/qwen-ov", "format": "openvino", "size_bytes": 3, "loaded_instances": []},
        {"type": "speech", "key": "pub/whisper", "format": "gguf"},
        {"type": "llm"},  # no key
    ]}
    models = [management_rest.model_from_v1(item) for item in management_rest._models(body)]
    assert [(m.key, m.type, m.format, m.namespace) for m in models] == [
        ("intel/qwen-ov", "llm", "openvino", "llm"), ("pub/whisper", "speech", "gguf", None),
    ]


def test_variants_come_from_the_listing_but_the_rest_load_refuses_them_in_one_line(rest, lmstudio):
    lmstudio.set_variants(LLAMA, ["q4_k_m", "q8_0"], selected="q4_k_m")
    llama = next(m for m in rest.downloaded() if m.key == LLAMA)
    assert (llama.variants, llama.selected_variant) == ([f"{LLAMA}@q4_k_m", f"{LLAMA}@q8_0"], f"{LLAMA}@q4_k_m")
    assert [v.key for v in rest.variants(LLAMA)] == llama.variants
    # LM Studio 0.4.1's REST load takes base keys only (lmstudio-bug-tracker#1462): said in one line, with the way out.
    with pytest.raises(manager.Unsupported) as refused:
        rest.load(f"{LLAMA}@q8_0", "llm", manager.LoadSettings(), None)
    message = str(refused.value)
    assert "\n" not in message and f"cannot load the variant {LLAMA}@q8_0 over its REST API" in message
    assert "install lmstudio 1.6 or later" in message
    assert lmstudio.loaded() == []
    assert rest.load(LLAMA, "llm", manager.LoadSettings(), None) == LLAMA  # the base key loads
