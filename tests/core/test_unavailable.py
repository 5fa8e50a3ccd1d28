"""A collection's model that is gone: `llm similar`, `llm embed-multi` and `llm embed` on an existing collection built
with an `mlx/` or `lmstudio/` model that is not registered now say why in one line (the same words as `-m`), never
llm's bare "Unknown model" traceback; and llm's embeddings database is read only by those commands, read-only."""

from __future__ import annotations

import json
import sqlite3
import time

import click
import pytest
import sqlite_utils
from llm.embeddings_migrations import embeddings_migrations

from llm_lmstudio.core import unavailable
from llm_lmstudio.mlx import discovery
from tests.helpers import assert_one_line_error, llm_cli

EMBED = "lmstudio/test-org/text-embedding-all-minilm-l6-v2"
MLX_GONE = (
    "Error: mlx/embedder is not available: no native MLX model is called embedder (`llm lmstudio mlx list` shows the "
    "models found on disk; `llm lmstudio mlx add PATH` adds a folder)"
)


@pytest.fixture
def nothing_available(tmp_path, monkeypatch, refused_url):
    """No native model on disk, and LM Studio down at an address this user folder has never listed."""
    (tmp_path / "no-lmstudio").mkdir()
    monkeypatch.setenv("LMSTUDIO_MODELS_DIR", str(tmp_path / "no-lmstudio"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hub"))
    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)
    return refused_url


def make_collection(path, model_id: str, name: str = "docs") -> None:
    """An embeddings database as llm leaves it after `llm embed-multi NAME ... -m MODEL_ID`: its tables and the row
    naming the collection's model."""
    db = sqlite_utils.Database(path)
    embeddings_migrations.apply(db)
    db["collections"].insert({"name": name, "model": model_id})
    db.close()


def removed_mlx_model(tmp_path) -> str:
    """mlx/embedder, added and then removed again (`llm lmstudio mlx add` / `remove`)."""
    folder = tmp_path / "embedder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    (folder / "model.safetensors").write_bytes(b"")  # discovered, never loaded
    (folder / "vocab.txt").write_text("[PAD]\n")  # `mlx add` wants tokenizer files
    discovery.add(folder, "embedder")
    discovery.remove("embedder")
    return "mlx/embedder"


COMMANDS = {
    "similar": ["similar", "docs", "-c", "rotate the logs"],
    "embed-multi": ["embed-multi", "docs", "--sql", "select 'a' as id, 'rotate the logs' as body"],
    "embed": ["embed", "docs", "9", "-c", "rotate the logs"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_collection_whose_mlx_model_was_removed_says_why_in_one_line(nothing_available, tmp_path, command):
    database = tmp_path / "docs.db"
    make_collection(database, removed_mlx_model(tmp_path))
    result = llm_cli(*COMMANDS[command], "-d", str(database))
    # embed-multi shows llm's progress label ("Embedding") on stdout before the first batch
    line = assert_one_line_error(result, stdout="Embedding\n" if command == "embed-multi" else "")
    assert line == MLX_GONE


@pytest.mark.parametrize("command", COMMANDS)
def test_a_collection_whose_lm_studio_server_is_down_and_never_listed_says_why_in_one_line(nothing_available, tmp_path, command):
    database = tmp_path / "docs.db"
    make_collection(database, EMBED)
    result = llm_cli(*COMMANDS[command], "-d", str(database))
    line = assert_one_line_error(result, stdout="Embedding\n" if command == "embed-multi" else "")
    assert line == (
        f"Error: {EMBED} is not available: LM Studio is not reachable at {nothing_available} — is the server running? "
        "Start it with `lms server start` or from the LM Studio app"
    )


def test_the_collection_is_found_in_llms_own_embeddings_database_and_through_llm_embeddings_db(
    nothing_available, tmp_path, user_path, monkeypatch
):
    make_collection(user_path / "embeddings.db", removed_mlx_model(tmp_path))
    assert assert_one_line_error(llm_cli(*COMMANDS["similar"])) == MLX_GONE
    make_collection(tmp_path / "elsewhere.db", "mlx/embedder")
    monkeypatch.setenv("LLM_EMBEDDINGS_DB", str(tmp_path / "elsewhere.db"))
    assert assert_one_line_error(llm_cli(*COMMANDS["similar"])) == MLX_GONE


def test_a_bad_setting_is_the_reason_a_collections_model_gives(nothing_available, tmp_path, monkeypatch):
    make_collection(tmp_path / "docs.db", EMBED)
    monkeypatch.setenv("LMSTUDIO_EMBED_BATCH_SIZE", "abc")
    line = assert_one_line_error(llm_cli(*COMMANDS["similar"], "-d", str(tmp_path / "docs.db")))
    assert line.startswith(f"Error: {EMBED} is not available: LMSTUDIO_EMBED_BATCH_SIZE='abc' is not usable")


# ---------------------------------------------------------------- read only by those commands, read-only


@pytest.fixture
def database_opens(monkeypatch):
    """The paths every sqlite3 connection of this process opens (llm's own included)."""
    opened = []
    connect = sqlite3.connect

    def spy(database, *args, **kwargs):
        opened.append(str(database))
        return connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", spy)
    return opened


def test_a_command_without_a_collection_argument_never_opens_the_embeddings_database(
    nothing_available, user_path, database_opens
):
    make_collection(user_path / "embeddings.db", "mlx/embedder")
    database_opens.clear()  # the test's own writing
    for args in (["embed", "-m", "mlx/nope", "-c", "hi"], ["-m", "mlx/nope", "hi"], ["embed-models"], ["models"]):
        llm_cli(*args, catch_exceptions=True)
    assert [path for path in database_opens if "embeddings.db" in path] == []
    llm_cli(*COMMANDS["similar"], catch_exceptions=True)  # the spy does see the database when a command names one
    assert [path for path in database_opens if "embeddings.db" in path and "mode=ro" in path]


def read(database, name: str = "docs"):
    context = click.Context(click.Command("similar"), info_name="similar")
    context.params = {"collection": name, "database": str(database)}
    return unavailable.collection_model(context)


def test_reading_a_collection_never_creates_or_changes_the_database(tmp_path):
    tmp_path = tmp_path / "databases"
    tmp_path.mkdir()
    missing = tmp_path / "missing.db"
    assert read(missing) is None and not missing.exists()
    garbage = tmp_path / "garbage.db"
    garbage.write_text("not a database")
    assert read(garbage) is None and garbage.read_text() == "not a database"
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert read(empty) is None and empty.stat().st_size == 0
    made = tmp_path / "docs.db"
    make_collection(made, EMBED)
    before = made.read_bytes()
    assert read(made) == EMBED and read(made, "other") is None
    assert made.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "docs.db", "empty.db", "garbage.db"]


def test_a_locked_database_is_given_up_at_once(tmp_path):
    database = tmp_path / "docs.db"
    make_collection(database, EMBED)
    writer = sqlite3.connect(database, isolation_level=None)
    writer.execute("begin exclusive")
    try:
        started = time.monotonic()
        assert read(database) is None
        assert time.monotonic() - started < 2  # sqlite3 would wait 5 s by default
    finally:
        writer.close()
