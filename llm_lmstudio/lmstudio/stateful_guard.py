"""Guard rails of stateful turns (/v1/responses with previous_response_id): a continued turn may never make a chat
worse than resending its history. It decides which failures fall back to the full history, which response ids are
not continued again, when a server stops being continued server-side (a 5xx, or re-reading more than the history
costs: lmstudio-bug-tracker#2074), the request shapes LM Studio refuses, and says so once. It never does HTTP."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from llm_lmstudio.core import files, settings
from llm_lmstudio.core.errors import note
from llm_lmstudio.lmstudio import transport

FILE = "stateful-guard.json"
# A server that failed a continued turn, or re-read more than the history, resends histories this long (as long as
# the missing-endpoint verdict): an updated LM Studio gets server-side turns back the next day.
STOP_FOR = 24 * 3600.0
# What the guard knows about a response (its cost, or that it is broken) is kept this long, and for this many.
KEEP_FOR = 30 * 24 * 3600.0
KEEP_AT_MOST = 2000
# A continued turn may read this much more than its history costs (templates differ between the two ways of
# building the prompt) before it counts as the #2074 re-read.
MARGIN = 1.1
SLACK_TOKENS = 16
ITEM_TOKENS = 16
# An image's tokens are not told by its base64 text: the bound of a turn counts each image as this many.
IMAGE_TOKENS = 4096
# Failures after which chat completions with the full history cannot do better: the user's error stands.
NO_FALLBACK = (transport.Unreachable, transport.TimedOut, transport.AuthRequired, transport.ModelNotFound,
               transport.ModelLoadFailed, transport.BadPrompt)


def _path():
    return settings.plugin_dir() / FILE


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(n, (int, float)) for n in value)


def _load() -> dict:
    """{"stopped": {server: {"at", "why"}}, "costs": {response id: [tokens, at]}, "broken": {response id: [at]}};
    whatever a damaged file holds instead is left out."""
    try:
        data = json.loads(_path().read_text())
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    part = {name: data[name] if isinstance(data.get(name), dict) else {} for name in ("stopped", "costs", "broken")}
    return {
        "stopped": {k: v for k, v in part["stopped"].items() if isinstance(v, dict) and isinstance(v.get("at"), (int, float))},
        "costs": {k: v for k, v in part["costs"].items() if _numbers(v) and len(v) == 2},
        "broken": {k: v for k, v in part["broken"].items() if _numbers(v)},
    }


def _save(data: dict) -> None:
    now = time.time()
    data["stopped"] = {url: v for url, v in data["stopped"].items() if now - v["at"] < STOP_FOR}
    for part in ("costs", "broken"):
        fresh = sorted(((k, v) for k, v in data[part].items() if now - v[-1] < KEEP_FOR), key=lambda kv: kv[1][-1])
        data[part] = dict(fresh[-KEEP_AT_MOST:])
    try:
        files.write_text(_path(), json.dumps(data))
    except OSError:
        pass  # then the next turn decides without it: at worst one more request


def stopped(base_url: str) -> bool:
    """Does this server resend histories for now (it failed a continued turn, or re-read too much)?"""
    verdict = _load()["stopped"].get(base_url)
    return verdict is not None and time.time() - verdict["at"] < STOP_FOR


def broken(response_id: str) -> bool:
    """Was this response refused, failed, or cut off, so that continuing it would repeat the failure?"""
    return response_id in _load()["broken"]


def system_mark(system: str | None) -> str | None:
    """What a response's metadata records of the system prompt its chain carries (a digest, never the text)."""
    return hashlib.sha256(system.encode()).hexdigest()[:16] if system else None


def responses_tools(specs: list[dict]) -> list[dict]:
    """Chat-completion tool specs in the flat layout /v1/responses takes, each with an object schema that has
    `properties`: LM Studio 0.4.20 refuses `"parameters": {}` and the nested `function` layout with a 400
    (lmstudio-bug-tracker#2254), which would make the turn fall back for nothing."""
    tools = []
    for spec in specs:
        function = spec.get("function", spec)
        parameters = dict(function.get("parameters") or {})
        parameters.setdefault("type", "object")
        if parameters["type"] == "object" and not isinstance(parameters.get("properties"), dict):
            parameters["properties"] = {}
        tools.append({"type": "function", "name": function["name"], "description": function.get("description") or "",
                      "parameters": parameters})
    return tools


