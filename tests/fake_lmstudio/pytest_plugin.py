"""Pytest fixtures for the LM Studio stand-in: one server process per session, reset before every test.
Other test modules use these names; it must never point a test at a real LM Studio."""

from __future__ import annotations

import pytest

from . import FakeLMStudio
from .faults import HungServer, RefusedPort
from .models_dir import build_models_dir


@pytest.fixture(scope="session")
def lmstudio_models_dir(tmp_path_factory):
    """An LM Studio-style models folder (`test-org/...`) built from the tiny-model factory and MiniLM."""
    return build_models_dir(tmp_path_factory.mktemp("lmstudio-models"))


@pytest.fixture(scope="session")
def fake_lmstudio(lmstudio_models_dir):
    """The stand-in server process, shared by the whole run. Prefer `lmstudio`, which resets it."""
    server = FakeLMStudio(lmstudio_models_dir).start()
    yield server
    server.stop()


@pytest.fixture
def lmstudio(fake_lmstudio, monkeypatch):
    """The stand-in, clean (no faults, scripts, config changes or loaded models), as $LMSTUDIO_BASE_URL."""
    fake_lmstudio.reset()
    monkeypatch.setenv("LMSTUDIO_BASE_URL", fake_lmstudio.base_url)
    yield fake_lmstudio
    # Release anything a test left hanging so it cannot hold a server connection into the next test.
    fake_lmstudio.reset(unload=False)


@pytest.fixture(scope="session")
def _refused_port():
    port = RefusedPort()
    yield port
    port.close()


@pytest.fixture
def refused_url(_refused_port):
    """http://127.0.0.1:PORT where connections are refused (nothing listens)."""
    return _refused_port.url


@pytest.fixture(scope="session")
def _hung_server():
    server = HungServer()
    yield server
    server.close()


@pytest.fixture
def hung_url(_hung_server):
    """http://127.0.0.1:PORT that accepts TCP connections and never sends a byte."""
    return _hung_server.url
