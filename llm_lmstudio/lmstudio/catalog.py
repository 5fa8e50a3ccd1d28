"""Which models the configured LM Studio servers offer: fetched (parsed in listing.py) from /api/v0, /api/v1 or /v1
model lists, cached on disk with a short freshness window. Registration must never wait past a small fixed budget, nor print."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Collection

from llm_lmstudio.core import files
from llm_lmstudio.core import settings
from llm_lmstudio.lmstudio import listing
from llm_lmstudio.lmstudio.listing import LISTINGS, CatalogModel

CACHE_VERSION = 2
CACHE_FILE = "catalog.json"
REFRESH_LOCK = "catalog.refreshing"
REFRESH_WORKER = "llm_lmstudio.lmstudio.refresh_worker"  # run with python -m: see refresh_worker.py
# A background refresh that has not finished after this long is assumed dead.
REFRESH_LOCK_STALE = 60.0

def fetch(host: settings.Server, *, token: str | None, deadline: float) -> list[CatalogModel]:
    """Ask one server for its models, trying LM Studio's richest listing first, within `deadline` seconds."""
    from llm_lmstudio.lmstudio import errors as server
    from llm_lmstudio.lmstudio.quick_get import quick_get_json

    end = time.monotonic() + deadline
    last_error: Exception | None = None
    for path, parser in LISTINGS:
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise server.timed_out(host.base_url, deadline, setting=False)
        try:
            body = quick_get_json(host, path, token=token, deadline=remaining)
        except (server.EndpointMissing, server.ModelNotFound, server.RequestFailed, server.BadResponse) as exc:
            # This server does not speak that listing (404/405, LM Studio's "Unexpected endpoint", an HTML page): try the next.
            last_error = exc
            continue
        models = parser(body)
        if models or path == "/v1/models" or (isinstance(body, dict) and ("data" in body or "models" in body)):
            for model in models:
                model.base_url = host.base_url
                model.prefix = host.prefix
            return models
    if last_error is None or isinstance(last_error, (server.EndpointMissing, server.ModelNotFound, server.BadResponse)) or last_error.status in (404, 405):
        # Not one listing answered: an HTML 404 page is no reason to show the user.
        raise server.not_lmstudio(host.base_url, "no model listing at /api/v0/models, /api/v1/models or /v1/models")
    raise last_error


# ---------------------------------------------------------------- the on-disk cache


def _cache_path() -> Path:
    return settings.plugin_dir() / CACHE_FILE


def read_cache() -> dict:
    try:  # a damaged file is moved aside with a warning; the next listing writes a new one
        data = files.read_json(_cache_path(), then="the next model listing writes a new one")
    except OSError:
        return {}
    # another version of the plugin wrote it: a cache of what the servers list, simply listed again
    if not data or data.get("version") != CACHE_VERSION or not isinstance(data.get("servers"), dict):
        return {}
    # A hand-edited or foreign file may hold anything: keep only entries of the shape we write.
    return {url: entry for url, entry in data["servers"].items() if isinstance(entry, dict)}


def _fetched_at(entry: dict) -> float:
    value = entry.get("fetched_at")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _write_cache(servers: dict) -> None:
    try:
        files.write_text(_cache_path(), json.dumps({"version": CACHE_VERSION, "servers": servers}))
    except OSError:
        pass  # an unwritable cache costs the next `llm` a listing, nothing else


def _entry_models(entry: dict) -> list[CatalogModel]:
    return listing.from_cached(entry.get("models"))


def _debug(message: str) -> None:
    if settings.debug():
        print(f"llm-lmstudio-mlx: {message}", file=sys.stderr)


def _status_of(exc: Exception) -> str:
    from llm_lmstudio.lmstudio import errors as server

    if isinstance(exc, server.TimedOut):
        return "timeout"
    if isinstance(exc, server.Unreachable):
        return "unreachable"
    if isinstance(exc, server.AuthRequired):
        return "auth"
    return "error"


def _refresh_entry(server: settings.Server, previous: dict | None, deadline: float) -> dict:
    """Fetch one server's list and return the cache entry to store (the last good models survive failures)."""
    digest = settings.listing_digest(server)
    try:
        models = fetch(server, token=settings.api_token(), deadline=deadline)
    except Exception as exc:  # noqa: BLE001 - any failure here must stay silent at start-up (availability tells it)
        entry = dict(previous or {})
        entry.update(fetched_at=time.time(), status=_status_of(exc), error=str(exc), digest=digest)
        entry.setdefault("models", [])
        return entry
    return {"fetched_at": time.time(), "status": "ok", "error": None, "digest": digest, "models": [asdict(m) for m in models]}


