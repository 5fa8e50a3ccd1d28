"""The opt-in response cache: finished answers in SQLite in the plugin's user dir, keyed by the answering model and
everything sent to it. It never stores an answer whose tools ran or that was cut off, and never trusts a file it cannot read."""

from __future__ import annotations

import contextvars
import functools
import hashlib
import inspect
import json
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import llm
from llm.parts import AttachmentPart, StreamEvent, ToolCallPart, ToolResultPart
from pydantic import Field, field_validator

from . import settings

CACHE_FILE = "responses.db"
APPLICATION_ID = 0x6C6D7263  # "lmrc" in the file header: a database without it at our path is not ours
SCHEMA_VERSION = 1
KEY_VERSION = 1  # bump when the key material changes, so old entries simply stop matching
CACHEABLE_EVENTS = ("text", "reasoning")

_SCHEMA = (
    """create table entries (
        key text primary key,
        model text not null,
        created real not null,
        expires real not null,
        last_used real not null,
        hits integer not null default 0,
        size integer not null,
        payload text not null
    )""",
    "create index entries_last_used on entries (last_used)",
    "create index entries_expires on entries (expires)",
)


class CacheOptions(llm.Options):
    """The `cache` option every model of this plugin takes (its Options subclass this)."""

    cache: Optional[str] = Field(
        default=None,
        description="Response cache: answer a repeat of this exact conversation from the local cache, and keep"
        " this answer for that long (30m, 1h, 7d; off disables it when LMSTUDIO_RESPONSE_CACHE is set)",
    )

    @field_validator("cache")
    @classmethod
    def _check_cache(cls, value):
        if value is not None:
            try:
                settings.parse_duration(value, "cache")
            except settings.SettingsError as exc:
                raise ValueError(str(exc)) from None
        return value


def ttl_for(prompt: llm.Prompt) -> float:
    """Seconds to keep this prompt's answer: the `cache` option wins over $LMSTUDIO_RESPONSE_CACHE; 0 is off."""
    option = getattr(prompt.options, "cache", None)
    if option is not None:
        return settings.parse_duration(option, "cache")
    return settings.response_cache_ttl()


# ---------------------------------------------------------------- what makes two prompts the same


def _attachment_digest(attachment: llm.Attachment) -> dict:
    # the bytes the model sees, not the path or URL they came from
    return {"type": attachment.type, "sha256": hashlib.sha256(attachment.content_bytes()).hexdigest()}


def _part(part) -> Any:
    if isinstance(part, AttachmentPart):
        return {"type": "attachment", "attachment": _attachment_digest(part.attachment) if part.attachment else None}
    return part.to_dict()


def cacheable_prompt(prompt: llm.Prompt) -> bool:
    """False once tools have run in this conversation: their results changed the world, a stored answer would lie."""
    if prompt.tool_results:
        return False
    return not any(isinstance(p, (ToolCallPart, ToolResultPart)) for m in prompt.messages for p in m.parts)


def model_identity(model) -> dict:
    """The model that would answer: its id, and where it runs (the same key on another server is another model)."""
    identity = {"id": model.model_id}
    server = getattr(model, "server", None)
    if getattr(server, "base_url", None):
        identity["server"] = server.base_url
    local = getattr(model, "local", None)
    if getattr(local, "path", None):
        identity["path"] = str(local.path)
    return identity


def cache_key(model, prompt: llm.Prompt) -> str:
    options = {k: v for k, v in dict(prompt.options).items() if v is not None and k != "cache"}
    material = {
        "v": KEY_VERSION,
        "model": model_identity(model),
        "system": prompt.system,
        "prompt": prompt.prompt,
        "messages": [{"role": m.role, "parts": [_part(p) for p in m.parts]} for m in prompt.messages],
        "attachments": [_attachment_digest(a) for a in prompt.attachments],
        "options": options,
        "tools": [
            {"name": t.name, "description": t.description, "input_schema": t.input_schema} for t in prompt.tools or ()
        ],
        "schema": prompt.schema,
    }
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def unfinished(response_json: Any) -> str | None:
    """Why a logged answer is not a whole answer (cut off, truncated at max_tokens, router gave up), or None."""
    if not isinstance(response_json, dict):
        return None
    if response_json.get("cut"):
        return "cut"
    if response_json.get("finish_reason") in ("length", "max_tokens"):
        return "length"
    if "attempts" in response_json:  # the router: only an answer it returned is whole
        answer = response_json.get("answer")
        return unfinished(answer) if isinstance(answer, dict) else "cut"
    return None


