"""Shared fixtures: an isolated llm user directory per test, generated models cached across runs, MiniLM (marked and
skipped when it cannot be had), and the rule that no process a test starts outlives it. Shared helpers (running
`llm`, the one-line error, llm's logged rows, the cached model lists) are in tests/helpers.py."""

import io
import os
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path

import hypothesis
import pytest

from tests import model_factory
from tests.fast_logs import migrated_logs_db  # noqa: F401 - a fixture
from tests.helpers import llm_command  # noqa: F401 - re-exported: test modules import it from here

# The LM Studio stand-in's fixtures (`fake_lmstudio`, `lmstudio`, ...) live with the stand-in.
pytest_plugins = ["tests.fake_lmstudio.pytest_plugin"]

# Every process this test run starts inherits this variable (value unique to the run, and to each xdist worker):
# how a process that detached itself (new session, orphaned) is still known to be ours.
RUN_MARK = "LLM_LMSTUDIO_TEST_RUN"


def pytest_configure(config):
    os.environ[RUN_MARK] = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    config.stash[_STARTED] = time.time()


_STARTED = pytest.StashKey[float]()
FAULT_MATRIX = Path(__file__).resolve().parents[1] / "benchmarks" / "out" / "fault_matrix.md"


def pytest_terminal_summary(terminalreporter, config):
    # tests/test_faults.py writes the matrix when its module ends, in whichever process ran it (an xdist worker's
    # output is not shown): the run's summary shows it when this run wrote it.
    if FAULT_MATRIX.is_file() and FAULT_MATRIX.stat().st_mtime >= config.stash[_STARTED]:
        terminalreporter.write_sep("-", "fault matrix (benchmarks/out/fault_matrix.md)")
        terminalreporter.write(FAULT_MATRIX.read_text())


# Property tests run the same examples every time (derandomize), and keep no example database between runs: a run
# passes or fails on the code alone. `--hypothesis-profile=explore` draws new examples (and FUZZ_EXAMPLES=N more).
hypothesis.settings.register_profile("deterministic", derandomize=True, database=None)
hypothesis.settings.register_profile("explore", database=None)
hypothesis.settings.load_profile("deterministic")


class Terminal(io.StringIO):
    """A terminal (isatty) that keeps what a progress display draws on it."""

    def isatty(self):
        return True


def stderr_terminal(monkeypatch) -> Terminal:
    """sys.stderr as a Terminal for the rest of the test. Call it inside the test: pytest's own capture sets
    sys.stderr again between a fixture's set-up and the test."""
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    return screen


