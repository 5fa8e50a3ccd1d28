"""llm embedding models for LM Studio servers: batched /v1/embeddings requests, results ordered by index.
HTTP only through openai_client.py; errors leave as one-line llm.ModelError."""

from __future__ import annotations

from typing import Iterable, Iterator

import llm

from llm_lmstudio.lmstudio import errors, openai_client
from llm_lmstudio.core import settings
from llm_lmstudio.lmstudio.listing import CatalogModel
from llm_lmstudio.lmstudio.chat import ServedModel, user_error

def vectors_from(body: dict, expected: int, base_url: str) -> list[list[float]]:
    """The embeddings of one /v1/embeddings answer, in input order (LM Studio gives each an index)."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or len(data) != expected:
        count = len(data) if isinstance(data, list) else 0
        raise errors.BadResponse(f"LM Studio at {base_url} returned {count} embeddings for {expected} inputs")
    ordered: list[list[float] | None] = [None] * expected
    for position, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("embedding"), list):
            raise errors.BadResponse(f"LM Studio at {base_url} returned an embedding in an unexpected shape")
        index = item.get("index", position)
        if not isinstance(index, int) or not 0 <= index < expected or ordered[index] is not None:
            raise errors.BadResponse(f"LM Studio at {base_url} returned embeddings with inconsistent indexes")
        vector = item["embedding"]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector):
            raise errors.BadResponse(f"LM Studio at {base_url} returned an embedding that is not a list of numbers")
        ordered[index] = [float(x) for x in vector]
    return ordered  # type: ignore[return-value]


class LMStudioEmbedding(ServedModel, llm.EmbeddingModel):
    supports_text = True
    supports_binary = False

    def __init__(self, entry: CatalogModel, server_: settings.Server):
        super().__init__(entry, server_)
        self.batch_size = settings.embed_batch_size()

    def __str__(self):
        return f"LM Studio embeddings: {self.model_id}"

    def embed_batch(self, items: Iterable[str | bytes], *, key: str | None = None) -> Iterator[list[float]]:
        texts = [item.decode("utf-8", "replace") if isinstance(item, bytes) else item for item in items]
        if not texts:
            return iter(())
        client = openai_client.Client(self.server, token=key)
        try:
            body = client.embeddings({"model": self.entry.key, "input": texts})
            vectors = vectors_from(body, len(texts), self.server.base_url)
        except errors.ModelNotFound as exc:
            # LM Studio's "Model is not embedding" means its own listing disagrees with ours: only then ask
            if "not embedding" in str(exc).lower():
                hint = f" — is {self.entry.key} an embedding model? See `llm embed-models`"
            else:
                hint = "" if isinstance(exc, errors.NotLoaded) else " — `llm embed-models -q lmstudio` lists the embedding models"
            raise user_error(exc, hint) from None
        except errors.LMStudioError as exc:
            raise user_error(exc) from None
        return iter(vectors)
