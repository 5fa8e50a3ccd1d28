"""Model management as the commands see it: what is downloaded and loaded, estimates, loads and unloads, on one
server, over the SDK or LM Studio's REST API. It never imports `lmstudio`: every SDK call is in management_sdk.py."""

# The guide's "all SDK calls in management.py" reads here as "one SDK module": management_sdk.py is that module,
# management_rest.py the REST fallback through server.py, and this one the vocabulary and choice between them.
# Over ~450 lines because that vocabulary (the dataclasses both backends fill and every command reads, the
# pure helpers and the one-line errors) sits with the Manager that uses it; both backends import it from here.

from __future__ import annotations

import difflib
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from . import server
from . import settings

# Token support in the SDK (`Client(api_host, api_token=...)`) arrived in lmstudio 1.6.
TOKEN_SDK_VERSION = "1.6"
KNOWN_TYPES = ("llm", "vlm", "embedding")


class ManagementError(server.LMStudioError):
    """A model-management failure; `str()` is one line that says what happened and what to do."""


class AmbiguousModel(ManagementError):
    """The name matches several downloaded models."""

    def __init__(self, message: str, candidates: list[str]):
        super().__init__(message)
        self.candidates = candidates


class UnknownModel(ManagementError, server.ModelNotFound):
    """No downloaded model (or no loaded instance) matches the name."""


class LoadRefused(ManagementError, server.ModelLoadFailed):
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


# ---------------------------------------------------------------- what the commands use


class Manager:
    """Model management on one LM Studio server, over the SDK, or over LM Studio 0.4's REST API when the
    server wants a token that the installed SDK cannot send. Use `with connect(...) as manager:`."""

    def __init__(self, target: settings.Server, token: str | None = None):
        self.server = target
        self.base_url = target.base_url
        self.token = token
        self.backend: Any = None
        self.via = "sdk"  # "sdk" | "rest"

    def open(self) -> "Manager":
        if self.base_url.startswith("https://"):
            raise ManagementError(
                f"LM Studio at {self.base_url} is served over https, which the lmstudio SDK cannot reach: "
                "model management needs LM Studio's plain http address (host:port)"
            )
        from .management_sdk import SdkSession

        session = SdkSession(self.server, self.token).open()
        if self.token and not session.token_sent:
            # This SDK cannot send the token: if the server insists on one, manage over REST with it.
            try:
                session.rpc("system", "listDownloadedModels")
            except server.AuthRequired:
                session.close()
                from .management_rest import RestSession

                self.backend, self.via = RestSession(self.server, self.token), "rest"
                return self
            except Exception:
                session.close()
                raise
        self.backend = session
        return self

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()

    def __enter__(self) -> "Manager":
        return self.open()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- queries -----------------------------------------------------------------------------

    def loaded(self) -> list[LoadedInstance]:
        return self.backend.loaded()

    def downloaded(self, namespace: str | None = None) -> list[DownloadedModel]:
        identifiers: dict[str, list[str]] = {}
        for instance in self.loaded():
            identifiers.setdefault(instance.model, []).append(instance.identifier)
        models = []
        for model in self.backend.downloaded():
            if namespace is not None and (model.type == "embedding") != (namespace == "embedding"):
                continue
            model.identifiers = identifiers.get(model.key, [])
            models.append(model)
        return models

    def variants(self, model: DownloadedModel) -> list[DownloadedModel]:
        """Each downloaded variant of `model` (`key@quant`), as LM Studio describes it."""
        if not model.variants:
            return []
        return self.backend.variants(model.key)

    def resolve(self, name: str) -> tuple[DownloadedModel, str]:
        """The downloaded model `name` means, and the key to load: `key@variant` picks a variant."""
        base, variant = split_variant(name)
        models = self.downloaded()
        key = match_model(base, [m.key for m in models])
        model = next(m for m in models if m.key == key)
        if variant is None:
            return model, model.key
        wanted = f"{model.key}@{variant}".lower()
        for candidate in model.variants:
            if candidate.lower() == wanted:
                return model, candidate
        known = ", ".join(v.partition("@")[2] for v in model.variants)
        raise UnknownModel(
            f"{model.key} has no variant {variant!r}; " + (f"downloaded: {known}" if known else "it has no variants")
        )

    # -- changes -----------------------------------------------------------------------------

    def estimate(self, name: str, load: LoadSettings) -> Estimate:
        model, key = self.resolve(name)
        load.check_for(model)
        return self.backend.estimate(key, model.namespace, load)

    def load(
        self, name: str, load: LoadSettings | None = None, on_progress: Callable[[float], Any] | None = None
    ) -> LoadResult:
        """Load a new instance of the model `name` matches, refusing first what LM Studio estimates will not fit.
        Without a TTL it stays until unloaded, as with `lms load`."""
        load = load or LoadSettings()
        model, key = self.resolve(name)
        load.check_for(model)
        try:
            estimate = self.backend.estimate(key, model.namespace, load)
        except (Unsupported, ManagementError):
            estimate = None  # an older LM Studio cannot estimate: its own guardrails still refuse at load time
        if estimate is not None and not estimate.fits:
            raise LoadRefused(refusal(estimate, model))
        started = time.perf_counter()
        identifier = self.backend.load(key, model.namespace, load, on_progress)
        seconds = time.perf_counter() - started
        instance = next((i for i in self.loaded() if i.identifier == identifier), None)
        return LoadResult(
            identifier=identifier,
            model=key,
            type=model.type,
            context_length=instance.context_length if instance else (load.context_length or 0),
            gpu=load.gpu,
            ttl=instance.ttl if instance and instance.ttl is not None else (float(load.ttl) if load.ttl else None),
            load_seconds=round(seconds, 3),
            size_bytes=model.size_bytes,
            config={k: v for k, v in asdict(load).items() if v is not None},
        )

    def unload(self, identifier: str) -> LoadedInstance:
        loaded = self.loaded()
        instance = next((i for i in loaded if i.identifier == identifier), None)
        if instance is None:
            if not loaded:
                raise UnknownModel(f"No model with identifier {identifier!r} is loaded: nothing is loaded")
            names = ", ".join(i.identifier for i in loaded)
            raise UnknownModel(f"No model with identifier {identifier!r} is loaded; loaded: {names}")
        self.backend.unload(identifier, instance.namespace)
        return instance

    def unload_all(self) -> list[LoadedInstance]:
        unloaded = []
        for instance in self.loaded():
            try:
                self.backend.unload(instance.identifier, instance.namespace)
            except UnknownModel:
                continue  # its idle TTL ran out while we were unloading the others
            unloaded.append(instance)
        return unloaded


