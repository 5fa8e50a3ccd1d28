"""Native MLX embedding models, run inside the llm process with mlx-embeddings (the optional extra).
Imports mlx* only inside functions; loads each model once per process; never touches the network."""

from __future__ import annotations

import json
from pathlib import Path

import llm

from llm_lmstudio.mlx.discovery import LocalModel
from llm_lmstudio.mlx.loading import NativeModelError, load_once, model_error

_EMBED: dict[str, "EmbeddingRuntime"] = {}
# mlx-embeddings is an extra because it pulls in mlx-vlm -> datasets -> pandas + pyarrow, and sqlite-utils
# imports pandas whenever it is installed: about 0.4 s on every `llm` command (benchmarks/bench_startup.py).
INSTALL_COMMAND = "llm install 'llm-lmstudio-mlx[mlx-embeddings]'"


def missing_engine(model_id: str) -> str | None:
    """The one line to show when mlx-embeddings is not installed, else None (checked without importing it)."""
    from importlib.util import find_spec

    if find_spec("mlx_embeddings") is not None:
        return None
    return f"{model_id} is an embedding model and needs mlx-embeddings, which is not installed: run `{INSTALL_COMMAND}`"


def unload_all() -> None:
    """Drop every loaded embedding model (tests and benchmarks use this to measure a cold start)."""
    _EMBED.clear()


class EmbeddingRuntime:
    """A loaded mlx-embeddings model with sentence-transformers' pooling and normalisation for that model."""

    def __init__(self, local: LocalModel, model, tokenizer):
        self.local = local
        self.model = model
        self.tokenizer = tokenizer
        self.pooling, self.normalize, self.max_length = _sentence_transformers_config(local.path)
        if self.max_length is None:
            limit = getattr(tokenizer, "model_max_length", None)
            self.max_length = limit if isinstance(limit, int) and 0 < limit < 100_000 else 512

    def embed(self, texts: list[str]) -> list[list[float]]:
        import mlx.core as mx

        encoded = self.tokenizer.batch_encode_plus(
            texts, return_tensors="mlx", padding=True, truncation=True, max_length=self.max_length
        )
        mask = encoded["attention_mask"]
        output = self.model(encoded["input_ids"], attention_mask=mask)
        if self.pooling is None or (self.pooling == "mean" and self.normalize and output.text_embeds is not None):
            # mlx-embeddings' text_embeds is exactly sentence-transformers' mean pooling + L2 normalise.
            vectors = output.text_embeds
        else:
            hidden = output.last_hidden_state
            weights = mask[..., None].astype(hidden.dtype)
            if self.pooling == "cls":
                vectors = hidden[:, 0]
            elif self.pooling == "max":
                vectors = mx.where(weights > 0, hidden, -1e9).max(axis=1)
            elif self.pooling == "lasttoken":
                last = mask.sum(axis=1).astype(mx.int32) - 1  # right padding: the last real token
                vectors = hidden[mx.arange(hidden.shape[0]), last]
            else:
                vectors = (hidden * weights).sum(axis=1) / mx.maximum(weights.sum(axis=1), 1e-9)
            if self.normalize:
                vectors = vectors / mx.maximum(mx.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
        return vectors.astype(mx.float32).tolist()


def _sentence_transformers_config(path: Path) -> tuple[str | None, bool, int | None]:
    """(pooling mode, normalise?, max_seq_length) as sentence-transformers would use them; pooling None when absent."""
    try:
        modules = json.loads((path / "modules.json").read_text())
    except (OSError, ValueError):
        return None, True, None
    pooling, normalize = "mean", False
    for module in modules if isinstance(modules, list) else []:
        kind = str(module.get("type", ""))
        if kind.endswith("Normalize"):
            normalize = True
        elif kind.endswith("Pooling"):
            try:
                config = json.loads((path / module.get("path", "") / "config.json").read_text())
            except (OSError, ValueError):
                config = {}
            flags = {
                "cls": "pooling_mode_cls_token",
                "max": "pooling_mode_max_tokens",
                "lasttoken": "pooling_mode_lasttoken",
                "mean": "pooling_mode_mean_tokens",
            }
            pooling = next((mode for mode, flag in flags.items() if config.get(flag)), "mean")
    try:
        max_length = json.loads((path / "sentence_bert_config.json").read_text()).get("max_seq_length")
    except (OSError, ValueError, AttributeError):
        max_length = None
    return pooling, normalize, max_length if isinstance(max_length, int) else None


def load_embedding(local: LocalModel) -> EmbeddingRuntime:
    """The loaded embedding model for `local`, loading it on first use."""
    problem = missing_engine(local.model_id)
    if problem:
        raise NativeModelError(problem)

    def make():
        from mlx_embeddings.utils import load

        model, tokenizer = load(str(local.path))
        return EmbeddingRuntime(local, model, tokenizer)

    return load_once(_EMBED, local, "mlx-embeddings", make)


class MLXEmbeddingModel(llm.EmbeddingModel):
    """A native MLX embedding model: `mlx-embeddings` in this process, batches padded and run together."""

    supports_text = True
    supports_binary = False
    batch_size = 32

    def __init__(self, local: LocalModel):
        self.local = local
        self.model_id = local.model_id

    def __str__(self):
        return f"MLX (native) embeddings: {self.model_id}"

    def embed_batch(self, items):
        runtime = load_embedding(self.local)
        texts = [item if isinstance(item, str) else item.decode("utf-8", "replace") for item in items]
        try:
            return runtime.embed(texts)
        except Exception as exc:
            raise model_error(self.local, exc, "running", engine="mlx-embeddings") from exc
