"""The stand-in's LM Studio 0.4 v1 REST management endpoints: /api/v1/models/load, /unload, /download, /download/status.
Formats what state.py does; it must never load, unload or download anything itself."""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import threading
import time
import uuid
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .state import LMStudioState, LoadError, NotLoaded

# POST /api/v1/models/load body fields beyond `model` (docs: lmstudio.ai/docs/developer/rest/load); the last
# four only affect llama.cpp-engine LLMs there. `echo_load_config` asks for them back.
LOAD_FIELDS = ("context_length", "eval_batch_size", "flash_attention", "num_experts", "offload_kv_cache_to_gpu")


def _error(message: str, status: int, kind: str = "invalid_request") -> JSONResponse:
    # LM Studio's /api/v1 errors name their kind in `type` and carry no `code` (lmstudio-bug-tracker#1462:
    # {"error": {"type": "model_not_found", "message": ...}}; #1438: `not_implemented`), unlike the OpenAI-shaped
    # /v1 errors. Kinds this stand-in uses beyond those two are its own guesses, in the same shape.
    return JSONResponse({"error": {"type": kind, "message": message}}, status)


async def _body(request: Request) -> dict | Response:
    try:
        data = await request.json()
    except ValueError:
        return _error("Invalid JSON in request body", 400)
    return data if isinstance(data, dict) else _error("Request body must be a JSON object", 400)


def _naming(field: str):
    """For a POST whose JSON body must name `field` (a non-empty string): the handler gets the body and that
    value; any other body gets the 400 LM Studio answers with."""

    def wrap(handler):
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            data = await _body(request)
            if isinstance(data, Response):
                return data
            value = data.get(field)
            if not isinstance(value, str) or not value:
                return _error(f"'{field}' field is required", 400)
            return await handler(request, data, value)

        return endpoint

    return wrap


@_naming("model")
async def load(request: Request, data: dict, model: str) -> Response:
    state: LMStudioState = request.app.state.lmstudio
    if state.entry(model) is None or "@" in model:
        # A variant key (`key@q4_k_m`) too, though /api/v1/models lists it: LM Studio 0.4.1 loads base keys only
        # (lmstudio-bug-tracker#1462, open; the body is the one it quotes).
        return _error(f"Model {model} not found in downloaded models", 404, "model_not_found")
    config = {name: data[name] for name in LOAD_FIELDS[1:] if data.get(name) is not None}
    started = time.monotonic()
    try:
        # REST loads get no idle TTL (documented); an undocumented `ttl` in the body is ignored, as LM Studio does.
        instance = await asyncio.get_running_loop().run_in_executor(
            None, lambda: state.load(model, context_length=data.get("context_length"), config=config)
        )
    except LoadError as exc:
        return _error(f'Failed to load model "{model}". Error: {exc}', 500, "model_load_failed")
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


@_naming("instance_id")
async def unload(request: Request, data: dict, instance_id: str) -> Response:
    state: LMStudioState = request.app.state.lmstudio
    try:
        state.unload(instance_id)
    except NotLoaded:
        return _error(f'No loaded model found with instance_id "{instance_id}"', 404, "model_not_found")
    return JSONResponse({"instance_id": instance_id})


async def control_variants(request: Request) -> Response:
    """Test control: give a downloaded model variants (cleared by the next reset)."""
    state: LMStudioState = request.app.state.lmstudio
    data = await request.json()
    if state.entry(data.get("model")) is None:
        return JSONResponse({"error": f"no such model {data.get('model')!r}"}, 404)
    state.set_variants(state.entry(data["model"]).key, list(data["variants"]), data.get("selected"))
    return JSONResponse({"variants": [v.key for v in state.variants(state.entry(data["model"]).key)[0]]})


# ---------------------------------------------------------------------------------------------
# Downloads. What can be downloaded: generated tiny models (tests/model_factory.py) standing in for LM Studio's
# catalog and Hugging Face, shaped as the SDK's repository search returns them (lmstudio-python _sdk_models:
# ModelSearchResultEntryData, ModelSearchResultDownloadOptionData; sdk_ws.py serves `searchModels`).

def _downloadable(name: str, kind: str, staff_pick: bool, formats: dict[str, str], file: str) -> dict:
    """`formats`: each quantization on offer and its compatibilityType (lmstudio-js ModelCompatibilityType)."""
    return {
        "name": name,
        "identifier": {"type": kind, "identifier": name},
        "staffPick": staff_pick,
        "key": name.lower(),  # the model key LM Studio gives it once downloaded
        "source": "tiny-llama",  # the generated model whose files it links
        "quantizations": list(formats),
        "formats": formats,
        "file": file,
    }


