import json
import math

import llm
import pytest
import sqlite_utils

from llm_lmstudio.lmstudio import embeddings
from llm_lmstudio.lmstudio.listing import CatalogModel
from tests.helpers import llm_cli as run

MINILM = "lmstudio/test-org/text-embedding-all-minilm-l6-v2"
CAT, KITTEN, STOCKS = "A cat sits on the mat", "A kitten rests on a rug", "Stock markets fell sharply today"


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_vectors_are_put_back_in_input_order():
    body = {"data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}]}
    assert embeddings.vectors_from(body, 2, "http://h:1") == [[1.0], [2.0]]


@pytest.mark.parametrize(
    "body",
    [
        {"data": [{"index": 0, "embedding": [1.0]}]},
        {"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [2.0]}]},
        {"data": [{"index": 5, "embedding": [1.0]}, {"index": 0, "embedding": [2.0]}]},
        {"data": [{"index": 0, "embedding": "nope"}, {"index": 1, "embedding": [2.0]}]},
        {"data": None},
    ],
)
def test_inconsistent_answers_are_errors_not_wrong_vectors(body):
    from llm_lmstudio.lmstudio import errors

    with pytest.raises(errors.BadResponse):
        embeddings.vectors_from(body, 2, "http://h:1")


@pytest.mark.minilm
def test_embedding_models_are_listed_and_real(lmstudio):
    listing = run("embed-models").output
    assert MINILM in listing
    model = llm.get_embedding_model(MINILM)
    cat, kitten, stocks = model.embed_multi([CAT, KITTEN, STOCKS])
    assert len(cat) == 384
    assert cosine(cat, kitten) > cosine(cat, stocks) + 0.2


@pytest.mark.minilm
def test_embed_multi_batches_requests(lmstudio, user_path, tmp_path, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_EMBED_BATCH_SIZE", "8")
    docs = tmp_path / "docs.csv"
    docs.write_text("id,text\n" + "\n".join(f"{i},document number {i} about topic {i % 5}" for i in range(30)))
    lmstudio.clear_requests()
    result = run("embed-multi", "docs", str(docs), "-m", MINILM, "--store")
    assert result.exit_code == 0, result.output
    requests = [r for r in lmstudio.requests() if r["path"] == "/v1/embeddings"]
    assert [r["input_count"] for r in requests] == [8, 8, 8, 6]
    db = sqlite_utils.Database(user_path / "embeddings.db")
    assert db["embeddings"].count == 30
    similar = run("similar", "docs", "-c", "document number 3 about topic 3", "-n", "1")
    assert json.loads(similar.output.splitlines()[0])["id"] == "3"


@pytest.mark.minilm
def test_llm_embed_prints_a_vector(lmstudio):
    result = run("embed", "-m", MINILM, "-c", CAT)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)) == 384


def test_a_chat_model_is_not_an_embedding_model(lmstudio, user_path):
    run("models")
    from llm_lmstudio.lmstudio import catalog
    from llm_lmstudio.core import settings
    from llm_lmstudio.lmstudio.embeddings import LMStudioEmbedding

    entry = next(m for m in catalog.models_for_registration() if m.key == "test-org/tiny-llama")
    model = LMStudioEmbedding(entry, settings.servers()[0])
    with pytest.raises(llm.ModelError, match="not embedding.*llm embed-models"):
        list(model.embed_multi(["hello"]))


def test_no_models_loaded_string_error_is_clear(lmstudio):
    run("models")
    lmstudio.set_fault(
        "status",
        "/v1/embeddings",
        status=400,
        body={"error": "No models loaded. Please load a model in the developer page or use the 'lms load' command."},
    )
    from llm_lmstudio.core import settings
    from llm_lmstudio.lmstudio.embeddings import LMStudioEmbedding

    entry = CatalogModel(key="test-org/text-embedding-all-minilm-l6-v2", type="embeddings")
    model = LMStudioEmbedding(entry, settings.servers()[0])
    with pytest.raises(llm.ModelError, match=r"No models loaded \('test-org/text-embedding-all-minilm-l6-v2' is not loaded and JIT "
                                             r"loading is off\): load it with "
                                             r"`llm lmstudio load test-org/text-embedding-all-minilm-l6-v2`$"):
        model.embed("hello")  # an embedding model: no hint asks whether it is one


def test_over_long_input_reports_lmstudio_message(lmstudio):
    run("models")
    lmstudio.set_fault(
        "status", "/v1/embeddings", status=400,
        body={"error": {"message": "Input length 9000 exceeds the model's context length 512", "code": "context_length_exceeded"}},
    )
    from llm_lmstudio.core import settings
    from llm_lmstudio.lmstudio.listing import CatalogModel
    from llm_lmstudio.lmstudio.embeddings import LMStudioEmbedding

    model = LMStudioEmbedding(CatalogModel(key="m", type="embeddings"), settings.servers()[0])
    with pytest.raises(llm.ModelError, match="exceeds the model's context length"):
        model.embed("word " * 9000)


@pytest.mark.minilm
def test_lmstudio_and_native_paths_agree(lmstudio, minilm_path):
    assert run("lmstudio", "mlx", "add", str(minilm_path), "--name", "minilm").exit_code == 0
    served = llm.get_embedding_model(MINILM)
    native = llm.get_embedding_model("mlx/minilm")
    texts = [CAT, KITTEN, STOCKS, "def add(a, b): return a + b"]
    for text, a, b in zip(texts, served.embed_multi(texts), native.embed_multi(texts)):
        assert cosine(a, b) > 0.99, text
    native_cat, native_kitten, native_stocks = native.embed_multi([CAT, KITTEN, STOCKS])
    assert cosine(native_cat, native_kitten) > cosine(native_cat, native_stocks)