def _size_bound(items: list[dict]) -> int:
    """At most how many tokens these input items cost: no tokenizer makes more tokens of a text than its UTF-8 bytes;
    each item adds ITEM_TOKENS of template (role markers), and each image IMAGE_TOKENS."""
    total = 0

    def count(value: Any) -> None:
        nonlocal total
        if isinstance(value, dict):
            if value.get("type") == "input_image":
                total += IMAGE_TOKENS
                return
            for inner in value.values():
                count(inner)
        elif isinstance(value, list):
            for inner in value:
                count(inner)
        elif isinstance(value, str):
            total += len(value.encode("utf-8"))

    count(items)
    return total + ITEM_TOKENS * len(items)


def stop(base_url: str, why: str) -> None:
    """Resend histories to this server from now on (for STOP_FOR), and say so once, with the way back."""
    data = _load()
    fresh = base_url not in data["stopped"] or time.time() - data["stopped"][base_url]["at"] >= STOP_FOR
    data["stopped"][base_url] = {"at": time.time(), "why": why}
    _save(data)
    if fresh:
        note(
            f"LM Studio at {base_url} {why}: its conversations resend their history from now on, as with "
            f"`-o stateful false`; server-side turns are tried again in {STOP_FOR / 3600:.0f} h "
            f"(sooner: delete {_path()})"
        )


class Watch:
    """One server-side turn under guard: how many input tokens its history can cost at most, and what became of it."""

    def __init__(self, base_url: str, previous: str | None, new_items: list[dict]):
        self.base_url = base_url
        self.previous = previous
        # The cost of the history the previous response ended (its honest input plus its output), plus the new
        # items at most; unknown for a turn that starts a chain (it sends the whole history: the reference).
        cost = _load()["costs"].get(previous) if previous else None
        self.bound = int(cost[0]) + _size_bound(new_items) if cost is not None else None

    def finished(self, response_id: str | None, usage: dict | None) -> None:
        """Check a completed turn's reported input against its bound, and remember its cost for the next turn."""
        usage = usage or {}
        read, wrote = usage.get("prompt_tokens"), usage.get("completion_tokens")
        wrote = wrote if isinstance(wrote, int) else 0
        measured = isinstance(read, int) and read > 0  # LM Studio sometimes reports 0 for a real prompt (lms#553)
        if measured and self.bound is not None and read > self.bound * MARGIN + SLACK_TOKENS:
            stop(self.base_url, f"read {read} input tokens to continue a conversation whose whole history costs at "
                                f"most {self.bound} (the growing re-read of lmstudio-bug-tracker#2074)")
        honest = min(read, self.bound) if measured and self.bound is not None else (read if measured else self.bound)
        if response_id and honest is not None:
            data = _load()
            data["costs"][response_id] = [honest + wrote, time.time()]
            _save(data)

    def falls_back(self, exc: transport.LMStudioError) -> bool:
        """Should a turn that failed before any output go to chat completions with the full history (silently: the
        same answer)? Any 4xx, 5xx or failure inside the stream does; a server that is down, a model it lacks or a
        token it refuses would fail there too. The failed id is not continued again, and a server that failed
        (rather than forgot the id) resends histories from now on."""
        if isinstance(exc, NO_FALLBACK):
            return False
        if self.previous:
            self._broken(self.previous)
        if not isinstance(exc, (transport.ResponseNotFound, transport.EndpointMissing)):
            stop(self.base_url, f"failed a server-side turn ({str(exc).removeprefix(f'LM Studio at {self.base_url}: ')})")
        return True

    def cut(self, response_id: str | None) -> None:
        """An answer cut off mid-stream: the server's copy may not be what was kept, so it is not continued."""
        if response_id:
            self._broken(response_id)

    @staticmethod
    def _broken(response_id: str) -> None:
        data = _load()
        data["broken"][response_id] = [time.time()]
        _save(data)

