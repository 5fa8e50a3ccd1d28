"""Specifications for llm_lmstudio.store.call_history: per-model history from llm's own logs.db plus our attempts."""

from __future__ import annotations

import atexit
import json
import shutil
import sqlite3
import tempfile
import time
from itertools import count
from pathlib import Path

import llm
import pytest
import sqlite_utils
from click.testing import CliRunner
from llm.migrations import migrate

from llm_lmstudio.store import call_history

_ids = count(1)


_TEMPLATE = {}


def make_log(path, turns=()):
    """A logs.db with llm 0.36's real schema (its own migrations) and the given turns appended in order.
    Migrating takes seconds on a busy disk, so it runs once and later logs start as copies."""
    if "path" not in _TEMPLATE:
        folder = tempfile.mkdtemp(prefix="llm-logs-template-")
        atexit.register(shutil.rmtree, folder, True)
        template = Path(folder) / "template-logs.db"
        migrate(sqlite_utils.Database(template))
        _TEMPLATE["path"] = template
    shutil.copyfile(_TEMPLATE["path"], path)
    db = sqlite_utils.Database(path)
    add_turns(db, turns)
    return db


def add_turns(db, turns):
    rows = []
    for turn in turns:
        model, duration_ms, output_tokens, *rest = turn
        rows.append(
            {
                "id": f"01TEST{next(_ids):010d}",
                "model": model,
                "resolved_model": rest[0] if rest else None,
                "duration_ms": duration_ms,
                "output_tokens": output_tokens,
                "input_tokens": 10,
                "datetime_utc": "2026-01-01T00:00:00+00:00",
            }
        )
    if rows:
        db["turns"].insert_all(rows)


def schema_of(path):
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute("select type, name, sql from sqlite_master").fetchall(), key=repr)
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path):
    return tmp_path / "plugin" / "router.db"


def test_latency_and_throughput_come_from_llm_turns(tmp_path, store):
    log = tmp_path / "logs.db"
    make_log(log, [("lmstudio/a", 1000, 50), ("lmstudio/a", 2000, 40), ("lmstudio/a", 4000, 400), ("other", 10, 10)])
    result = call_history.history(log, ["lmstudio/a"], store_path=store)
    a = result["lmstudio/a"]
    assert a.turns == 3
    assert a.median_duration_ms == 2000
    # per-turn rates 50, 20 and 100 tokens/s: the median is 50
    assert a.output_tokens_per_second == pytest.approx(50.0)
    assert (a.failures, a.attempts, a.failure_rate, a.median_ttft_ms) == (0, 0, None, None)
    assert list(result) == ["lmstudio/a"]


def test_routed_turns_count_for_the_model_that_answered(tmp_path, store):
    log = tmp_path / "logs.db"
    make_log(log, [("lmstudio-router", 3000, 30, "lmstudio/b"), ("lmstudio/b", 1000, 10), ("lmstudio-router", 500, 5, "mlx/c")])
    result = call_history.history(log, ["lmstudio/b", "mlx/c", "lmstudio-router"], store_path=store)
    assert result["lmstudio/b"].turns == 2
    assert result["lmstudio/b"].median_duration_ms == 2000
    assert result["mlx/c"].turns == 1
    # the router's own id never answers anything itself
    assert result["lmstudio-router"].turns == 0


def test_window_keeps_only_each_models_most_recent_turns(tmp_path, store):
    log = tmp_path / "logs.db"
    old = [("m", 9000, 9)] * 5
    recent = [("m", 100, 10)] * 3
    make_log(log, old + [("n", 1, 1)] * 4 + recent)
    m = call_history.history(log, ["m"], window=3, store_path=store)["m"]
    assert m.turns == 3
    assert m.median_duration_ms == 100
    assert call_history.history(log, ["m"], window=8, store_path=store)["m"].turns == 8


