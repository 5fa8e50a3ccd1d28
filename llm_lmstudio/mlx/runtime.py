"""A loaded native MLX chat model: weights and tokenizer (mlx-lm), its own sampling defaults and context length,
and the prompt caches of its conversations; loaded once per process. Imports mlx* only inside functions."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from llm_lmstudio.mlx.discovery import LocalModel
from llm_lmstudio.mlx.loading import load_once
from llm_lmstudio.mlx.prompt_cache import MemoryCaches, model_fingerprint


DEFAULT_MAX_TOKENS = 4096


class ChatRuntime:
    """A loaded chat model: weights, tokenizer, sampling defaults, and the prompt caches of its conversations."""

    def __init__(self, local: LocalModel, model, tokenizer, load_seconds: float):
        self.local = local
        self.model = model
        self.tokenizer = tokenizer
        self.load_seconds = load_seconds
        self.sampling_defaults = _generation_config(local.path)
        self.context_length = _context_length(local.path, tokenizer)
        self.fingerprint = model_fingerprint(local.path)
        self.caches = MemoryCaches()
        self._grammar_tokenizer = None

    def render(self, messages: list[dict], tools: list[dict] | None) -> list[int]:
        kwargs = {"tools": tools} if tools else {}
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, **kwargs))

    def grammar_tokenizer(self):
        """The tokenizer as llguidance sees it, built on the first schema prompt (about a second for a large vocabulary)."""
        if self._grammar_tokenizer is None:
            import llguidance.hf

            self._grammar_tokenizer = llguidance.hf.from_tokenizer(
                self.tokenizer._tokenizer, eos_token=sorted(self.tokenizer.eos_token_ids)
            )
        return self._grammar_tokenizer


def _context_length(path: Path, tokenizer) -> int | None:
    """The longest sequence the model was trained for (config.json), else the tokenizer's limit; None if unknown."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    for section in (config, config.get("text_config") if isinstance(config, dict) else None):
        if isinstance(section, dict) and isinstance(section.get("max_position_embeddings"), int):
            return section["max_position_embeddings"]
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10_000_000 else None  # transformers' "no limit" is 1e30


def _generation_config(path: Path) -> dict:
    """The model's own sampling defaults, under our option names."""
    try:
        data = json.loads((path / "generation_config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("do_sample") is False:
        return {}
    keys = {
        "temperature": ("temperature", float),
        "top_p": ("top_p", float),
        "top_k": ("top_k", int),
        "min_p": ("min_p", float),
        "repetition_penalty": ("repeat_penalty", float),
    }
    result = {}
    for key, (option, cast) in keys.items():
        if isinstance(data.get(key), (int, float)):
            result[option] = cast(data[key])
    return result


_CHAT: dict[str, ChatRuntime] = {}


class _PromptLengthWarning(logging.Filter):
    """transformers warns on stderr when a prompt is longer than the tokenizer's limit ("Token indices sequence
    length is longer than..."); a turn checks the length itself and refuses in one line, so the library's line
    would only be a stray one before it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token indices sequence length")


def _quiet_prompt_length_warning() -> None:
    logger = logging.getLogger("transformers.tokenization_utils_base")
    if not any(isinstance(f, _PromptLengthWarning) for f in logger.filters):
        logger.addFilter(_PromptLengthWarning())


def load_chat(local: LocalModel) -> ChatRuntime:
    """The loaded chat model for `local`, loading it on first use."""

    def make():
        started = time.perf_counter()
        from mlx_lm import load

        _quiet_prompt_length_warning()
        model, tokenizer = load(str(local.path))
        return ChatRuntime(local, model, tokenizer, time.perf_counter() - started)

    return load_once(_CHAT, local, "mlx-lm", make)


def loaded(local: LocalModel) -> ChatRuntime | None:
    """The chat model for `local` if this process has loaded it already; never loads."""
    return _CHAT.get(str(local.path))


def unload_all() -> None:
    """Drop every loaded chat model and its caches (tests and benchmarks use this to measure a cold start)."""
    _CHAT.clear()
