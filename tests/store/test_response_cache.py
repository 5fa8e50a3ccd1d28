"""Specifications for llm_lmstudio.store.response_cache: the opt-in response cache, end to end through `llm` against the stand-in,
and its SQLite store (TTL, LRU cap, several writer processes, torn or foreign files)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import llm
import pytest
import sqlite_utils
from click.testing import CliRunner
from llm.cli import cli

from llm_lmstudio.store import response_cache
from llm_lmstudio.store import cache_db
from tests.helpers import llm_cli as run, log_rows as turns
from tests.mlx.test_chat import models, script_output  # noqa: F401 - the native-model fixture and scripted output

LLAMA = "lmstudio/test-org/tiny-llama"
TOOLS = "lmstudio/test-org/tiny-qwen-tools"
REPO = Path(__file__).resolve().parents[2]


def chat_requests(lmstudio):
    """Requests that reached the model: chat completions, or /v1/responses for a continued conversation."""
    return [r for r in lmstudio.requests() if "chat/completions" in r["path"] or r["path"] == "/v1/responses"]


def cache_file(user_path) -> Path:
    return user_path / "lmstudio" / cache_db.CACHE_FILE


# ---------------------------------------------------------------- through llm, against the stand-in


def test_a_repeat_is_answered_from_the_cache_without_any_server_call(lmstudio, user_path):
    lmstudio.script("Paris is the capital of France.")
    first = run("-m", LLAMA, "Capital of France?", "-s", "Be brief.", "-o", "cache", "1h")
    assert first.exit_code == 0, first.output
    assert "Paris is the capital of France." in first.output
    lmstudio.clear_requests()

    second = run("-m", LLAMA, "Capital of France?", "-s", "Be brief.", "-o", "cache", "1h")
    assert second.exit_code == 0, second.output
    assert second.stdout == first.stdout  # (the first run's stderr also says it loaded the model)
    assert lmstudio.requests() == []  # not even a model listing: the catalog is fresh from the first run

    original, replayed = turns(user_path)
    assert replayed["model"] == LLAMA and replayed["resolved_model"] == original["resolved_model"]
    assert (replayed["input_tokens"], replayed["output_tokens"]) == (original["input_tokens"], original["output_tokens"])
    stored = json.loads(original["response_json"])
    assert stored["cache"]["stored"] is True and stored["cache"]["hit"] is False
    served = json.loads(replayed["response_json"])
    assert served["cache"]["hit"] is True
    assert served["cache"]["first_response_id"] == original["id"]
    assert served["cache"]["first_produced"][:16] == original["datetime_utc"][:16]
    assert served["finish_reason"] == "stop"  # the original answer's own log travels with it
    logged = json.loads(run("logs", "-n", "1", "--json").output)[0]
    assert logged["response"] == "Paris is the capital of France."


def test_the_cache_is_off_unless_asked_for(lmstudio, user_path):
    lmstudio.script("one", "two")
    assert run("-m", LLAMA, "same words").exit_code == 0
    assert run("-m", LLAMA, "same words").exit_code == 0
    assert len(chat_requests(lmstudio)) == 2
    assert not cache_file(user_path).exists()


def test_environment_turns_it_on_for_every_model_and_the_option_turns_it_off(lmstudio, user_path, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_RESPONSE_CACHE", "10m")
    lmstudio.script("from the server", "asked again")
    assert "from the server" in run("-m", LLAMA, "env question").output
    assert "from the server" in run("-m", LLAMA, "env question").output
    assert len(chat_requests(lmstudio)) == 1
    assert "asked again" in run("-m", LLAMA, "env question", "-o", "cache", "off").output
    assert len(chat_requests(lmstudio)) == 2


def test_model_options_set_through_llm_turn_it_on_for_one_model(lmstudio, user_path):
    assert run("models", "options", "set", LLAMA, "cache", "1d").exit_code == 0
    lmstudio.script("remembered")
    assert "remembered" in run("-m", LLAMA, "per-model default").output
    assert "remembered" in run("-m", LLAMA, "per-model default").output
    assert len(chat_requests(lmstudio)) == 1


@pytest.mark.parametrize(
    "change",
    [
        ["Capital of Spain?"],
        ["Capital of France?", "-s", "Answer in French."],
        ["Capital of France?", "-o", "temperature", "0.2"],
        ["Capital of France?", "--schema", "city, population int"],
    ],
    ids=["prompt", "system", "options", "schema"],
)
def test_anything_sent_that_differs_is_a_miss(lmstudio, user_path, change):
    lmstudio.script("Paris.", '{"city": "Madrid"}')
    assert run("-m", LLAMA, "Capital of France?", "-o", "cache", "1h").exit_code == 0
    result = run("-m", LLAMA, *change, "-o", "cache", "1h")
    assert result.exit_code == 0, result.output
    assert len(chat_requests(lmstudio)) == 2


def test_the_cache_option_itself_is_not_part_of_the_key(lmstudio, user_path):
    lmstudio.script("kept for a day")
    assert run("-m", LLAMA, "ttl is not content", "-o", "cache", "1d").exit_code == 0
    assert "kept for a day" in run("-m", LLAMA, "ttl is not content", "-o", "cache", "5m").output
    assert len(chat_requests(lmstudio)) == 1


def test_history_is_part_of_the_key(lmstudio, user_path):
    lmstudio.script("Hello Ada.", "Your name is Ada.", "Hello Bob.", "Your name is Bob.")
    for name in ("Ada", "Bob"):
        assert run("-m", LLAMA, f"I am {name}.", "-o", "cache", "1h").exit_code == 0
        result = run("-c", "What is my name?", "-o", "cache", "1h")
        assert f"Your name is {name}." in result.output
    assert len(chat_requests(lmstudio)) == 4


def test_image_attachments_are_keyed_by_their_bytes(lmstudio, user_path, tmp_path):
    from PIL import Image

    first, moved, other = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    Image.new("RGB", (8, 8), "red").save(first)
    moved.write_bytes(first.read_bytes())
    Image.new("RGB", (8, 8), "blue").save(other)
    lmstudio.script("red square", "blue square")
    vision = "lmstudio/test-org/tiny-vision"
    assert "red square" in run("-m", vision, "colour?", "-a", str(first), "-o", "cache", "1h").output
    assert "red square" in run("-m", vision, "colour?", "-a", str(moved), "-o", "cache", "1h").output
    assert "blue square" in run("-m", vision, "colour?", "-a", str(other), "-o", "cache", "1h").output
    assert len(chat_requests(lmstudio)) == 2


def test_an_expired_answer_is_asked_again(lmstudio, user_path):
    lmstudio.script("first answer", "fresh answer")
    assert "first answer" in run("-m", LLAMA, "expiring", "-o", "cache", "1s").output
    store = cache_db.Store(cache_file(user_path))
    with sqlite3.connect(store.path) as conn:  # age the entry instead of sleeping
        conn.execute("update entries set expires = expires - 5")
    assert "fresh answer" in run("-m", LLAMA, "expiring", "-o", "cache", "1s").output
    assert len(chat_requests(lmstudio)) == 2


def test_an_answer_that_calls_tools_is_never_stored_nor_one_after_tools_ran(lmstudio, user_path):
    lmstudio.script(
        '<tool_call>\n{"name": "llm_version", "arguments": {}}\n</tool_call>',
        "You are running the version I was told.",
        '<tool_call>\n{"name": "llm_version", "arguments": {}}\n</tool_call>',
        "You are running the version I was told.",
    )
    for _ in range(2):
        result = run("-m", TOOLS, "-T", "llm_version", "Which llm version?", "-o", "cache", "1h")
        assert result.exit_code == 0, result.output
        assert "You are running the version I was told." in result.output
    # both rounds of both chains reached the server: the tool call and the answer written after its result
    assert len(chat_requests(lmstudio)) == 4
    assert cache_db.Store(cache_file(user_path)).stats()["entries"] == 0


def test_an_answer_with_tools_offered_but_not_called_is_cached_under_those_tools(lmstudio, user_path):
    lmstudio.script("No tool needed.", "Still no tool needed.")
    args = ["-m", TOOLS, "-T", "llm_version", "Say hi", "-o", "cache", "1h"]
    assert "No tool needed." in run(*args).output
    assert "No tool needed." in run(*args).output
    assert "Still no tool needed." in run("-m", TOOLS, "-T", "llm_time", "Say hi", "-o", "cache", "1h").output
    assert len(chat_requests(lmstudio)) == 2


def test_an_answer_cut_at_max_tokens_is_not_stored(lmstudio, user_path):
    lmstudio.script("one two three four five six seven eight nine ten", "one two three four five six seven eight nine ten")
    for _ in range(2):
        assert run("-m", LLAMA, "count", "-o", "max_tokens", "3", "-o", "cache", "1h").exit_code == 0
    assert len(chat_requests(lmstudio)) == 2
    [first, _] = turns(user_path)
    assert json.loads(first["response_json"])["finish_reason"] == "length"
    assert "cache" not in json.loads(first["response_json"])


def test_an_answer_cut_mid_stream_is_not_stored_and_counts_as_a_failure(lmstudio, user_path):
    from llm_lmstudio.store import call_history

    run("models")
    lmstudio.script("one two three four five six seven eight nine ten")
    lmstudio.set_fault("cut", "/api/v0/chat", after_chunks=4, times=1)
    cut = CliRunner().invoke(cli, ["-m", LLAMA, "count", "-o", "cache", "1h"])
    assert cut.exit_code == 1 and "cut off" in cut.output
    lmstudio.script("one two three four five six seven eight nine ten")
    whole = run("-m", LLAMA, "count", "-o", "cache", "1h")
    assert whole.exit_code == 0 and "[response cut off" not in whole.output
    assert len(chat_requests(lmstudio)) == 2
    conn = sqlite3.connect(user_path / "lmstudio" / call_history.STORE_FILE)
    assert conn.execute("select ok, error_kind from lmstudio_calls order by id").fetchall() == [(0, "StreamCut"), (1, None)]


def test_a_failed_request_is_not_stored_and_is_recorded_by_kind(lmstudio, user_path):
    from llm_lmstudio.store import call_history

    run("models")
    lmstudio.set_fault("status", "/api/v0/chat", status=500, times=1)
    failed = CliRunner().invoke(cli, ["-m", LLAMA, "hi", "-o", "cache", "1h"])
    assert failed.exit_code == 1
    assert cache_db.Store(cache_file(user_path)).stats()["entries"] == 0
    conn = sqlite3.connect(user_path / "lmstudio" / call_history.STORE_FILE)
    assert conn.execute("select model, ok, error_kind from lmstudio_calls").fetchall() == [(LLAMA, 0, "ServerError")]
    # a prompt sent straight to a model is not one of the router's attempts (those rank its candidates)
    assert conn.execute("select count(*) from lmstudio_attempts").fetchone() == (0,)


def test_bad_cache_values_are_refused_before_any_request(lmstudio, monkeypatch):
    result = run("-m", LLAMA, "hi", "-o", "cache", "soon")
    assert result.exit_code == 1 and result.output == (
        "Error: -o cache soon: cache 'soon' is not a duration: use a number with s, m, h or d, like 30m or 7d\n")
    for model in (LLAMA, "router"):  # every model's options are one line, LM Studio's and the router's alike
        result = run("-m", model, "hi", "-o", "temperature", "abc", "-o", "cache", "1h")
        assert result.exit_code == 1 and result.output == (
            "Error: -o temperature abc: Input should be a valid number, unable to parse string as a number\n")
    monkeypatch.setenv("LMSTUDIO_RESPONSE_CACHE", "forever")
    result = CliRunner().invoke(cli, ["-m", LLAMA, "hi"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: LMSTUDIO_RESPONSE_CACHE='forever' is not a duration")
    assert chat_requests(lmstudio) == []


def test_a_cache_time_past_the_maximum_is_refused_before_any_request(lmstudio, monkeypatch):
    # an expiry past year 9999 cannot be stored or shown: refused at option time, as a negative time is
    result = run("-m", LLAMA, "hi", "-o", "cache", "3000000d")
    assert result.exit_code == 1 and result.output == (
        "Error: -o cache 3000000d: cache '3000000d' is too long: keep an answer at most 100 years (36500d)\n")
    monkeypatch.setenv("LMSTUDIO_RESPONSE_CACHE", "3000000d")
    result = CliRunner().invoke(cli, ["-m", LLAMA, "hi"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: LMSTUDIO_RESPONSE_CACHE='3000000d' is too long: keep an answer at most 100 years (36500d)")
    assert chat_requests(lmstudio) == []


def test_the_maximum_cache_time_stores_and_replays(lmstudio, user_path):
    lmstudio.script("kept a century")
    first = run("-m", LLAMA, "century", "-o", "cache", "36500d")
    assert first.exit_code == 0 and first.output == "kept a century\n"
    second = run("-m", LLAMA, "century", "-o", "cache", "36500d")
    assert second.exit_code == 0 and second.output == "kept a century\n"
    assert len(chat_requests(lmstudio)) == 1
    assert json.loads(turns(user_path)[1]["response_json"])["cache"]["hit"] is True


def test_an_entry_whose_expiry_cannot_be_read_is_a_miss_and_is_replaced(lmstudio, user_path):
    # what an older version stored for `-o cache 3000000d`: an expiry past year 9999
    lmstudio.script("old answer", "fresh answer")
    assert run("-m", LLAMA, "huge", "-o", "cache", "1h").exit_code == 0
    with sqlite3.connect(cache_file(user_path)) as conn:
        conn.execute("update entries set expires = created + 3000000 * 86400")
    again = run("-m", LLAMA, "huge", "-o", "cache", "1h")
    assert again.exit_code == 0 and again.output == "fresh answer\n"
    replayed = run("-m", LLAMA, "huge", "-o", "cache", "1h")  # the fresh answer took its place
    assert replayed.exit_code == 0 and replayed.output == "fresh answer\n"
    assert len(chat_requests(lmstudio)) == 2


def test_the_option_is_listed_with_its_description(lmstudio):
    result = run("models", "--options", "-q", "tiny-llama")
    assert "cache:" in result.output and "Response cache" in result.output
    router = run("models", "--options", "-m", "lmstudio-router")
    assert "cache:" in router.output


def test_async_models_use_the_same_cache(lmstudio, user_path):
    lmstudio.script("async answer")

    async def ask():
        response = llm.get_async_model(LLAMA).prompt("async please", cache="1h")
        return await response.text(), await response.json()

    first_text, _ = asyncio.run(ask())
    second_text, second_json = asyncio.run(ask())
    assert first_text == second_text == "async answer"
    assert second_json["cache"]["hit"] is True
    assert len(chat_requests(lmstudio)) == 1


def test_the_router_answers_a_repeat_from_the_cache_with_the_model_that_answered(lmstudio, user_path):
    from llm_lmstudio.store import call_history

    (user_path / "lmstudio-router.yaml").write_text("prefer:\n  creative: [tiny-llama]\n")
    lmstudio.script("The sea is wide and deep.")
    args = ["-m", "router", "Write a short poem about the sea", "-o", "cache", "1h"]
    first = run(*args)
    assert first.exit_code == 0, first.output
    lmstudio.clear_requests()
    second = run(*args)
    assert second.stdout == first.stdout  # (the first run's stderr also says it loaded the model)
    assert chat_requests(lmstudio) == []
    original, replayed = turns(user_path)
    assert replayed["model"] == "lmstudio-router" and replayed["resolved_model"] == LLAMA == original["resolved_model"]
    served = json.loads(replayed["response_json"])
    assert served["cache"]["hit"] is True and served["attempts"] == json.loads(original["response_json"])["attempts"]
    # one entry, the router's: the model it delegated to did not store its own copy
    assert cache_db.Store(cache_file(user_path)).stats()["models"] == {"lmstudio-router": 1}
    # the hit ran no model, so it adds no attempt to the chosen model's history; the router's turn is no call
    assert call_history.history(user_path / "logs.db", [LLAMA])[LLAMA].attempts == 1
    conn = sqlite3.connect(user_path / "lmstudio" / call_history.STORE_FILE)
    assert conn.execute("select count(*) from lmstudio_calls").fetchone() == (0,)


def test_native_mlx_answers_a_repeat_from_the_cache_without_generating(models, user_path, monkeypatch):
    from llm_lmstudio.mlx import chat

    script_output(monkeypatch, "Hello from MLX.")
    turns_run = []
    original = chat._ChatBase._turn
    monkeypatch.setattr(chat._ChatBase, "_turn", lambda *a: turns_run.append(1) or original(*a))
    first = run("-m", "mlx/tiny-qwen", "greet me", "-o", "cache", "1h")
    assert first.exit_code == 0 and "Hello from MLX." in first.output
    second = run("-m", "mlx/tiny-qwen", "greet me", "-o", "cache", "1h")
    assert second.stdout == first.stdout  # (the first run's stderr also says it loaded the model)
    assert len(turns_run) == 1
    original_turn, replayed = turns(user_path)
    served = json.loads(replayed["response_json"])
    assert served["cache"]["hit"] is True and served["engine"] == "mlx-lm"
    assert replayed["output_tokens"] == original_turn["output_tokens"]


# ---------------------------------------------------------------- the store


def payload(text="an answer", size=0):
    return {"events": [["text", text + "x" * size]], "usage": {"input": 1, "output": 2}, "response_json": {}}


def test_entries_expire_after_their_ttl(tmp_path):
    store = cache_db.Store(tmp_path / "c.db", max_bytes=10**6)
    assert store.put("k", "m", payload(), ttl=60, now=1000)
    assert store.get("k", now=1059).payload["events"] == [["text", "an answer"]]
    assert store.get("k", now=1060) is None
    assert store.stats(now=1061)["entries"] == 0  # an expired entry found is removed


def test_the_cap_evicts_the_least_recently_used(tmp_path):
    store = cache_db.Store(tmp_path / "c.db", max_bytes=2600)
    for number, key in enumerate("abc"):
        assert store.put(key, "m", payload(size=700), ttl=600, now=1000 + number)
    assert store.get("a", now=1010) is not None  # a is now the most recently used
    assert store.put("d", "m", payload(size=700), ttl=600, now=1020)
    assert [k for k in "abcd" if store.get(k, now=1030)] == ["a", "c", "d"]
    assert store.stats(now=1030)["bytes"] <= 2600
    assert not store.put("huge", "m", payload(size=5000), ttl=600)  # bigger than the whole cache


def test_clear_all_or_older_than(tmp_path):
    store = cache_db.Store(tmp_path / "c.db", max_bytes=10**6)
    store.put("old", "m", payload(), ttl=10**6, now=1000)
    store.put("new", "m", payload(), ttl=10**6, now=5000)
    assert store.clear(older_than=2000, now=5500) == 1
    assert store.get("new", now=5600) is not None and store.get("old", now=5600) is None
    assert store.clear() == 1
    assert store.stats()["entries"] == 0


_WRITER = textwrap.dedent(
    """
    import sys
    from llm_lmstudio.store import cache_db
    path, name = sys.argv[1], sys.argv[2]
    store = cache_db.Store(path, max_bytes=10**8, timeout=10)
    ok = sum(store.put(f"{name}-{i}", name, {"events": [["text", f"{name} {i}" * 40]]}, ttl=3600) for i in range(40))
    hits = sum(store.get(f"{name}-{i}") is not None for i in range(40))
    print(ok, hits)
    """
)


@pytest.mark.slow  # six writer processes
def test_several_processes_write_at_once_and_lose_nothing(tmp_path):
    path = tmp_path / "shared.db"
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"w{n}"], cwd=REPO, stdout=subprocess.PIPE, text=True)
        for n in range(6)
    ]
    outputs = [w.communicate(timeout=120)[0].split() for w in writers]
    assert all(w.returncode == 0 for w in writers)
    assert outputs == [["40", "40"]] * 6
    store = cache_db.Store(path, max_bytes=10**8)
    assert store.stats()["entries"] == 240
    assert sqlite3.connect(path).execute("pragma integrity_check").fetchone() == ("ok",)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "other-version"])
def test_a_torn_or_foreign_file_is_moved_aside_and_rebuilt_not_trusted(tmp_path, damage, capsys):
    path = tmp_path / "c.db"
    store = cache_db.Store(path, max_bytes=10**7)
    for i in range(200):
        store.put(f"k{i}", "m", payload(size=2000), ttl=600)
    if damage == "garbage":
        path.write_bytes(b"not a database at all" * 500)
    elif damage == "truncated":
        sqlite3.connect(path).execute("pragma wal_checkpoint(truncate)").close()
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        Path(f"{path}-wal").unlink(missing_ok=True)
    elif damage == "foreign":
        path.unlink()
        sqlite_utils.Database(path)["entries"].insert({"key": "k1", "payload": "{}"})
    else:
        sqlite3.connect(path).execute("pragma user_version = 99").close()
    damaged = path.read_bytes()
    # Not one answer comes out of a file the store cannot vouch for, not even rows a torn file still holds whole.
    assert [store.get(f"k{i}") for i in range(200)] == [None] * 200
    assert store.put("after", "m", payload("rebuilt"), ttl=600)
    assert store.get("after").payload["events"] == [["text", "rebuilt"]]
    conn = sqlite3.connect(path)
    assert conn.execute("pragma application_id").fetchone()[0] == cache_db.APPLICATION_ID
    assert conn.execute("pragma integrity_check").fetchone() == ("ok",)
    [aside] = [p for p in tmp_path.glob("c.db.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    assert aside.read_bytes() == damaged  # kept as it was, never deleted
    [warning] = capsys.readouterr().err.splitlines()
    assert warning.startswith(f"llm-lmstudio-mlx: warning: {path} was damaged (") and warning.endswith(
        f") and has been moved to {aside}; a new, empty cache is built in its place")


def test_a_stored_row_that_is_not_a_payload_is_a_miss(tmp_path):
    store = cache_db.Store(tmp_path / "c.db", max_bytes=10**6)
    store.put("k", "m", payload(), ttl=600)
    with sqlite3.connect(store.path) as conn:
        conn.execute("update entries set payload = ?", (json.dumps({"events": [["tool_call_name", "rm"]]}),))
    assert store.get("k") is None


@pytest.mark.parametrize("column, value", [("expires", 3e11), ("expires", 1e300), ("expires", "never"), ("created", 3e11)])
def test_a_stored_row_whose_times_cannot_be_read_is_a_miss(tmp_path, column, value):
    store = cache_db.Store(tmp_path / "c.db", max_bytes=10**6)
    store.put("k", "m", payload(), ttl=600)
    with sqlite3.connect(store.path) as conn:
        conn.execute(f"update entries set {column} = ?", (value,))
    assert store.get("k") is None
    assert store.stats()["entries"] == 0  # removed, so the next answer is stored in its place


def test_an_unwritable_plugin_dir_is_a_miss_not_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    store = cache_db.Store(blocker / "c.db", max_bytes=10**6)
    assert store.get("k") is None
    assert store.put("k", "m", payload(), ttl=60) is False


# ---------------------------------------------------------------- llm lmstudio cache


def test_cache_commands_report_and_clear(lmstudio, user_path):
    lmstudio.script("a", "b")
    run("-m", LLAMA, "first", "-o", "cache", "1h")
    run("-m", LLAMA, "second", "-o", "cache", "1h")
    run("-m", LLAMA, "first", "-o", "cache", "1h")
    data = json.loads(run("lmstudio", "cache", "stats", "--json").output)
    assert (data["entries"], data["hits"], data["models"]) == (2, 1, {LLAMA: 2})
    table = run("lmstudio", "cache", "stats").output
    assert "2 answers" in table and LLAMA in table
    assert json.loads(run("lmstudio", "cache", "clear", "--older-than", "7d", "--json").output) == {"removed": 0}
    assert "Removed 2 cached answers" in run("lmstudio", "cache", "clear").output
    bad = CliRunner().invoke(cli, ["lmstudio", "cache", "clear", "--older-than", "a while"])
    assert bad.exit_code == 2 and "not a duration" in bad.output
