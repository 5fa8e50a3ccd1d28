"""Prompt (KV) caches of native MLX chat: per loaded model, the last few conversations' caches in memory.
Imports mlx only inside functions; never hands out a cache without knowing exactly which tokens it holds."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

# Conversations whose caches a loaded model keeps; the least recently used goes first. Two or three
# alternating conversations (llm chat sessions, the Python API) each find their own.
MEMORY_CONVERSATIONS = 4


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
    offset = next((c.offset for c in cache if isinstance(getattr(c, "offset", None), int)), None)
    if offset is None or offset > len(fed_tokens):
        return None  # a cache we cannot map back to tokens is not worth keeping
    return Entry(cache, list(fed_tokens[:offset]), layout)


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
