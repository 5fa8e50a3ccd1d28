"""What LM Studio's model listings say, parsed defensively: `/api/v0/models`, `/api/v1/models` (LM Studio 0.4) and the
OpenAI-compatible `/v1/models`, each into CatalogModel (pure functions: no I/O; catalog.py fetches and caches)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EMBEDDING_TYPES = {"embeddings", "embedding"}


@dataclass
class CatalogModel:
    """One model as LM Studio describes it (fields LM Studio does not report stay None)."""

    key: str
    type: str = "llm"  # "llm" | "vlm" | "embeddings"
    base_url: str = ""
    prefix: str = "lmstudio"
    arch: str | None = None
    format: str | None = None  # "gguf" | "mlx"
    quantization: str | None = None
    loaded: bool = False
    max_context_length: int | None = None
    loaded_context_length: int | None = None
    tool_use: bool | None = None  # trained for tool use; None: the server did not say (before 0.3.16)
    vision: bool = False
    reasoning: bool = False
    display_name: str | None = None
    size_bytes: int | None = None
    params_string: str | None = None
    instances: list[str] = field(default_factory=list)
    variants: list[str] = field(default_factory=list)  # /api/v1/models (0.4+): "key@quantization" names
    selected_variant: str | None = None
    reasoning_options: list[str] = field(default_factory=list)  # capabilities.reasoning.allowed_options
    source: str = "v0"  # which listing it came from: "v0" | "v1" | "openai"

    @property
    def model_id(self) -> str:
        return f"{self.prefix}/{self.key}"

    @property
    def is_embedding(self) -> bool:
        return self.type in EMBEDDING_TYPES

    @property
    def tool_use_kind(self) -> str | None:
        """"native" (LM Studio parses the model's own tool-call format), "default" (LM Studio's prompt-based
        tool use) or None when the listing does not say. Every LM Studio chat model can use tools."""
        if self.tool_use is None:
            return None
        return "native" if self.tool_use else "default"


# ---------------------------------------------------------------- parsers (pure, defensive)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


# The CatalogModel fields each listing reports as they are, by the listing's own name for them:
# (text fields, whole-number fields). The rest need reading (see parse_v0 and parse_v1).
_AS_REPORTED = {
    "v0": (
        {"arch": "arch", "format": "compatibility_type", "quantization": "quantization", "display_name": "display_name"},
        {"max_context_length": "max_context_length", "loaded_context_length": "loaded_context_length"},
    ),
    "v1": (
        {"arch": "architecture", "format": "format", "display_name": "display_name", "params_string": "params_string",
         "selected_variant": "selected_variant"},
        {"max_context_length": "max_context_length", "size_bytes": "size_bytes"},
    ),
}


def _as_reported(item: dict, source: str) -> dict[str, Any]:
    texts, numbers = _AS_REPORTED[source]
    fields: dict[str, Any] = {field: _str(item.get(name)) for field, name in texts.items()}
    fields.update({field: _int(item.get(name)) for field, name in numbers.items()})
    return fields


def _entries(body: Any, key: str, id_field: str) -> list[tuple[str, dict]]:
    """The rows of body[key] that are objects naming a model in id_field, with that name."""
    items = body.get(key) if isinstance(body, dict) else None
    rows = [item for item in _list(items) if isinstance(item, dict)]
    return [(name, item) for item in rows if (name := _str(item.get(id_field)))]


def parse_v0(body: Any) -> list[CatalogModel]:
    """GET /api/v0/models: {"data": [{"id", "type", "state", "capabilities": [...], ...}]}.

    One row per variant (`…@q4_k_m`, `…@q8_0`), each its own model. `capabilities` exists since 0.3.16
    and is left out of rows without native tool use (tests/recorded/v0_models.json): a listing where
    no row has it says nothing about tools."""
    models = []
    entries = _entries(body, "data", "id")
    says_capabilities = any("capabilities" in item for _, item in entries)
    for key, item in entries:
        kind = _str(item.get("type")) or "llm"
        capabilities = item.get("capabilities")
        capabilities = [c for c in capabilities if isinstance(c, str)] if isinstance(capabilities, list) else []
        models.append(
            CatalogModel(
                key=key,
                type="embeddings" if kind in EMBEDDING_TYPES else kind,
                loaded=item.get("state") == "loaded",
                tool_use=("tool_use" in capabilities) if says_capabilities else None,
                vision=kind == "vlm" or "vision" in capabilities,
                reasoning="reasoning" in capabilities,
                source="v0",
                **_as_reported(item, "v0"),
            )
        )
    return models


def parse_v1(body: Any) -> list[CatalogModel]:
    """GET /api/v1/models: {"models": [{"key", "type", "loaded_instances", "capabilities": {...}, ...}]}."""
    models = []
    for key, item in _entries(body, "models", "key"):
        kind = _str(item.get("type")) or "llm"
        capabilities = item.get("capabilities") if isinstance(item.get("capabilities"), dict) else {}
        vision = capabilities.get("vision") is True
        loaded_instances = _list(item.get("loaded_instances"))
        instances = [inst["id"] for inst in loaded_instances if isinstance(inst, dict) and _str(inst.get("id"))]
        loaded_context = None
        for inst in loaded_instances:
            if isinstance(inst, dict) and isinstance(inst.get("config"), dict):
                loaded_context = _int(inst["config"].get("context_length"))
                break
        quantization = item.get("quantization")
        if isinstance(quantization, dict):
            quantization = quantization.get("name")
        reasoning = capabilities.get("reasoning")
        options = reasoning.get("allowed_options") if isinstance(reasoning, dict) else None
        variants = [v for v in _list(item.get("variants")) if isinstance(v, str)]
        models.append(
            CatalogModel(
                key=key,
                type="embeddings" if kind in EMBEDDING_TYPES else ("vlm" if vision and kind == "llm" else kind),
                quantization=_str(quantization),
                loaded=bool(instances),
                loaded_context_length=loaded_context,
                tool_use=capabilities.get("trained_for_tool_use") is True,
                vision=vision,
                reasoning=isinstance(reasoning, dict) or reasoning is True,
                instances=instances,
                variants=variants,
                reasoning_options=[o for o in _list(options) if isinstance(o, str)],
                source="v1",
                **_as_reported(item, "v1"),
            )
        )
    return models


def parse_openai(body: Any) -> list[CatalogModel]:
    """GET /v1/models: {"data": [{"id": ...}]}; no type, so embedding models are recognised by name."""
    models = []
    for key, item in _entries(body, "data", "id"):
        lowered = key.lower()
        kind = "embeddings" if ("embed" in lowered or "minilm" in lowered or "bge-" in lowered) else "llm"
        models.append(CatalogModel(key=key, type=kind, tool_use=None, source="openai"))
    return models


LISTINGS = (("/api/v0/models", parse_v0), ("/api/v1/models", parse_v1), ("/v1/models", parse_openai))


def from_cached(rows: Any) -> list[CatalogModel]:
    """CatalogModels back from the rows catalog.py stored (`asdict` of each); a row of another shape is skipped."""
    models = []
    for raw in _list(rows):
        if not isinstance(raw, dict) or not _str(raw.get("key")):
            continue
        try:
            models.append(CatalogModel(**raw))
        except TypeError:
            continue
    return models
