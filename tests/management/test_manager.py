"""management.py: name matching, option parsing, and the SDK session against the stand-in with the real SDK,
including how every SDK failure becomes one line (no `ws://`, no traceback) and how the token is handled."""

import subprocess
import sys
import time

import pytest

from llm_lmstudio.management import manager as management
from llm_lmstudio.management import models, sdk
from llm_lmstudio.lmstudio import errors

LLAMA = "test-org/tiny-llama"
QWEN = "test-org/tiny-qwen-tools"
EMBEDDING = "test-org/text-embedding-all-minilm-l6-v2"
TOKEN = "sk-lm-abcdEFGH:a1B2c3D4e5F6g7H8i9J0"
KEYS = [LLAMA, QWEN, "test-org/tiny-reasoner", "test-org/tiny-vision", EMBEDDING]


# ---------------------------------------------------------------- matching and parsing


@pytest.mark.parametrize(
    "name, key",
    [
        (LLAMA, LLAMA),
        ("TEST-ORG/Tiny-Llama", LLAMA),
        (f"lmstudio/{QWEN}", QWEN),
        ("tiny-llama", LLAMA),  # the part after the publisher
        ("qwen", QWEN),  # a unique partial match
        ("minilm", EMBEDDING),
    ],
)
def test_match_model_takes_exact_then_base_name_then_unique_partial(name, key):
    assert management.match_model(name, KEYS) == key


def test_match_model_ambiguous_name_lists_the_candidates():
    with pytest.raises(models.AmbiguousModel) as caught:
        management.match_model("tiny", KEYS)
    assert caught.value.candidates == sorted(k for k in KEYS if "tiny" in k)
    assert "test-org/tiny-vision" in str(caught.value) and "\n" not in str(caught.value)


def test_match_model_unknown_name_suggests_close_keys():
    with pytest.raises(management.UnknownModel) as caught:
        management.match_model("tiny-lama", KEYS)
    assert LLAMA in str(caught.value)
    with pytest.raises(management.UnknownModel, match="no models downloaded"):
        management.match_model("anything", [])


@pytest.mark.parametrize("text, ratio", [("off", 0.0), ("max", 1.0), ("MAX", 1.0), ("0.25", 0.25), ("1", 1.0)])
def test_parse_gpu_accepts_what_lms_load_accepts(text, ratio):
    assert models.parse_gpu(text) == ratio


@pytest.mark.parametrize("text", ["half", "1.5", "-0.1"])
def test_parse_gpu_rejects_anything_else(text):
    with pytest.raises(ValueError):
        models.parse_gpu(text)


def test_importing_the_plugin_does_not_import_the_sdk():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import llm_lmstudio, llm_lmstudio.cli.manage, llm_lmstudio.management.manager, llm_lmstudio.management.sdk"],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert {"llm_lmstudio.management.manager", "llm_lmstudio.management.sdk"} <= imported
    assert not {name for name in imported if name == "lmstudio" or name.startswith("lmstudio.")}


# ---------------------------------------------------------------- the SDK session


@pytest.fixture
def manager(lmstudio):
    with management.connect() as manager:
        yield manager


def test_load_returns_what_was_loaded_and_loaded_lists_it(manager, lmstudio):
    seen = []
    wanted = management.LoadSettings(context_length=1024, gpu=0.5, ttl=300, identifier="mine")
    result = manager.load("tiny-llama", wanted, on_progress=seen.append)
    assert (result.identifier, result.model, result.type, result.context_length) == ("mine", LLAMA, "llm", 1024)
    assert (result.gpu, result.ttl) == (0.5, 300.0)
    assert result.load_seconds > 0 and result.size_bytes > 0
    assert seen[-1] == 1.0 and seen == sorted(seen)
    [instance] = manager.loaded()
    assert (instance.identifier, instance.model, instance.context_length, instance.ttl) == ("mine", LLAMA, 1024, 300.0)
    assert 0 < instance.ttl_remaining <= 300
    [state] = lmstudio.loaded()
    assert (state["identifier"], state["ttl_seconds"], state["context_length"]) == ("mine", 300, 1024)


def test_load_without_ttl_gives_no_ttl_like_lms_load(manager, lmstudio):
    result = manager.load(LLAMA)
    assert result.ttl is None
    assert lmstudio.loaded()[0]["ttl_seconds"] is None


@pytest.mark.minilm  # the stand-in's downloads include MiniLM
def test_downloaded_marks_loaded_models_with_their_identifiers(manager):
    manager.load(LLAMA)
    manager.load(LLAMA, management.LoadSettings(identifier="second"), new_instance=True)
    models = {m.key: m for m in manager.downloaded()}
    assert set(KEYS) <= set(models)
    assert models[LLAMA].identifiers == [LLAMA, "second"] and models[LLAMA].loaded
    assert not models[QWEN].loaded
    assert models["test-org/tiny-vision"].type == "vlm"
    assert models[EMBEDDING].type == "embedding" and models[EMBEDDING].format == "mlx"
    assert {m.key for m in manager.downloaded("embedding")} == {EMBEDDING}
    assert EMBEDDING not in {m.key for m in manager.downloaded("llm")}


