"""Native MLX chat models, run inside the llm process with mlx-lm (embeddings live in mlx_embed.py).
Imports mlx* only inside functions; loads each model once per process; never touches the network."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import click
import llm
from llm.parts import StreamEvent
from pydantic import Field

from .local_models import LocalModel, LocalModelError, inspect_folder

# Used when neither the user nor the model's generation_config.json says otherwise; these are
# LM Studio's own defaults, so a model answers alike through the server and natively.
FALLBACK_SAMPLING = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05}
DEFAULT_MAX_TOKENS = 4096


class ChatOptions(llm.Options):
    temperature: float | None = Field(
        default=None,
        ge=0,
        le=2,
        description="Sampling temperature; 0 always picks the most likely token "
        "(default: the model's generation_config.json, else 0.8)",
    )
    top_p: float | None = Field(
        default=None, gt=0, le=1, description="Nucleus sampling: keep the smallest set of tokens with this much probability"
    )
    top_k: int | None = Field(default=None, ge=0, description="Sample from the k most likely tokens only; 0 disables")
    min_p: float | None = Field(
        default=None, ge=0, le=1, description="Drop tokens less likely than min_p times the most likely token"
    )
    repetition_penalty: float | None = Field(
        default=None, gt=0, le=5, description="Penalise tokens seen in the last 20 tokens; 1.0 means no penalty"
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description=f"Maximum number of tokens to generate (default {DEFAULT_MAX_TOKENS})"
    )
    seed: int | None = Field(default=None, ge=0, description="Random seed: the same seed, prompt and options give the same output")


# ---------------------------------------------------------------- errors


class NativeModelError(llm.ModelError, click.ClickException):
    """A one-line model error. Also a ClickException because `llm embed` lets ModelError escape as a
    traceback (llm 0.36 catches it only around prompts); click prints this one as `Error: ...`."""

    def __init__(self, message: str):
        click.ClickException.__init__(self, message)


def _model_error(local: LocalModel, exc: BaseException, doing: str, engine: str = "mlx-lm") -> NativeModelError:
    """Turn whatever mlx raised into one line that says what happened and what to do."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, MemoryError) or any(
        marker in lowered for marker in ("out of memory", "bad_alloc", "resource limit", "[metal::malloc]", "failed to allocate")
    ):
        gigabytes = local.size_bytes / 1e9
        return NativeModelError(
            f"Out of memory {doing} {local.model_id} ({gigabytes:.1f} GB of weights): "
            "close other models or use a smaller quantization"
        )
    if "not supported" in lowered and "model type" in lowered:
        from importlib.metadata import version

        return NativeModelError(
            f"{local.model_id} uses the '{local.arch}' architecture, which {engine} {version(engine)} "
            f"cannot run: try `pip install -U {engine}`"
        )
    return NativeModelError(f"{local.model_id} failed while {doing} ({local.path}): {text}")


def _check_folder(local: LocalModel) -> None:
    if local.problem:
        raise NativeModelError(f"{local.model_id}: {local.problem} (remove it with `llm lmstudio mlx remove {local.name}`)")
    try:
        inspect_folder(local.path)
    except LocalModelError as exc:
        raise NativeModelError(f"{local.model_id}: {exc}") from None


# ---------------------------------------------------------------- chat runtime


class ChatRuntime:
    """A loaded chat model plus the KV cache of the last generation, shared by every turn in this process."""

    def __init__(self, local: LocalModel, model, tokenizer, load_seconds: float):
        self.local = local
        self.model = model
        self.tokenizer = tokenizer
        self.load_seconds = load_seconds
        self.sampling_defaults = _generation_config(local.path)
        self._lock = threading.Lock()
        self._cache = None  # list of per-layer caches, or None
        self._cache_tokens: list[int] = []  # exactly the tokens whose keys/values are in _cache

    def render(self, messages: list[dict], tools: list[dict] | None) -> list[int]:
        kwargs = {"tools": tools} if tools else {}
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, **kwargs))

    def checkout_cache(self, tokens: list[int]) -> tuple[list, int]:
        """A prompt cache for `tokens` and how many leading tokens it already holds.

        Takes the cache away from the runtime, so a second generation running at the same time
        (another thread, or an interleaved Python caller) gets a fresh cache instead of a shared one."""
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

        with self._lock:
            cache, cached_tokens = self._cache, self._cache_tokens
            self._cache, self._cache_tokens = None, []
        if cache is not None:
            common = 0
            for a, b in zip(cached_tokens, tokens):
                if a != b:
                    break
                common += 1
            # At least one prompt token must go through the model to produce the first logits.
            common = min(common, len(tokens) - 1)
            excess = len(cached_tokens) - common
            if common > 0:
                if excess == 0:
                    return cache, common
                if can_trim_prompt_cache(cache) and trim_prompt_cache(cache, excess) == excess:
                    return cache, common
        return make_prompt_cache(self.model), 0

    def checkin_cache(self, cache: list, fed_tokens: list[int]) -> None:
        """Keep `cache` for the next turn; `fed_tokens` are the prompt plus generated tokens."""
        offset = next((c.offset for c in cache if isinstance(getattr(c, "offset", None), int)), None)
        if offset is None or offset > len(fed_tokens):
            return  # a cache we cannot map back to tokens is not worth keeping
        with self._lock:
            self._cache, self._cache_tokens = cache, fed_tokens[:offset]


