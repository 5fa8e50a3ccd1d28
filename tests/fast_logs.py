"""A migrated logs.db for tests that prompt through `llm`: migrating a fresh one costs seconds of fsyncs,
so one is migrated per session and copied. Import the fixtures into a test module to use them."""

import shutil

import pytest
import sqlite_utils


@pytest.fixture(scope="session")
def migrated_logs_db(tmp_path_factory):
    from llm.migrations import migrate

    path = tmp_path_factory.mktemp("logs-template") / "logs.db"
    migrate(sqlite_utils.Database(path))
    return path


@pytest.fixture
def logs_db(user_path, migrated_logs_db):
    """llm's logs.db in this test's user directory, as a user who has used llm before has it."""
    shutil.copy(migrated_logs_db, user_path / "logs.db")
    return user_path / "logs.db"