def test_zero_and_negative_durations_give_no_latency(tmp_path, store):
    log = tmp_path / "logs.db"
    make_log(log, [("m", 0, 10), ("m", -200, 10), ("m", None, None), ("m", 1000, 0)])
    m = call_history.history(log, ["m"], store_path=store)["m"]
    assert m.turns == 4
    assert m.median_duration_ms == 1000
    assert m.output_tokens_per_second is None


def test_failures_and_time_to_first_token_come_from_recorded_attempts(tmp_path, store):
    log = tmp_path / "logs.db"
    make_log(log, [("lmstudio/a", 1000, 50)])
    assert call_history.record_attempt("lmstudio/a", True, ttft_ms=100, duration_ms=900, store_path=store)
    assert call_history.record_attempt("lmstudio/a", True, ttft_ms=300, duration_ms=900, router_turn_id="01X", store_path=store)
    assert call_history.record_attempt("lmstudio/a", False, error_kind="connect", store_path=store)
    assert call_history.record_attempt("lmstudio/a", False, error_kind="timeout", ttft_ms=None, store_path=store)
    assert call_history.record_attempt("mlx/b", True, ttft_ms=50, store_path=store)
    a = call_history.history(log, ["lmstudio/a"], store_path=store)["lmstudio/a"]
    assert (a.attempts, a.failures, a.failure_rate) == (4, 2, 0.5)
    assert a.median_ttft_ms == 200
    assert a.turns == 1
    # the window applies to attempts as well: the two most recent are both failures
    assert call_history.history(log, ["lmstudio/a"], window=2, store_path=store)["lmstudio/a"].failure_rate == 1.0


def test_all_models_are_reported_when_none_are_named(tmp_path, store):
    log = tmp_path / "logs.db"
    make_log(log, [("x", 10, 1), ("router", 10, 1, "y")])
    call_history.record_attempt("z", False, error_kind="http", store_path=store)
    result = call_history.history(log, store_path=store)
    assert sorted(result) == ["x", "y", "z"]
    assert result["z"].failures == 1 and result["z"].turns == 0


def test_unknown_models_are_present_with_zero_counts(tmp_path, store):
    log = tmp_path / "logs.db"
    make_log(log, [("x", 10, 1)])
    unknown = call_history.history(log, ["nobody"], store_path=store)["nobody"]
    assert (unknown.turns, unknown.attempts, unknown.median_duration_ms, unknown.failure_rate) == (0, 0, None, None)


def test_new_turns_are_picked_up_on_the_next_call(tmp_path, store):
    log = tmp_path / "logs.db"
    db = make_log(log, [("m", 100, 10)])
    assert call_history.history(log, ["m"], store_path=store)["m"].turns == 1
    add_turns(db, [("m", 300, 10), ("m", 500, 10)])
    m = call_history.history(log, ["m"], store_path=store)["m"]
    assert m.turns == 3
    assert m.median_duration_ms == 300


def test_a_replaced_log_is_copied_afresh(tmp_path, store):
    log = tmp_path / "logs.db"
    make_log(log, [("old", 100, 10)] * 3).close()
    assert call_history.history(log, ["old"], store_path=store)["old"].turns == 3
    log.unlink()
    make_log(log, [("new", 100, 10)] * 5).close()
    result = call_history.history(log, ["old", "new"], store_path=store)
    assert result["old"].turns == 0
    assert result["new"].turns == 5


def test_missing_log_gives_empty_stats(tmp_path, store):
    result = call_history.history(tmp_path / "nope" / "logs.db", ["m"], store_path=store)
    assert result["m"].turns == 0
    assert not (tmp_path / "nope").exists()  # reading must never create llm's files


def test_log_of_an_older_llm_without_turns_gives_empty_stats(tmp_path, store):
    log = tmp_path / "logs.db"
    db = sqlite_utils.Database(log)
    # llm before 0.36 logged to `responses` only
    db["responses"].insert({"id": "r1", "model": "m", "duration_ms": 100, "output_tokens": 5})
    assert call_history.history(log, ["m"], store_path=store)["m"].turns == 0
    assert call_history.history(log, store_path=store) == {}