def refresh(servers: list[settings.Server] | None = None, *, deadline: float | None = None) -> list[CatalogModel]:
    """Fetch every server's list now (for commands, after load/unload) and store it."""
    servers = servers if servers is not None else settings.servers()
    deadline = deadline if deadline is not None else settings.timeouts().connect + 3.0
    cache = read_cache()
    for server in servers:
        cache[server.base_url] = _refresh_entry(server, cache.get(server.base_url), deadline)
    _write_cache(cache)
    return [m for server in servers for m in _entry_models(cache[server.base_url])]


def _spawn_background_refresh() -> subprocess.Popen | None:
    """Refresh in a detached process, so a hung server costs this command nothing; the process, if one started."""
    lock = settings.plugin_dir() / REFRESH_LOCK
    try:
        if time.time() - lock.stat().st_mtime < REFRESH_LOCK_STALE:
            return None
    except OSError:
        pass
    try:
        lock.write_text(str(os.getpid()))
        return subprocess.Popen(
            [sys.executable, "-m", REFRESH_WORKER],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        _debug(f"could not start a background refresh: {exc}")
        return None


def background_refresh() -> None:
    try:
        refresh(deadline=settings.timeouts().connect + 10.0)
    finally:
        try:
            (settings.plugin_dir() / REFRESH_LOCK).unlink()
        except OSError:
            pass


# A server never listed before (no cache entry: the first command after install, or a new LMSTUDIO_BASE_URL) gets
# this share of the discovery budget (30 ms of the default 250 ms) unless the command names one of its models: a
# server that answers at all answers a listing in milliseconds, and one that does not is then listed in the
# background for the next command, instead of costing this one (`llm --help`, a cloud prompt) the whole budget.
FIRST_CONTACT_SHARE = 0.12


def models_for_registration(named: Collection[str] = ()) -> list[CatalogModel]:
    """The models to register now: from the cache when fresh, else refreshed within the discovery budget.
    `named`: base URLs of the servers whose models the running command names; they get the whole budget even on
    first contact.

    A server that hung last time is refreshed in the background instead, so it never costs a command
    more than one budget in a row.
    """
    try:
        servers = settings.servers()
        budget = settings.timeouts().discovery_budget
        ttl = settings.cache_ttl()
    except settings.SettingsError as exc:
        _debug(str(exc))
        return []
    cache = read_cache()
    changed = False
    background = False
    end = time.monotonic() + budget
    now = time.time()
    for server in servers:
        entry = cache.get(server.base_url)
        # A list (or a failure) fetched with another token says nothing about this one.
        if (entry and now - _fetched_at(entry) < ttl and entry.get("digest") == settings.listing_digest(server)
                and not (entry.get("first_contact") and server.base_url in named)):
            continue  # fresh; a first-contact timeout is not, for a command that needs this server's list
        remaining = end - time.monotonic()
        # a timeout on first contact waited only its share: not yet a verdict that the server hangs
        short = bool(entry and entry.get("status") == "timeout" and entry.get("first_contact"))
        if (entry and entry.get("status") == "timeout" and not short) or remaining <= 0.005:
            background = True
            continue
        first_contact = (entry is None or short) and server.base_url not in named
        if first_contact:
            remaining = min(remaining, budget * FIRST_CONTACT_SHARE)
        fresh = cache[server.base_url] = _refresh_entry(server, entry, remaining)
        if first_contact and fresh.get("status") == "timeout":
            fresh["first_contact"] = True
        else:
            fresh.pop("first_contact", None)
        changed = True
        background |= first_contact and cache[server.base_url].get("status") == "timeout"
    if changed:
        _write_cache(cache)
    if background:
        _spawn_background_refresh()
    result: list[CatalogModel] = []
    for server in servers:
        for model in _entry_models(cache.get(server.base_url) or {}):
            model.prefix = server.prefix  # ids follow the current order of LMSTUDIO_BASE_URL
            model.base_url = server.base_url
            result.append(model)
    return result


def server_status(base_url: str) -> dict | None:
    """What the cache knows of a server: status, error, fetched_at."""
    entry = read_cache().get(base_url)
    if not entry:
        return None
    return {k: entry.get(k) for k in ("status", "error", "fetched_at")}
