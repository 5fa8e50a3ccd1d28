"""Model management: list downloaded and loaded models, estimate, load, unload, through the `lmstudio` SDK.
`lmstudio` is imported only inside functions here, and no SDK exception or `ws://` address ever leaves this module.

Over 450 lines because it holds the one SDK session (connection, deadlines, error translation) and the
data every management command shares; the REST fallback and downloads live in management_rest.py and downloads.py.
"""

from __future__ import annotations

import difflib
import inspect
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from . import server
from . import settings

# Token support in the SDK (`Client(api_host, api_token=...)`) arrived in lmstudio 1.6.
TOKEN_SDK_VERSION = "1.6"
# Listing and unloading answer at once; only a load may legitimately go quiet for long (LMSTUDIO_TIMEOUT).
RPC_TIMEOUT = 30.0
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


def _ttl_remaining(raw: dict, now: float) -> float | None:
    ttl_ms, last_used_ms = raw.get("ttlMs"), raw.get("lastUsedTime")
    if not isinstance(ttl_ms, (int, float)) or not isinstance(last_used_ms, (int, float)):
        return None
    return round(max(0.0, ttl_ms / 1000 - (now - last_used_ms / 1000)), 1)


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def instance_from_wire(namespace: str, raw: dict, now: float | None = None) -> LoadedInstance:
    """Read an SDK ModelInstanceInfo; newer servers add `ttlMs` and `lastUsedTime` (lmstudio-js)."""
    now = time.time() if now is None else now
    ttl_ms = raw.get("ttlMs")
    return LoadedInstance(
        identifier=str(raw.get("identifier")),
        model=str(raw.get("modelKey")),
        type=model_type(namespace, bool(raw.get("vision"))),
        format=display_format(raw.get("format")),
        size_bytes=_int(raw.get("sizeBytes")),
        context_length=_int(raw.get("contextLength")),
        max_context_length=_int(raw.get("maxContextLength")),
        ttl=ttl_ms / 1000 if isinstance(ttl_ms, (int, float)) else None,
        ttl_remaining=_ttl_remaining(raw, now),
        status=str(raw.get("status") or "loaded"),
    )


def model_from_wire(raw: dict) -> DownloadedModel | None:
    """Read one SDK ModelInfo from the raw listing. The SDK's own parser raises on any format or type it
    does not know (newer LM Studio lists e.g. `openvino`); here those are kept and shown as they come."""
    key = raw.get("modelKey")
    if not isinstance(key, str) or not key:
        return None
    variants = raw.get("variants")
    selected = raw.get("selectedVariant")
    return DownloadedModel(
        key=key,
        type=model_type(raw.get("type"), bool(raw.get("vision"))),
        format=display_format(raw.get("format")),
        display_name=str(raw.get("displayName") or key),
        params=raw.get("paramsString") if isinstance(raw.get("paramsString"), str) else None,
        arch=raw.get("architecture") if isinstance(raw.get("architecture"), str) else None,
        size_bytes=_int(raw.get("sizeBytes")),
        max_context_length=_int(raw.get("maxContextLength")),
        path=str(raw.get("path") or ""),
        tool_use=raw.get("trainedForToolUse") is True,
        variants=[v for v in variants if isinstance(v, str)] if isinstance(variants, list) else [],
        selected_variant=selected if isinstance(selected, str) else None,
    )


def estimate_from_wire(key: str, load: LoadSettings, raw: Any) -> Estimate:
    memory = raw.get("memory") if isinstance(raw, dict) else None
    if not isinstance(memory, dict):
        raise ManagementError("LM Studio answered the memory estimate with an unexpected shape")
    return Estimate(
        model=key,
        context_length=load.context_length,
        gpu=load.gpu,
        total_bytes=_int(memory.get("totalBytes")),
        model_bytes=_int(memory.get("modelBytes")),
        context_bytes=_int(memory.get("contextBytes")),
        gpu_bytes=_int(memory.get("totalVramBytes")),
        confidence=str(memory.get("confidence") or "low"),
        fits=raw.get("passesGuardrails") is True,
    )


def sdk_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lmstudio")
    except PackageNotFoundError:
        return None


def sdk_supports_token() -> bool:
    """Whether the installed SDK can send an API token (`Client(..., api_token=...)`)."""
    return "api_token" in inspect.signature(_lms().Client).parameters


def _lms():
    try:
        import lmstudio
    except ImportError:
        raise ManagementError(
            "Model management needs the lmstudio SDK: install it with `llm install lmstudio`"
        ) from None
    return lmstudio


def _first_line(text: Any) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return " ".join(line.split())
    return ""