DOWNLOADABLE = [
    _downloadable("test-org/Tiny-Download-MLX", "hf", True, {"4bit": "safetensors", "8bit": "safetensors"}, "model.safetensors"),
    _downloadable("test-org/Tiny-Download-GGUF", "hf", False, {"Q4_K_M": "gguf", "Q8_0": "gguf"},
                  "tiny-download-{quantization}.gguf"),
    # A catalog model in both formats, its option names saying neither: only compatibilityType does.
    _downloadable("test-org/tiny-catalog-chat", "catalog", True, {"4bit": "safetensors", "Q4_K_M": "gguf"},
                  "tiny-catalog-chat-{quantization}"),
]
HF_PREFIX = "https://huggingface.co/"
DEFAULT_SPEED = 2_000_000  # bytes per second


def _source_dir(item: dict) -> Path:
    from tests import model_factory

    from .models_dir import CHAT_MODELS

    spec, _ = CHAT_MODELS[item["source"]]
    return model_factory.cached_tiny_model(item["source"], spec)


def _size(item: dict) -> int:
    return sum(f.stat().st_size for f in _source_dir(item).rglob("*") if f.is_file())


def _fit(state: LMStudioState, size: int) -> str:
    if state.memory_limit is None:
        return "fullGPUOffload"
    return "fitWithoutGPU" if size <= state.memory_limit else "willNotFit"


def search(state: LMStudioState, term: str | None, limit: int | None) -> dict:
    words = (term or "").lower()
    results = [
        {"name": item["name"], "identifier": item["identifier"], "exact": words == item["name"].lower(), "staffPick": item["staffPick"]}
        for item in DOWNLOADABLE
        if words in item["name"].lower() or words in item["key"]
    ]
    return {"results": results[: limit or 25]}


def download_options(state: LMStudioState, identifier: dict) -> dict:
    item = next((i for i in DOWNLOADABLE if i["identifier"] == identifier), None)
    if item is None:
        raise LookupError(identifier)
    size = _size(item)
    return {
        "results": [
            {
                "name": item["file"].format(quantization=quantization),
                "sizeBytes": size,
                "fitEstimation": _fit(state, size),
                "quantization": quantization,
                "recommended": index == 0,
                "downloadIdentifier": f"{item['identifier']['identifier']}/{item['file'].format(quantization=quantization)}",
                "indexedModelIdentifier": item["identifier"]["identifier"],
                # Required in every download option (lmstudio-js ModelSearch.ts, modelSearchResultDownloadOptionDataSchema).
                "compatibilityType": item["formats"][quantization],
            }
            for index, quantization in enumerate(item["quantizations"])
        ]
    }


