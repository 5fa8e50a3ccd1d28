"""The stand-in's model state: what is downloaded, what is loaded, JIT loading, idle TTL and auto-evict.
Thread-safe and transport-free; it must never speak HTTP or websocket, and never fake a load it did not do."""
# Over ~450 lines: everything LM Studio keeps about models (downloaded, variants, loaded, loading, downloads,
# the generation it acts as) must change under one lock, so it stays one object.

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

META_FILE = "lmstudio-meta.json"
DEFAULT_JIT_TTL = 3600.0
# Behaviours of particular LM Studio releases and open bugs, off (None) until a test turns one on through
# POST /__fake__/config; each is implemented where it applies, which cites its source:
#   responses_growth       /v1/responses re-reads a chain that doubles every turn, then 500 (bug-tracker#2074)
#   responses_system       "reject_on_stored": a system prompt on a chained turn is a 500 (#2219, lms#611);
#                          "ignore_instructions": `instructions` has no effect (#1154)
#   reasoning_whole        /v1/responses sends reasoning whole, never as deltas
#   single_model_fallback  a model it cannot serve is answered by the one LLM loaded (#619, #366)
#   zero_input_on_repeat   /v1/responses reports input_tokens 0 for a repeated identical input (lms#553)
QUIRKS = ("responses_growth", "responses_system", "reasoning_whole", "single_model_fallback", "zero_input_on_repeat")


@dataclass(frozen=True)
class Generation:
    """What one line of LM Studio releases serves; the stand-in acts as one (`--lmstudio-version`)."""

    name: str
    native_v0: bool  # /api/v0/*: "Requires LM Studio 0.3.6 or newer" (lmstudio.ai/docs/developer/rest/endpoints)
    native_v1: bool  # /api/v1/* REST: LM Studio 0.4.0 (lmstudio.ai/docs/developer/rest)
    capabilities: bool  # `capabilities` in v0 rows: 0.3.16 (absent from 0.3.15 listings; tests/recorded/SOURCES.md)
    include_usage: bool  # stream_options.include_usage: 0.3.18 (docs developer/api-changelog)
    auth: bool  # API tokens, on REST and SDK alike: 0.4.0 (lmstudio.ai/docs/developer/core/authentication)
    parallel: int  # concurrent predictions per model: 4 by default since 0.4 (docs app/advanced/parallel-requests)
    error_status: int  # model errors: 404 in 0.3.5 (lms#107, agent-zero#215), 400 later (gpt-researcher#1556)
    responses: bool = False  # POST /v1/responses, stateful with previous_response_id: 0.3.29 (docs developer/api-changelog)


GENERATIONS = {
    g.name: g
    for g in (
        # 0.3.5 also answers routes it lacks with a bare 404 (no recording of its unknown-route body exists),
        # which makes this generation stand for other OpenAI-compatible servers too.
        Generation("0.3.5", False, False, False, False, False, 1, 404),
        Generation("0.3.15", True, False, False, False, False, 1, 400),
        Generation("0.4", True, True, True, True, True, 4, 400, responses=True),
    )
}


@dataclass
class ModelEntry:
    """One downloaded model, as LM Studio describes it."""

    key: str
    path: Path
    type: str  # "llm" | "vlm" | "embeddings"
    publisher: str
    display_name: str
    arch: str | None
    format: str
    quantization: str | None
    size_bytes: int
    params_string: str | None
    max_context_length: int
    trained_for_tool_use: bool
    vision: bool
    reasoning: bool

    @property
    def is_llm(self) -> bool:
        return self.type in ("llm", "vlm")


@dataclass
class Instance:
    """One loaded instance of a model."""

    identifier: str
    entry: ModelEntry
    instance_reference: str
    context_length: int
    ttl_seconds: float | None
    jit: bool
    loaded_at: float
    last_used: float
    status: str = "idle"  # "idle" | "generating"
    engine: object = None
    gpu_ratio: float | None = None
    config: dict = field(default_factory=dict)  # every load setting the client sent (flash_attention, ...)
    active: int = field(default=0, repr=False)


