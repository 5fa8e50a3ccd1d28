"""What model management deals in: downloaded models, loaded instances, load settings, estimates, the one-line
management errors, and matching a name the user typed to a model key. Pure data and helpers: no I/O, no SDK."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from typing import Any

from llm_lmstudio.lmstudio import transport

# Token support in the SDK (`Client(api_host, api_token=...)`) arrived in lmstudio 1.6.
TOKEN_SDK_VERSION = "1.6"
KNOWN_TYPES = ("llm", "vlm", "embedding")


class ManagementError(transport.LMStudioError):
    """A model-management failure; `str()` is one line that says what happened and what to do."""


class AmbiguousModel(ManagementError):
    """The name matches several downloaded models."""

    def __init__(self, message: str, candidates: list[str]):
        super().__init__(message)
        self.candidates = candidates


class UnknownModel(ManagementError, transport.ModelNotFound):
    """No downloaded model (or no loaded instance) matches the name."""


class LoadRefused(ManagementError, transport.ModelLoadFailed):
    """LM Studio knows the model but would not load it (guardrails, bad context length, broken files)."""


class DuplicateIdentifier(LoadRefused):
    """An instance with the requested identifier is already loaded."""


class Unsupported(ManagementError):
    """This server (or the way we must reach it) cannot do what was asked."""


@dataclass
class DownloadedModel:
    key: str
    type: str  # "llm" | "vlm" | "embedding", or a newer LM Studio type shown as it comes
    format: str  # "gguf" | "mlx" | another LM Studio format (e.g. "openvino")
    display_name: str
    params: str | None
    arch: str | None
    size_bytes: int
    max_context_length: int
    path: str
    tool_use: bool
    identifiers: list[str] = field(default_factory=list)  # loaded instances of this model
    variants: list[str] = field(default_factory=list)  # `key@variant` keys; empty when it has none
    selected_variant: str | None = None  # the variant a load of the bare key uses

    @property
    def loaded(self) -> bool:
        return bool(self.identifiers)

    @property
    def namespace(self) -> str | None:
        """The SDK namespace that loads it; None for a type this plugin does not know how to load."""
        return {"llm": "llm", "vlm": "llm", "embedding": "embedding"}.get(self.type)

    def to_json(self) -> dict:
        data = asdict(self)
        data["loaded"] = self.loaded
        return data


@dataclass
class LoadedInstance:
    identifier: str
    model: str  # the model key
    type: str  # "llm" | "vlm" | "embedding"
    format: str
    size_bytes: int
    context_length: int
    max_context_length: int
    ttl: float | None  # idle seconds before LM Studio unloads it; None: never, or not reported
    ttl_remaining: float | None  # None when there is no TTL or the server does not report it
    status: str

    @property
    def namespace(self) -> str:
        return "embedding" if self.type == "embedding" else "llm"

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class LoadSettings:
    """What `llm lmstudio load` may ask of LM Studio 0.4; None leaves LM Studio's default."""

    context_length: int | None = None
    gpu: float | None = None  # offload ratio 0..1
    flash_attention: bool | None = None
    eval_batch_size: int | None = None
    num_experts: int | None = None
    offload_kv_cache: bool | None = None
    ttl: int | None = None
    identifier: str | None = None

    LLM_ONLY = ("flash_attention", "eval_batch_size", "num_experts", "offload_kv_cache")

    def check_for(self, model: "DownloadedModel") -> None:
        if model.namespace is None:
            raise Unsupported(f"{model.key} is a {model.type!r} model, which llm cannot load into LM Studio")
        limit = model.max_context_length
        if self.context_length and limit and self.context_length > limit:
            # LM Studio refuses such a load only once it has started (after the estimate said it fits)
            raise LoadRefused(
                f"--context-length {self.context_length:,} is more than {model.key} takes ({limit:,} tokens, as LM "
                "Studio lists it): nothing was loaded; lower --context-length"
            )
        if model.namespace == "embedding":
            given = [name for name in self.LLM_ONLY if getattr(self, name) is not None]
            if given:
                flags = ", ".join("--" + name.replace("_", "-") for name in given)
                raise Unsupported(f"{flags} only apply to language models; {model.key} is an embedding model")

    def _named(self, names: dict[str, str]) -> dict[str, Any]:
        return {key: getattr(self, name) for name, key in names.items() if getattr(self, name) is not None}

    def sdk_config(self) -> dict:
        """The SDK's load config (lmstudio LlmLoadModelConfig / EmbeddingLoadModelConfig keys)."""
        config = self._named(
            {
                "context_length": "contextLength",
                "flash_attention": "flashAttention",
                "eval_batch_size": "evalBatchSize",
                "num_experts": "numExperts",
                "offload_kv_cache": "offloadKVCacheToGpu",
            }
        )
        if self.gpu is not None:
            config["gpu"] = {"ratio": self.gpu}
        return config

    def rest_fields(self) -> dict:
        """The body fields of LM Studio 0.4's `POST /api/v1/models/load` (docs: developer/rest/load)."""
        return self._named(
            {
                "context_length": "context_length",
                "eval_batch_size": "eval_batch_size",
                "flash_attention": "flash_attention",
                "num_experts": "num_experts",
                "offload_kv_cache": "offload_kv_cache_to_gpu",
            }
        )

    def kv_fields(self, namespace: str) -> list[dict]:
        """The same settings as LM Studio's KV config fields, as `estimateModelUsage` takes them
        (key names: lmstudio-python _kv_config.py SUPPORTED_SERVER_KEYS; lmstudio-js ModelNamespace.ts)."""
        keys = {
            "context_length": f"{namespace}.load.contextLength",
            "gpu": f"{namespace}.load.llama.acceleration.offloadRatio",
            "flash_attention": "llm.load.llama.flashAttention",
            "eval_batch_size": "llm.load.llama.evalBatchSize",
            "num_experts": "llm.load.numExperts",
            "offload_kv_cache": "llm.load.offloadKVCacheToGpu",
        }
        return [{"key": key, "value": getattr(self, name)} for name, key in keys.items() if getattr(self, name) is not None]


