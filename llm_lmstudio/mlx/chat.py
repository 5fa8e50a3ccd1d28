"""Native MLX chat models for llm (`mlx/<name>`): options, the loaded model, the sync and async faces.
Imports mlx* only inside functions; loads each model once per process; never touches the network."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import llm
from pydantic import Field, field_validator

from llm_lmstudio.store.call_recording import recorded
from llm_lmstudio.store.response_cache import CacheOptions, cached
from llm_lmstudio.mlx.discovery import LocalModel
from llm_lmstudio.mlx.runtime import DEFAULT_MAX_TOKENS, loaded

KV_BITS = (2, 3, 4, 5, 6, 8)  # the widths mlx.core.quantize supports


class MLXOptions(CacheOptions):
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
    # Spelled as LM Studio's option (chat.py), so one -o works for both kinds of model.
    repeat_penalty: float | None = Field(
        default=None, gt=0, le=5, description="Penalise tokens seen in the last 20 tokens; 1.0 means no penalty"
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description=f"Maximum number of tokens to generate (default {DEFAULT_MAX_TOKENS})"
    )
    seed: int | None = Field(default=None, ge=0, description="Random seed: the same seed, prompt and options give the same output")
    draft_model: str | None = Field(
        default=None,
        description="Speculative decoding: a smaller native model with the same tokenizer (mlx/<name>) drafts "
        "tokens that this model checks; the output is what this model alone would write",
    )
    max_kv_size: int | None = Field(
        default=None, ge=64, description="Keep at most this many tokens in the KV cache (older ones are dropped, "
        "except the first 4), bounding memory on long conversations"
    )
    kv_bits: int | None = Field(
        default=None, description="Store the KV cache quantized to this many bits (2, 3, 4, 5, 6 or 8): less memory, "
        "slightly different output"
    )

    @field_validator("draft_model")
    @classmethod
    def _check_draft_model(cls, value):
        if value is not None and not value.removeprefix("mlx/"):
            raise ValueError("draft_model must name a native model: mlx/<name>")
        if value is not None and "/" in value.removeprefix("mlx/"):  # native names have no "/"; lmstudio/... ids do
            raise ValueError(f"{value} is not a native MLX model: the draft model runs in this process too, so name "
                             "one from `llm lmstudio mlx list` (mlx/<name>)")
        return value

    @field_validator("kv_bits")
    @classmethod
    def _check_kv_bits(cls, value):
        if value is not None and value not in KV_BITS:
            raise ValueError(f"kv_bits must be one of {', '.join(map(str, KV_BITS))}")
        return value


# ---------------------------------------------------------------- the loaded model














# ---------------------------------------------------------------- tools


_TOOLS_MEMO: dict[tuple, bool] = {}
# How mlx-lm 0.32 picks a tool parser (tokenizer_utils.load and _infer_tool_parser): the tokenizer config's
# tool_parser_type, else the model module's TOKENIZER_DEFAULTS, else the first of these groups whose strings are all
# in the chat template, else tokens of the vocabulary. tests/test_mlx_native.py checks these against mlx-lm's source.
TEMPLATE_MARKERS = (
    ("<minimax:tool_call>",), ("<|tool_call>", "<tool_call|>"), ("<start_function_call>",), ("<longcat_tool_call>",),
    ("<arg_key>",), ("<|tool_list_start|>",), ("<|tool_call_start|>",), ("<tool_call>\\n<function=",),
    ("<tool_call>\n<function=",), ("<|tool_calls_section_begin|>",), ('<function name="', '<param name="'),
    ("[TOOL_CALLS]",), ("<atem:function_calls>",), ("<tool_call>", "tool_call.name"),
)
VOCAB_MARKERS = ("<|open|>", "<|tool_call_start|>")  # one token of each vocabulary rule (kimi_k3's, pythonic's)
DEFAULT_PARSER_TYPES = {"muse_spark"}  # model types whose mlx-lm module names a tool parser in TOKENIZER_DEFAULTS
WEIGHT_SUFFIXES = {".safetensors", ".gguf", ".bin", ".npz", ".pt", ".pth", ".onnx", ".h5", ".msgpack"}


def _supports_tools(local: LocalModel) -> bool:
    """Whether mlx-lm parses tool calls for this model: read from its small files when they settle it, else asked
    of mlx-lm's tokenizer loader (no weights read, but transformers is imported: about 2 s)."""
    files = ("tokenizer_config.json", "chat_template.jinja", "tokenizer.json")
    key = (str(local.path), *(_mtime(local.path / name) for name in files))
    if key not in _TOOLS_MEMO:
        supported = _tools_from_files(local)
        if supported is None:
            supported = False
            if local.path.is_dir():  # mlx-lm would download a path that does not exist from the Hub
                from mlx_lm.utils import load_tokenizer

                try:
                    supported = bool(load_tokenizer(local.path).has_tool_calling)
                except Exception:  # loading the model says what is wrong, in one line
                    supported = False
        _TOOLS_MEMO[key] = supported
    return _TOOLS_MEMO[key]


