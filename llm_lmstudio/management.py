"""The one SDK client (`lmstudio`, over its websocket): list downloaded and loaded models, load and unload.
`lmstudio` is imported only inside these functions, and no SDK exception or `ws://` address ever leaves this module."""

from __future__ import annotations

import difflib
import inspect
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from . import server as http
from . import settings

# Token support in the SDK (`Client(api_host, api_token=...)`) arrived in lmstudio 1.6.
TOKEN_SDK_VERSION = "1.6"
# Listing and unloading answer at once; only a load may legitimately go quiet for long (LMSTUDIO_TIMEOUT).
RPC_TIMEOUT = 30.0


class ManagementError(http.LMStudioError):
    """A model-management failure; `str()` is one line that says what happened and what to do."""


class AmbiguousModel(ManagementError):
    """The name matches several downloaded models."""

    def __init__(self, message: str, candidates: list[str]):
        super().__init__(message)
        self.candidates = candidates


class UnknownModel(ManagementError, http.ModelNotFound):
    """No downloaded model (or no loaded instance) matches the name."""


class LoadRefused(ManagementError, http.ModelLoadFailed):
    """LM Studio knows the model but would not load it (guardrails, bad context length, broken files)."""


class DuplicateIdentifier(LoadRefused):
    """An instance with the requested identifier is already loaded."""


class TokenUnsupported(ManagementError, http.AuthRequired):
    """The server wants an API token that the installed SDK cannot send."""