@dataclass
class Estimate:
    """LM Studio's memory estimate for a load (lmstudio-js EstimatedResourcesUsage)."""

    model: str
    context_length: int | None
    gpu: float | None
    total_bytes: int
    model_bytes: int
    context_bytes: int
    gpu_bytes: int
    confidence: str  # "high" | "low"
    fits: bool  # passes LM Studio's resource guardrails

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class LoadResult:
    identifier: str
    model: str
    type: str
    context_length: int
    gpu: float | None  # the offload ratio asked for; None: LM Studio's default
    ttl: float | None
    load_seconds: float
    size_bytes: int
    config: dict = field(default_factory=dict)  # the settings sent, as `llm lmstudio load` flags name them
    already_loaded: bool = False  # the model was loaded already and nothing was done (no --new-instance)

    def to_json(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- pure helpers


def display_format(wire_format: Any) -> str:
    # LM Studio runs safetensors models through MLX, and reports them as "safetensors".
    if wire_format == "safetensors":
        return "mlx"
    return str(wire_format).lower() if wire_format else "unknown"


def model_type(wire_type: Any, vision: bool) -> str:
    if wire_type in ("embedding", "embeddings"):
        return "embedding"
    if wire_type in ("llm", "vlm", None):
        return "vlm" if vision or wire_type == "vlm" else "llm"
    return str(wire_type)  # a type newer than this plugin: shown, never fatal


def parse_gpu(value: str) -> float:
    """`off`, `max` or a ratio between 0 and 1, as `lms load --gpu` takes it."""
    text = value.strip().lower()
    if text == "off":
        return 0.0
    if text == "max":
        return 1.0
    try:
        ratio = float(text)
    except ValueError:
        raise ValueError(f"{value!r} is not off, max or a number between 0 and 1") from None
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{value!r} is outside 0..1 (use off, max or a fraction such as 0.5)")
    return ratio


def format_size(size: int | float | None) -> str:
    """Bytes for people, in powers of 1000 as LM Studio shows them ("-" when unknown)."""
    if not size:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def split_variant(name: str) -> tuple[str, str | None]:
    """`publisher/model@q4_k_m` -> (`publisher/model`, `q4_k_m`), as LM Studio spells variant keys."""
    base, sep, variant = name.partition("@")
    return (base, variant) if sep and variant else (name, None)


def instances_of(key: str, loaded: list[LoadedInstance], any_variant: bool) -> list[LoadedInstance]:
    """The loaded instances of the model `key`; of any of its variants when the name given did not pick one."""
    return [i for i in loaded if i.model == key or (any_variant and split_variant(i.model)[0] == key)]


def match_model(name: str, keys: list[str]) -> str:
    """The model key `name` means: exact key, then unique base name, then unique partial match (like `lms`)."""
    wanted = name.strip()
    if wanted.startswith("lmstudio/"):  # accept llm's model id as well as the bare key
        wanted = wanted[len("lmstudio/") :]
    lowered = wanted.lower()
    for key in keys:
        if key.lower() == lowered:
            return key
    by_base = [key for key in keys if key.lower().rsplit("/", 1)[-1] == lowered]
    if len(by_base) == 1:
        return by_base[0]
    partial = by_base or [key for key in keys if lowered in key.lower()]
    if len(partial) == 1:
        return partial[0]
    if partial:
        raise AmbiguousModel(f"{name!r} matches several models: {', '.join(sorted(partial))}", sorted(partial))
    close = difflib.get_close_matches(lowered, [k.lower() for k in keys], n=5, cutoff=0.4)
    suggestions = [k for k in keys if k.lower() in close] or sorted(keys)[:10]
    if not keys:
        raise UnknownModel(f"No model matches {name!r}: LM Studio has no models downloaded")
    raise UnknownModel(f"No model matches {name!r}; available: {', '.join(suggestions)}")