class _Params(dict):
    """A raw RPC parameter: the SDK's remote_call sends `params.to_dict()`, and has no struct for newer endpoints."""

    def to_dict(self) -> dict:
        return dict(self)


# ---------------------------------------------------------------- SDK errors -> one line


def auth_error(base_url: str, token: str | None, token_sent: bool) -> server.AuthRequired:
    if token and token_sent:
        return server.AuthRequired(
            f"LM Studio at {base_url} rejected the API token: check it with `llm keys set lmstudio` (or $LM_API_TOKEN)"
        )
    return server.AuthRequired(
        f"LM Studio at {base_url} requires an API token: run `llm keys set lmstudio` or set $LM_API_TOKEN"
    )


def server_error(exc: Any, base_url: str, token: str | None, token_sent: bool) -> server.LMStudioError:
    """An `lmstudio.LMStudioServerError` (LM Studio's SerializedLMSExtendedError) as one of our errors."""
    details = getattr(exc, "server_error", None)
    title = _first_line(getattr(details, "title", None) or str(exc))
    cause = getattr(details, "cause", None)
    display = getattr(details, "display_data", None) or {}
    code = display.get("code") if isinstance(display, dict) else None
    text = str(exc)
    if text.startswith("Authentication failed"):
        return auth_error(base_url, token, token_sent)
    if code in ("generic.pathNotFound", "generic.noModelMatchingQuery", "generic.identifierNotFound"):
        return UnknownModel(f"LM Studio at {base_url}: {title}")
    if code == "generic.domainMismatch":
        return LoadRefused(f"LM Studio at {base_url}: {title}")
    if "already" in title.lower() and "identifier" in title.lower():
        return DuplicateIdentifier(f"LM Studio at {base_url}: {title}")
    if text.startswith(("Model load error", "Model get/load error")):
        reason = f"{title} ({_first_line(cause)})" if cause else title
        return LoadRefused(f"LM Studio refused to load the model: {reason}")
    return ManagementError(f"LM Studio at {base_url}: {title}")


def sdk_error(exc: BaseException, base_url: str, token: str | None, token_sent: bool, waited: float) -> server.LMStudioError:
    """Any exception from an SDK call as one of our errors: one line, no `ws://`, never the token."""
    lms = _lms()
    if isinstance(exc, server.LMStudioError):
        return exc
    if isinstance(exc, (lms.LMStudioTimeoutError, TimeoutError)):
        return server.timed_out(base_url, waited)
    if isinstance(exc, lms.LMStudioServerError):
        return server_error(exc, base_url, token, token_sent)
    if isinstance(exc, lms.LMStudioWebsocketError):
        # The SDK says "ws://host:port/llm"; users know the http address they configured.
        return server.unreachable(base_url)
    if isinstance(exc, lms.LMStudioClientError):
        if "not reachable" in str(exc):
            return server.unreachable(base_url)
        return ManagementError(f"LM Studio at {base_url}: {server.redact(_first_line(exc), token)}")
    if isinstance(exc, lms.LMStudioValueError) and token:
        # lmstudio 1.6 checks the token's shape before sending it.
        return server.AuthRequired(
            "The configured LM Studio API token is malformed (expected sk-lm-…): check `llm keys set lmstudio`"
        )
    if type(exc).__module__.startswith("httpx"):
        # The SDK's own probe of /lmstudio-greeting (httpx, 1 s) raised instead of answering False.
        if "Timeout" in type(exc).__name__:
            return server.TimedOut(f"LM Studio at {base_url} accepted the connection but did not answer")
        return server.unreachable(base_url)
    if isinstance(exc, (ConnectionError, OSError)):
        return server.unreachable(base_url)
    return ManagementError(f"LM Studio at {base_url}: {_first_line(server.redact(repr(exc), token))}")


# ---------------------------------------------------------------- the SDK session