def test_file_that_is_not_a_database_gives_empty_stats(tmp_path, store):
    log = tmp_path / "logs.db"
    log.write_bytes(b"this is not sqlite" * 100)
    assert call_history.history(log, ["m"], store_path=store)["m"].turns == 0


def test_locked_log_gives_empty_stats_without_waiting_long(tmp_path, store):
    log = tmp_path / "logs.db"
    make_log(log, [("m", 100, 10)]).close()
    writer = sqlite3.connect(log, isolation_level=None)
    writer.execute("begin exclusive")  # what llm holds while it commits a turn
    try:
        start = time.monotonic()
        result = call_history.history(log, ["m"], store_path=store, timeout=0.1)
        assert time.monotonic() - start < 2.0
        assert result["m"].turns == 0
    finally:
        writer.execute("rollback")
        writer.close()
    # once the writer is gone, the history is there
    assert call_history.history(log, ["m"], store_path=store)["m"].turns == 1


def test_locked_log_serves_what_was_already_copied(tmp_path, store):
    log = tmp_path / "logs.db"
    make_log(log, [("m", 100, 10)] * 2).close()
    assert call_history.history(log, ["m"], store_path=store)["m"].turns == 2
    writer = sqlite3.connect(log, isolation_level=None)
    writer.execute("begin exclusive")
    try:
        assert call_history.history(log, ["m"], store_path=store, timeout=0.05)["m"].turns == 2
    finally:
        writer.execute("rollback")
        writer.close()


