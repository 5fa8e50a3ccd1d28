"""What many test modules do the same way, done once: run `llm` (in-process or as a real process), assert the
one-line error a user must see, read llm's logged turns, and edit the plugin's cached model lists. Test helpers
only: nothing here may fake the plugin's behaviour or compute an expected value the way the plugin does."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import sqlite_utils
from click.testing import CliRunner, Result


def llm_command() -> str:
    """The `llm` executable of the environment running the tests (beside sys.executable), so that a
    subprocess runs the same llm and plugin as the test itself, whatever venv or checkout that is."""
    folder = Path(sys.executable).parent
    for name in ("llm", "llm.exe"):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError(f"no `llm` executable beside {sys.executable}: install llm into that environment")


def llm_cli(*args: str, input: str | bytes | None = None, catch_exceptions: bool = False) -> Result:
    """`llm ARGS` in this process, through click's test runner. An exception the command does not turn into an
    exit code propagates (a traceback in the test report), unless `catch_exceptions` keeps it on the result."""
    from llm.cli import cli

    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=catch_exceptions)


def llm_process(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    """`llm ARGS` as a real process, with this test's environment (user folder, stand-in address) plus `env`."""
    return subprocess.run(
        [llm_command(), *args], capture_output=True, text=True, input=input, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(
    result: Result | subprocess.CompletedProcess, *fragments: str, stdout: str | None = "", progress: bool = False
) -> str:
    """What a user must see when a command fails: exit code 1, no traceback, and exactly one non-blank line on
    stderr, starting with "Error: " and holding every fragment. stdout holds exactly `stdout`: nothing, unless the
    test says what arrived before the failure (None: the test checks stdout itself, e.g. a stream cut midway).
    `progress`: the command showed progress on stderr first (`llm lmstudio get`): the error is then its last line
    and the only one starting with "Error:". Works on an in-process result and on a real process; returns the line."""
    if isinstance(result, subprocess.CompletedProcess):
        code, out, err = result.returncode, result.stdout, result.stderr
    else:
        code, out, err = result.exit_code, result.stdout, result.stderr
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    shown = f"exit code {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert code == 1, shown
    assert "Traceback" not in out + err, shown
    lines = [line for line in err.splitlines() if line.strip()]
    if progress:
        assert [line for line in lines if line.lstrip().startswith("Error:")] == lines[-1:], shown
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("Error: "), shown
    assert stdout is None or out == stdout, shown
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def log_rows(user_path: Path, table: str = "turns") -> list[dict]:
    """Rows of llm's logs.db in `user_path` (llm's turns by default), oldest first."""
    rows = list(sqlite_utils.Database(Path(user_path) / "logs.db")[table].rows)
    return sorted(rows, key=lambda row: (row.get("datetime_utc") or "", row.get("id") or ""))


@contextmanager
def model_list_cache() -> Iterator[dict]:
    """The plugin's cached model lists ({base_url: entry}) to change in place: written back on leaving the block.
    How a test ages a list (entry["fetched_at"]) instead of sleeping through its TTL."""
    from llm_lmstudio.lmstudio import catalog

    servers = catalog.read_cache()
    yield servers
    catalog._write_cache(servers)  # the plugin's own writer: the file stays exactly in the plugin's format


def cache_list_for(url: str, *, like: str, fetched_at: float | None = None) -> str:
    """Cache, for the server at `url`, the model list last fetched from `like`, as if `url` had served it when
    `llm models` last ran (at `fetched_at`, now by default): how a test gets a server that went down (or hung)
    after its models were listed. Returns `url` as the plugin spells it."""
    from llm_lmstudio.core import settings

    key = settings.normalize_base_url(url)
    with model_list_cache() as servers:
        servers[key] = dict(servers[settings.normalize_base_url(like)], fetched_at=time.time() if fetched_at is None else fetched_at)
    return key


def sdk_client(token_support: bool) -> type:
    """The installed lmstudio SDK's Client as an SDK with (lmstudio >= 1.6: `Client(api_host, api_token=...)`) or
    without (1.5: `Client(api_host)`) API-token support has it, whichever version is installed: how a test fixes
    the SDK the plugin finds, and so the one outcome it must show. The token goes out in the installed SDK's own
    authentication message."""
    import inspect

    import lmstudio as lms

    accepts_token = "api_token" in inspect.signature(lms.Client).parameters
    if token_support and accepts_token:
        return lms.Client
    if token_support:
        class TokenClient(lms.Client):
            def __init__(self, api_host=None, api_token=None):
                super().__init__(api_host)
                if api_token is not None:
                    client_id, passkey = api_token.removeprefix("sk-lm-").split(":")
                    self._auth_details = self._format_auth_message(client_id, passkey)

        return TokenClient

    class TokenlessClient(lms.Client):
        def __init__(self, api_host=None):
            super().__init__(api_host)

    return TokenlessClient
