"""Stand-ins for model ids the running llm command asks for that no backend registered (a bad setting, a server
that is down, the wrong kind of model): registered for those ids only, they fail with one line saying why.
Deciding the reason is the backend's (lmstudio/unavailable.py, mlx/registration.py); this module never raises."""

from __future__ import annotations

import json
from typing import Callable

import click
import llm
from pydantic import ConfigDict

# Commands whose model is an embedding model (llm resolves it with get_embedding_model).
EMBEDDING_COMMANDS = {"embed", "embed-multi", "embed-models", "similar"}
# Commands whose `collection` argument, when that collection exists, decides the model: the id stored in its row of
# llm's embeddings database. Read only for these, read-only, waiting at most this long for a lock.
COLLECTION_COMMANDS = {"embed", "embed-multi", "similar"}
COLLECTION_READ_TIMEOUT = 0.25
# The router's llm id and aliases (router/config.py takes them from here): a command that uses it needs every server's
# models, so the model-list cache must treat it as naming all of them.
ROUTER_ID = "lmstudio-router"
ROUTER_ALIASES = ("router",)
_printed: set[str] = set()  # notices already shown outside any click command (plain Python use of llm)


def notice(message: str) -> None:
    """Print `llm-lmstudio-mlx: message` to stderr once per command (hooks run several times per command)."""
    context = click.get_current_context(silent=True)
    shown = context.find_root().meta.setdefault("llm_lmstudio.notices", set()) if context else _printed
    if message in shown:
        return
    shown.add(message)
    click.echo(f"llm-lmstudio-mlx: {message}", err=True)


def _command_names(context) -> list[str]:
    names = []
    while context is not None:
        names.append(context.info_name or "")
        context = context.parent
    return names


def running_command() -> str | None:
    context = click.get_current_context(silent=True)
    return context.info_name if context else None


def _aliases() -> dict:
    try:
        data = json.loads((llm.user_dir() / "aliases.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def requested_ids(kind: str, prefixes: tuple[str, ...]) -> list[str]:
    """The ids starting with `prefixes` that the running llm command will resolve as a `kind` ("chat" or
    "embedding") model: its -m value (through llm's aliases), else the default model the command falls back to."""
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
    if any(name and not name.startswith(prefixes) for name in wanted):
        aliases = _aliases()
        wanted = [aliases.get(name, name) for name in wanted]
    if kind == "embedding":
        wanted.append(collection_model(context))
    return [name for name in wanted if isinstance(name, str) and name.startswith(prefixes)]


def uses_router() -> bool:
    """Does the running llm command route a prompt: `-m router` (or its id, an alias of it, or the router as the default
    model) for a prompt or chat, or `llm lmstudio route`?"""
    context = click.get_current_context(silent=True)
    if context is None:
        return False
    names = (ROUTER_ID, *ROUTER_ALIASES)
    return _command_names(context)[:2] == ["route", "lmstudio"] or any(i in names for i in requested_ids("chat", names))


def collection_model(context) -> str | None:
    """The model id stored for the existing collection the running command names (`llm similar NAME`, `llm embed-multi
    NAME`, `llm embed NAME ID`), from its -d database or llm's embeddings.db; None when there is none. The database
    is opened read-only (never created or changed) and any problem reading it is ignored: llm reports its own."""
    name = context.params.get("collection")
    if context.info_name not in COLLECTION_COMMANDS or not isinstance(name, str):
        return None
    meta = context.meta  # the hooks run several times per command: read once
    if "llm_lmstudio.collection_model" not in meta:
        meta["llm_lmstudio.collection_model"] = _read_collection_model(context.params.get("database"), name)
    return meta["llm_lmstudio.collection_model"]


def _read_collection_model(database, name: str) -> str | None:
    import sqlite3
    from pathlib import Path

    try:
        path = Path(database) if database else llm.user_dir() / "embeddings.db"
        if not path.is_file():
            return None
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=COLLECTION_READ_TIMEOUT)
        try:
            row = connection.execute("select model from collections where name = ?", (name,)).fetchone()
        finally:
            connection.close()
    except Exception:  # noqa: BLE001 - not a database, no collections table, locked, unreadable: llm says so itself
        return None
    return row[0] if row and isinstance(row[0], str) else None


class UnavailableModelError(llm.ModelError, click.ClickException):
    """Why a stand-in cannot run. `llm embed` does not catch model errors the way `llm prompt` does, so it is also
    a ClickException: click prints its one line and exits 1. `kind` is what the router's history records."""

    kind = "ModelNotFound"

    def __init__(self, message: str):
        click.ClickException.__init__(self, message)


class _EveryType(frozenset):
    """Accepts every attachment type, so that llm lets the prompt reach execute(), which says why."""

    def __contains__(self, item) -> bool:
        return True


class _AnyOptions(llm.Options):
    # -o settings are checked by the real model, not this stand-in; built on first use, as CacheOptions
    model_config = ConfigDict(extra="allow", defer_build=True)


class _Unavailable:
    label = "LM Studio"

    def __init__(self, model_id: str, reason: str, label: str | None = None):
        self.model_id = model_id
        self.reason = reason
        if label:
            self.label = label

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
        raise UnavailableModelError(self.reason)


def register_standins(register, kind: str, reasons: dict[str, str], label: str, debug: bool = False) -> None:
    """A stand-in for each requested id in `reasons` (id -> why it is missing), as a `kind` model."""
    for model_id, reason in reasons.items():
        if debug or running_command() == "chat":
            notice(reason)
        if running_command() == "chat":
            # `llm chat` shows a model's error as a traceback: it gets the reason above, then llm's own
            # one line ("'lmstudio/...' is not a known model"), and no stand-in.
            continue
        if kind == "chat":
            register(UnavailableChat(model_id, reason, label), UnavailableAsyncChat(model_id, reason, label))
        else:
            register(UnavailableEmbedding(model_id, reason, f"{label} embeddings"))
