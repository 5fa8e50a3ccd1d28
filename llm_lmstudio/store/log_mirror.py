"""The router's copy of llm's log: the turns of local models, copied incrementally from llm's logs.db (opened
read-only) into router.db's lmstudio_turns. Never writes to, locks, migrates or indexes llm's logs.db."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

ROUTER_HORIZON = 20_000  # turns the router's history needs copied: months of use, older ones say little about a model today
HORIZON = 100_000  # turns kept for `llm lmstudio stats`; copied back to on its first call, not on a prompt's
# flags of a copied turn
ROUTED, CACHED, CUT = 1, 2, 4
LOCAL_PATTERNS = ("lmstudio/%", "lmstudio@%", "mlx/%")


def open_log(path: Path, timeout: float):
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


def sync(store: sqlite3.Connection, log, source: str, horizon: int) -> None:
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


def refresh(store: sqlite3.Connection, log_path: Path, timeout: float, horizon: int | None = None) -> bool:
    """Bring the copy up to date (back to `horizon` turns, the router's need by default); False when there is
    no usable log behind it at all."""
    if not log_path.is_file():
        return False
    source = str(log_path.resolve())
    try:
        log = open_log(log_path, timeout)
        if log is None:
            return False
        try:
            sync(store, log, source, horizon or ROUTER_HORIZON)
        finally:
            log.conn.close()
    except sqlite3.Error:
        # llm is committing (locked past our timeout) or another process holds the store: the copy
        # as it stands is at most a few turns behind, which is good enough to route on
        pass
    state = store.execute("select source from lmstudio_sync").fetchone()
    return bool(state and state[0] == source)