def refusal(estimate: Estimate, model: DownloadedModel) -> str:
    size = format_size
    parts = f"model {size(estimate.model_bytes)} + context {size(estimate.context_bytes)}"
    advice = "lower --context-length"
    if estimate.gpu is None or estimate.gpu > 0:
        advice += ", lower --gpu"
    if len(model.variants) > 1:
        advice += ", pick a smaller variant (`llm lmstudio ls --variants`)"
    return (
        f"{estimate.model} would need about {size(estimate.total_bytes)} ({parts}), more than LM Studio's "
        f"resource guardrails allow: nothing was loaded; {advice}, or relax the guardrails in LM Studio's settings"
    )


def pick_server(address: str | None = None) -> settings.Server:
    """The configured server that `address` names (host:port or URL); the first configured one by default."""
    servers = settings.servers()
    if not address:
        return servers[0]
    url = settings.normalize_base_url(address, source="--server")
    for candidate in servers:
        if candidate.base_url == url:
            return candidate
    # Not configured: its models are not registered with llm, but it can still be managed.
    return settings.Server(base_url=url, prefix=f"lmstudio@{urlsplit(url).netloc}")


@contextmanager
def connect(address: str | None = None) -> Iterator[Manager]:
    """An open management session to the server `address` names, with the configured token."""
    manager = Manager(pick_server(address), token=settings.api_token())
    with manager:
        yield manager


def refresh_catalog() -> None:
    """Re-read the model list so `llm models` is right at once after a load or unload."""
    from . import catalog

    try:
        catalog.refresh()
    except server.LMStudioError:
        pass  # a stale list corrects itself when its cache expires