class LoadError(Exception):
    """The model exists but could not be loaded."""


class DuplicateIdentifier(LoadError):
    """An instance with the requested identifier is already loaded."""


class ModelNotFound(LookupError):
    """No downloaded model has this key."""


class NotLoaded(LookupError):
    """The model is not loaded and JIT loading is not allowed."""


def _dir_size(path: Path) -> int:
    total = 0
    for item in path.rglob("*"):
        try:
            if item.is_file():
                total += item.stat().st_size  # follows symlinks: the size LM Studio would report
        except OSError:
            continue
    return total


def _quantization(config: dict) -> str | None:
    quant = config.get("quantization") or config.get("quantization_config")
    if isinstance(quant, dict) and quant.get("bits"):
        return f"{quant['bits']}bit"
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "")
    return {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}.get(dtype)


def _params_string(path: Path, config: dict) -> str | None:
    # Rough parameter count from the weight file sizes; LM Studio shows strings like "7B" or "135M".
    weights = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    if not weights:
        return None
    bytes_per = 2 if _quantization(config) in ("F16", "BF16") else 4
    count = weights / bytes_per
    if count >= 1e9:
        return f"{count / 1e9:.0f}B"
    if count >= 1e6:
        return f"{count / 1e6:.0f}M"
    return f"{count / 1e3:.0f}K"


