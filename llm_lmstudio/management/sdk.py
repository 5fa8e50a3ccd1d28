"""The project's one SDK module: every call into the `lmstudio` SDK (one websocket session, its raw listings, every
SDK error as one line). `lmstudio` is imported only inside functions; no SDK exception or `ws://` address leaves here."""

from __future__ import annotations

import inspect
import threading
import time
from typing import Any, Callable

from llm_lmstudio.lmstudio import errors, rest
from llm_lmstudio.core import settings
from llm_lmstudio.management.models import (
    DownloadedModel,
    DuplicateIdentifier,
    Estimate,
    LoadedInstance,
    LoadRefused,
    LoadSettings,
    ManagementError,
    UnknownModel,
    display_format,
    model_type,
)

# Listing and unloading answer at once; only a load may legitimately go quiet for long (LMSTUDIO_TIMEOUT).
RPC_TIMEOUT = 30.0


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


def auth_error(base_url: str, token: str | None, token_sent: bool) -> errors.AuthRequired:
    return errors.auth_error(base_url, token_sent=bool(token and token_sent))


def server_error(exc: Any, base_url: str, token: str | None, token_sent: bool) -> errors.LMStudioError:
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


def sdk_error(exc: BaseException, base_url: str, token: str | None, token_sent: bool, waited: float) -> errors.LMStudioError:
    """Any exception from an SDK call as one of our errors: one line, no `ws://`, never the token."""
    lms = _lms()
    if isinstance(exc, errors.LMStudioError):
        return exc
    if isinstance(exc, (lms.LMStudioTimeoutError, TimeoutError)):
        return errors.timed_out(base_url, waited)
    if isinstance(exc, lms.LMStudioServerError):
        return server_error(exc, base_url, token, token_sent)
    if isinstance(exc, lms.LMStudioWebsocketError):
        # The SDK says "ws://host:port/llm"; users know the http address they configured.
        return errors.unreachable(base_url)
    if isinstance(exc, lms.LMStudioClientError):
        if "not reachable" in str(exc):
            return errors.unreachable(base_url)
        return ManagementError(f"LM Studio at {base_url}: {errors.redact(_first_line(exc), token)}")
    if isinstance(exc, lms.LMStudioValueError) and token:
        # lmstudio 1.6 checks the token's shape before sending it.
        return errors.AuthRequired(
            "The configured LM Studio API token is malformed (expected sk-lm-…): check `llm keys set lmstudio`"
        )
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        # The SDK's own probe of /lmstudio-greeting (httpx, 1 s) raised instead of answering False.
        return errors.TimedOut(f"LM Studio at {base_url} accepted the connection but did not answer")
    if isinstance(exc, httpx.HTTPError):
        return errors.unreachable(base_url)
    if isinstance(exc, (ConnectionError, OSError)):
        return errors.unreachable(base_url)
    return ManagementError(f"LM Studio at {base_url}: {_first_line(errors.redact(repr(exc), token))}")


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
                # The SDK's probe says only "no": tell a server that is down from one that is not LM Studio.
                quick = self.timeouts.connect
                if rest.Client(self.server, connect_timeout=quick, read_timeout=quick + 3.0).greeting() is False:
                    raise errors.not_lmstudio(self.base_url)
                raise errors.unreachable(self.base_url)
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

    def _translate(self, exc: BaseException) -> errors.LMStudioError:
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
            raise errors.TimedOut(
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
        except errors.LMStudioError:
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


