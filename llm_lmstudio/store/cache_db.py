"""The response cache's file: answers in SQLite in the plugin's user dir, with TTL, a size cap (LRU) and several
`llm` processes at once. It never trusts a file it did not make: a torn, foreign or other-version file is rebuilt."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from llm_lmstudio.core import files
from llm_lmstudio.core import settings

CACHE_FILE = "responses.db"
APPLICATION_ID = 0x6C6D7263  # "lmrc" in the file header: a database without it at our path is not ours
SCHEMA_VERSION = 1
CACHEABLE_EVENTS = ("text", "reasoning")  # what a stored answer may hold: tool calls are never replayed

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


def default_path() -> Path:
    return settings.plugin_dir() / CACHE_FILE


class _NotOurs(sqlite3.DatabaseError):
    """A readable SQLite file at our path that this module did not create."""


REBUILT = "a new, empty cache is built in its place"


def _prepare(conn: sqlite3.Connection) -> None:
    # Nothing is written to a file before it is known to be ours (a foreign one is set aside exactly as it was).
    if conn.execute("pragma application_id").fetchone()[0] != APPLICATION_ID:
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


@dataclass(frozen=True)
class Hit:
    payload: dict
    created: float
    expires: float


class Store:
    """The cache file. Several `llm` processes share it: WAL, a busy timeout, every write in BEGIN IMMEDIATE.
    A torn, foreign or other-version file is moved aside (warned) and made afresh; a locked one is a miss, never an
    error."""

    def __init__(self, path: str | Path | None = None, *, max_bytes: int | None = None, timeout: float = 2.0):
        self.path = Path(path) if path else default_path()
        self.max_bytes = max_bytes if max_bytes is not None else settings.response_cache_max_bytes()
        self.timeout = timeout

    def _connect(self) -> sqlite3.Connection:
        def connect():
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            try:
                _prepare(conn)
            except BaseException:
                conn.close()
                raise
            return conn

        return files.open_db(self.path, connect, then=REBUILT)

    def _run(self, work, default=None):
        """work(conn) on a verified connection; a corrupt file is rebuilt (and work retried once), a busy one gives default."""
        for fresh in (False, True):
            try:
                conn = self._connect()
            except (OSError, sqlite3.Error):
                return default
            try:
                return work(conn)
            except sqlite3.Error as exc:  # damaged past its header: moved aside, and the work done on a new file
                if fresh or not files.set_aside_damaged_db(self.path, exc, then=REBUILT):
                    return default
            finally:
                conn.close()
        return default

    def get(self, key: str, now: float | None = None) -> Hit | None:
        now = time.time() if now is None else now

        def work(conn):
            row = conn.execute("select payload, created, expires from entries where key = ?", (key,)).fetchone()
            if row is None:
                return None
            payload = _decode(row[0])
            if payload is None or not _readable(row[1]) or not _readable(row[2]) or row[2] <= now:
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
                "oldest": iso(oldest) if oldest else None,
                "newest": iso(newest) if newest else None,
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


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _readable(timestamp) -> bool:
    """A stored time that can be shown as a date (an older version stored expiries past year 9999)."""
    try:
        iso(timestamp)
    except (TypeError, ValueError, OverflowError, OSError):
        return False
    return True


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