def read_entry(models_dir: Path, folder: Path) -> ModelEntry | None:
    """Describe one `<publisher>/<model>/` folder, or None if it holds no usable model."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
    except ValueError:
        return None
    meta = {}
    if (folder / META_FILE).is_file():
        meta = json.loads((folder / META_FILE).read_text())
    publisher = folder.parent.name
    architectures = " ".join(config.get("architectures") or [])
    is_embedding = (folder / "modules.json").is_file() or "Bert" in architectures
    template = ""
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        try:
            template = json.loads(tokenizer_config.read_text()).get("chat_template") or ""
        except ValueError:
            template = ""
    model_type = meta.get("type") or ("embeddings" if is_embedding else "llm")
    return ModelEntry(
        key=meta.get("key") or f"{publisher}/{folder.name}".lower(),
        path=folder,
        type=model_type,
        publisher=publisher,
        display_name=meta.get("display_name") or folder.name.replace("-", " ").title(),
        arch=meta.get("arch", config.get("model_type")),
        format=meta.get("format", "mlx"),
        quantization=meta.get("quantization", _quantization(config)),
        size_bytes=_dir_size(folder),
        params_string=meta.get("params_string", _params_string(folder, config)),
        max_context_length=int(
            meta.get("max_context_length") or config.get("max_position_embeddings") or 4096
        ),
        trained_for_tool_use=bool(meta.get("trained_for_tool_use", "tools" in template)),
        vision=bool(meta.get("vision", model_type == "vlm")),
        reasoning=bool(meta.get("reasoning", False)),
    )


def _kv_bytes_per_token(entry: ModelEntry) -> int:
    """fp16 keys and values for every layer: what one token of context costs."""
    try:
        config = json.loads((entry.path / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    layers = int(config.get("num_hidden_layers") or 1)
    heads = int(config.get("num_attention_heads") or 1)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or (int(config.get("hidden_size") or heads) // heads))
    return 2 * layers * kv_heads * head_dim * 2


def scan_models_dir(models_dir: Path) -> list[ModelEntry]:
    entries = []
    for publisher in sorted(p for p in Path(models_dir).iterdir() if p.is_dir()):
        for folder in sorted(p for p in publisher.iterdir() if p.is_dir()):
            entry = read_entry(models_dir, folder)
            if entry is not None:
                entries.append(entry)
    return entries


def _default_engine_factory(entry: ModelEntry, context_length: int):
    from .engine import load_engine

    return load_engine(entry, context_length)


class LMStudioState:
    """Downloaded models, loaded instances and the server settings that govern loading."""

    def __init__(
        self, models_dir: Path, engine_factory: Callable = _default_engine_factory, ttl_check_interval=0.2,
        generation: str = "0.4",
    ):
        self.models_dir = Path(models_dir)
        self.default_generation = GENERATIONS[generation]
        self.loading: set[str] = set()  # keys whose load is under way: v0 lists them as state "loading"
        self._engine_factory = engine_factory
        self._lock = threading.RLock()
        # Loads are serialized (like LM Studio's loader) so identifier assignment cannot race,
        # and concurrent JIT requests for one model share a single load.
        self._load_lock = threading.RLock()
        self._entries = {e.key: e for e in scan_models_dir(self.models_dir)}
        self._instances: dict[str, Instance] = {}
        self.load_fault: Callable[[], str | None] | None = None  # set by the fault registry
        self._scripts: deque[str] = deque()
        self.reset_settings()
        self._stop = threading.Event()
        self._ttl_thread = threading.Thread(
            target=self._ttl_loop, args=(ttl_check_interval,), name="fake-lmstudio-ttl", daemon=True
        )
        self._ttl_thread.start()

    def reset_settings(self) -> None:
        self.generation = self.default_generation
        self.quirks: dict = dict.fromkeys(QUIRKS)
        self.jit = True
        self.auto_evict = True
        self.default_jit_ttl = DEFAULT_JIT_TTL
        self.auth_token: str | None = None
        self.load_fail: str | None = None
        # Seconds a load stays in state "loading" beyond building the engine (a slow disk, a big model): tests
        # that watch the listing during a load need a window wider than a tiny model's few milliseconds.
        self.load_seconds: float = 0.0
        # LM Studio's model loading guardrails: loads whose estimate exceeds this many bytes are refused.
        self.memory_limit: int | None = None
        # key -> (variant entries, the selected one's key): set per test, since variants change every listing.
        self._variants: dict[str, tuple[list[ModelEntry], str]] = {}
        # Download knobs (rest_v1.py): speed in bytes/s, free disk bytes, a failure; models downloaded meanwhile go.
        self.download_settings: dict = {}
        self.epoch = getattr(self, "epoch", 0) + 1  # a download started before a reset must not land after it
        for key in getattr(self, "_downloaded_here", []):
            entry = self._entries.pop(key, None)
            if entry is not None:
                shutil.rmtree(entry.path, ignore_errors=True)
        self._downloaded_here: list[str] = []

    # -- scripted outputs: forced through real generation by the engine ----------------------
    def add_scripts(self, outputs: list[str]) -> None:
        with self._lock:
            self._scripts.extend(outputs)

    def pop_script(self) -> str | None:
        with self._lock:
            return self._scripts.popleft() if self._scripts else None

    def scripts(self) -> list[str]:
        with self._lock:
            return list(self._scripts)

    def clear_scripts(self) -> None:
        with self._lock:
            self._scripts.clear()

    def close(self) -> None:
        self._stop.set()

    # -- downloaded models -------------------------------------------------------------------
    def downloaded(self) -> list[ModelEntry]:
        with self._lock:
            return list(self._entries.values())

    def add_downloaded(self, folder: Path, epoch: int) -> ModelEntry | None:
        """A model folder a download just finished writing becomes a downloaded model (unless a reset came between)."""
        entry = read_entry(self.models_dir, folder)
        with self._lock:
            if entry is None or epoch != self.epoch:
                shutil.rmtree(folder, ignore_errors=True)
                return None
            self._entries[entry.key] = entry
            self._downloaded_here.append(entry.key)
        return entry

    def entry(self, key) -> ModelEntry | None:
        with self._lock:
            found = self._entries.get(key) or self._entries.get(str(key).lower())
            if found is None and "@" in str(key):
                base = str(key).lower().partition("@")[0]
                found = next((v for v in self._variants.get(base, ([], ""))[0] if v.key == str(key).lower()), None)
            return found

    # -- variants (`key@quantization`): lmstudio-js ModelInfoBase.variants / selectedVariant ---
    def set_variants(self, key: str, names: list[str], selected: str | None = None) -> None:
        """Give a downloaded model variants: each a `key@name` entry of its own, sharing the model's files."""
        from dataclasses import replace

        base = self._entries[key]
        entries = [replace(base, key=f"{base.key}@{name}".lower(), quantization=name) for name in names]
        with self._lock:
            self._variants[base.key] = (entries, f"{base.key}@{selected or names[0]}".lower())

    def variants(self, key: str) -> tuple[list[ModelEntry], str | None]:
        """The variant entries of a model and the selected variant's key (([], None) when it has none)."""
        with self._lock:
            entries, selected = self._variants.get(key, ([], None))
            return list(entries), selected

    # -- loaded instances --------------------------------------------------------------------
    def loaded(self, type: str | None = None) -> list[Instance]:
        with self._lock:
            instances = list(self._instances.values())
        if type is None:
            return instances
        wanted = {"llm": ("llm", "vlm"), "embedding": ("embeddings",), "embeddings": ("embeddings",)}.get(type, (type,))
        return [i for i in instances if i.entry.type in wanted]

    def instance(self, identifier) -> Instance | None:
        with self._lock:
            return self._instances.get(identifier)

    def _next_identifier(self, key: str) -> str:
        if key not in self._instances:
            return key
        n = 2
        while f"{key}:{n}" in self._instances:
            n += 1
        return f"{key}:{n}"

    def estimate(self, key, *, context_length=None, gpu_ratio=None, config=None) -> dict:
        """LM Studio's EstimatedResourcesUsage (lmstudio-js EstimatedResourcesUsage.ts) for a load: the weights
        plus an fp16 KV cache of the context, on the GPU as far as the offload ratio (and KV offload) say."""
        entry = self.entry(key)
        if entry is None:
            raise ModelNotFound(key)
        ctx = int(context_length or min(entry.max_context_length, 4096))
        model_bytes = int(entry.size_bytes)
        context_bytes = ctx * _kv_bytes_per_token(entry)
        ratio = 1.0 if gpu_ratio is None else float(gpu_ratio)
        kv_on_gpu = (config or {}).get("offload_kv_cache_to_gpu", True)
        gpu_bytes = int(model_bytes * ratio) + (context_bytes if kv_on_gpu and ratio > 0 else 0)
        total = model_bytes + context_bytes
        return {
            "memory": {
                "confidence": "high",
                "modelVramBytes": int(model_bytes * ratio),
                "contextVramBytes": gpu_bytes - int(model_bytes * ratio),
                "totalVramBytes": gpu_bytes,
                "modelBytes": model_bytes,
                "contextBytes": context_bytes,
                "totalBytes": total,
            },
            "passesGuardrails": self.memory_limit is None or total <= self.memory_limit,
        }

    def load(
        self, key, *, identifier=None, ttl=None, context_length=None, gpu_ratio=None, jit=False, on_progress=None,
        config=None,
    ) -> Instance:
        entry = self.entry(key)
        if entry is None:
            raise ModelNotFound(key)
        with self._load_lock:
            with self._lock:
                if identifier is not None and identifier in self._instances:
                    raise DuplicateIdentifier(f'Model with identifier "{identifier}" already loaded')
                chosen = identifier or self._next_identifier(entry.key)
            failure = self.load_fail or (self.load_fault() if self.load_fault else None)
            if on_progress:
                on_progress(0.0)
            if failure:
                raise LoadError(failure)
            estimate = self.estimate(entry.key, context_length=context_length, gpu_ratio=gpu_ratio, config=config)
            if not estimate["passesGuardrails"]:
                # LM Studio's guardrail refusal, worded as it logs it (lmstudio-bug-tracker #1202, #1151).
                gigabytes = estimate["memory"]["totalBytes"] / 1e9
                raise LoadError(
                    "Model loading was stopped due to insufficient system resources. Under the current settings, "
                    f"this model requires approximately {gigabytes:.2f} GB of memory, and continuing to load it would "
                    "likely overload your system and cause it to freeze. If you think this is incorrect, you can "
                    "adjust the model loading guardrails in settings."
                )
            ctx = int(context_length or min(entry.max_context_length, 4096))
            if ctx < 1 or ctx > entry.max_context_length:
                raise LoadError(
                    f"Requested context length {ctx} is outside 1..{entry.max_context_length} for {entry.key}"
                )
            if on_progress:
                on_progress(0.5)
            self.loading.add(entry.key)
            try:
                time.sleep(self.load_seconds)
                engine = self._engine_factory(entry, ctx)
            except Exception as exc:  # a broken model folder is a load error, as in LM Studio
                raise LoadError(f"{type(exc).__name__}: {exc}") from exc
            finally:
                self.loading.discard(entry.key)
            now = time.monotonic()
            instance = Instance(
                identifier=chosen,
                entry=entry,
                instance_reference=uuid.uuid4().hex,
                context_length=ctx,
                ttl_seconds=float(ttl) if ttl is not None else None,
                jit=jit,
                loaded_at=now,
                last_used=now,
                engine=engine,
                gpu_ratio=gpu_ratio,
                config=dict(config or {}),
            )
            with self._lock:
                self._instances[chosen] = instance
            if on_progress:
                on_progress(1.0)
            return instance

    def unload(self, identifier) -> Instance:
        with self._lock:
            instance = self._instances.pop(identifier, None)
        if instance is None:
            raise NotLoaded(identifier)
        return instance

    def unload_all(self) -> None:
        with self._lock:
            self._instances.clear()

    def _find_loaded(self, model: str) -> Instance | None:
        with self._lock:
            instance = self._instances.get(model)
            if instance is None:
                entry = self.entry(model)
                if entry is not None:
                    instance = next((i for i in self._instances.values() if i.entry.key == entry.key), None)
            if instance is not None:
                self.touch(instance)
            return instance

    def resolve(self, model: str, *, ttl=None, jit_allowed=True) -> Instance:
        """The instance an inference request for `model` runs on, JIT-loading it if allowed."""
        instance = self._find_loaded(model)
        if instance is not None:
            return instance
        entry = self.entry(model)
        if entry is None:
            raise ModelNotFound(model)
        if not (self.jit and jit_allowed):
            raise NotLoaded(model)
        with self._load_lock:
            instance = self._find_loaded(model)  # another request may have loaded it meanwhile
            if instance is not None:
                return instance
            if self.auto_evict:
                # "Only keep last JIT loaded model": manually loaded instances are never evicted.
                for previous in [i for i in self.loaded() if i.jit]:
                    try:
                        self.unload(previous.identifier)
                    except NotLoaded:
                        pass
            return self.load(entry.key, ttl=ttl if ttl is not None else self.default_jit_ttl, jit=True)

    # -- idle TTL ----------------------------------------------------------------------------
    def ttl_remaining(self, instance) -> float | None:
        if instance.ttl_seconds is None:
            return None
        if instance.status == "generating":
            return instance.ttl_seconds
        return max(0.0, instance.ttl_seconds - (time.monotonic() - instance.last_used))

    def touch(self, instance) -> None:
        instance.last_used = time.monotonic()

    def begin_use(self, instance) -> None:
        """Mark an instance busy: the idle timer must not unload it mid-generation."""
        with self._lock:
            instance.active += 1
            instance.status = "generating"
            self.touch(instance)

    def end_use(self, instance) -> None:
        with self._lock:
            instance.active = max(0, instance.active - 1)
            if instance.active == 0:
                instance.status = "idle"
            self.touch(instance)

    def _ttl_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.unload_idle()

    def unload_idle(self) -> list[str]:
        """Unload every idle instance whose TTL has run out; their identifiers."""
        with self._lock:
            expired = [
                i.identifier
                for i in self._instances.values()
                if i.ttl_seconds is not None and i.active == 0 and self.ttl_remaining(i) == 0.0
            ]
            for identifier in expired:
                self._instances.pop(identifier, None)
        return expired

    def age(self, seconds: float) -> list[str]:
        """As if `seconds` had passed with no request: every instance's idle time grows by that much, and the idle
        ones whose TTL runs out are unloaded at once (tests age instances instead of sleeping through a TTL)."""
        with self._lock:
            for instance in self._instances.values():
                instance.last_used -= seconds
        return self.unload_idle()