def _generation_config(path: Path) -> dict:
    try:
        data = json.loads((path / "generation_config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("do_sample") is False:
        return {}
    keys = {"temperature": float, "top_p": float, "top_k": int, "min_p": float, "repetition_penalty": float}
    result = {}
    for key, cast in keys.items():
        if isinstance(data.get(key), (int, float)):
            result[key] = cast(data[key])
    return result


_CHAT: dict[str, ChatRuntime] = {}
_LOAD_LOCK = threading.Lock()


def load_once(loaded: dict, local: LocalModel, engine: str, make: Callable[[], Any]):
    """loaded[local.path], built by make() on first use; it stays loaded for the life of the process.
    Shared by chat and embeddings (mlx_embed.py) so that two threads never load the same weights twice."""
    key = str(local.path)
    runtime = loaded.get(key)
    if runtime is not None:
        return runtime
    with _LOAD_LOCK:
        runtime = loaded.get(key)
        if runtime is not None:
            return runtime
        _check_folder(local)
        try:
            runtime = make()
        except Exception as exc:  # mlx and transformers raise many types; all become one line
            raise _model_error(local, exc, "loading", engine) from exc
        loaded[key] = runtime
        return runtime


def load_chat(local: LocalModel) -> ChatRuntime:
    """The loaded chat model for `local`, loading it on first use."""

    def make():
        started = time.perf_counter()
        from mlx_lm import load

        model, tokenizer = load(str(local.path))
        return ChatRuntime(local, model, tokenizer, time.perf_counter() - started)

    return load_once(_CHAT, local, "mlx-lm", make)


def clear_prompt_caches() -> None:
    """Forget every kept KV cache but keep the models loaded (benchmarks measure an uncached turn this way)."""
    for runtime in list(_CHAT.values()):
        runtime.checkout_cache([0])


def unload_all() -> None:
    """Drop every loaded chat model (tests and benchmarks use this to measure a cold start)."""
    with _LOAD_LOCK:
        _CHAT.clear()


# ---------------------------------------------------------------- prompt translation


def chat_messages(prompt: llm.Prompt) -> list[dict]:
    """prompt.messages (the whole chain, also on `llm -c`) as chat-template messages."""
    from llm.parts import TextPart, ToolCallPart, ToolResultPart

    out: list[dict] = []
    current_system = None
    for message in prompt.messages:
        if message.role == "tool":
            for part in message.parts:
                if isinstance(part, ToolResultPart):
                    out.append({"role": "tool", "content": part.output, "name": part.name, "tool_call_id": part.tool_call_id})
            continue
        text = "".join(p.text for p in message.parts if isinstance(p, TextPart))
        if message.role == "system":
            if text == current_system:
                continue  # llm repeats an unchanged system prompt; templates want it once
            current_system = text
        entry: dict[str, Any] = {"role": message.role, "content": text}
        calls = [p for p in message.parts if isinstance(p, ToolCallPart)]
        if calls:
            entry["tool_calls"] = [
                {"id": c.tool_call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls
            ]
        out.append(entry)
    # `llm -c -s NEW` carries the new system prompt only in prompt.system.
    if prompt.system and prompt.system != current_system:
        out = [m for m in out if m["role"] != "system"]
        out.insert(0, {"role": "system", "content": prompt.system})
    return out


def tool_specs(tools) -> list[dict] | None:
    if not tools:
        return None
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description or "",
                "parameters": tool.input_schema or {"type": "object", "properties": {}},
            },
        }
        for tool in tools
    ]


def _sampling(runtime: ChatRuntime, options: ChatOptions) -> dict:
    chosen = dict(FALLBACK_SAMPLING) | runtime.sampling_defaults
    for key in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty"):
        value = getattr(options, key)
        if value is not None:
            chosen[key] = value
    return chosen


# ---------------------------------------------------------------- generation