class SdkSession:
    """One SDK connection to one LM Studio server: raw listings, estimate, load, unload."""

    def __init__(self, target: settings.Server, token: str | None):
        self.server = target
        self.base_url = target.base_url
        self.token = token
        self.timeouts = settings.timeouts()
        self._client = None
        self.token_sent = False
        self._connected: set[str] = set()
        self._wait = min(self.timeouts.read, RPC_TIMEOUT)

    def open(self) -> "SdkSession":
        lms = _lms()
        host = self.server.host_port
        try:
            # Probe /lmstudio-greeting first, so "not running" is reported before anything else.
            if not self._bounded(lambda: lms.Client.is_valid_api_host(host), "answer"):
                raise server.unreachable(self.base_url)
            if self.token and sdk_supports_token():
                self._client = lms.Client(host, api_token=self.token)
                self.token_sent = True
            else:
                self._client = lms.Client(host)
        except Exception as exc:
            raise self._translate(exc) from None
        return self

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a half-dead connection must not mask the real error
                pass

    def _translate(self, exc: BaseException) -> server.LMStudioError:
        return sdk_error(exc, self.base_url, self.token, self.token_sent, self._wait)

    def _bounded(self, func: Callable[[], Any], what: str) -> Any:
        """Run a step whose wait the SDK does not bound (probe, websocket handshake) under our own deadline."""
        outcome: dict[str, Any] = {}

        def run():
            try:
                outcome["value"] = func()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                outcome["error"] = exc

        worker = threading.Thread(target=run, name="lmstudio-sdk-connect", daemon=True)
        worker.start()
        limit = self.timeouts.connect + 10.0
        worker.join(limit)
        if worker.is_alive():
            raise server.TimedOut(
                f"LM Studio at {self.base_url} accepted the connection but did not {what} within {limit:g} s"
            )
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def _session(self, namespace: str):
        client = self._client
        if client is None:
            raise ManagementError("internal error: the LM Studio SDK session is not open")
        session = {
            "llm": client.llm, "embedding": client.embedding, "system": client.system, "repository": client.repository,
        }[namespace]
        if namespace not in self._connected:
            self._bounded(session.connect, "complete the SDK handshake")
            self._connected.add(namespace)
        return session

    def call(self, namespace: str, method: Callable[[Any], Any], *, wait: float | None = None) -> Any:
        """Run one SDK call on a namespace's session; `wait` bounds the silence between server messages."""
        self._wait = wait if wait is not None else min(self.timeouts.read, RPC_TIMEOUT)
        try:
            _lms().set_sync_api_timeout(self._wait)
            return method(self._session(namespace))
        except server.LMStudioError:
            raise
        except Exception as exc:
            raise self._translate(exc) from None

    def rpc(self, namespace: str, endpoint: str, params: dict | None = None, **kwargs) -> Any:
        return self.call(namespace, lambda s: s.remote_call(endpoint, _Params(params) if params else None), **kwargs)

    # -- the operations Manager needs ---------------------------------------------------------

    def loaded(self) -> list[LoadedInstance]:
        now = time.time()
        instances = []
        for namespace in ("llm", "embedding"):
            # The raw listing keeps fields newer servers add (ttlMs, lastUsedTime) that typed handles drop.
            raw = self.rpc(namespace, "listLoaded") or []
            instances.extend(instance_from_wire(namespace, item, now) for item in raw if isinstance(item, dict))
        return instances

    def downloaded(self) -> list[DownloadedModel]:
        raw = self.rpc("system", "listDownloadedModels") or []
        return [m for m in (model_from_wire(item) for item in raw if isinstance(item, dict)) if m is not None]

    def variants(self, key: str) -> list[DownloadedModel]:
        raw = self.rpc("system", "listDownloadedModelVariants", {"modelKey": key}) or []
        return [m for m in (model_from_wire(item) for item in raw if isinstance(item, dict)) if m is not None]

    def estimate(self, key: str, namespace: str, load: LoadSettings) -> Estimate:
        stack = {"layers": [{"layerName": "apiOverride", "config": {"fields": load.kv_fields(namespace)}}]}
        raw = self.rpc(namespace, "estimateModelUsage", {"modelKey": key, "loadConfigStack": stack})
        return estimate_from_wire(key, load, raw)

    def search(self, term: str, limit: int) -> list[dict]:
        """LM Studio's catalog / Hugging Face search (lmstudio-python _SyncSessionRepository.search_models)."""
        raw = self.rpc("repository", "searchModels", {"opts": {"searchTerm": term, "limit": limit}})
        return [r for r in (raw or {}).get("results") or [] if isinstance(r, dict)]

    def download_options(self, identifier: dict) -> list[dict]:
        """The files a search result offers (AvailableModel.get_download_options): size, quantization, fit."""
        raw = self.rpc("repository", "getModelDownloadOptions", {"modelSearchResultIdentifier": identifier})
        return [r for r in (raw or {}).get("results") or [] if isinstance(r, dict)]

    def load(self, key: str, namespace: str, load: LoadSettings, on_progress) -> str:
        config = load.sdk_config()
        handle = self.call(
            namespace,
            lambda s: s.load_new_instance(
                key, load.identifier, ttl=load.ttl, config=config or None, on_load_progress=on_progress
            ),
            wait=self.timeouts.read,
        )
        return handle.identifier

    def unload(self, identifier: str, namespace: str) -> None:
        self.call(namespace, lambda s: s.unload(identifier))


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
