"""Per-model history for the router: latency and throughput learned from llm's logs.db, failures and
time to first token from our own router.db. Never writes to, locks, migrates or indexes llm's logs.db."""

from __future__ import annotations

import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from llm_lmstudio.core import files
from llm_lmstudio.store import reliability
from llm_lmstudio.store.log_mirror import CACHED, refresh

STORE_FILE = "router.db"  # inside settings.plugin_dir(); ours alone, so llm never sees our tables
DEFAULT_WINDOW = 200
KEEP_ATTEMPTS = 50_000
_PRUNE_EVERY = 500
STORE_VERSION = 3  # 3: lmstudio_turns gained tokens in, time, TTFT and flags; lmstudio_sync its first rowid

# one outcome row (see _outcome): the router's attempts and direct calls both keep it
_OUTCOME_COLUMNS = """
    id integer primary key,
    datetime_utc text not null,
    model text not null,
    ok integer not null,
    error_kind text,
    ttft_ms real,
    duration_ms real"""
_SCHEMA = f"""
create table if not exists lmstudio_attempts ({_OUTCOME_COLUMNS},
    router_turn_id text
);
create index if not exists lmstudio_attempts_model_id on lmstudio_attempts (model, id);
-- prompts sent straight to one of our models (not through the router): llm logs no failed prompt, so
-- `llm lmstudio stats` learns failures here; the router's ranking reads only its own attempts above
create table if not exists lmstudio_calls ({_OUTCOME_COLUMNS}
);
-- a narrow copy of llm's turns, indexed by model and time: llm's own table has neither index, and we
-- must not add one. model is the one that answered; flags: ROUTED | CACHED | CUT
create table if not exists lmstudio_turns (
    turn_rowid integer primary key,
    model text,
    duration_ms integer,
    output_tokens integer,
    input_tokens integer,
    datetime_utc text,
    ttft_ms real,
    flags integer not null default 0
);
create index if not exists lmstudio_turns_model_rowid on lmstudio_turns (model, turn_rowid);
create index if not exists lmstudio_turns_time on lmstudio_turns (datetime_utc);
-- how far the copy has got: the source file, the rowid and id of the last turn copied, and the rowid
-- after which it starts (older turns are copied back only when asked for)
create table if not exists lmstudio_sync (
    one integer primary key check (one = 1),
    source text not null,
    last_rowid integer not null,
    last_id text,
    first_rowid integer not null
);
"""


@dataclass(frozen=True)
class ModelStats:
    model_id: str
    turns: int  # logged turns in the window (routed turns count for the model that answered)
    median_duration_ms: float | None  # whole response, as llm measures it
    output_tokens_per_second: float | None  # median over turns of output_tokens / duration
    median_ttft_ms: float | None  # from our attempts; llm does not log it
    failures: int
    attempts: int
    failure_rate: float | None  # failures / attempts; None until something was attempted
    # what the router ranks on: failures the model caused, weighed by age against its successes (reliability.py)
    record: reliability.Reliability = field(default_factory=reliability.Reliability)


clock = time.time  # what outcomes are stamped with and aged against; tests set it instead of waiting


def _now_iso() -> str:
    return datetime.fromtimestamp(clock(), timezone.utc).isoformat()


def default_store_path() -> Path:
    from llm_lmstudio.core import settings

    return settings.plugin_dir() / STORE_FILE


REBUILT = "a new one is built in its place (answers are copied again from llm's log; failures start afresh)"


def _open_store(path: Path, timeout: float, check: bool = False) -> sqlite3.Connection:
    """Our store, created on first use; a damaged one is moved aside and a new one made (never read as empty).
    `check` reads every page first (`pragma quick_check`, for `llm lmstudio stats`, not for every prompt)."""
    return files.open_db(path, lambda: _connect(path, timeout, check), then=REBUILT)


