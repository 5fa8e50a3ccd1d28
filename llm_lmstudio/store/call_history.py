"""Per-model history for the router: latency and throughput learned from llm's logs.db, failures and
time to first token from our own router.db. Never writes to, locks, migrates or indexes llm's logs.db."""

from __future__ import annotations

import json
import sqlite3
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from llm_lmstudio.core import files

STORE_FILE = "router.db"  # inside settings.plugin_dir(); ours alone, so llm never sees our tables
DEFAULT_WINDOW = 200
ROUTER_HORIZON = 20_000  # turns the router's history needs copied: months of use, older ones say little about a model today
HORIZON = 100_000  # turns kept for `llm lmstudio stats`; copied back to on its first call, not on a prompt's
KEEP_ATTEMPTS = 50_000
_PRUNE_EVERY = 500
STORE_VERSION = 3  # 3: lmstudio_turns gained tokens in, time, TTFT and flags; lmstudio_sync its first rowid
ROUTED, CACHED, CUT = 1, 2, 4
LOCAL_PATTERNS = ("lmstudio/%", "lmstudio@%", "mlx/%")

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


def _open_log(path: Path, timeout: float):
    """llm's logs.db, read-only, through sqlite-utils; None when it has no `turns` table.
    Raises sqlite3.Error when it cannot be read right now (locked by a writer, corrupt)."""
    import sqlite_utils

    # mode=ro: never create the file, never take a write lock, never run llm's migrations
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
    db = sqlite_utils.Database(conn)
    try:
        if db["turns"].exists():  # an llm older than 0.36 logs to `responses` only
            return db
    except BaseException:
        conn.close()
        raise
    conn.close()
    return None


# What the copy reads from the plugin's own response_json, in one parse per turn: TTFT as LM Studio chat,
# native MLX and the router write it, a response-cache hit, a cut-off answer, the router's last attempt
_JSON_PATHS = (
    "$.client.time_to_first_token_ms",
    "$.time_to_first_token_s",
    "$.attempts[#-1].ttft_ms",
    "$.cache.hit",
    "$.cut",
    "$.attempts[#-1].ok",
)


def _turn_columns(columns: dict) -> str:
    """SQL over llm's turns giving: model that answered, duration, tokens out and in, time, routed, plugin JSON."""
    local = " or ".join(f"model like '{pattern}'" for pattern in LOCAL_PATTERNS)
    if "resolved_model" in columns:
        # our models keep their own id (LM Studio's resolved_model is its bare key); a delegating model
        # such as the router counts for the model it resolved to
        model = f"case when resolved_model is null or {local} then model else resolved_model end"
        routed = f"resolved_model is not null and not ({local})"
    else:
        model, routed = "model", "0"
    paths = ", ".join(f"'{p}'" for p in _JSON_PATHS)
    # json_valid first, so that one malformed payload cannot fail the whole copy
    plugin = f"case when json_valid(response_json) then json_extract(response_json, {paths}) end" if "response_json" in columns else "null"
    return f"{model}, duration_ms, output_tokens, input_tokens, datetime_utc, {routed}, {plugin}"


def _mirrored(row: tuple) -> tuple:
    """A row of _turn_columns (after rowid, id) as lmstudio_turns stores it."""
    model, duration, output, inputs, when, routed, plugin = row
    flags = ROUTED if routed else 0
    ttft = None
    if plugin:
        lmstudio_ttft, mlx_ttft_s, router_ttft, cached, cut, router_ok = json.loads(plugin)
        ttft = next((v for v in (lmstudio_ttft, mlx_ttft_s * 1000 if _number(mlx_ttft_s) else None, router_ttft) if _number(v)), None)
        flags |= CACHED if cached is True else 0
        flags |= CUT if cut is True or router_ok is False else 0
    return (model, duration, output, inputs, when, ttft, flags)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sync(store: sqlite3.Connection, log, source: str, horizon: int) -> None:
    """Copy turns added to llm's log since the last sync, and older ones back to `horizon` turns before the
    newest. Detects a replaced or rewritten log by checking that the last copied rowid still holds the same
    turn id, and starts over if not."""
    select = _turn_columns(log["turns"].columns_dict)

    def copy(after: int, up_to: int) -> tuple | None:
        rows = log.execute(
            f"select rowid, id, {select} from turns where rowid > ? and rowid <= ? order by rowid", (after, up_to)
        ).fetchall()
        store.executemany(
            "insert or replace into lmstudio_turns values (?, ?, ?, ?, ?, ?, ?, ?)", [(r[0], *_mirrored(r[2:])) for r in rows]
        )
        return (rows[-1][0], rows[-1][1]) if rows else None

    store.execute("begin immediate")  # one process syncs at a time; the others wait, then find little to do
    try:
        state = store.execute("select source, last_rowid, last_id, first_rowid from lmstudio_sync").fetchone()
        newest = log.execute("select max(rowid) from turns").fetchone()[0] or 0
        floor = max(0, newest - horizon)
        known = None
        if state and state[0] == source and state[1] <= newest:
            same = log.execute("select id from turns where rowid = ?", (state[1],)).fetchone()
            if state[1] == 0 or (same[0] if same else None) == state[2]:
                known = state
        if known is None:
            store.execute("delete from lmstudio_turns")
            start_id = log.execute("select id from turns where rowid = ?", (floor,)).fetchone()
            last, first = (floor, start_id[0] if start_id else None), floor
        else:
            last, first = (known[1], known[2]), known[3]
        if newest > last[0]:
            last = copy(last[0], newest) or last
        if floor < first:
            copy(floor, first)
            first = floor
        oldest_kept = max(first, last[0] - HORIZON)
        if oldest_kept > first:
            store.execute("delete from lmstudio_turns where turn_rowid <= ?", (oldest_kept,))
            first = oldest_kept
        if state is None or tuple(state) != (source, *last, first):
            store.execute("insert or replace into lmstudio_sync values (1, ?, ?, ?, ?)", (source, *last, first))
        store.execute("commit")
    except BaseException:
        store.execute("rollback")
        raise


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
    if store is not None:
        try:
            log_known = _refresh(store, log_path, timeout)
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
        except sqlite3.Error:
            pass
        finally:
            store.close()
    names = ids if ids is not None else sorted(set(turns) | set(attempts))
    return {model: _summarise(model, turns.get(model, []), attempts.get(model, [])) for model in names}


def _refresh(store: sqlite3.Connection, log_path: Path, timeout: float, horizon: int | None = None) -> bool:
    """Bring the copy up to date (back to `horizon` turns, the router's need by default); False when there is
    no usable log behind it at all."""
    if not log_path.is_file():
        return False
    source = str(log_path.resolve())
    try:
        log = _open_log(log_path, timeout)
        if log is None:
            return False
        try:
            _sync(store, log, source, horizon or ROUTER_HORIZON)
        finally:
            log.conn.close()
    except sqlite3.Error:
        # llm is committing (locked past our timeout) or another process holds the store: the copy
        # as it stands is at most a few turns behind, which is good enough to route on
        pass
    state = store.execute("select source from lmstudio_sync").fetchone()
    return bool(state and state[0] == source)


def _summarise(model: str, turns: list[tuple], attempts: list[tuple]) -> ModelStats:
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
    )


def error_kind(exc: BaseException) -> str:
    """The failure's kind as the plugin's errors name it (Unreachable, TimedOut...), else its class name."""
    kind = getattr(exc, "kind", None)
    return str(kind) if kind else type(exc).__name__


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
    row = {"datetime_utc": datetime.now(timezone.utc).isoformat()} | row
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
