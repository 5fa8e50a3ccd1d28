"""Why an `lmstudio/...` model the user asked for is not there (a bad setting, the last model-list failure, the
wrong kind of model), told through a stand-in registered only for the id the running command names; never raises."""

from __future__ import annotations

import json
import sys
import time
import traceback
from contextlib import contextmanager
from typing import Iterator

import llm
from pydantic import ConfigDict

from llm_lmstudio.lmstudio import catalog
from llm_lmstudio.core import settings
from llm_lmstudio.lmstudio.catalog import CatalogModel

PREFIXES = ("lmstudio/", "lmstudio@")
# Commands whose model is an embedding model (llm resolves it with get_embedding_model).
EMBEDDING_COMMANDS = {"embed", "embed-multi", "embed-models", "similar"}
# A cached list older than this is asked again (within the discovery budget) when it lacks a requested id:
# a model downloaded a moment ago should not be "unknown" until the cache expires.
RECHECK_AFTER = 2.0
_printed: set[str] = set()  # notices already shown outside any click command (plain Python use of llm)


# ---------------------------------------------------------------- one line on stderr, once per command


def notice(message: str) -> None:
    """Print `llm-lmstudio-mlx: message` to stderr once per command (hooks run several times per command)."""
    import click

    context = click.get_current_context(silent=True)
    shown = context.find_root().meta.setdefault("llm_lmstudio.notices", set()) if context else _printed
    if message in shown:
        return
    shown.add(message)
    click.echo(f"llm-lmstudio-mlx: {message}", err=True)


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


# ---------------------------------------------------------------- what the running command asks for


def _command_names(context) -> list[str]:
    names = []
    while context is not None:
        names.append(context.info_name or "")
        context = context.parent
    return names


def _running_command() -> str | None:
    import click

    context = click.get_current_context(silent=True)
    return context.info_name if context else None


def _aliases() -> dict:
    try:
        data = json.loads((llm.user_dir() / "aliases.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def requested_ids(kind: str) -> list[str]:
    """The lmstudio ids the running llm command will resolve as a `kind` ("chat" or "embedding") model:
    its -m value (through llm's aliases), else the default model the command falls back to."""
    import click

    context = click.get_current_context(silent=True)
    if context is None:
        return []
    names = _command_names(context)
    if ("embedding" if EMBEDDING_COMMANDS & set(names) else "chat") != kind:
        return []
    params = context.params
    wanted = [params[key] for key in ("model_id", "model") if isinstance(params.get(key), str)]
    if not wanted and names[0] in ("prompt", "chat") and not (params.get("_continue") or params.get("conversation_id")):
        wanted.append(llm.get_default_model())
    elif not wanted and names[0] == "embed":
        wanted.append(llm.get_default_embedding_model())
    if any(name and not name.startswith(PREFIXES) for name in wanted):
        aliases = _aliases()
        wanted = [aliases.get(name, name) for name in wanted]
    return [name for name in wanted if isinstance(name, str) and name.startswith(PREFIXES)]


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
    models = catalog.models_for_registration()
    present = {model.model_id for model in models}
    missing = [model_id for model_id in requested_ids(kind) if model_id not in present]
    if missing:
        stale = [server for server in settings.servers() if _names(server, missing) and _age(server) > RECHECK_AFTER]
        if stale:
            catalog.refresh(stale, deadline=settings.timeouts().discovery_budget)
            models = catalog.models_for_registration()
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
    return (
        f"{model_id} is not available: LM Studio at {server.base_url} does not list {key} "
        "(`llm models -q lmstudio` shows the models it has, `llm lmstudio ls` the downloaded ones)"
    )


# ---------------------------------------------------------------- the stand-ins


class _EveryType(frozenset):
    """Accepts every attachment type, so that llm lets the prompt reach execute(), which says why."""

    def __contains__(self, item) -> bool:
        return True


class _AnyOptions(llm.Options):
    # -o settings are checked by the real model, not this stand-in; built on first use, as CacheOptions
    model_config = ConfigDict(extra="allow", defer_build=True)


class _Unavailable:
    label = "LM Studio"

    def __init__(self, model_id: str, reason: str):
        self.model_id = model_id
        self.reason = reason

    def __str__(self):
        return f"{self.label}: {self.model_id} (not available)"


class _UnavailableChat(_Unavailable):
    can_stream = True
    supports_schema = True
    supports_tools = True
    attachment_types = _EveryType({"*"})
    Options = _AnyOptions


class UnavailableChat(_UnavailableChat, llm.Model):
    def execute(self, prompt, stream, response, conversation=None):
        raise llm.ModelError(self.reason)


class UnavailableAsyncChat(_UnavailableChat, llm.AsyncModel):
    async def execute(self, prompt, stream, response, conversation=None):
        raise llm.ModelError(self.reason)
        yield  # an async generator, as llm expects of execute()


class UnavailableEmbedding(_Unavailable, llm.EmbeddingModel):
    label = "LM Studio embeddings"
    supports_text = True
    supports_binary = True

    def embed_batch(self, items):
        from llm_lmstudio.lmstudio.chat import LMStudioModelError

        raise LMStudioModelError(self.reason, "ModelNotFound")


def register_unavailable(register, kind: str, models: list[CatalogModel]) -> None:
    """A stand-in for each lmstudio id the command asks for that is not registered as a `kind` model, saying why."""
    present = {model.model_id for model in models if model.is_embedding == (kind == "embedding")}
    for model_id in requested_ids(kind):
        if model_id in present:
            continue
        reason = why_missing(model_id, kind, models)
        if settings.debug() or _running_command() == "chat":
            notice(reason)
        if _running_command() == "chat":
            # `llm chat` shows a model's error as a traceback: it gets the reason above, then llm's own
            # one line ("'lmstudio/...' is not a known model"), and no stand-in.
            continue
        if kind == "chat":
            register(UnavailableChat(model_id, reason), UnavailableAsyncChat(model_id, reason))
        else:
            register(UnavailableEmbedding(model_id, reason))