# ---------------------------------------------------------------- the store


def default_path() -> Path:
    return settings.plugin_dir() / CACHE_FILE


class _NotOurs(sqlite3.DatabaseError):
    """A readable SQLite file at our path that this module did not create."""


def _discard(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _prepare(conn: sqlite3.Connection) -> None:
    if conn.execute("pragma application_id").fetchone()[0] != APPLICATION_ID:
        conn.execute("pragma journal_mode=wal")
        conn.execute("begin immediate")  # two processes creating it at once: the second finds it made
        try:
            app_id = conn.execute("pragma application_id").fetchone()[0]
            if app_id == 0 and conn.execute("select count(*) from sqlite_master").fetchone()[0] == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"pragma application_id = {APPLICATION_ID}")
                conn.execute(f"pragma user_version = {SCHEMA_VERSION}")
            elif app_id != APPLICATION_ID:
                raise _NotOurs("not a response cache")
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise
    if conn.execute("pragma user_version").fetchone()[0] != SCHEMA_VERSION:
        raise _NotOurs("a response cache of another version")
    conn.execute("pragma journal_mode=wal")  # readers never wait for a writer, writers queue on the busy timeout
    conn.execute("pragma synchronous=normal")  # crash-safe in WAL; a lost last entry is only a future miss


def _corrupt(exc: sqlite3.Error) -> bool:
    # OperationalError is "locked", "busy", "disk I/O": the file is fine, this moment is not
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


@dataclass(frozen=True)
class Hit:
    payload: dict
    created: float
    expires: float