def _connect(path: Path, timeout: float, check: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        _prepare(conn)
        problem = conn.execute("pragma quick_check(1)").fetchone()[0] if check else "ok"
        if problem != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed: {problem}")
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection) -> None:
    # WAL: readers (the router asking for history) never wait for a writer (another `llm` recording an
    # attempt); synchronous=normal is crash-safe in WAL and spares an fsync per attempt
    conn.execute("pragma journal_mode=wal")
    conn.execute("pragma synchronous=normal")
    if conn.execute("pragma user_version").fetchone()[0] != STORE_VERSION:
        conn.execute("begin immediate")
        try:
            if conn.execute("pragma user_version").fetchone()[0] != STORE_VERSION:
                # the copy of llm's turns is only a copy: an older shape is dropped and copied afresh
                conn.execute("drop table if exists lmstudio_turns")
                conn.execute("drop table if exists lmstudio_sync")
                conn.execute(f"pragma user_version = {STORE_VERSION}")
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise
    conn.executescript(_SCHEMA)














def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def history(
    db_path: str | Path,
    model_ids: list[str] | tuple[str, ...] | None = None,
    window: int = DEFAULT_WINDOW,
    *,
    store_path: str | Path | None = None,
    timeout: float = 0.2,
) -> dict[str, ModelStats]:
    """Stats over each model's `window` most recent turns and attempts. Every requested model id is in the
    result (zero counts when nothing is known); with model_ids=None, every model seen.

    llm's log is mirrored incrementally into our store, so each call reads only the turns logged since
    the last one. A missing logs.db or one without `turns` gives no turn stats; a locked one gives what
    the store already knew. Nothing here raises for a database problem."""
    if window < 1:
        raise ValueError("window must be at least 1")
    ids = list(dict.fromkeys(model_ids)) if model_ids is not None else None
    if ids == []:
        return {}
    log_path = Path(db_path)
    try:
        store = _open_store(Path(store_path) if store_path else default_store_path(), timeout)
    except (OSError, sqlite3.Error):
        store = None  # an unwritable plugin dir means no history, not a failed prompt
    turns: dict[str, list[tuple]] = {}
    attempts: dict[str, list[tuple]] = {}
    outcomes: dict[str, list[tuple]] = {}
    if store is not None:
        try:
            log_known = refresh(store, log_path, timeout)
            if ids is None:
                names = [r[0] for r in store.execute("select distinct model from lmstudio_turns where model is not null")] if log_known else []
                names += [r[0] for r in store.execute("select distinct model from lmstudio_attempts")]
                ids_to_read = sorted(set(names))
            else:
                ids_to_read = ids
            for model in ids_to_read:
                if log_known:
                    found = store.execute(
                        "select duration_ms, output_tokens from lmstudio_turns where model = ? and flags & ? = 0"
                        " order by turn_rowid desc limit ?",
                        (model, CACHED, window),  # a cached answer says nothing about the model's speed
                    ).fetchall()
                    if found:
                        turns[model] = found
                found = store.execute(
                    "select ok, ttft_ms from lmstudio_attempts where model = ? order by id desc limit ?", (model, window)
                ).fetchall()
                if found:
                    attempts[model] = found
                outcomes[model] = _outcomes(store, model, window)
        except sqlite3.Error:
            pass
        finally:
            store.close()
    names = ids if ids is not None else sorted(set(turns) | set(attempts))
    return {model: _summarise(model, turns.get(model, []), attempts.get(model, []), outcomes.get(model, [])) for model in names}


def _outcomes(store: sqlite3.Connection, model: str, window: int) -> list[tuple]:
    """(ok, kind, age in seconds, source) of the model's last `window` router attempts and direct prompts each."""
    return [row for table, source in (("attempts", "router"), ("calls", "direct")) for row in store.execute(
        f"select ok, error_kind, (julianday(?) - julianday(datetime_utc)) * 86400.0, '{source}' from lmstudio_{table}"
        " where model = ? order by id desc limit ?", (_now_iso(), model, window))]