def _iso(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Downloads:
    """LM Studio's download jobs (docs: developer/rest/download, download-status): `downloading` until the bytes
    are in, then `completed`; `failed` on an injected failure; `paused` when a test pauses it as the app would.
    A job runs on in the server whether or not anyone polls it, so an interrupted client can come back to it."""

    def __init__(self, state: LMStudioState):
        self.state = state
        self.jobs: dict[str, dict] = {}
        self.lock = threading.Lock()

    def find(self, model: str) -> dict | None:
        wanted = model.removeprefix(HF_PREFIX).strip("/").lower()
        for item in DOWNLOADABLE:
            if wanted in (item["identifier"]["identifier"].lower(), item["key"]):
                return item
        return None

    def start(self, model: str, quantization: str | None) -> tuple[int, dict]:
        item = self.find(model)
        # LM Studio's docs show no error bodies for downloads; these take the shape of its other REST errors.
        if item is None:
            return 404, _kind("model_not_found", f'Could not find model "{model}" in the LM Studio catalog or on Hugging Face')
        if quantization and not model.startswith(HF_PREFIX):
            # `quantization` works for Hugging Face links only (docs: developer/rest/download); LM Studio 0.4.0 and
            # 0.4.1 answer this for a catalog id (lmstudio-bug-tracker#1438; the HTTP status is not recorded).
            return 400, _kind("not_implemented", "Specifying quantizations for downloading models with LM Studio "
                              "Model Catalog identifiers is coming soon")
        if quantization and quantization.upper() not in [q.upper() for q in item["quantizations"]]:
            return 400, _kind("invalid_request", f'No "{quantization}" quantization of "{model}"; available: '
                              + ", ".join(item["quantizations"]))
        if self.state.entry(item["key"]) is not None:
            return 200, {"status": "already_downloaded"}  # no job_id (docs)
        settings = self.state.download_settings
        size = _size(item)
        if settings.get("disk_free") is not None and size > settings["disk_free"]:
            return 507, _kind("insufficient_storage", f"Not enough disk space to download {model}: needs {size} bytes, "
                              f"{settings['disk_free']} free")
        with self.lock:
            for job in self.jobs.values():  # one job per model: asking again reports the running one
                # (a job from before a reset is gone, as jobs are when LM Studio restarts)
                if job["item"] is item and job["status"] in ("downloading", "paused") and job["epoch"] == self.state.epoch:
                    return 200, self.view(job)
            job = {
                "job_id": "job_" + uuid.uuid4().hex[:10],
                "item": item,
                "quantization": quantization or item["quantizations"][0],
                "status": "downloading",
                "total_size_bytes": size,
                "downloaded_bytes": 0,
                "started": time.time(),
                "epoch": self.state.epoch,
            }
            self.jobs[job["job_id"]] = job
        threading.Thread(target=self.run, args=(job,), name="fake-lmstudio-download", daemon=True).start()
        return 200, self.view(job)

    def run(self, job: dict) -> None:
        speed = float(self.state.download_settings.get("bytes_per_second") or DEFAULT_SPEED)
        fail_at = self.state.download_settings.get("fail_after_bytes")
        last = time.monotonic()
        while job["downloaded_bytes"] < job["total_size_bytes"]:
            time.sleep(0.05)
            now = time.monotonic()
            if job["status"] == "paused" or job["epoch"] != self.state.epoch:
                last = now
                if job["epoch"] != self.state.epoch:
                    return
                continue
            job["downloaded_bytes"] = min(job["total_size_bytes"], job["downloaded_bytes"] + int(speed * (now - last)))
            job["speed"] = speed
            last = now
            if fail_at is not None and job["downloaded_bytes"] >= fail_at:
                job["status"], job["finished"] = "failed", time.time()
                return
        folder = self.state.models_dir / job["item"]["key"]
        _link(job["item"], folder, job["quantization"])
        self.state.add_downloaded(folder, job["epoch"])
        job["status"], job["finished"] = "completed", time.time()

    def view(self, job: dict) -> dict:
        body = {
            "job_id": job["job_id"],
            "status": job["status"],
            "total_size_bytes": job["total_size_bytes"],
            "downloaded_bytes": job["downloaded_bytes"],
            "started_at": _iso(job["started"]),
        }
        if job["status"] == "downloading":
            speed = job.get("speed", 0.0)
            body["bytes_per_second"] = speed
            remaining = (job["total_size_bytes"] - job["downloaded_bytes"]) / speed if speed else 0.0
            body["estimated_completion"] = _iso(time.time() + remaining)
        if job["status"] == "completed":
            body["completed_at"] = _iso(job["finished"])
        return body


def _kind(kind: str, message: str) -> dict:
    return {"error": {"type": kind, "message": message}}


def _link(item: dict, folder: Path, quantization: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for source in _source_dir(item).iterdir():
        if not source.name.startswith("."):
            (folder / source.name).symlink_to(source.resolve())
    meta = {"key": item["key"], "quantization": quantization, "params_string": "1M"}
    (folder / "lmstudio-meta.json").write_text(json.dumps(meta))


@_naming("model")
async def download(request: Request, data: dict, model: str) -> Response:
    downloads = _downloads(request)
    status, body = await asyncio.to_thread(downloads.start, model, data.get("quantization"))
    return JSONResponse(body, status)


async def download_status(request: Request) -> Response:
    downloads = _downloads(request)
    job = downloads.jobs.get(request.path_params["job_id"])
    if job is None:
        return _error(f'No download job with id "{request.path_params["job_id"]}"', 404, "not_found")
    return JSONResponse(downloads.view(job))


async def control_downloads(request: Request) -> Response:
    """Test control: download speed, free disk space, a failure part-way, or pause/resume a job as the app would."""
    state: LMStudioState = request.app.state.lmstudio
    data = await request.json()
    job = _downloads(request).jobs.get(data.pop("pause", None) or data.pop("resume", None) or "")
    if job is not None:
        job["status"] = "paused" if job["status"] == "downloading" else "downloading"
    state.download_settings.update(data)
    return JSONResponse(state.download_settings)


async def control_foreign(request: Request) -> Response:
    """Test control: list a model of a format or type this plugin does not know, as newer LM Studio versions do
    (issue 12: `openvino`, types beyond llm/embedding), until the next reset."""
    state: LMStudioState = request.app.state.lmstudio
    data = await request.json()
    folder = state.models_dir / data["key"]
    source = _source_dir(DOWNLOADABLE[0])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text((source / "config.json").read_text())
    meta = {"key": data["key"], "type": data["type"], "format": data["format"], "params_string": "1M"}
    (folder / "lmstudio-meta.json").write_text(json.dumps(meta))
    entry = state.add_downloaded(folder, state.epoch)
    return JSONResponse({"key": entry.key if entry else None})


def _downloads(request: Request) -> Downloads:
    app_state = request.app.state
    if not hasattr(app_state, "downloads"):  # one job table per server, made on first use (on the event loop)
        app_state.downloads = Downloads(app_state.lmstudio)
    return app_state.downloads


def routes() -> list[Route]:
    return [
        Route("/api/v1/models/load", load, methods=["POST"]),
        Route("/api/v1/models/unload", unload, methods=["POST"]),
        Route("/api/v1/models/download", download, methods=["POST"]),
        Route("/api/v1/models/download/status/{job_id}", download_status),
        Route("/__fake__/variants", control_variants, methods=["POST"]),
        Route("/__fake__/downloads", control_downloads, methods=["POST"]),
        Route("/__fake__/foreign", control_foreign, methods=["POST"]),
    ]
