"""The stand-in's SDK websocket protocol (/llm, /embedding, /system ...): enough for the real `lmstudio` SDK.
Translates wire messages to calls on the shared LMStudioState; it never keeps model state of its own."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .state import LoadError

# Message shapes follow lmstudio 1.5.0 (json_api.py: RemoteCallHandler, ChannelHandler,
# _ModelLoadingEndpoint; _sdk_models: LlmInfo, LlmInstanceInfo, *ChannelLoadModel*/GetOrLoad packets)
# and lmstudio-js's ModelInstanceInfoBase (ttlMs, lastUsedTime), which newer servers send.

MODEL_NAMESPACES = ("llm", "embedding")
# Namespaces the SDK may open; the stand-in answers the unsupported ones with clear errors.
ALL_NAMESPACES = ("llm", "embedding", "system", "files", "repository", "diagnostics", "plugins", "runtime")


class ProtocolError(Exception):
    """A request the stand-in answers with an LM Studio-shaped error (SerializedLMSExtendedError)."""

    def __init__(self, title: str, *, cause: str | None = None, display_data: dict | None = None):
        super().__init__(title)
        self.details: dict[str, Any] = {"title": title}
        if cause is not None:
            self.details["cause"] = cause
        if display_data is not None:
            self.details["displayData"] = display_data


def websocket_routes(state) -> list[WebSocketRoute]:
    """One route per SDK namespace, all served from the same port as the HTTP API (as LM Studio does)."""
    protocol = _Protocol(state)
    return [WebSocketRoute(f"/{namespace}", partial(protocol.serve, namespace)) for namespace in ALL_NAMESPACES]


# ---------------------------------------------------------------------------------------------
# Wire payloads


def _namespace_of(entry) -> str:
    # A type newer than the SDK knows (issue 12: types beyond llm/embedding) is listed as it is.
    return {"embeddings": "embedding", "llm": "llm", "vlm": "llm"}.get(entry.type, entry.type)


def _wire_format(fmt: str | None) -> str:
    # The SDK's ModelCompatibilityType has no "mlx": LM Studio reports MLX models as "safetensors". Newer formats
    # (e.g. "openvino", issue 12) go out as they are, which the SDK's own typed parser rejects.
    lowered = (fmt or "").lower()
    return "safetensors" if lowered in ("mlx", "safetensors", "") else lowered


def _wire_path(entry) -> str:
    # LM Studio reports paths relative to its models folder: publisher/repo[/file].
    parts = entry.path.parts
    if entry.publisher in parts:
        start = len(parts) - 1 - parts[::-1].index(entry.publisher)
        return "/".join(parts[start:])
    return str(entry.path)


def model_info(entry) -> dict:
    info: dict[str, Any] = {
        "type": _namespace_of(entry),
        "modelKey": entry.key,
        "format": _wire_format(entry.format),
        "displayName": entry.display_name,
        "path": _wire_path(entry),
        "sizeBytes": int(entry.size_bytes),
        "maxContextLength": int(entry.max_context_length),
        "paramsString": entry.params_string,
        "architecture": entry.arch,
    }
    if info["type"] == "llm":
        info["vision"] = bool(entry.vision or entry.type == "vlm")
        info["trainedForToolUse"] = bool(entry.trained_for_tool_use)
    return info


def instance_info(state, instance) -> dict:
    info = model_info(instance.entry)
    info["identifier"] = instance.identifier
    info["instanceReference"] = instance.instance_reference
    info["contextLength"] = int(instance.context_length)
    ttl = instance.ttl_seconds
    info["ttlMs"] = int(ttl * 1000) if ttl is not None else None
    info["lastUsedTime"] = _last_used_ms(state, instance)
    return info


def _last_used_ms(state, instance) -> int | None:
    # Derive wall-clock time from the TTL countdown so it is right whatever clock the state uses.
    remaining = state.ttl_remaining(instance)
    if instance.ttl_seconds is not None and remaining is not None:
        idle = max(0.0, instance.ttl_seconds - remaining)
        return int((time.time() - idle) * 1000)
    last_used = getattr(instance, "last_used", None)
    if isinstance(last_used, (int, float)) and last_used > 1e9:  # already a unix timestamp
        return int(last_used * 1000)
    return None


def _config_fields(layers: list[dict]) -> dict[str, Any]:
    """Flatten a KvConfigStack; later layers lose to earlier ones, as apiOverride is sent first."""
    fields: dict[str, Any] = {}
    for layer in reversed(layers or []):
        for field in (layer.get("config") or {}).get("fields") or []:
            fields[field.get("key")] = field.get("value")
    return fields


# KV config keys (lmstudio-python _kv_config.py SUPPORTED_SERVER_KEYS) -> the v1 REST names the state keeps.
LLM_LOAD_KEYS = {
    "llm.load.llama.flashAttention": "flash_attention",
    "llm.load.llama.evalBatchSize": "eval_batch_size",
    "llm.load.numExperts": "num_experts",
    "llm.load.offloadKVCacheToGpu": "offload_kv_cache_to_gpu",
}


def _load_options(namespace: str, stack: dict | None) -> dict[str, Any]:
    """context_length, gpu_ratio and config (the other settings) as state.load and state.estimate take them."""
    fields = _config_fields((stack or {}).get("layers") or [])
    context_length = fields.get(f"{namespace}.load.contextLength")
    ratio = fields.get(f"{namespace}.load.llama.acceleration.offloadRatio")
    if isinstance(ratio, str):  # the SDK allows "max" / "off" as well as a number
        ratio = {"max": 1.0, "off": 0.0}.get(ratio.lower())
    config = {name: fields[key] for key, name in LLM_LOAD_KEYS.items() if fields.get(key) is not None}
    return {
        "context_length": int(context_length) if context_length is not None else None,
        "gpu_ratio": ratio,
        "config": config,
    }


# ---------------------------------------------------------------------------------------------
# LM Studio's error payloads


def _sample(items: list[str]) -> list[str]:
    return items[:10]


def path_not_found(state, key: str) -> ProtocolError:
    keys = [entry.key for entry in state.downloaded()]
    return ProtocolError(
        f'Cannot find a model with path "{key}"',
        display_data={
            "code": "generic.pathNotFound",
            "path": key,
            "availablePathsSample": _sample(keys),
            "totalModels": len(keys),
        },
    )


def _no_such_loaded(message: str, code: str, loaded: list[str], **details) -> ProtocolError:
    """The two "no such loaded model" errors carry a sample of what is loaded beside their own details."""
    display = {"code": code, **details, "loadedModelsSample": _sample(loaded), "totalLoadedModels": len(loaded)}
    return ProtocolError(message, display_data=display)


def no_model_matching(state, namespace: str, query: dict) -> ProtocolError:
    loaded = [i.identifier for i in state.loaded() if _namespace_of(i.entry) == namespace]
    message = "No loaded model satisfies all requirements specified in the query."
    return _no_such_loaded(message, "generic.noModelMatchingQuery", loaded, query=query)


def identifier_not_found(state, identifier: str) -> ProtocolError:
    loaded = [i.identifier for i in state.loaded()]
    message = f'Cannot find a model with identifier "{identifier}"'
    return _no_such_loaded(message, "generic.identifierNotFound", loaded, identifier=identifier)


def domain_mismatch(entry, expected: str) -> ProtocolError:
    actual = _namespace_of(entry)
    return ProtocolError(
        f'Model "{entry.key}" is a model of type "{actual}", but "{expected}" was expected',
        display_data={
            "code": "generic.domainMismatch",
            "path": entry.key,
            "actualDomain": actual,
            "expectedDomain": expected,
        },
    )


def _is_load_error(exc: BaseException) -> bool:
    # LM Studio refuses loads (guardrails, duplicate identifier, bad context length) with its own
    # message; state.LoadError carries that message, and ValueError covers bad load options.
    return isinstance(exc, (LoadError, ValueError))


# ---------------------------------------------------------------------------------------------
# The protocol


class _Protocol:
    def __init__(self, state):
        self.state = state

    async def serve(self, namespace: str, websocket: WebSocket) -> None:
        await _Session(self, namespace, websocket).run()

    # -- state access (blocking: always called through asyncio.to_thread) --

    def in_namespace(self, namespace: str) -> list:
        return [i for i in self.state.loaded() if _namespace_of(i.entry) == namespace]

    def find_instance(self, namespace: str, specifier: dict):
        if specifier.get("type") == "instanceReference":
            reference = specifier.get("instanceReference")
            for instance in self.in_namespace(namespace):
                if instance.instance_reference == reference:
                    return instance
            raise ProtocolError(
                "The model instance referenced has been unloaded",
                display_data={"code": "generic.specificModelUnloaded"},
            )
        query = specifier.get("query") or {}
        candidates = self.in_namespace(namespace)
        identifier, path = query.get("identifier"), query.get("path")
        if identifier is not None:
            exact = [i for i in candidates if i.identifier == identifier]
            candidates = exact or [i for i in candidates if i.entry.key == identifier]
        if path is not None:
            candidates = [i for i in candidates if path in (i.entry.key, _wire_path(i.entry))]
        if query.get("vision") is not None:
            candidates = [i for i in candidates if bool(i.entry.vision) == bool(query["vision"])]
        if not candidates:
            raise no_model_matching(self.state, namespace, query)
        return candidates[0]

    def load_config(self, namespace: str, instance) -> dict:
        fields = [{"key": f"{namespace}.load.contextLength", "value": int(instance.context_length)}]
        ratio = instance.gpu_ratio
        if ratio is not None:  # JIT loads leave the offload to LM Studio's defaults
            fields.append({"key": f"{namespace}.load.llama.acceleration.offloadRatio", "value": ratio})
        for key, name in LLM_LOAD_KEYS.items():
            if name in instance.config:
                fields.append({"key": key, "value": instance.config[name]})
        return {"fields": fields}

    def with_variants(self, entry) -> dict:
        # lmstudio-js ModelInfoBase: `variants` (their model keys) and `selectedVariant`, absent when there are none.
        info = model_info(entry)
        variants, selected = self.state.variants(entry.key)
        if variants:
            info["variants"] = [v.key for v in variants]
            info["selectedVariant"] = selected
        return info

    def entry_for(self, namespace: str, key: str):
        entry = self.state.entry(key)
        if entry is None:
            raise path_not_found(self.state, key)
        if _namespace_of(entry) != namespace:
            raise domain_mismatch(entry, namespace)
        return entry

    def rpc(self, namespace: str, endpoint: str, parameter: Any) -> Any:
        state = self.state
        if namespace == "system" and endpoint == "listDownloadedModels":
            return [self.with_variants(entry) for entry in state.downloaded()]
        if namespace == "system" and endpoint == "listDownloadedModelVariants":
            # lmstudio-js SystemNamespace.listDownloadedModelVariants / systemBackendInterface.ts (what `lms ls --variants` calls).
            entry = state.entry(parameter["modelKey"])
            if entry is None:
                raise path_not_found(state, parameter["modelKey"])
            return [model_info(variant) for variant in state.variants(entry.key)[0]]
        if namespace == "repository" and endpoint in ("searchModels", "getModelDownloadOptions"):
            # lmstudio-python sync_api.py _SyncSessionRepository / AvailableModel.get_download_options.
            from . import rest_v1

            if endpoint == "searchModels":
                opts = parameter.get("opts") or {}
                return rest_v1.search(state, opts.get("searchTerm"), opts.get("limit"))
            try:
                return rest_v1.download_options(state, parameter.get("modelSearchResultIdentifier"))
            except LookupError:
                raise ProtocolError("Model not found in the repository") from None
        if namespace in MODEL_NAMESPACES:
            if endpoint == "listLoaded":
                return [instance_info(state, i) for i in self.in_namespace(namespace)]
            if endpoint == "getModelInfo":
                return instance_info(state, self.find_instance(namespace, parameter["specifier"]))
            if endpoint == "getLoadConfig":
                return self.load_config(namespace, self.find_instance(namespace, parameter["specifier"]))
            if endpoint == "unloadModel":
                return self.unload(namespace, parameter["identifier"])
            if endpoint == "estimateModelUsage":
                # lmstudio-js ModelNamespace.estimateResourcesUsage / baseModelBackendInterface.ts (LM Studio 0.3.2x+).
                entry = self.entry_for(namespace, parameter["modelKey"])
                return state.estimate(entry.key, **_load_options(namespace, parameter.get("loadConfigStack")))
        raise ProtocolError(
            f'The LM Studio stand-in does not implement "{namespace}.{endpoint}"',
            cause="Only model listing, loading and unloading are emulated.",
        )

    def unload(self, namespace: str, identifier: str) -> None:
        instance = self.state.instance(identifier)
        if instance is None or _namespace_of(instance.entry) != namespace:
            raise identifier_not_found(self.state, identifier)
        try:
            self.state.unload(identifier)
        except LookupError:
            raise identifier_not_found(self.state, identifier) from None
        return None


class _Session:
    """One websocket connection: authentication, then multiplexed RPC calls and channels."""

    def __init__(self, protocol: _Protocol, namespace: str, websocket: WebSocket):
        self.protocol = protocol
        self.state = protocol.state
        self.namespace = namespace
        self.websocket = websocket
        self.send_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task] = set()
        self.cancelled_channels: set[int] = set()
        self.closed = False

    async def send(self, message: dict) -> None:
        if self.closed:
            return
        async with self.send_lock:
            try:
                await self.websocket.send_json(message)
            except Exception:
                # The client went away; its pending calls have nobody left to answer.
                self.closed = True

    async def run(self) -> None:
        await self.websocket.accept()
        try:
            if not await self.authenticate():
                await self.websocket.close()
                return
            while True:
                try:
                    message = await self.websocket.receive_json()
                except ValueError:
                    await self.send({"type": "communicationWarning", "warning": "Received invalid JSON"})
                    continue
                self.dispatch(message)
        except WebSocketDisconnect:
            pass
        finally:
            self.closed = True
            for task in list(self.tasks):
                task.cancel()

    async def authenticate(self) -> bool:
        message = await self.websocket.receive_json()
        if not isinstance(message, dict) or message.get("authVersion") != 1:
            await self.send({"success": False, "error": {"title": "Unsupported authentication message"}})
            return False
        token = getattr(self.state, "auth_token", None)
        if token:
            # SDKs that support API tokens (lmstudio >= 1.6, lmstudio-js) split
            # "sk-lm-<clientIdentifier>:<clientPasskey>" into the two auth fields.
            offered = f"sk-lm-{message.get('clientIdentifier')}:{message.get('clientPasskey')}"
            if offered != token:
                await self.send(
                    {
                        "success": False,
                        "error": {
                            "title": "Invalid or missing LM Studio API token",
                            "cause": "This server requires authentication, and the client did not present a valid API token.",
                            "suggestion": "Create a token in LM Studio under Developer > Server Settings > Manage Tokens.",
                        },
                    }
                )
                return False
        await self.send({"success": True})
        return True

    def spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def dispatch(self, message: Any) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "rpcCall":
            self.spawn(self.handle_rpc(message))
        elif kind == "channelCreate":
            self.spawn(self.handle_channel(message))
        elif kind == "channelSend":
            inner = message.get("message") or {}
            if inner.get("type") == "cancel":
                self.cancelled_channels.add(message.get("channelId"))
        elif kind == "channelClose":
            pass  # the client is done with a channel; nothing is held for it here
        else:
            self.spawn(self.send({"type": "communicationWarning", "warning": f"Unknown message type: {kind!r}"}))

    async def handle_rpc(self, message: dict) -> None:
        call_id = message.get("callId")
        try:
            result = await asyncio.to_thread(
                self.protocol.rpc, self.namespace, message.get("endpoint"), message.get("parameter")
            )
        except ProtocolError as exc:
            await self.send({"type": "rpcError", "callId": call_id, "error": exc.details})
            return
        except Exception as exc:  # a stand-in bug must still reach the client as an error, not a hang
            await self.send({"type": "rpcError", "callId": call_id, "error": {"title": f"Internal error: {exc}"}})
            return
        reply: dict[str, Any] = {"type": "rpcResult", "callId": call_id}
        if result is not None:
            reply["result"] = result
        await self.send(reply)

    async def handle_channel(self, message: dict) -> None:
        channel_id = message.get("channelId")
        endpoint = message.get("endpoint")
        parameter = message.get("creationParameter") or {}
        try:
            if self.namespace in MODEL_NAMESPACES and endpoint == "loadModel":
                await self.load_model(channel_id, parameter)
            elif self.namespace in MODEL_NAMESPACES and endpoint == "getOrLoad":
                await self.get_or_load(channel_id, parameter)
            else:
                raise ProtocolError(
                    f'The LM Studio stand-in does not implement the "{self.namespace}.{endpoint}" channel',
                    cause="Only model loading is emulated over the SDK; use the HTTP API for inference.",
                )
        except ProtocolError as exc:
            await self.send({"type": "channelError", "channelId": channel_id, "error": exc.details})
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.send(
                {"type": "channelError", "channelId": channel_id, "error": {"title": f"Internal error: {exc}"}}
            )
            return
        await self.send({"type": "channelClose", "channelId": channel_id})

    async def channel_send(self, channel_id: int, payload: dict) -> None:
        await self.send({"type": "channelSend", "channelId": channel_id, "message": payload})

    async def run_load(self, channel_id: int, progress_type: str, **kwargs) -> Any:
        """Run the blocking state.load in a worker thread, streaming its progress as it happens."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_progress(fraction: float) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, fraction)

        loading = asyncio.ensure_future(asyncio.to_thread(self.state.load, on_progress=on_progress, **kwargs))
        # Progress callbacks were queued before the worker finished, so they drain before this marker.
        loading.add_done_callback(lambda _: queue.put_nowait(None))
        last = -1.0
        while (fraction := await queue.get()) is not None:
            fraction = min(max(float(fraction), 0.0), 1.0)
            if fraction > last:  # the SDK ignores repeats and steps backwards anyway
                last = fraction
                await self.channel_send(channel_id, {"type": progress_type, "progress": fraction})
        try:
            instance = loading.result()
        except LookupError as exc:
            raise path_not_found(self.state, kwargs["key"]) from exc
        except Exception as exc:
            if _is_load_error(exc):
                raise ProtocolError(str(exc)) from exc
            raise
        if channel_id in self.cancelled_channels:
            await asyncio.to_thread(self.state.unload, instance.identifier)
            raise ProtocolError("Model loading was cancelled")
        return instance

    async def load_model(self, channel_id: int, parameter: dict) -> None:
        key = parameter.get("modelKey")
        entry = await asyncio.to_thread(self.protocol.entry_for, self.namespace, key)
        await self.channel_send(channel_id, {"type": "resolved", "info": model_info(entry)})
        ttl_ms = parameter.get("ttlMs")
        instance = await self.run_load(
            channel_id,
            "progress",
            key=key,
            identifier=parameter.get("identifier"),
            ttl=ttl_ms / 1000 if ttl_ms else None,
            jit=False,
            **_load_options(self.namespace, parameter.get("loadConfigStack")),
        )
        info = await asyncio.to_thread(instance_info, self.state, instance)
        await self.channel_send(channel_id, {"type": "success", "info": info})

    def evict_jit_models(self) -> list[dict]:
        evicted = []
        for instance in [i for i in self.state.loaded() if i.jit]:
            info = instance_info(self.state, instance)
            try:
                self.state.unload(instance.identifier)
            except LookupError:
                continue  # its idle TTL ran out meanwhile
            evicted.append(info)
        return evicted

    async def get_or_load(self, channel_id: int, parameter: dict) -> None:
        wanted = parameter.get("identifier")

        def existing():
            instances = self.protocol.in_namespace(self.namespace)
            for instance in instances:
                if instance.identifier == wanted:
                    return instance
            for instance in instances:
                if instance.entry.key == wanted:
                    return instance
            return None

        instance = await asyncio.to_thread(existing)
        if instance is not None:
            info = await asyncio.to_thread(instance_info, self.state, instance)
            await self.channel_send(channel_id, {"type": "alreadyLoaded", "info": info})
            return
        entry = await asyncio.to_thread(self.protocol.entry_for, self.namespace, wanted)
        await self.channel_send(channel_id, {"type": "startLoading", "identifier": wanted, "info": model_info(entry)})
        # LM Studio treats get-or-load like a just-in-time load: with auto-evict on, it first
        # unloads the previous JIT-loaded model and tells the client so.
        if self.state.auto_evict:
            evicted = await asyncio.to_thread(self.evict_jit_models)
            for info in evicted:
                await self.channel_send(channel_id, {"type": "unloadingOtherJITModel", "info": info})
        ttl_ms = parameter.get("loadTtlMs")
        instance = await self.run_load(
            channel_id,
            "loadProgress",
            key=wanted,
            ttl=ttl_ms / 1000 if ttl_ms else None,
            jit=True,
            **_load_options(self.namespace, parameter.get("loadConfigStack")),
        )
        info = await asyncio.to_thread(instance_info, self.state, instance)
        await self.channel_send(channel_id, {"type": "loadSuccess", "info": info})