def reset(model: str | None = None, *, store_path: str | Path | None = None, timeout: float = 2.0) -> dict:
    """Forget the recorded outcomes of `model` (every model's when None): {"attempts": n, "calls": n}. llm's log is untouched."""
    conn = _open_store(Path(store_path) if store_path else default_store_path(), timeout)
    where, params = ("where model = ?", (model,)) if model else ("", ())
    try:
        with conn:
            return {name: conn.execute(f"delete from lmstudio_{name} {where}", params).rowcount for name in ("attempts", "calls")}
    finally:
        conn.close()




def _summarise(model: str, turns: list[tuple], attempts: list[tuple], outcomes: list[tuple] = ()) -> ModelStats:
    # a zero or negative duration is a cached answer or llm's re-iteration quirk: no latency or rate from it
    durations = [float(d) for d, _ in turns if d is not None and d > 0]
    rates = [o / (d / 1000.0) for d, o in turns if d is not None and d > 0 and o is not None and o > 0]
    failures = sum(1 for ok, _ in attempts if not ok)
    ttfts = [float(t) for ok, t in attempts if ok and t is not None and t >= 0]
    return ModelStats(
        model_id=model,
        turns=len(turns),
        median_duration_ms=_median(durations),
        output_tokens_per_second=_median(rates),
        median_ttft_ms=_median(ttfts),
        failures=failures,
        attempts=len(attempts),
        failure_rate=(failures / len(attempts)) if attempts else None,
        record=reliability.weigh(outcomes),
    )


# Refusals before anything was sent (an empty prompt, text that is not UTF-8): the user's input, not a call of the model,
# so neither `llm lmstudio stats` nor the router's history records them.
NOTHING_SENT = frozenset({"EmptyPrompt", "BadPrompt"})


def error_kind(exc: BaseException) -> str:
    """The failure's kind as the plugin's errors name it (Unreachable, TimedOut, ServerError...), else its class name."""
    kind = getattr(exc, "kind", None)
    kind = str(kind) if kind else type(exc).__name__
    status = getattr(exc, "status", None)
    if kind == "RequestFailed" and isinstance(status, int) and status >= 500:
        return "ServerError"  # a 5xx said by an error class that does not name it
    return kind


def _outcome(model: str, ok: bool, error_kind: str | None = None, ttft_ms: float | None = None,
             duration_ms: float | None = None) -> dict:
    return {"model": model, "ok": 1 if ok else 0, "error_kind": error_kind, "ttft_ms": ttft_ms, "duration_ms": duration_ms}


def record_attempt(model: str, ok: bool, *, router_turn_id: str | None = None, store_path: str | Path | None = None,
                   timeout: float = 1.0, **outcome) -> bool:
    """Append one delegated attempt (outcome: error_kind, ttft_ms, duration_ms) to our store (created on first
    use). Returns False instead of raising when it cannot be written: recording stats must never fail a prompt."""
    row = _outcome(model, ok, **outcome) | {"router_turn_id": router_turn_id}
    return _append("lmstudio_attempts", row, store_path, timeout)


def record_call(model: str, ok: bool, *, store_path: str | Path | None = None, timeout: float = 1.0, **outcome) -> bool:
    """Append the outcome of one prompt sent straight to `model`; False instead of raising, like record_attempt."""
    return _append("lmstudio_calls", _outcome(model, ok, **outcome), store_path, timeout)


def _append(table: str, row: dict, store_path: str | Path | None, timeout: float) -> bool:
    path = Path(store_path) if store_path else default_store_path()
    row = {"datetime_utc": _now_iso()} | row
    for last in (False, True):
        try:
            conn = _open_store(path, timeout)
        except (OSError, sqlite3.Error):
            return False
        try:
            with conn:
                conn.execute("begin immediate")
                cursor = conn.execute(
                    f"insert into {table} ({', '.join(row)}) values ({', '.join('?' for _ in row)})", tuple(row.values())
                )
                if cursor.lastrowid % _PRUNE_EVERY == 0:
                    conn.execute(f"delete from {table} where id <= ?", (cursor.lastrowid - KEEP_ATTEMPTS,))
            return True
        except sqlite3.Error as exc:
            if last or not files.set_aside_damaged_db(path, exc, then=REBUILT):  # damaged past its header
                return False
        finally:
            conn.close()
    return False
