"""llm embedding models for LM Studio servers: batched /v1/embeddings requests, results ordered by index.
HTTP only through server.py; errors leave as one-line llm.ModelError."""

from __future__ import annotations

from typing import Iterable, Iterator

import click
import llm

from . import server as http
from . import settings
from .catalog import CatalogModel

def vectors_from(body: dict, expected: int, base_url: str) -> list[list[float]]:
    """The embeddings of one /v1/embeddings answer, in input order (LM Studio gives each an index)."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or len(data) != expected:
        count = len(data) if isinstance(data, list) else 0
        raise http.BadResponse(f"LM Studio at {base_url} returned {count} embeddings for {expected} inputs")
    ordered: list[list[float] | None] = [None] * expected
    for position, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("embedding"), list):
            raise http.BadResponse(f"LM Studio at {base_url} returned an embedding in an unexpected shape")
        index = item.get("index", position)
        if not isinstance(index, int) or not 0 <= index < expected or ordered[index] is not None:
            raise http.BadResponse(f"LM Studio at {base_url} returned embeddings with inconsistent indexes")
        vector = item["embedding"]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector):
            raise http.BadResponse(f"LM Studio at {base_url} returned an embedding that is not a list of numbers")
        ordered[index] = [float(x) for x in vector]
    return ordered  # type: ignore[return-value]


class EmbeddingError(llm.ModelError, click.ClickException):
    """A failed embedding request. `llm embed` and `llm embed-multi` do not catch model errors the way
    `llm prompt` does, so the error is also a ClickException: click prints its one line and exits 1."""

    def __init__(self, message: str):
        click.ClickException.__init__(self, message)


class LMStudioEmbedding(llm.EmbeddingModel):
    supports_text = True
    supports_binary = False

    def __init__(self, entry: CatalogModel, server_: settings.Server):
        self.entry = entry
        self.server = server_
        self.model_id = server_.model_id(entry.key)
        self.batch_size = settings.embed_batch_size()

    def __str__(self):
        return f"LM Studio embeddings: {self.model_id}"

    def embed_batch(self, items: Iterable[str | bytes]) -> Iterator[list[float]]:
        texts = [item.decode("utf-8", "replace") if isinstance(item, bytes) else item for item in items]
        if not texts:
            return iter(())
        client = http.Client(self.server, token=settings.api_token())
        try:
            body = client.post_json("/v1/embeddings", {"model": self.entry.key, "input": texts})
            vectors = vectors_from(body, len(texts), self.server.base_url)
        except http.ModelNotFound as exc:
            raise EmbeddingError(f"{exc} — is {self.entry.key} an embedding model? See `llm embed-models`") from None
        except http.LMStudioError as exc:
            raise EmbeddingError(str(exc)) from None
        return iter(vectors)
