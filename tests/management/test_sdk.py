"""management_sdk.py: the raw SDK listings read leniently (what the SDK's typed parser rejects is kept), and the
token handed to an SDK that can send one, against the stand-in with the real `lmstudio` SDK."""

import lmstudio as lms
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_lmstudio.management import manager as management
from llm_lmstudio.lmstudio import errors
from llm_lmstudio.management import sdk
from tests.helpers import sdk_client

LLAMA = "test-org/tiny-llama"
TOKEN = "sk-lm-abcdEFGH:a1B2c3D4e5F6g7H8i9J0"
WRONG = "sk-lm-abcdEFGH:a1B2c3D4e5F6g7H8i9J1"  # one character off


def test_instance_from_wire_computes_remaining_ttl_and_type():
    now = 1_000_000.0
    raw = {
        "identifier": "a",
        "modelKey": "pub/vision",
        "format": "safetensors",
        "vision": True,
        "sizeBytes": 10,
        "contextLength": 512,
        "maxContextLength": 4096,
        "ttlMs": 60_000,
        "lastUsedTime": (now - 20) * 1000,
    }
    instance = sdk.instance_from_wire("llm", raw, now)
    assert (instance.type, instance.format, instance.ttl, instance.ttl_remaining) == ("vlm", "mlx", 60.0, 40.0)
    # An older server (SDK 1.5.0 schema) sends no TTL fields at all.
    bare = sdk.instance_from_wire("embedding", {"identifier": "e", "modelKey": "e", "format": "gguf"}, now)
    assert (bare.type, bare.format, bare.ttl, bare.ttl_remaining, bare.status) == ("embedding", "gguf", None, None, "loaded")


def test_models_of_unknown_formats_and_types_are_listed_not_fatal():
    # A newer LM Studio lists formats and types the SDK's typed parser rejects (issue: openvino, new types).
    raw = [
        {"type": "llm", "modelKey": "intel/qwen-ov", "format": "openvino", "displayName": "Qwen OV", "sizeBytes": 5,
         "path": "intel/qwen-ov", "maxContextLength": 8192},
        {"type": "image-gen", "modelKey": "pub/painter", "format": "safetensors", "sizeBytes": 7},
        {"type": "llm", "format": "gguf"},  # no key: nothing to show
    ]
    models = [m for m in map(sdk.model_from_wire, raw) if m is not None]
    assert [(m.key, m.type, m.format, m.namespace) for m in models] == [
        ("intel/qwen-ov", "llm", "openvino", "llm"),
        ("pub/painter", "image-gen", "mlx", None),
    ]
    with pytest.raises(management.Unsupported, match="'image-gen' model, which llm cannot load"):
        management.LoadSettings().check_for(models[1])


def test_token_is_passed_to_an_sdk_that_accepts_one(lmstudio, monkeypatch):
    # The stand-in refuses an SDK connection that does not present exactly this token (sdk_ws.authenticate).
    lmstudio.configure(auth_token=TOKEN)
    monkeypatch.setattr(lms, "Client", sdk_client(token_support=True))
    monkeypatch.setenv("LM_API_TOKEN", TOKEN)
    with management.connect() as manager:
        assert manager.via == "sdk"
        assert manager.load(LLAMA).identifier == LLAMA
        assert [i.identifier for i in manager.loaded()] == [LLAMA]
    # The same SDK with another token is turned away: what got in above was the configured token.
    monkeypatch.setenv("LM_API_TOKEN", WRONG)
    with pytest.raises(errors.AuthRequired, match="rejected the API token"):
        with management.connect() as manager:
            manager.loaded()


def test_unknown_formats_and_types_from_a_server_are_listed_where_the_sdk_parser_fails(lmstudio):
    lmstudio.add_foreign_model("intel/qwen-ov", type="llm", format="openvino")
    lmstudio.add_foreign_model("pub/painter", type="image-gen", format="safetensors")
    # lmstudio 1.5's typed `list_downloaded_models()` raises on both; the raw listing read here does not.
    with management.connect() as manager:
        models = {m.key: m for m in manager.downloaded()}
    assert (models["intel/qwen-ov"].format, models["intel/qwen-ov"].type) == ("openvino", "llm")
    assert (models["pub/painter"].type, models["pub/painter"].namespace) == ("image-gen", None)
    assert LLAMA in models


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_WIRE_KEYS = ["type", "modelKey", "format", "displayName", "sizeBytes", "maxContextLength", "paramsString",
              "architecture", "vision", "trainedForToolUse", "path", "variants", "selectedVariant",
              # and /api/v1/models' names, for the REST reader below
              "size_bytes", "max_context_length", "params_string", "display_name", "capabilities", "selected_variant"]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(_WIRE_KEYS), _JSON))
def test_any_listing_entry_is_read_or_skipped_never_fatal(raw):
    from llm_lmstudio.management import rest

    model = sdk.model_from_wire(raw)
    assert model is None or (isinstance(model.key, str) and isinstance(model.size_bytes, int))
    v1 = {("key" if k == "modelKey" else k): v for k, v in raw.items()}
    for item in rest._models({"models": [v1]}):
        assert isinstance(rest.model_from_v1(item).format, str)