@pytest.fixture
def user_path(tmp_path, monkeypatch, migrated_logs_db):
    """llm's user directory for this test, as a user who has used llm before has it: with a migrated logs.db
    (copied: migrating one costs about half a second of fsyncs, in every test that prompts)."""
    path = tmp_path / "llm-user"
    path.mkdir()
    shutil.copy(migrated_logs_db, path / "logs.db")
    monkeypatch.setenv("LLM_USER_PATH", str(path))
    return path


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, user_path, tmp_path):
    # Never let a developer's real LM Studio, token or models folder leak into a test.
    for name in ("LMSTUDIO_BASE_URL", "LM_API_TOKEN", "LMSTUDIO_API_TOKEN", "LMSTUDIO_HOME", "LMSTUDIO_MODELS_DIR", "LLM_LMSTUDIO_DEBUG",
                 "LMSTUDIO_MLX_PROMPT_CACHE", "LMSTUDIO_MLX_MEMORY_CHECK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "home").mkdir(exist_ok=True)


# LM Studio's hung-server probe (lmstudio/watch.py): a request still waiting for its first byte after PROBE_AFTER
# (3 s) asks the server for its model list, allowing it as long again. Tests of that decision make it after this.
QUICK_PROBE = 0.5


@pytest.fixture
def quick_hang_probe(monkeypatch):
    """The hung-server probe after QUICK_PROBE seconds instead of 3, in this process: the same decision (the listing
    answers: keep waiting; it does not either: the server is hung), six times sooner."""
    from llm_lmstudio.lmstudio import watch

    monkeypatch.setattr(watch, "PROBE_AFTER", QUICK_PROBE)
    return QUICK_PROBE


# ---------------------------------------------------------------- no process outlives its test


def _process_ids() -> set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def _our_live_process(pid: int) -> str | None:
    """The command line of `pid` if this test run started it and it still runs (a zombie has ended); else None."""
    deadline = time.monotonic() + 2.0
    while True:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return None
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            if environ or time.monotonic() > deadline:
                break
        except (OSError, IndexError):
            return None  # it ended meanwhile, or is not ours to read
        # Empty while the process is between fork and the new program's start (exec): ask again in a moment.
        time.sleep(0.01)
    if f"{RUN_MARK}={os.environ[RUN_MARK]}".encode() not in environ.split(b"\0"):
        return None
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


class Spawned:
    """The processes started since the test began (children, grandchildren, detached workers) that still run."""

    def __init__(self):
        self.before = _process_ids() if sys.platform.startswith("linux") else set()

    def alive(self) -> dict[int, str]:
        if not sys.platform.startswith("linux"):
            return {}
        new = _process_ids() - self.before - {os.getpid()}
        return {pid: command for pid in sorted(new) if (command := _our_live_process(pid))}

    @staticmethod
    def wait(pid: int, timeout: float) -> bool:
        """Wait until process `pid` (any process: a detached one too) has ended; False if it still runs after `timeout`."""
        import select

        try:
            handle = os.pidfd_open(pid)
        except ProcessLookupError:
            return True
        try:
            return bool(select.select([handle], [], [], timeout)[0])
        finally:
            os.close(handle)

    @classmethod
    def end(cls, pid: int) -> None:
        """Kill `pid` and wait until it has ended (a signal takes effect a moment after it is sent)."""
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        cls.wait(pid, timeout=30)


@pytest.fixture(autouse=True)
def spawned():
    """Fails the test if a process it started (directly, through `llm`, or detached in a new session) is still
    running when it ends, and ends that process. A test that starts one on purpose waits for it or ends it:
    `spawned.alive()` lists them, `spawned.wait(pid, timeout)` waits for one, `spawned.end(pid)` ends one."""
    tracker = Spawned()
    yield tracker
    survivors = tracker.alive()
    for pid in survivors:
        tracker.end(pid)
    if survivors:
        pytest.fail("processes outlived the test (now ended): " + "; ".join(f"{pid}: {cmd}" for pid, cmd in survivors.items()))


# ---------------------------------------------------------------- models


@pytest.fixture(scope="session")
def tiny_llama_path():
    return model_factory.cached_tiny_model("tiny-llama", model_factory.TinyModelSpec(arch="llama"))


@pytest.fixture(scope="session")
def tiny_qwen_tools_path():
    return model_factory.cached_tiny_model(
        "tiny-qwen-tools", model_factory.TinyModelSpec(arch="qwen2", template="tools", seed=1)
    )


def minilm_or_skip() -> Path:
    try:
        return model_factory.minilm_path()
    except model_factory.MiniLMUnavailable as exc:
        pytest.skip(f"needs the MiniLM weights: {exc}")


@pytest.fixture(scope="session")
def minilm_path():
    """The real all-MiniLM-L6-v2 folder. A test that asks for it is marked `minilm` (see below) and skips, with the
    reason on one line, where the weights cannot be fetched."""
    return minilm_or_skip()


def pytest_collection_modifyitems(config, items):
    # The marker follows the fixture, so `-m "not minilm"` leaves out every test that needs the weights.
    for item in items:
        if "minilm_path" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("minilm"):
            item.add_marker(pytest.mark.minilm)


def pytest_runtest_setup(item):
    # ...and the fixture follows the marker: a test marked `minilm` skips where the weights cannot be had, whether
    # it reads them itself or through the stand-in's embedding model (test-org/text-embedding-all-minilm-l6-v2).
    if item.get_closest_marker("minilm"):
        minilm_or_skip()