def generate_events(local: LocalModel, prompt: llm.Prompt, response) -> Iterator[StreamEvent]:
    """Run one turn: stream text/reasoning/tool-call events, then record usage and timings on `response`."""
    runtime = load_chat(local)
    messages = chat_messages(prompt)
    tools = tool_specs(prompt.tools)

    import mlx.core as mx
    from mlx_lm import stream_generate
    from mlx_lm.generate import TextStateMachine, make_text_state_machine
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    tokenizer = runtime.tokenizer
    options = prompt.options
    if tools and not tokenizer.has_tool_calling:
        raise NativeModelError(f"{local.model_id}: mlx-lm found no tool-call format in this model's chat template")
    try:
        tokens = runtime.render(messages, tools)
    except Exception as exc:
        raise NativeModelError(f"{local.model_id}: its chat template failed on this conversation: {exc}") from exc
    sampling = _sampling(runtime, options)
    sampler = make_sampler(
        temp=sampling["temperature"], top_p=sampling["top_p"], min_p=sampling["min_p"], top_k=sampling["top_k"]
    )
    processors = make_logits_processors(repetition_penalty=sampling.get("repetition_penalty"))
    max_tokens = options.max_tokens or DEFAULT_MAX_TOKENS
    if options.seed is not None:
        mx.random.seed(options.seed)

    # The reply starts inside a reasoning block when the template opened one (Qwen3-style `<think>\n`).
    initial_state = "normal"
    if tokenizer.has_thinking and tokenizer.rfind_think_start(tokens) > tokenizer.rfind_think_end(tokens):
        initial_state = "reasoning"
    machine = make_text_state_machine(tokenizer)
    state = machine.make_state(initial_state)

    cache, reused = runtime.checkout_cache(tokens)
    generated: list[int] = []
    tool_text = ""
    previous = initial_state
    last = None
    first_token_at = None
    started = time.perf_counter()

    def emit(segment_state, text):
        nonlocal tool_text, previous
        events = []
        if previous == "tool" and segment_state != "tool":
            closed = segment_state is not None  # None: the reply ended (max_tokens) inside the call
            events.extend(_tool_call_events(tokenizer, tool_text, closed, tools, response))
            tool_text = ""
        previous = segment_state
        if not text:
            return events
        if segment_state == "reasoning":
            events.append(StreamEvent(type="reasoning", chunk=text))
        elif segment_state == "tool":
            tool_text += text
        elif segment_state == "normal":
            events.append(StreamEvent(type="text", chunk=text))
        return events

    completed = False
    try:
        for gen in stream_generate(
            runtime.model,
            tokenizer,
            mx.array(tokens[reused:]),
            max_tokens=max_tokens,
            sampler=sampler,
            logits_processors=processors or None,
            prompt_cache=cache,
        ):
            if first_token_at is None:
                first_token_at = time.perf_counter()
            generated.append(gen.token)
            last = gen
            state, segments = TextStateMachine.split(state, gen.text)
            for segment_state, text in segments:
                yield from emit(segment_state, text)
        state, rest, segment_state = TextStateMachine.flush(state)
        yield from emit(segment_state, rest)
        yield from emit(None, "")  # closes a tool call the reply ended inside
        completed = True
    except llm.ModelError:
        raise
    except Exception as exc:
        raise _model_error(local, exc, "running") from exc
    finally:
        # An interrupted generation leaves the cache half-written; only a finished one is reused.
        if completed:
            runtime.checkin_cache(cache, tokens + generated)

    ended = time.perf_counter()
    output_tokens = last.generation_tokens if last else 0
    details = {"cached_tokens": reused} if reused else None
    response.set_usage(input=len(tokens), output=output_tokens, details=details)
    response.response_json = {
        "engine": "mlx-lm",
        "path": str(local.path),
        "finish_reason": last.finish_reason if last else None,
        "prompt_tokens": len(tokens),
        "prompt_tokens_cached": reused,
        "prompt_tokens_processed": len(tokens) - reused,
        "prompt_tps": round(last.prompt_tps, 2) if last else None,
        "generation_tokens": output_tokens,
        "generation_tps": round(last.generation_tps, 2) if last else None,
        "time_to_first_token_s": round(first_token_at - started, 4) if first_token_at else None,
        "total_s": round(ended - started, 4),
        "peak_memory_gb": round(last.peak_memory, 4) if last else None,
    }


