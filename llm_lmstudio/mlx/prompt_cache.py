"""Prompt (KV) caches of native MLX chat: per loaded model, the last few conversations' caches in memory, and on
disk (mlx-lm's own file format) so that `llm -c` in a new process skips the history. Imports mlx only inside
functions; never hands out a cache without knowing exactly which tokens, model and tokenizer made it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from llm_lmstudio.core import files

# Conversations whose caches a loaded model keeps; the least recently used goes first. Two or three
# alternating conversations (llm chat sessions, the Python API) each find their own.
MEMORY_CONVERSATIONS = 4
FORMAT = "llm-lmstudio prompt cache 1"
# A temporary file this old belongs to a writer that died; younger ones may still be being written.
ABANDONED_AFTER_S = 3600


@dataclass
class Entry:
    """A KV cache and exactly the tokens whose keys and values it holds."""

    cache: list  # per-layer caches: the model's, then a draft model's
    tokens: list[int]
    layout: str  # the options that shape a cache (draft model, max_kv_size, kv_bits); others cannot reuse it


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def reusable_prefix(entry: Entry, tokens: list[int], layout: str) -> int:
    """How many leading `tokens` the entry can skip, trimming its cache to them in place; 0 if none."""
    from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

    if entry.layout != layout:
        return 0
    # At least one prompt token must go through the model to produce the first logits.
    common = min(common_prefix(entry.tokens, tokens), len(tokens) - 1)
    excess = len(entry.tokens) - common
    if common <= 0:
        return 0
    if excess and not (can_trim_prompt_cache(entry.cache) and trim_prompt_cache(entry.cache, excess) == excess):
        return 0
    del entry.tokens[common:]
    return common


def fed_entry(cache: list, fed_tokens: list[int], layout: str) -> Entry | None:
    """The entry for a cache after a finished generation (`fed_tokens`: prompt plus generated tokens)."""
    offsets = [c.offset for c in cache if isinstance(getattr(c, "offset", None), int)]
    if len(offsets) != len(cache) or max(offsets) > len(fed_tokens):
        return None  # a cache we cannot map back to tokens is not worth keeping
    # Speculative decoding can leave the draft model's cache one token apart from the model's.
    held = min(offsets)
    for layer in cache:
        if layer.offset > held and not (layer.is_trimmable() and layer.trim(layer.offset - held) == layer.offset - held):
            return None
    return Entry(cache, list(fed_tokens[:held]), layout)


class MemoryCaches:
    """One loaded model's caches by conversation (None: prompts outside a conversation), least recent first."""

    def __init__(self, capacity: int = MEMORY_CONVERSATIONS):
        self.capacity = capacity
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str | None) -> Entry | None:
        """The conversation's cache, taken away so that a generation running at the same time (another
        thread, an interleaved Python caller) never writes into the same cache."""
        with self._lock:
            return self._entries.pop(key, None)

    def keep(self, key: str | None, entry: Entry) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = entry
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)


def model_fingerprint(path: Path) -> str:
    """Changes whenever the weights, config, tokenizer or chat template change, or mlx-lm does."""
    from importlib.metadata import version

    parts = [FORMAT, str(path.resolve()), version("mlx-lm")]
    for file in sorted(path.iterdir()):
        if file.suffix in (".json", ".safetensors", ".jinja", ".model", ".tiktoken"):
            try:
                stat = file.stat()
            except OSError:
                continue
            parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


class DiskCaches:
    """Conversations' prompt caches in `folder`, at most `budget` bytes, least recently used removed first.

    A file is written whole under a temporary name and renamed into place, so a reader sees an old file
    or a new one, never half of one. A file that fails to load, or names another model, tokenizer,
    layout or conversation than its name says, is moved aside (files.set_aside) and rebuilt by the next turn."""

    def __init__(self, folder: Path, budget: int):
        self.folder = folder
        self.budget = budget

    def _path(self, fingerprint: str, conversation: str) -> Path:
        name = conversation if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", conversation) else hashlib.sha256(
            conversation.encode()
        ).hexdigest()[:32]
        return self.folder / f"{fingerprint}-{name}.safetensors"

    def load(self, fingerprint: str, conversation: str) -> Entry | None:
        import mlx.core as mx
        from mlx_lm.models.cache import load_prompt_cache

        path = self._path(fingerprint, conversation)
        try:
            seen = path.stat()
        except FileNotFoundError:
            return None
        problem = "not the prompt cache its name says"
        try:
            cache, meta = load_prompt_cache(str(path), return_metadata=True)
            tokens = json.loads(meta["tokens"])
            mx.eval([layer.state for layer in cache])  # a truncated file fails here, not halfway through a reply
            sound = (
                meta.get("format") == FORMAT
                and meta.get("fingerprint") == fingerprint
                and meta.get("conversation") == conversation
                and isinstance(tokens, list)
                and all(isinstance(t, int) for t in tokens)
                and all(getattr(layer, "offset", None) == len(tokens) for layer in cache)
            )
        except Exception as exc:  # torn, foreign or from an mlx-lm that wrote another format
            sound, problem = False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not sound:
            files.set_aside(path, problem, then="this turn goes through the whole conversation and saves a new one",
                            seen=seen)
            return None
        os.utime(path)  # recently used: evicted last
        return Entry(cache, tokens, meta.get("layout", ""))

    def save(self, fingerprint: str, conversation: str, entry: Entry) -> None:
        from mlx_lm.models.cache import save_prompt_cache

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(fingerprint, conversation)
        temporary = self.folder / f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp.safetensors"
        metadata = {
            "format": FORMAT,
            "fingerprint": fingerprint,
            "conversation": conversation,
            "layout": entry.layout,
            "tokens": json.dumps(entry.tokens),
        }
        try:
            save_prompt_cache(str(temporary), entry.cache, metadata)
            if temporary.stat().st_size > self.budget:  # would evict everything else and still not fit
                temporary.unlink()
                path.unlink(missing_ok=True)
                return
            os.replace(temporary, path)
        except OSError:
            temporary.unlink(missing_ok=True)
            return  # a full or read-only disk costs the next turn its head start, nothing else
        self._evict(keep=path)

    def _evict(self, keep: Path) -> None:
        found = []
        for file in self.folder.glob("*.safetensors"):
            try:
                stat = file.stat()
            except OSError:
                continue
            if file.name.startswith(".") and time.time() - stat.st_mtime < ABANDONED_AFTER_S:
                continue  # another process is writing it
            found.append((stat.st_mtime, stat.st_size, file))
        total = sum(size for _, size, _ in found)
        for _, size, file in sorted(found, key=lambda item: item[0]):
            if total <= self.budget:
                break
            if file != keep:
                file.unlink(missing_ok=True)
                total -= size
