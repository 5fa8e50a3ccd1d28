"""Why an `lmstudio/...` model the user asked for is not there (a bad setting, the last model-list failure, the
wrong kind of model), told through a stand-in registered only for the id the running command names; never raises."""

from __future__ import annotations

import sys
import time
import traceback
from contextlib import contextmanager
from typing import Iterator

from llm_lmstudio.core import settings
from llm_lmstudio.core import unavailable as standins
from llm_lmstudio.core.unavailable import notice
from llm_lmstudio.lmstudio import catalog
from llm_lmstudio.lmstudio.listing import CatalogModel

PREFIXES = ("lmstudio/", "lmstudio@")
# A cached list older than this is asked again (within the discovery budget) when it lacks a requested id:
# a model downloaded a moment ago should not be "unknown" until the cache expires.
RECHECK_AFTER = 2.0


@contextmanager
def guard(what: str) -> Iterator[None]:
    """Run one part of a hook so that its failure turns off only `what`, with one line, never another plugin."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - a hook that raises breaks every other provider's models too
        if settings.debug():
            traceback.print_exc(file=sys.stderr)
        hint = "" if settings.debug() else " (LLM_LMSTUDIO_DEBUG=1 shows where)"
        notice(f"{what} are off: {type(exc).__name__}: {exc}{hint}")


def requested_ids(kind: str) -> list[str]:
    """The lmstudio ids the running llm command will resolve as a `kind` ("chat" or "embedding") model."""
    return standins.requested_ids(kind, PREFIXES)


# ---------------------------------------------------------------- the catalog, with reasons


def settings_problem() -> str | None:
    try:
        settings.check()
    except settings.SettingsError as exc:
        return str(exc)
    return None


def catalog_models(kind: str) -> list[CatalogModel]:
    """Every LM Studio model to register, chat and embedding (`kind` is what the hook registers). A bad setting
    registers none and says so once (unless the command asked for an lmstudio model: its stand-in says it);
    LLM_LMSTUDIO_DEBUG=1 also names every server whose last listing failed."""
    problem = settings_problem()
    if problem:
        if not requested_ids(kind):
            notice(f"{problem} (LM Studio models are off until then)")
        return []
    wanted = requested_ids(kind)
    # a routed prompt needs every server's models, as a prompt to one of them needs its server's (first contact)
    routed = standins.uses_router()
    named = {server.base_url for server in settings.servers() if routed or _names(server, wanted)}
    models = catalog.models_for_registration(named)
    present = {model.model_id for model in models}
    missing = [model_id for model_id in wanted if model_id not in present]
    if missing:
        stale = [server for server in settings.servers() if _names(server, missing) and _age(server) > RECHECK_AFTER]
        if stale:
            catalog.refresh(stale, deadline=settings.timeouts().discovery_budget)
            models = catalog.models_for_registration(named)
    if settings.debug():
        for server in settings.servers():
            status = catalog.server_status(server.base_url) or {}
            if status.get("status") not in (None, "ok"):
                notice(f"the last model listing of {server.base_url} failed: {status.get('error')}")
    return models


def _names(server: settings.Server, model_ids: list[str]) -> bool:
    return any(model_id.startswith(server.prefix + "/") for model_id in model_ids)


def _age(server: settings.Server) -> float:
    status = catalog.server_status(server.base_url) or {}
    fetched = status.get("fetched_at")
    return time.time() - fetched if isinstance(fetched, (int, float)) and status.get("status") == "ok" else 0.0


def why_missing(model_id: str, kind: str, models: list[CatalogModel]) -> str:
    """One line: why `model_id` is not registered as a `kind` model, and what to do."""
    problem = settings_problem()
    if problem:
        return f"{model_id} is not available: {problem}"
    prefix, _, key = model_id.partition("/")
    server = next((s for s in settings.servers() if s.prefix == prefix), None)
    if server is None:
        address = prefix.removeprefix("lmstudio@")
        return f"{model_id} names the server {address}, which is not configured: add it to LMSTUDIO_BASE_URL"
    if not key:
        return f"{model_id} names no model: use {prefix}/<model key> (`llm models -q lmstudio` lists them)"
    entry = catalog.read_cache().get(server.base_url) or {}
    known = [model for model in models if model.prefix == prefix and model.key == key]
    if known and kind == "chat":
        return f"{model_id} is an embedding model: use it with `llm embed -m {model_id}`"
    if known:
        return f"{model_id} is a chat model, not an embedding model: `llm embed-models` lists the embedding models"
    if not entry:
        return (
            f"{model_id} is not available: LM Studio at {server.base_url} has not listed its models yet "
            "(a listing is on its way): try again, or check the server with `llm lmstudio status`"
        )
    if entry.get("status") != "ok":
        return f"{model_id} is not available: {entry.get('error')}"
    same_kind = [m for m in models if m.prefix == prefix and m.is_embedding == (kind == "embedding")]
    close = close_names(key, [m.key for m in same_kind])
    hint = f"; did you mean {', '.join(f'{prefix}/{k}' for k in close)}?" if close else ""
    return (
        f"{model_id} is not available: LM Studio at {server.base_url} does not list {key}{hint} "
        "(`llm models -q lmstudio` shows the models it has, `llm lmstudio ls` the downloaded ones)"
    )


def close_names(key: str, keys: list[str], limit: int = 3) -> list[str]:
    """Listed keys close to `key` (a typo, or the short name `llm lmstudio load` takes), never `key` itself: the
    same name under a publisher first, then near spellings of the name after the publisher, then of the whole key."""
    import difflib

    def short(name: str) -> str:
        return name.lower().rsplit("/", 1)[-1]

    others = [k for k in keys if k != key]
    found = [k for k in others if short(k) == short(key)]
    if not found:
        shorts: dict[str, list[str]] = {}
        for k in others:
            shorts.setdefault(short(k), []).append(k)
        for name in difflib.get_close_matches(short(key), list(shorts), n=limit, cutoff=0.75):
            found += shorts[name]
    if not found:
        lowered = {k.lower(): k for k in others}
        found = [lowered[k] for k in difflib.get_close_matches(key.lower(), list(lowered), n=limit, cutoff=0.8)]
    return found[:limit]


# ---------------------------------------------------------------- the stand-ins


def register_unavailable(register, kind: str, models: list[CatalogModel]) -> None:
    """A stand-in for each lmstudio id the command asks for that is not registered as a `kind` model, saying why."""
    present = {model.model_id for model in models if model.is_embedding == (kind == "embedding")}
    reasons = {model_id: why_missing(model_id, kind, models) for model_id in requested_ids(kind) if model_id not in present}
    standins.register_standins(register, kind, reasons, "LM Studio", debug=settings.debug())