@pytest.mark.minilm  # uses the stand-in's MiniLM embedding model
def test_embedding_models_load_and_unload_in_their_own_namespace(manager, lmstudio):
    result = manager.load("minilm")
    assert (result.model, result.type) == (EMBEDDING, "embedding")
    assert [i.type for i in manager.loaded()] == ["embedding"]
    manager.unload(result.identifier)
    assert lmstudio.loaded() == []


@pytest.mark.minilm  # uses the stand-in's MiniLM embedding model
def test_unload_and_unload_all(manager, lmstudio):
    manager.load(LLAMA, management.LoadSettings(identifier="a"))
    manager.load(QWEN, management.LoadSettings(identifier="b"))
    manager.load("minilm", management.LoadSettings(identifier="c"))
    assert manager.unload("a").model == LLAMA
    assert sorted(i["identifier"] for i in lmstudio.loaded()) == ["b", "c"]
    assert sorted(i.identifier for i in manager.unload_all()) == ["b", "c"]
    assert lmstudio.loaded() == [] and manager.unload_all() == []


def test_unloading_an_identifier_that_is_not_loaded_names_what_is(manager):
    manager.load(LLAMA, management.LoadSettings(identifier="present"))
    with pytest.raises(management.UnknownModel, match="No loaded model matches 'absent'; loaded: present"):
        manager.unload("absent")


def test_a_loaded_model_is_loaded_again_only_as_a_new_instance(manager, lmstudio):
    first = manager.load(LLAMA)
    again = manager.load("tiny-llama", management.LoadSettings(context_length=1024))
    assert (again.already_loaded, again.identifier, again.context_length) == (True, first.identifier, first.context_length)
    assert len(lmstudio.loaded()) == 1
    copy = manager.load(LLAMA, new_instance=True)
    assert (copy.already_loaded, copy.identifier) == (False, f"{LLAMA}:2")


def test_duplicate_identifier_is_its_own_error(manager):
    manager.load(LLAMA, management.LoadSettings(identifier="twin"))
    with pytest.raises(models.DuplicateIdentifier) as caught:
        manager.load(QWEN, management.LoadSettings(identifier="twin"))
    assert 'Model with identifier "twin" already loaded' in str(caught.value)


def test_refused_load_carries_lm_studios_message(manager, lmstudio):
    lmstudio.set_fault("load_fail", message="Model loading was stopped due to insufficient system resources.")
    with pytest.raises(management.LoadRefused) as caught:
        manager.load(LLAMA)
    assert str(caught.value) == (
        "LM Studio refused to load the model: Model loading was stopped due to insufficient system resources."
    )


def test_context_length_beyond_the_model_is_refused_before_asking_lm_studio(manager, lmstudio):
    for attempt in (manager.load, manager.estimate):
        with pytest.raises(management.LoadRefused, match=f"more than {LLAMA} takes \\(4,096 tokens, as LM Studio lists it\\)"):
            attempt(LLAMA, management.LoadSettings(context_length=100_000))
    assert lmstudio.loaded() == []


def test_not_running_names_the_http_address_not_the_websocket(refused_url, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)
    with pytest.raises(errors.Unreachable) as caught:
        with management.connect():
            pass
    message = str(caught.value)
    assert refused_url in message and "ws://" not in message and "\n" not in message


