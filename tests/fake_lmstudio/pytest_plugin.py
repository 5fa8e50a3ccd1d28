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
    # A test's first command meets the stand-in for the first time: on a busy machine (pytest workers beside it) its
    # first listing can take longer than the first-contact share of the default 250 ms budget (30 ms), and a command
    # that gives up leaves a background listing running past the test. 2 s gives first contact 240 ms; the tests
    # of the budget itself set their own.
    monkeypatch.setenv("LMSTUDIO_DISCOVERY_BUDGET", "2")
    yield fake_lmstudio
    # Release anything a test left hanging so it cannot hold a server connection into the next test.
    fake_lmstudio.reset(unload=False)


def _listening(listener):
    # one per session: a socket that misbehaves the same way for every test that points at it
    yield listener.url
    listener.close()


@pytest.fixture(scope="session")
def refused_url():
    """http://127.0.0.1:PORT where connections are refused (nothing listens)."""
    yield from _listening(RefusedPort())


@pytest.fixture(scope="session")
def hung_url():
    """http://127.0.0.1:PORT that accepts TCP connections and never sends a byte."""
    yield from _listening(HungServer())