def _tools_from_files(local: LocalModel) -> bool | None:
    """mlx-lm's answer from the files transformers would read: True when the chat template names a tool-call format,
    False when neither the template nor any vocabulary file holds one; None (ask mlx-lm) whenever they leave it open."""
    path = local.path
    try:
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (not isinstance(config, dict) or local.arch in DEFAULT_PARSER_TYPES
            or {"tool_parser_type", "auto_map", "fast_tokenizer_files"} & config.keys()
            or (path / "additional_chat_templates").exists()):  # a chosen parser, custom code, named templates
        return None
    try:  # transformers prefers chat_template.jinja to the config's template
        template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    except FileNotFoundError:
        template = config.get("chat_template")
    except (OSError, ValueError):
        return None
    if template is not None and not isinstance(template, str):
        return None
    if template and any(all(marker in template for marker in group) for group in TEMPLATE_MARKERS):
        return True
    markers = [form.encode() for marker in VOCAB_MARKERS for form in (marker, marker.replace("<", "\\u003c"))]
    try:
        for file in path.iterdir():
            if file.suffix in WEIGHT_SUFFIXES or not file.is_file():
                continue
            if "tiktoken" in file.name:  # base64 tokens: a byte search cannot rule them out
                return None
            data = file.read_bytes()
            if any(marker in data for marker in markers):
                return None
    except OSError:
        return None
    return False


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


# ---------------------------------------------------------------- llm models


class _ChatBase:
    can_stream = True
    supports_schema = True  # constrained decoding (llguidance) as a logits processor: see mlx_schema.py
    Options = MLXOptions

    def __init__(self, local: LocalModel):
        self.local = local
        self.model_id = local.model_id

    @property
    def supports_tools(self) -> bool:
        # Read lazily: llm builds every registered model on each lookup, but asks this only for tool prompts.
        runtime = loaded(self.local)
        if runtime is not None:
            return bool(runtime.tokenizer.has_tool_calling)
        return _supports_tools(self.local)

    def __str__(self):
        return f"MLX (native): {self.model_id}"

    def _turn(self, prompt, response, conversation, stop=None):
        from llm_lmstudio.mlx.turn import Turn

        return Turn(self.local, prompt, response, conversation.id if conversation else None, stop)


class MLXChatModel(_ChatBase, llm.Model):
    """A native MLX chat model: `mlx-lm` in this process, no server."""

    @cached
    @recorded
    def execute(self, prompt, stream, response, conversation):
        yield from self._turn(prompt, response, conversation).events()


_DONE = object()


class MLXAsyncChatModel(_ChatBase, llm.AsyncModel):
    """The async face of MLXChatModel: generation runs in a worker thread, events cross via a queue."""

    @cached
    @recorded
    async def execute(self, prompt, stream, response, conversation):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        finished = loop.create_future()
        stop = threading.Event()

        def work():
            import mlx.core as mx

            from llm_lmstudio.mlx.turn import Abandoned

            try:
                events = self._turn(prompt, response, conversation, stop).events()
                try:
                    for event in events:
                        if stop.is_set():
                            return
                        loop.call_soon_threadsafe(queue.put_nowait, event)
                finally:
                    events.close()
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)
            except Abandoned:
                pass
            except BaseException as exc:  # re-raised in the event loop's task
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                # mlx-lm's generation stream is thread-local, and a thread that exits still owning one makes
                # the interpreter abort at shutdown; once released, it cannot be used again in that thread,
                # so each generation gets a thread of its own rather than a pooled one.
                mx.synchronize()
                mx.clear_streams()
                try:
                    loop.call_soon_threadsafe(finished.set_result, None)
                except RuntimeError:  # the loop closed without waiting (its task was abandoned)
                    pass

        threading.Thread(target=work, name=f"mlx-{self.local.name}", daemon=True).start()
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            await finished  # the worker has released its mlx stream before anyone can exit