@dataclass
class DownloadedModel:
    key: str
    type: str  # "llm" | "vlm" | "embedding"
    format: str  # "gguf" | "mlx" | another LM Studio compatibility type
    display_name: str
    params: str | None
    arch: str | None
    size_bytes: int
    max_context_length: int
    path: str
    tool_use: bool
    identifiers: list[str] = field(default_factory=list)  # loaded instances of this model

    @property
    def loaded(self) -> bool:
        return bool(self.identifiers)

    @property
    def namespace(self) -> str:
        return "embedding" if self.type == "embedding" else "llm"

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
class LoadResult:
    identifier: str
    model: str
    type: str
    context_length: int
    gpu: float | None  # the offload ratio asked for; None: LM Studio's default
    ttl: float | None
    load_seconds: float
    size_bytes: int

    def to_json(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- pure helpers


def display_format(wire_format: str | None) -> str:
    # LM Studio runs safetensors models through MLX, and reports them as "safetensors".
    if wire_format == "safetensors":
        return "mlx"
    return wire_format or "unknown"


def model_type(namespace: str, vision: bool) -> str:
    if namespace == "embedding":
        return "embedding"
    return "vlm" if vision else "llm"


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


def instance_from_wire(namespace: str, raw: dict, now: float | None = None) -> LoadedInstance:
    """Read an SDK ModelInstanceInfo; newer servers add `ttlMs` and `lastUsedTime` (lmstudio-js)."""
    now = time.time() if now is None else now
    ttl_ms = raw.get("ttlMs")
    return LoadedInstance(
        identifier=str(raw.get("identifier")),
        model=str(raw.get("modelKey")),
        type=model_type(namespace, bool(raw.get("vision"))),
        format=display_format(raw.get("format")),
        size_bytes=int(raw.get("sizeBytes") or 0),
        context_length=int(raw.get("contextLength") or 0),
        max_context_length=int(raw.get("maxContextLength") or 0),
        ttl=ttl_ms / 1000 if isinstance(ttl_ms, (int, float)) else None,
        ttl_remaining=_ttl_remaining(raw, now),
        status=str(raw.get("status") or "loaded"),
    )


def sdk_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lmstudio")
    except PackageNotFoundError:
        return None


def sdk_supports_token() -> bool:
    """Whether the installed SDK can send an API token (`Client(..., api_token=...)`)."""
    try:
        import lmstudio
    except ImportError:
        return False
    return "api_token" in inspect.signature(lmstudio.Client).parameters


# ---------------------------------------------------------------- the SDK session


def _lms():
    try:
        import lmstudio
    except ImportError:
        raise ManagementError(
            "Model management needs the lmstudio SDK: install it with `llm install lmstudio`"
        ) from None
    return lmstudio


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return " ".join(line.split())
    return ""


class Manager:
    """One SDK connection to one LM Studio server. Use `with connect(...) as manager:`."""

    def __init__(self, server: settings.Server, token: str | None = None):
        self.server = server
        self.base_url = server.base_url
        self.token = token
        self.timeouts = settings.timeouts()
        self._client = None
        self._token_sent = False
        self._connected: set[str] = set()
        self._wait = min(self.timeouts.read, RPC_TIMEOUT)

    # -- connection --------------------------------------------------------------------------

    def open(self) -> "Manager":
        lms = _lms()
        if self.base_url.startswith("https://"):
            raise ManagementError(
                f"LM Studio at {self.base_url} is served over https, which the lmstudio SDK cannot reach: "
                "model management needs LM Studio's plain http address (host:port)"
            )
        host = self.server.host_port
        try:
            # Probe /lmstudio-greeting first, so "not running" is reported before anything else.
            if not self._bounded(lambda: lms.Client.is_valid_api_host(host), "answer"):
                raise http.unreachable(self.base_url)
            if self.token and sdk_supports_token():
                client = lms.Client(host, api_token=self.token)
                self._token_sent = True
            else:
                client = lms.Client(host)
        except Exception as exc:
            raise self._translate(exc) from None
        self._client = client
        return self

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a half-dead connection must not mask the real error
                pass

    def __enter__(self) -> "Manager":
        return self.open()

    def __exit__(self, *exc_info) -> None:
        self.close()

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
            raise http.TimedOut(
                f"LM Studio at {self.base_url} accepted the connection but did not {what} within {limit:g} s"
            )
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def _session(self, namespace: str):
        client = self._client
        if client is None:
            raise ManagementError("internal error: the LM Studio SDK session is not open")
        session = {"llm": client.llm, "embedding": client.embedding, "system": client.system}[namespace]
        if namespace not in self._connected:
            self._bounded(session.connect, "complete the SDK handshake")
            self._connected.add(namespace)
        return session

    def _call(self, func: Callable[[], Any], *, wait: float | None = None) -> Any:
        """Run one SDK call; `wait` bounds the silence between server messages, so a hung server fails the command."""
        self._wait = wait if wait is not None else min(self.timeouts.read, RPC_TIMEOUT)
        _lms().set_sync_api_timeout(self._wait)
        try:
            return func()
        except http.LMStudioError:
            raise
        except Exception as exc:
            raise self._translate(exc) from None

    # -- error translation: every SDK exception becomes one line here ------------------------

    def _translate(self, exc: BaseException) -> http.LMStudioError:
        lms = _lms()
        if isinstance(exc, http.LMStudioError):
            return exc
        if isinstance(exc, lms.LMStudioTimeoutError) or isinstance(exc, TimeoutError):
            return http.timed_out(self.base_url, self._wait)
        if isinstance(exc, lms.LMStudioServerError):
            return self._server_error(exc)
        if isinstance(exc, lms.LMStudioWebsocketError):
            # The SDK says "ws://host:port/llm"; users know the http address they configured.
            return http.unreachable(self.base_url)
        if isinstance(exc, lms.LMStudioClientError):
            if "not reachable" in str(exc):
                return http.unreachable(self.base_url)
            return ManagementError(f"LM Studio at {self.base_url}: {_first_line(str(exc))}")
        if type(exc).__name__ == "LMStudioValueError" and self.token:
            return http.AuthRequired(
                "The configured LM Studio API token is malformed (expected sk-lm-…): check `llm keys set lmstudio`"
            )
        if type(exc).__module__.startswith("httpx"):
            # The SDK's own probe of /lmstudio-greeting (httpx, 1 s) raised instead of answering False.
            if "Timeout" in type(exc).__name__:
                return http.TimedOut(f"LM Studio at {self.base_url} accepted the connection but did not answer")
            return http.unreachable(self.base_url)
        if isinstance(exc, (ConnectionError, OSError)):
            return http.unreachable(self.base_url)
        return ManagementError(f"LM Studio at {self.base_url}: {_first_line(http.redact(repr(exc), self.token))}")

    def _server_error(self, exc) -> http.LMStudioError:
        details = getattr(exc, "server_error", None)
        title = _first_line(getattr(details, "title", None) or str(exc))
        cause = getattr(details, "cause", None)
        display = getattr(details, "display_data", None) or {}
        code = display.get("code") if isinstance(display, dict) else None
        text = str(exc)
        if text.startswith("Authentication failed"):
            if self.token and not self._token_sent:
                version = sdk_version() or "unknown"
                return TokenUnsupported(
                    f"LM Studio at {self.base_url} requires an API token, and the installed lmstudio SDK "
                    f"({version}) cannot send one: upgrade it to {TOKEN_SDK_VERSION} or later with "
                    "`llm install -U lmstudio`"
                )
            if self.token:
                return http.AuthRequired(
                    f"LM Studio at {self.base_url} rejected the API token: check it with `llm keys set lmstudio` "
                    "(or $LM_API_TOKEN)"
                )
            return http.AuthRequired(
                f"LM Studio at {self.base_url} requires an API token: run `llm keys set lmstudio` or set $LM_API_TOKEN"
            )
        if code in ("generic.pathNotFound", "generic.noModelMatchingQuery", "generic.identifierNotFound"):
            return UnknownModel(f"LM Studio at {self.base_url}: {title}")
        if code == "generic.domainMismatch":
            return LoadRefused(f"LM Studio at {self.base_url}: {title}")
        if "already" in title.lower() and "identifier" in title.lower():
            return DuplicateIdentifier(f"LM Studio at {self.base_url}: {title}")
        if text.startswith(("Model load error", "Model get/load error")):
            reason = f"{title} ({_first_line(cause)})" if cause else title
            return LoadRefused(f"LM Studio refused to load the model: {reason}")
        return ManagementError(f"LM Studio at {self.base_url}: {title}")

    # -- queries -----------------------------------------------------------------------------

    def loaded(self) -> list[LoadedInstance]:
        now = time.time()
        instances = []
        for namespace in ("llm", "embedding"):
            session = self._call(lambda: self._session(namespace))
            # The raw listing keeps fields newer servers add (ttlMs, lastUsedTime) that typed handles drop.
            raw = self._call(lambda: session.remote_call("listLoaded")) or []
            instances.extend(instance_from_wire(namespace, item, now) for item in raw if isinstance(item, dict))
        return instances

    def downloaded(self, namespace: str | None = None) -> list[DownloadedModel]:
        system = self._call(lambda: self._session("system"))
        listing = self._call(system.list_downloaded_models)
        identifiers: dict[str, list[str]] = {}
        for instance in self.loaded():
            identifiers.setdefault(instance.model, []).append(instance.identifier)
        models = []
        for item in listing:
            info = item.info
            kind = model_type(item.type, bool(getattr(info, "vision", False)))
            if namespace is not None and (kind == "embedding") != (namespace == "embedding"):
                continue
            models.append(
                DownloadedModel(
                    key=info.model_key,
                    type=kind,
                    format=display_format(info.format),
                    display_name=info.display_name,
                    params=info.params_string,
                    arch=info.architecture,
                    size_bytes=int(info.size_bytes),
                    max_context_length=int(info.max_context_length),
                    path=info.path,
                    tool_use=bool(getattr(info, "trained_for_tool_use", False)),
                    identifiers=identifiers.get(info.model_key, []),
                )
            )
        return models

    def resolve(self, name: str) -> DownloadedModel:
        models = self.downloaded()
        key = match_model(name, [m.key for m in models])
        return next(m for m in models if m.key == key)

    # -- changes -----------------------------------------------------------------------------

    def load(
        self,
        name: str,
        *,
        context_length: int | None = None,
        gpu: float | None = None,
        ttl: int | None = None,
        identifier: str | None = None,
        on_progress: Callable[[float], Any] | None = None,
    ) -> LoadResult:
        """Load a new instance of the model `name` matches. Without `ttl` it stays until unloaded, as with `lms load`."""
        model = self.resolve(name)
        config: dict[str, Any] = {}
        if context_length is not None:
            config["contextLength"] = context_length
        if gpu is not None:
            config["gpu"] = {"ratio": gpu}
        session = self._call(lambda: self._session(model.namespace))
        started = time.perf_counter()
        handle = self._call(
            lambda: session.load_new_instance(
                model.key, identifier, ttl=ttl, config=config or None, on_load_progress=on_progress
            ),
            wait=self.timeouts.read,
        )
        seconds = time.perf_counter() - started
        instance = next((i for i in self.loaded() if i.identifier == handle.identifier), None)
        return LoadResult(
            identifier=handle.identifier,
            model=model.key,
            type=model.type,
            context_length=instance.context_length if instance else (context_length or 0),
            gpu=gpu,
            ttl=instance.ttl if instance and instance.ttl is not None else (float(ttl) if ttl else None),
            load_seconds=round(seconds, 3),
            size_bytes=model.size_bytes,
        )

    def unload(self, identifier: str) -> LoadedInstance:
        loaded = self.loaded()
        instance = next((i for i in loaded if i.identifier == identifier), None)
        if instance is None:
            if not loaded:
                raise UnknownModel(f"No model with identifier {identifier!r} is loaded: nothing is loaded")
            names = ", ".join(i.identifier for i in loaded)
            raise UnknownModel(f"No model with identifier {identifier!r} is loaded; loaded: {names}")
        session = self._call(lambda: self._session(instance.namespace))
        self._call(lambda: session.unload(identifier))
        return instance

    def unload_all(self) -> list[LoadedInstance]:
        unloaded = []
        for instance in self.loaded():
            session = self._call(lambda: self._session(instance.namespace))
            try:
                self._call(lambda: session.unload(instance.identifier))
            except UnknownModel:
                continue  # its idle TTL ran out while we were unloading the others
            unloaded.append(instance)
        return unloaded


def pick_server(address: str | None = None) -> settings.Server:
    """The configured server that `address` names (host:port or URL); the first configured one by default."""
    servers = settings.servers()
    if not address:
        return servers[0]
    url = settings.normalize_base_url(address)
    for server in servers:
        if server.base_url == url:
            return server
    # Not configured: its models are not registered with llm, but it can still be managed.
    return settings.Server(base_url=url, prefix=f"lmstudio@{urlsplit(url).netloc}")


@contextmanager
def connect(address: str | None = None) -> Iterator[Manager]:
    """An open SDK session to the server `address` names, with the configured token."""
    manager = Manager(pick_server(address), token=settings.api_token())
    with manager:
        yield manager


def refresh_catalog() -> None:
    """Re-read the model list so `llm models` is right at once after a load or unload."""
    try:
        from . import catalog

        catalog.refresh()
    except (ImportError, AttributeError):
        pass  # the catalog is optional here: a stale list corrects itself when its cache expires
    except http.LMStudioError:
        pass


# ---------------------------------------------------------------- status (HTTP only)


@dataclass
class ServerStatus:
    base_url: str
    reachable: bool
    latency_ms: float | None
    requires_token: bool | None  # None: could not tell
    token_configured: bool
    token_accepted: bool | None  # None: no token configured, or could not tell
    downloaded: int | None
    loaded: int | None
    error: str | None

    def to_json(self) -> dict:
        return asdict(self)


def _count_models(body: Any) -> tuple[int | None, int | None]:
    if isinstance(body, dict) and isinstance(body.get("models"), list):  # /api/v1/models
        models = [m for m in body["models"] if isinstance(m, dict)]
        return len(models), sum(len(m["loaded_instances"]) for m in models if isinstance(m.get("loaded_instances"), list))
    if isinstance(body, dict) and isinstance(body.get("data"), list):  # /api/v0/models
        models = [m for m in body["data"] if isinstance(m, dict)]
        return len(models), sum(1 for m in models if m.get("state") == "loaded")
    return None, None


def server_status(server: settings.Server, token: str | None) -> ServerStatus:
    """Is the server up, does it want a token, does ours work, how many models; over HTTP, never the SDK."""
    status = ServerStatus(server.base_url, False, None, None, bool(token), None, None, None, None)
    # A health check must answer quickly even from a hung server: no inference-sized read timeout here.
    limits = settings.timeouts()
    quick = {"connect_timeout": limits.connect, "read_timeout": limits.connect + 3.0}
    client = http.Client(server, token=token, **quick)
    started = time.perf_counter()
    try:
        is_lmstudio = client.greeting()
    except http.LMStudioError as exc:
        status.error = str(exc)
        return status
    status.latency_ms = round((time.perf_counter() - started) * 1000, 1)
    status.reachable = True
    if not is_lmstudio:
        status.error = f"{server.base_url} answered, but it is not LM Studio (no /lmstudio-greeting)"
    body = None
    for path in ("/api/v1/models", "/api/v0/models"):
        try:
            body = client.get_json(path)
            break
        except http.AuthRequired as exc:
            status.requires_token = True
            status.token_accepted = False if token else None
            status.error = str(exc)
            break
        except http.LMStudioError as exc:
            status.error = status.error or str(exc)
            if isinstance(exc, (http.TimedOut, http.Unreachable)):
                break  # the other listing would wait out the same timeout again
    if body is not None:
        status.error = None if is_lmstudio else status.error
        status.downloaded, status.loaded = _count_models(body)
        if token:
            status.token_accepted = True
            # Our token worked; ask once without it to learn whether the server insists on one.
            try:
                http.Client(server, token=None, **quick).get_json("/api/v1/models")
                status.requires_token = False
            except http.AuthRequired:
                status.requires_token = True
            except http.LMStudioError:
                status.requires_token = None
        else:
            status.requires_token = False
    return status