def test_record_attempt_reports_an_unwritable_store_instead_of_raising(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    assert call_history.record_attempt("m", True, store_path=blocker / "router.db") is False
    assert call_history.history(tmp_path / "logs.db", ["m"], store_path=blocker / "router.db")["m"].attempts == 0


def test_window_must_be_positive(tmp_path, store):
    with pytest.raises(ValueError):
        call_history.history(tmp_path / "logs.db", ["m"], window=0, store_path=store)


class _Probe(llm.Model):
    """A tiny model registered for real `llm` CLI runs: answers at once, or delegates like the router."""

    can_stream = True

    def __init__(self, model_id, resolved=None):
        self.model_id = model_id
        self.resolved = resolved

    def execute(self, prompt, stream, response, conversation):
        time.sleep(0.02)
        if self.resolved:
            response.set_resolved_model(self.resolved)
        response.set_usage(input=3, output=7)
        yield "ok"


class _ProbePlugin:
    @llm.hookimpl
    def register_models(self, register):
        register(_Probe("stats-probe"))
        register(_Probe("stats-router", resolved="stats-probe"))


@pytest.fixture
def probe_models():
    from llm.plugins import pm

    plugin = _ProbePlugin()
    pm.register(plugin, name="stats-probe-plugin")
    try:
        yield
    finally:
        pm.unregister(name="stats-probe-plugin")


def test_history_of_turns_logged_by_llm_itself_leaves_the_log_untouched(user_path, store, probe_models):
    from llm.cli import cli

    user = user_path  # conftest points LLM_USER_PATH here

    runner = CliRunner()
    for model in ("stats-probe", "stats-router", "stats-probe"):
        result = runner.invoke(cli, ["-m", model, "hello"], catch_exceptions=False)
        assert result.exit_code == 0 and "ok" in result.output
    log = user / "logs.db"
    before = schema_of(log)

    result = call_history.history(log, ["stats-probe", "stats-router"], store_path=store)
    probe = result["stats-probe"]
    assert probe.turns == 3  # two direct, one through the delegating model
    assert probe.median_duration_ms is not None and probe.median_duration_ms >= 15
    assert probe.output_tokens_per_second and probe.output_tokens_per_second > 0
    assert result["stats-router"].turns == 0

    assert schema_of(log) == before  # no table, index or trigger of ours in llm's file
    logs = runner.invoke(cli, ["logs", "-n", "3", "--json"], catch_exceptions=False)
    assert logs.exit_code == 0
    assert logs.output.count('"resolved_model": "stats-probe"') == 1


def test_lmstudio_turns_count_under_the_plugins_own_id_not_lmstudios_bare_key(tmp_path, store):
    log = tmp_path / "logs.db"
    # LM Studio names itself the answering model by its bare key; the router asks for lmstudio/<key>
    make_log(log, [("lmstudio/org/m", 1000, 10, "org/m"), ("lmstudio@host:1/org/m", 500, 10, "org/m")])
    result = call_history.history(log, ["lmstudio/org/m", "lmstudio@host:1/org/m", "org/m"], store_path=store)
    assert (result["lmstudio/org/m"].turns, result["lmstudio@host:1/org/m"].turns, result["org/m"].turns) == (1, 1, 0)


def test_answers_served_from_the_response_cache_say_nothing_about_speed(tmp_path, store):
    log = tmp_path / "logs.db"
    db = make_log(log, [("m", 2000, 100)])
    db["turns"].insert({"id": "01TESTCACHED", "model": "m", "duration_ms": 1, "output_tokens": 100,
                        "response_json": '{"cache": {"hit": true}}'})
    m = call_history.history(log, ["m"], store_path=store)["m"]
    assert (m.turns, m.median_duration_ms, m.output_tokens_per_second) == (1, 2000, 50.0)


# ---------------------------------------------------------------- a damaged router.db


def damage(path: Path, how: str) -> bytes:
    if how == "not a database":
        path.write_bytes(b"[not json" * 100)
    else:  # the header stays, the pages after it are garbage: found by `stats`, which reads every page
        with sqlite3.connect(path) as conn:
            conn.execute("pragma wal_checkpoint(truncate)")
        data = path.read_bytes()
        path.write_bytes(data[:4096] + b"\xde\xad" * ((len(data) - 4096) // 2))
    return path.read_bytes()


@pytest.mark.parametrize("how", ["not a database", "damaged pages"])
def test_a_damaged_router_db_is_moved_aside_and_rebuilt_from_llms_log(lmstudio, user_path, how):
    from llm.cli import cli

    llama = "lmstudio/test-org/tiny-llama"
    lmstudio.script("one", "two")
    for prompt in ("a", "b"):
        assert CliRunner().invoke(cli, ["-m", llama, prompt]).exit_code == 0
    path = user_path / "lmstudio" / call_history.STORE_FILE
    damaged = damage(path, how)
    stats = CliRunner().invoke(cli, ["lmstudio", "stats", "--json"])
    assert stats.exit_code == 0, stats.output
    [aside] = [p for p in path.parent.glob("router.db.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    assert aside.read_bytes() == damaged
    [warning] = stats.stderr.splitlines()
    assert warning.startswith(f"llm-lmstudio-mlx: warning: {path} was damaged (") and warning.endswith(
        f"moved to {aside}; a new one is built in its place (answers are copied again from llm's log; "
        "failures start afresh)")
    [model] = json.loads(stats.stdout)["models"]
    assert (model["model"], model["answers"]) == (llama, 2)  # copied again from llm's log: nothing else lost
    lmstudio.set_fault("status", "/api/v0/chat", status=500, body={"error": "boom"})
    damage(path, how)
    assert CliRunner().invoke(cli, ["-m", llama, "c"]).exit_code == 1
    if how == "not a database":  # found when the failure is recorded (a prompt reads no page it does not need)
        with sqlite3.connect(path) as conn:
            assert conn.execute("select model, ok from lmstudio_calls").fetchall() == [(llama, 0)]
    assert CliRunner().invoke(cli, ["lmstudio", "stats"]).exit_code == 0
