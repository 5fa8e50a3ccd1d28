"""Native MLX embeddings (mlx-embeddings) with the real all-MiniLM-L6-v2 weights: quality, pooling, batching, CLI."""

import json
import math
import sys

import llm
import numpy as np
import pytest
import sqlite_utils
from click.testing import CliRunner
from llm.cli import cli

from llm_lmstudio.mlx import discovery
from llm_lmstudio.mlx import embeddings

pytestmark = pytest.mark.minilm


@pytest.fixture
def minilm(user_path, tmp_path, monkeypatch, minilm_path):
    (tmp_path / "no-lmstudio").mkdir()  # an empty LM Studio models folder
    monkeypatch.setenv("LMSTUDIO_MODELS_DIR", str(tmp_path / "no-lmstudio"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hub"))
    monkeypatch.setenv("LMSTUDIO_BASE_URL", "http://127.0.0.1:9")
    discovery.add(minilm_path, "minilm")
    return llm.get_embedding_model("mlx/minilm")


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_minilm_is_discovered_as_an_embedding_model(minilm):
    found = discovery.find("minilm")
    assert (found.kind, found.arch) == ("embedding", "bert")
    assert "mlx/minilm" not in [m.model_id for m in llm.get_models()]


def test_similar_sentences_are_closer_than_unrelated_ones(minilm):
    cat, kitten, stocks = minilm.embed_multi(
        ["A cat sits on the mat", "A kitten rests on a rug", "Stock markets fell sharply today"]
    )
    assert len(cat) == 384
    assert cosine(cat, kitten) > cosine(cat, stocks) + 0.2
    assert math.isclose(float(np.linalg.norm(cat)), 1.0, rel_tol=1e-4)


def reference_sentence_transformers(path, text):
    """all-MiniLM-L6-v2 as sentence-transformers computes it (BERT, mean pooling, L2 normalise), in numpy.

    Independent of mlx-embeddings: reads the safetensors weights with safetensors' numpy loader."""
    from math import erf

    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    weights = {k.removeprefix("bert."): v.astype(np.float64) for k, v in load_file(str(path / "model.safetensors")).items()}
    config = json.loads((path / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_padding()  # the shipped tokenizer.json pads to 128; sentence-transformers pads per batch
    ids = tokenizer.encode(text).ids

    def layer_norm(x, prefix):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + config["layer_norm_eps"]) * weights[f"{prefix}.weight"] + weights[f"{prefix}.bias"]

    def linear(x, prefix):
        return x @ weights[f"{prefix}.weight"].T + weights[f"{prefix}.bias"]

    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / math.sqrt(2))))
    heads = config["num_attention_heads"]
    x = (
        weights["embeddings.word_embeddings.weight"][ids]
        + weights["embeddings.position_embeddings.weight"][: len(ids)]
        + weights["embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, "embeddings.LayerNorm")
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        q, k, v = (linear(x, f"{p}.attention.self.{n}").reshape(len(ids), heads, -1).transpose(1, 0, 2) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attended = (scores / scores.sum(-1, keepdims=True)) @ v
        x = layer_norm(x + linear(attended.transpose(1, 0, 2).reshape(len(ids), -1), f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
        x = layer_norm(x + linear(gelu(linear(x, f"{p}.intermediate.dense")), f"{p}.output.dense"), f"{p}.output.LayerNorm")
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def test_pooling_and_normalisation_match_sentence_transformers(minilm, minilm_path):
    text = "A cat sits on the mat"
    ours = np.array(minilm.embed(text))
    reference = reference_sentence_transformers(minilm_path, text)
    assert cosine(ours, reference) > 0.9999
    assert np.abs(ours - reference).max() < 1e-3


def test_padding_in_a_batch_does_not_change_embeddings(minilm):
    texts = ["short", "a considerably longer sentence that needs many more tokens than the first one does", "mid length text"]
    batched = np.array(list(minilm.embed_multi(texts)))
    alone = np.array([minilm.embed(t) for t in texts])
    assert np.abs(batched - alone).max() < 1e-4


def test_batches_run_together_and_the_model_loads_once(minilm, monkeypatch):
    import mlx_embeddings.utils

    embeddings.unload_all()
    loads, batch_sizes = [], []
    original_load = mlx_embeddings.utils.load
    monkeypatch.setattr(mlx_embeddings.utils, "load", lambda *a, **k: loads.append(a) or original_load(*a, **k))
    original_embed = embeddings.EmbeddingRuntime.embed
    monkeypatch.setattr(embeddings.EmbeddingRuntime, "embed", lambda self, texts: batch_sizes.append(len(texts)) or original_embed(self, texts))
    minilm.batch_size = 4  # llm slices embed_multi input into batches of this size
    vectors = list(minilm.embed_multi([f"document number {i}" for i in range(10)]))
    assert len(vectors) == 10
    assert batch_sizes == [4, 4, 2]
    assert len(loads) == 1


def test_truncates_like_sentence_transformers(minilm):
    runtime = embeddings.load_embedding(discovery.find("minilm"))
    assert (runtime.pooling, runtime.normalize, runtime.max_length) == ("mean", True, 256)
    # Longer than BERT's 512 positions: cut to sentence-transformers' 256 tokens, as LM Studio users get.
    encoded = runtime.tokenizer.batch_encode_plus(["word " * 1000], truncation=True, max_length=runtime.max_length)
    assert len(encoded["input_ids"][0]) == 256


def test_embed_multi_into_a_collection_and_search_it(minilm, user_path, tmp_path):
    documents = tmp_path / "docs.json"
    documents.write_text(
        json.dumps(
            [
                {"id": "cat", "content": "A cat sits on the mat"},
                {"id": "stocks", "content": "Stock markets fell sharply today"},
                {"id": "paris", "content": "The capital of France is Paris"},
            ]
        )
    )
    runner = CliRunner()
    result = runner.invoke(cli, ["embed-multi", "docs", str(documents), "-m", "mlx/minilm"])
    assert result.exit_code == 0, result.output
    db = sqlite_utils.Database(str(user_path / "embeddings.db"))
    assert db["embeddings"].count == 3
    similar = runner.invoke(cli, ["similar", "docs", "-c", "A kitten rests on a rug", "-n", "1"])
    assert similar.exit_code == 0, similar.output
    assert json.loads(similar.output.splitlines()[0])["id"] == "cat"


def test_without_the_extra_embedding_says_what_to_install(minilm, monkeypatch):
    embeddings.unload_all()
    monkeypatch.setitem(sys.modules, "mlx_embeddings", None)  # as if `pip install llm-lmstudio-mlx` without the extra
    result = CliRunner().invoke(cli, ["embed", "-m", "mlx/minilm", "-c", "hello"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: mlx/minilm is an embedding model and needs mlx-embeddings, which is not installed: "
        "run `llm install 'llm-lmstudio-mlx[mlx-embeddings]'`\n"
    )


def test_adding_an_embedding_model_without_the_extra_says_what_to_install(user_path, minilm_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlx_embeddings", None)
    result = CliRunner().invoke(cli, ["lmstudio", "mlx", "add", str(minilm_path), "--name", "mini"])
    assert result.exit_code == 0, result.output  # added all the same: it runs once the extra is installed
    assert result.stdout.startswith("Added mlx/mini: embedding model, bert")
    assert result.stderr == (
        "Note: mlx/mini is an embedding model and needs mlx-embeddings, which is not installed: "
        "run `llm install 'llm-lmstudio-mlx[mlx-embeddings]'`\n"
    )
    assert "mlx/mini" in [m.model_id for m in llm.get_embedding_models()]
