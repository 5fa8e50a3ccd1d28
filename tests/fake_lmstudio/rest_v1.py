"""The stand-in's LM Studio 0.4 v1 REST management endpoints: /api/v1/models/load, /unload, /download, /download/status.
Formats what state.py does; it must never load, unload or download anything itself."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .state import LMStudioState, LoadError, NotLoaded

# POST /api/v1/models/load body fields beyond `model` (docs: lmstudio.ai/docs/developer/rest/load); the last
# four only affect llama.cpp-engine LLMs there. `echo_load_config` asks for them back.
LOAD_FIELDS = ("context_length", "eval_batch_size", "flash_attention", "num_experts", "offload_kv_cache_to_gpu")


def _error(message: str, status: int, *, code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}, status)


async def _body(request: Request) -> dict | Response:
    try:
        data = await request.json()
    except ValueError:
        return _error("Invalid JSON in request body", 400)
    return data if isinstance(data, dict) else _error("Request body must be a JSON object", 400)


async def load(request: Request) -> Response:
    state: LMStudioState = request.app.state.lmstudio
    data = await _body(request)
    if isinstance(data, Response):
        return data
    model = data.get("model")
    if not isinstance(model, str) or not model:
        return _error("'model' field is required", 400, param="model")
    if state.entry(model) is None:
        return _error(
            f'Invalid model identifier "{model}". Please specify a valid downloaded model '
            "(i.e. a model key from GET /api/v1/models).",
            404, code="model_not_found", param="model",
        )
    config = {name: data[name] for name in LOAD_FIELDS[1:] if data.get(name) is not None}
    started = time.monotonic()
    try:
        # REST loads get no idle TTL (documented); an undocumented `ttl` in the body is ignored, as LM Studio does.
        instance = await asyncio.get_running_loop().run_in_executor(
            None, lambda: state.load(model, context_length=data.get("context_length"), config=config)
        )
    except LoadError as exc:
        return _error(f'Failed to load model "{model}". Error: {exc}', 500, code="model_load_failed", param="model")
    body = {
        "type": "embedding" if instance.entry.type == "embeddings" else "llm",
        "instance_id": instance.identifier,
        "load_time_seconds": round(time.monotonic() - started, 3),
        "status": "loaded",
    }
    if data.get("echo_load_config"):
        body["load_config"] = load_config(instance)
    return JSONResponse(body)


def load_config(instance) -> dict:
    """The load config as `/api/v1/models` `loaded_instances[].config` and `echo_load_config` show it (docs)."""
    config = {"context_length": instance.context_length}
    if instance.entry.type != "embeddings":
        config |= {"eval_batch_size": 512, "parallel": 1} | instance.config
    return config


async def unload(request: Request) -> Response:
    state: LMStudioState = request.app.state.lmstudio
    data = await _body(request)
    if isinstance(data, Response):
        return data
    instance_id = data.get("instance_id")
    if not isinstance(instance_id, str):
        return _error("'instance_id' field is required", 400, param="instance_id")
    try:
        state.unload(instance_id)
    except NotLoaded:
        return _error(f'No loaded model found with instance_id "{instance_id}"', 404, code="model_not_found",
                      param="instance_id")
    return JSONResponse({"instance_id": instance_id})


async def control_variants(request: Request) -> Response:
    """Test control: give a downloaded model variants (cleared by the next reset)."""
    state: LMStudioState = request.app.state.lmstudio
    data = await request.json()
    if state.entry(data.get("model")) is None:
        return JSONResponse({"error": f"no such model {data.get('model')!r}"}, 404)
    state.set_variants(state.entry(data["model"]).key, list(data["variants"]), data.get("selected"))
    return JSONResponse({"variants": [v.key for v in state.variants(state.entry(data["model"]).key)[0]]})


def routes() -> list[Route]:
    return [
        Route("/api/v1/models/load", load, methods=["POST"]),
        Route("/api/v1/models/unload", unload, methods=["POST"]),
        Route("/__fake__/variants", control_variants, methods=["POST"]),
    ]