def test_hung_server_fails_quickly_instead_of_hanging(hung_url, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", hung_url)
    started = time.monotonic()
    with pytest.raises(errors.LMStudioError) as caught:
        with management.connect():
            pass
    assert time.monotonic() - started < 15
    assert hung_url in str(caught.value)


def test_https_servers_are_refused_with_an_explanation(monkeypatch):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", "https://lmstudio.example:443")
    with pytest.raises(management.ManagementError, match="https"):
        with management.connect():
            pass


def test_server_requiring_a_token_without_one_configured(lmstudio):
    lmstudio.configure(auth_token=TOKEN)
    with pytest.raises(errors.AuthRequired) as caught:
        with management.connect() as manager:
            manager.loaded()
    assert "requires an API token: run `llm keys set lmstudio`" in str(caught.value)


@pytest.mark.minilm  # the stand-in's downloads include MiniLM
def test_a_server_requiring_a_token_is_managed_whichever_sdk_is_installed(lmstudio, monkeypatch):
    # lmstudio >= 1.6 sends the token over the websocket; older SDKs cannot, so LM Studio's v1 REST API does the work.
    lmstudio.configure(auth_token=TOKEN)
    monkeypatch.setenv("LM_API_TOKEN", TOKEN)
    with management.connect() as manager:
        via = manager.via
        assert via == ("sdk" if sdk.sdk_supports_token() else "rest")
        result = manager.load(LLAMA, management.LoadSettings(context_length=1024, flash_attention=True))
        assert [i.identifier for i in manager.loaded()] == [result.identifier]
        assert {m.key for m in manager.downloaded()} >= set(KEYS)
        manager.unload(result.identifier)
    assert lmstudio.loaded() == []
    # Over REST the token rides every request; over the SDK it is in the websocket handshake the server checked.
    management_calls = [r for r in lmstudio.requests() if r["path"].startswith("/api/v1/models")]
    assert all(r["authorization"] for r in management_calls) and bool(management_calls) == (via == "rest")


def test_a_token_in_lmstudio_api_token_is_used_too(lmstudio, monkeypatch):
    lmstudio.configure(auth_token=TOKEN)
    monkeypatch.setenv("LMSTUDIO_API_TOKEN", TOKEN)
    with management.connect() as manager:
        assert manager.loaded() == []


def test_a_wrong_token_is_rejected_in_one_line_without_quoting_it(lmstudio, monkeypatch):
    lmstudio.configure(auth_token=TOKEN)
    wrong = "sk-lm-wrongone:" + "x" * 20
    monkeypatch.setenv("LM_API_TOKEN", wrong)
    with pytest.raises(errors.AuthRequired) as caught:
        with management.connect() as manager:
            manager.loaded()
    message = str(caught.value)
    assert "rejected the API token" in message and wrong not in message and "\n" not in message


# ---------------------------------------------------------------- load settings, estimates, guardrails


def test_every_load_setting_reaches_lm_studio(manager, lmstudio):
    wanted = management.LoadSettings(
        context_length=2048, gpu=0.25, flash_attention=True, eval_batch_size=256, num_experts=2,
        offload_kv_cache=False, ttl=120, identifier="tuned",
    )
    result = manager.load(LLAMA, wanted)
    [state] = lmstudio.loaded()
    assert (state["identifier"], state["context_length"], state["gpu_ratio"], state["ttl_seconds"]) == ("tuned", 2048, 0.25, 120)
    assert state["config"] == {
        "flash_attention": True, "eval_batch_size": 256, "num_experts": 2, "offload_kv_cache_to_gpu": False,
    }
    assert result.config == {
        "context_length": 2048, "gpu": 0.25, "flash_attention": True, "eval_batch_size": 256, "num_experts": 2,
        "offload_kv_cache": False, "ttl": 120, "identifier": "tuned",
    }


@pytest.mark.minilm  # uses the stand-in's MiniLM embedding model
def test_llm_only_settings_are_refused_for_an_embedding_model_before_loading(manager, lmstudio):
    with pytest.raises(management.Unsupported, match="--flash-attention, --num-experts only apply to language models"):
        manager.load("minilm", management.LoadSettings(flash_attention=True, num_experts=2))
    assert lmstudio.loaded() == []


def test_estimate_grows_with_the_context_and_loads_nothing(manager, lmstudio):
    small = manager.estimate(LLAMA, management.LoadSettings(context_length=256))
    large = manager.estimate(LLAMA, management.LoadSettings(context_length=4096, gpu=0.5))
    assert small.fits and large.fits and small.confidence == "high"
    assert small.model_bytes == large.model_bytes > 0
    assert large.context_bytes == 16 * small.context_bytes
    assert large.total_bytes == large.model_bytes + large.context_bytes
    assert (large.context_length, large.gpu) == (4096, 0.5)
    assert lmstudio.loaded() == []


def test_a_load_over_the_guardrails_is_refused_with_the_estimate_before_loading(manager, lmstudio):
    fits = manager.estimate(LLAMA, management.LoadSettings(context_length=256))
    lmstudio.configure(memory_limit=fits.total_bytes + 1)
    with pytest.raises(management.LoadRefused) as caught:
        manager.load(LLAMA, management.LoadSettings(context_length=4096))
    message = str(caught.value)
    assert "would need about" in message and "nothing was loaded" in message and "lower --context-length" in message
    assert lmstudio.loaded() == []
    assert not any(r["path"].endswith("/load") for r in lmstudio.requests())
    assert manager.load(LLAMA, management.LoadSettings(context_length=256)).context_length == 256


def test_variants_are_listed_and_resolved_through_the_sdk(manager, lmstudio):
    lmstudio.set_variants(LLAMA, ["q4_k_m", "q8_0"], selected="q8_0")
    llama = next(m for m in manager.downloaded() if m.key == LLAMA)
    assert (llama.variants, llama.selected_variant) == ([f"{LLAMA}@q4_k_m", f"{LLAMA}@q8_0"], f"{LLAMA}@q8_0")
    assert [(v.key, v.format) for v in manager.variants(llama)] == [(f"{LLAMA}@q4_k_m", "mlx"), (f"{LLAMA}@q8_0", "mlx")]
    assert manager.resolve("tiny-llama@q4_k_m") == (llama, f"{LLAMA}@q4_k_m")
    assert manager.resolve("tiny-llama")[1] == LLAMA
    assert manager.load("tiny-llama@q4_k_m").model == f"{LLAMA}@q4_k_m"