class Store:
    """The cache file. Several `llm` processes share it: WAL, a busy timeout, every write in BEGIN IMMEDIATE.
    A torn, foreign or other-version file is deleted and made afresh; a locked one is a miss, never an error."""

    def __init__(self, path: str | Path | None = None, *, max_bytes: int | None = None, timeout: float = 2.0):
        self.path = Path(path) if path else default_path()
        self.max_bytes = max_bytes if max_bytes is not None else settings.response_cache_max_bytes()
        self.timeout = timeout

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for fresh in (False, True):
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            try:
                _prepare(conn)
                return conn
            except sqlite3.Error as exc:
                conn.close()
                if fresh or not _corrupt(exc):
                    raise
                _discard(self.path)
        raise AssertionError("unreachable")

    def _run(self, work, default=None):
        """work(conn) on a verified connection; a corrupt file is rebuilt (and work retried once), a busy one gives default."""
        for fresh in (False, True):
            try:
                conn = self._connect()
            except (OSError, sqlite3.Error):
                return default
            try:
                return work(conn)
            except sqlite3.Error as exc:
                if fresh or not _corrupt(exc):
                    return default
            finally:
                conn.close()
            _discard(self.path)
        return default

    def get(self, key: str, now: float | None = None) -> Hit | None:
        now = time.time() if now is None else now

        def work(conn):
            row = conn.execute("select payload, created, expires from entries where key = ?", (key,)).fetchone()
            if row is None:
                return None
            payload = _decode(row[0])
            if payload is None or row[2] <= now:
                conn.execute("delete from entries where key = ?", (key,))
                return None
            try:
                conn.execute("update entries set last_used = ?, hits = hits + 1 where key = ?", (now, key))
            except sqlite3.OperationalError:
                pass  # another process is writing: serve the answer, its LRU position moves next time
            return Hit(payload, row[1], row[2])

        return self._run(work)

    def put(self, key: str, model_id: str, payload: dict, ttl: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        text = json.dumps(payload, separators=(",", ":"))
        size = len(text.encode("utf-8")) + len(key) + len(model_id) + 64  # the row's own overhead, roughly
        if size > self.max_bytes:
            return False

        def work(conn):
            conn.execute("begin immediate")
            try:
                conn.execute("delete from entries where expires <= ?", (now,))
                conn.execute(
                    "insert or replace into entries (key, model, created, expires, last_used, size, payload)"
                    " values (?, ?, ?, ?, ?, ?, ?)",
                    (key, model_id, now, now + ttl, now, size, text),
                )
                total = conn.execute("select coalesce(sum(size), 0) from entries").fetchone()[0]
                if total > self.max_bytes:
                    # keep the most recently used entries that fit under the cap; drop the rest
                    conn.execute(
                        "delete from entries where key in (select key from (select key, sum(size) over"
                        " (order by last_used desc, created desc, key) as running from entries) where running > ?)",
                        (self.max_bytes,),
                    )
                conn.execute("commit")
            except BaseException:
                conn.execute("rollback")
                raise
            return True

        return bool(self._run(work, False))

    def stats(self, now: float | None = None) -> dict:
        now = time.time() if now is None else now

        def work(conn):
            count, size, hits, oldest, newest = conn.execute(
                "select count(*), coalesce(sum(size), 0), coalesce(sum(hits), 0), min(created), max(created) from entries"
            ).fetchone()
            expired = conn.execute("select count(*) from entries where expires <= ?", (now,)).fetchone()[0]
            models = dict(conn.execute("select model, count(*) from entries group by model order by count(*) desc, model"))
            return {
                "path": str(self.path),
                "entries": count,
                "expired": expired,
                "bytes": size,
                "max_bytes": self.max_bytes,
                "hits": hits,
                "oldest": _iso(oldest) if oldest else None,
                "newest": _iso(newest) if newest else None,
                "models": models,
            }

        return self._run(work) or {
            "path": str(self.path), "entries": 0, "expired": 0, "bytes": 0, "max_bytes": self.max_bytes,
            "hits": 0, "oldest": None, "newest": None, "models": {},
        }  # fmt: skip

    def clear(self, older_than: float | None = None, now: float | None = None) -> int:
        """Delete every entry, or those first stored more than `older_than` seconds ago; returns how many."""
        now = time.time() if now is None else now

        def work(conn):
            if older_than is None:
                removed = conn.execute("delete from entries").rowcount
            else:
                removed = conn.execute("delete from entries where created < ?", (now - older_than,)).rowcount
            try:
                conn.execute("vacuum")  # give the space back; a busy file keeps it until next time
            except sqlite3.OperationalError:
                pass
            return removed

        result = self._run(work)
        if result is None:
            raise OSError(f"the response cache {self.path} is busy or cannot be written; try again")
        return result


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _decode(text: str) -> dict | None:
    """A stored payload, or None when it is not one this module wrote."""
    try:
        payload = json.loads(text)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    events = payload.get("events")
    if not isinstance(events, list) or not all(
        isinstance(e, list) and len(e) == 2 and e[0] in CACHEABLE_EVENTS and isinstance(e[1], str) for e in events
    ):
        return None
    return payload


# ---------------------------------------------------------------- around a model's execute()

# True while a wrapped execute() is producing: a model it delegates to (the router's choice) neither
# caches nor records on its own, so the outermost model owns the cache entry and the outcome.
_INSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("llm_lmstudio_cache_inside", default=False)


class _Call:
    """One outermost execute(): looks up, replays or collects, then stores and records the outcome."""

    def __init__(self, model, prompt: llm.Prompt, response):
        self.model = model
        self.prompt = prompt
        self.response = response
        self.started = time.monotonic()
        self.first_at: float | None = None
        self.events: list[list[str]] = []
        self.storable = True
        self.key: str | None = None
        self.ttl = 0.0
        self.store: Store | None = None

    def lookup(self) -> Hit | None:
        try:
            self.ttl = ttl_for(self.prompt)
            if not self.ttl or not cacheable_prompt(self.prompt):
                return None
            self.store = Store()
        except settings.SettingsError as exc:
            raise llm.ModelError(str(exc)) from None
        try:
            self.key = cache_key(self.model, self.prompt)
        except Exception:  # noqa: BLE001 - an unreadable attachment: the model itself says what is wrong
            return None
        return self.store.get(self.key)

    def replay(self, hit: Hit):
        for kind, chunk in hit.payload["events"]:
            yield StreamEvent(type=kind, chunk=chunk)
        usage = hit.payload.get("usage") or {}
        self.response.set_usage(input=usage.get("input"), output=usage.get("output"), details=usage.get("details"))
        stored = hit.payload.get("response_json")
        log = dict(stored) if isinstance(stored, dict) else {}
        log["cache"] = {
            "hit": True,
            "first_produced": _iso(hit.created),
            "first_response_id": hit.payload.get("response_id"),
            "expires": _iso(hit.expires),
        }
        self.response.response_json = log
        if hit.payload.get("resolved_model"):
            self.response.set_resolved_model(hit.payload["resolved_model"])

    def saw(self, event) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()
        kind, chunk = ("text", event) if isinstance(event, str) else (event.type, event.chunk)
        if kind not in CACHEABLE_EVENTS or getattr(event, "redacted", False) or getattr(event, "provider_metadata", None):
            self.storable = False  # tool calls and opaque reasoning state cannot be replayed faithfully
            return
        if self.events and self.events[-1][0] == kind:
            self.events[-1][1] += chunk or ""
        elif chunk:
            self.events.append([kind, chunk])

    def finished(self) -> None:
        ended = time.monotonic()
        reason = unfinished(self.response.response_json)
        self._record(reason != "cut", "StreamCut" if reason == "cut" else None, ended)
        if (
            self.key is None
            or reason
            or not self.storable
            or self.response._tool_calls  # tool_calls() would force the response we are still producing
            or not any(kind == "text" for kind, _ in self.events)
        ):
            return
        created = time.time()
        payload = {
            "events": self.events,
            "usage": {
                "input": self.response.input_tokens,
                "output": self.response.output_tokens,
                "details": self.response.token_details,
            },
            "response_json": self.response.response_json,
            "resolved_model": self.response.resolved_model,
            "response_id": self.response.id,
        }
        if self.store.put(self.key, self.model.model_id, payload, self.ttl, now=created) and isinstance(
            self.response.response_json, dict
        ):
            self.response.response_json["cache"] = {"hit": False, "stored": True, "expires": _iso(created + self.ttl)}

    def failed(self, exc: Exception) -> None:
        from . import stats

        self._record(False, stats.error_kind(exc), time.monotonic())

    def _record(self, ok: bool, error_kind: str | None, ended: float) -> None:
        from . import stats

        ttft = (self.first_at - self.started) * 1000 if self.first_at is not None else None
        stats.record_attempt(
            self.model.model_id,
            ok,
            error_kind=error_kind,
            ttft_ms=ttft,
            duration_ms=(ended - self.started) * 1000,
            router_turn_id=None,
        )


def cached(execute):
    """Decorate a model's execute() (sync or async generator) with the response cache and outcome recording.
    Only the outermost decorated model acts; models it delegates to run untouched."""
    if inspect.isasyncgenfunction(execute):

        @functools.wraps(execute)
        async def run_async(self, prompt, stream, response, conversation=None):
            if _INSIDE.get():
                async for event in execute(self, prompt, stream, response, conversation):
                    yield event
                return
            call = _Call(self, prompt, response)
            hit = call.lookup()
            if hit is not None:
                for event in call.replay(hit):
                    yield event
                return
            events = execute(self, prompt, stream, response, conversation)
            try:
                while True:
                    token = _INSIDE.set(True)
                    try:
                        event = await events.__anext__()
                    except StopAsyncIteration:
                        break
                    finally:
                        _INSIDE.reset(token)
                    call.saw(event)
                    yield event
            except Exception as exc:
                call.failed(exc)
                raise
            finally:
                await events.aclose()
            call.finished()

        return run_async

    @functools.wraps(execute)
    def run(self, prompt, stream, response, conversation=None):
        if _INSIDE.get():
            yield from execute(self, prompt, stream, response, conversation)
            return
        call = _Call(self, prompt, response)
        hit = call.lookup()
        if hit is not None:
            yield from call.replay(hit)
            return
        events = execute(self, prompt, stream, response, conversation)
        try:
            while True:
                token = _INSIDE.set(True)
                try:
                    event = next(events)
                except StopIteration:
                    break
                finally:
                    _INSIDE.reset(token)
                call.saw(event)
                yield event
        except Exception as exc:
            call.failed(exc)
            raise
        finally:
            events.close()
        call.finished()

    return run
