"""`python tests/llm_immediate_log.py ARGS` runs `llm ARGS` exactly as the `llm` executable does, except that llm's
own write of a response to logs.db takes SQLite's write lock first (BEGIN IMMEDIATE). llm 0.36 writes it in a
deferred transaction that reads before it writes: when several `llm` processes finish at once, one fails with
`sqlite3.OperationalError: database is locked` at the read-to-write upgrade, where SQLite does not wait for the busy
timeout (llm's bug: reproduction in docs/testing.md). Tests of several processes at once run `llm` through this, so
that what they check is the plugin. Nothing else of llm is changed."""

import sys
from pathlib import Path

# Run as a script, Python puts tests/ first on sys.path, where tests/lmstudio and tests/mlx (the tests mirroring the
# package) would shadow the lmstudio SDK and mlx: take it off before anything is imported.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from llm import logs  # noqa: E402
from llm.cli import cli  # noqa: E402


def _log(self, response, thread_id=None):
    conn = self.db.conn
    conn.execute("BEGIN IMMEDIATE")  # waits for the busy timeout like any first write, instead of failing later
    try:
        turn = self._log_in_transaction(response, thread_id)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return turn


if __name__ == "__main__":
    logs.LogStore.log = _log
    sys.argv[0] = "llm"
    sys.exit(cli())
