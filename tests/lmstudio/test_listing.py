"""Specifications for llm_lmstudio.lmstudio.listing: LM Studio's three model listings parsed into CatalogModel."""

import pytest

from llm_lmstudio.lmstudio import listing

V0_BODY = {
    "object": "list",
    "data": [
        {"id": "qwen2-vl-7b-instruct", "object": "model", "type": "vlm", "publisher": "mlx-community", "arch": "qwen2_vl",
         "compatibility_type": "mlx", "quantization": "4bit", "state": "not-loaded", "max_context_length": 32768},
        {"id": "qwen3-4b", "object": "model", "type": "llm", "publisher": "Qwen", "arch": "qwen3",
         "compatibility_type": "gguf", "quantization": "Q4_K_M", "state": "loaded", "max_context_length": 40960,
         "loaded_context_length": 4096, "capabilities": ["tool_use"]},
        {"id": "text-embedding-nomic-embed-text-v1.5", "object": "model", "type": "embeddings", "arch": "nomic-bert",
         "compatibility_type": "gguf", "state": "not-loaded", "max_context_length": 2048},
    ],
}

V1_BODY = {
    "models": [
        {"type": "llm", "key": "google/gemma-4-26b-a4b", "architecture": "gemma4",
         "quantization": {"name": "Q4_K_M", "bits_per_weight": 4}, "size_bytes": 17990911801, "params_string": "26B-A4B",
         "loaded_instances": [{"id": "google/gemma-4-26b-a4b", "config": {"context_length": 4096}}],
         "max_context_length": 262144, "format": "gguf",
         "capabilities": {"vision": True, "trained_for_tool_use": True, "reasoning": {"allowed_options": ["off", "on"]}}},
        {"type": "embedding", "key": "text-embedding-nomic-embed-text-v1.5", "loaded_instances": [],
         "max_context_length": 2048, "format": "gguf"},
    ]
}


def test_v0_listing_gives_types_capabilities_and_state():
    models = {m.key: m for m in listing.parse_v0(V0_BODY)}
    assert models["qwen2-vl-7b-instruct"].vision and models["qwen2-vl-7b-instruct"].tool_use_kind == "default"
    assert models["qwen3-4b"].tool_use_kind == "native" and models["qwen3-4b"].loaded
    assert models["qwen3-4b"].loaded_context_length == 4096
    assert models["text-embedding-nomic-embed-text-v1.5"].is_embedding


def test_v0_listing_before_capabilities_existed_says_nothing_about_tools_and_loading_is_not_loaded():
    # Before 0.3.16 no row has `capabilities`; a row being loaded is not loaded yet.
    rows = [dict(row, state="loading") for row in V0_BODY["data"] if "capabilities" not in row]
    models = listing.parse_v0({"data": rows})
    assert all(m.tool_use_kind is None and not m.loaded for m in models)


def test_v1_listing_accepts_singular_embedding_type_and_capability_object():
    models = {m.key: m for m in listing.parse_v1(V1_BODY)}
    gemma = models["google/gemma-4-26b-a4b"]
    assert gemma.type == "vlm" and gemma.tool_use_kind == "native" and gemma.reasoning and gemma.loaded
    assert gemma.reasoning_options == ["off", "on"]
    assert gemma.instances == ["google/gemma-4-26b-a4b"] and gemma.quantization == "Q4_K_M"
    assert models["text-embedding-nomic-embed-text-v1.5"].is_embedding


def test_openai_listing_guesses_embeddings_by_name_and_says_nothing_of_tools():
    models = {m.key: m for m in listing.parse_openai({"data": [{"id": "qwen2.5-7b"}, {"id": "text-embedding-bge"}]})}
    assert models["text-embedding-bge"].is_embedding
    assert models["qwen2.5-7b"].tool_use_kind is None


@pytest.mark.parametrize(
    "body",
    [None, [], "text", {"data": None}, {"data": [None, 1, "x", {"id": 5}, {"id": ""}]}, {"models": {"key": "x"}}],
)
def test_parsers_skip_garbage(body):
    assert listing.parse_v0(body) == [] and listing.parse_v1(body) == [] and listing.parse_openai(body) == []
