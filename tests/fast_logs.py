"""A migrated logs.db for tests that prompt through `llm`: migrating a fresh one costs about half a second of
fsyncs, so one is migrated per session and copied into every test's user directory (tests/conftest.py)."""

import pytest
import sqlite_utils


@pytest.fixture(scope="session")
def migrated_logs_db(tmp_path_factory):
    from llm.migrations import migrate

    path = tmp_path_factory.mktemp("logs-template") / "logs.db"
    migrate(sqlite_utils.Database(path))
    return path


@pytest.fixture
def logs_db(user_path):
    """The path of llm's logs.db in this test's user directory (migrated: see `user_path`)."""
    return user_path / "logs.db"
