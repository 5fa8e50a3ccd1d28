"""Which native MLX models llm gets: every model discovery finds, and for an `mlx/` id the running command asks for
that is not one of them, a stand-in that says why in the words the LM Studio models use. Never raises for a model."""

from __future__ import annotations

from llm_lmstudio.core import settings
from llm_lmstudio.core import unavailable as standins
from llm_lmstudio.mlx import discovery

PREFIXES = ("mlx/",)


def register(register, kind: str) -> None:
    """Register the native `kind` ("chat" or "embedding") models, and stand-ins for requested ids that are not."""
    requested = standins.requested_ids(kind, PREFIXES)
    try:
        found, problem = discovery.discover(), None
    except settings.SettingsError as exc:
        found, problem = [], str(exc)
        if not requested:
            standins.notice(f"{problem} (native MLX models are off until then)")
    present = {local.model_id for local in found if local.kind == kind}
    # Names are lower-case: `-m mlx/TL` asks for mlx/tl, so it is registered under that spelling too.
    other_case = {name.lower(): name for name in requested if name not in present and name.lower() in present}
    for local in found:
        if local.kind != kind:
            continue
        aliases = {"aliases": [other_case[local.model_id]]} if local.model_id in other_case else {}
        if kind == "chat":  # the model classes only once there is a native model to register
            from llm_lmstudio.mlx.chat import MLXAsyncChatModel, MLXChatModel

            register(MLXChatModel(local), MLXAsyncChatModel(local), **aliases)
        else:
            from llm_lmstudio.mlx.embeddings import MLXEmbeddingModel

            register(MLXEmbeddingModel(local), **aliases)
    present |= set(other_case.values())
    reasons = {model_id: why_missing(model_id, kind, found, problem) for model_id in requested if model_id not in present}
    standins.register_standins(register, kind, reasons, "MLX (native)", debug=settings.debug())


def why_missing(model_id: str, kind: str, found: list[discovery.LocalModel], problem: str | None) -> str:
    """One line: why `model_id` is not registered as a `kind` model, and what to do (as lmstudio/unavailable.py)."""
    if problem:
        return f"{model_id} is not available: {problem}"
    name = model_id.removeprefix("mlx/")
    if not name:
        return f"{model_id} names no model: use mlx/<name> (`llm lmstudio mlx list` lists them)"
    other = next((local for local in found if local.model_id == model_id), None)
    if other is not None and kind == "chat":
        return f"{model_id} is an embedding model: use it with `llm embed -m {model_id}`"
    if other is not None:
        return f"{model_id} is a chat model, not an embedding model: `llm embed-models` lists the embedding models"
    return (
        f"{model_id} is not available: no native MLX model is called {name} (`llm lmstudio mlx list` shows the models "
        "found on disk; `llm lmstudio mlx add PATH` adds a folder)"
    )