def _tool_call_events(tokenizer, tool_text: str, closed: bool, tools, response) -> list[StreamEvent]:
    raw = f"{tokenizer.tool_call_start}{tool_text}{(tokenizer.tool_call_end or '') if closed else ''}"
    if not tools:
        # Tools were not offered, so a tool-call block is just text the model wrote.
        return [StreamEvent(type="text", chunk=raw)]
    try:
        parsed = tokenizer.tool_parser(tool_text, tools)
    except (ValueError, KeyError, TypeError):
        return [StreamEvent(type="text", chunk=raw)]  # a malformed call stays visible instead of vanishing
    events = []
    for call in parsed if isinstance(parsed, list) else [parsed]:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            events.append(StreamEvent(type="text", chunk=raw))
            continue
        arguments = call.get("arguments") or {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = {"_raw": arguments}
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        events.append(StreamEvent(type="tool_call_name", chunk=call["name"], tool_call_id=call_id))
        events.append(StreamEvent(type="tool_call_args", chunk=json.dumps(arguments), tool_call_id=call_id))
        response.add_tool_call(llm.ToolCall(name=call["name"], arguments=arguments, tool_call_id=call_id))
    return events


# ---------------------------------------------------------------- llm models


_TOOLS_MEMO: dict[tuple[str, int | None], bool] = {}


def _supports_tools(local: LocalModel) -> bool:
    """Whether mlx-lm will parse tool calls for this model, decided from small files only."""
    config_file = local.path / "tokenizer_config.json"
    try:
        key = (str(local.path), config_file.stat().st_mtime_ns)
    except OSError:
        key = (str(local.path), None)
    if key not in _TOOLS_MEMO:
        _TOOLS_MEMO[key] = _template_renders_tools(local.path)
    return _TOOLS_MEMO[key]


def _template_renders_tools(path: Path) -> bool:
    try:
        config = json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    if config.get("tool_parser_type"):
        return True
    template = config.get("chat_template")
    if isinstance(template, list):  # some repos ship several named templates
        template = " ".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    if not isinstance(template, str):
        jinja = path / "chat_template.jinja"
        template = jinja.read_text() if jinja.is_file() else ""
    if any(all(marker in template for marker in markers) for markers in _TOOL_TEMPLATE_MARKERS):
        return True
    added = config.get("added_tokens_decoder") or {}
    contents = {str(t.get("content")) for t in added.values() if isinstance(t, dict)}
    return {"<|tool_call_start|>", "<|tool_call_end|>"} <= contents


# The template markers from which mlx-lm infers a tool parser (mlx_lm.tokenizer_utils._infer_tool_parser),
# read here without importing mlx-lm; a loaded model answers exactly from its tokenizer instead.
_TOOL_TEMPLATE_MARKERS = (
    ("<minimax:tool_call>",),
    ("<|tool_call>", "<tool_call|>"),
    ("<start_function_call>",),
    ("<longcat_tool_call>",),
    ("<arg_key>",),
    ("<|tool_list_start|>",),
    ("<|tool_call_start|>",),
    ("<tool_call>\\n<function=",),
    ("<tool_call>\n<function=",),
    ("<|tool_calls_section_begin|>",),
    ('<function name="', '<param name="'),
    ("[TOOL_CALLS]",),
    ("<atem:function_calls>",),
    ("<tool_call>", "tool_call.name"),
)


class _ChatBase:
    can_stream = True
    supports_schema = False  # mlx-lm has no constrained decoding; claiming schemas would be a lie
    Options = ChatOptions

    def __init__(self, local: LocalModel):
        self.local = local
        self.model_id = local.model_id

    @property
    def supports_tools(self) -> bool:
        # Read lazily: llm builds every registered model on each lookup, but asks this only for tool prompts.
        runtime = _CHAT.get(str(self.local.path))
        if runtime is not None:
            return bool(runtime.tokenizer.has_tool_calling)
        return _supports_tools(self.local)

    def __str__(self):
        return f"MLX (native): {self.model_id}"


class MLXChatModel(_ChatBase, llm.Model):
    """A native MLX chat model: `mlx-lm` in this process, no server."""

    def execute(self, prompt, stream, response, conversation):
        yield from generate_events(self.local, prompt, response)


class MLXAsyncChatModel(_ChatBase, llm.AsyncModel):
    """The async face of MLXChatModel: generation runs in a worker thread, events cross via a queue."""

    async def execute(self, prompt, stream, response, conversation):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        done = object()

        def work():
            import mlx.core as mx

            events = generate_events(self.local, prompt, response)
            try:
                for event in events:
                    if cancelled.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, event)
                loop.call_soon_threadsafe(queue.put_nowait, done)
            except BaseException as exc:  # re-raised in the event loop's task
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                events.close()
                # mlx-lm's generation stream is thread-local; a thread that exits still owning one
                # makes the interpreter abort at shutdown ("terminate called without an active exception").
                mx.synchronize()
                mx.clear_streams()

        worker = threading.Thread(target=work, name=f"mlx-{self.local.name}", daemon=True)
        worker.start()
        try:
            while True:
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()
            while worker.is_alive():  # let it release its stream before anyone can exit
                await asyncio.sleep(0.005)
