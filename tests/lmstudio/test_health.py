"""status.py: reachability, token needs and model counts over plain HTTP against the stand-in, within short budgets."""

import time

import pytest

from llm_lmstudio.management import manager
from llm_lmstudio.lmstudio import health

LLAMA = "test-org/tiny-llama"
TOKEN = "sk-lm-abcdEFGH:a1B2c3D4e5F6g7H8i9J0"


@pytest.mark.minilm  # the stand-in's downloads include MiniLM
def test_status_reports_reachability_counts_and_token_needs(lmstudio):
    lmstudio.load(LLAMA)
    server = manager.pick_server()
    ok = health.server_status(server, None)
    assert (ok.reachable, ok.requires_token, ok.downloaded, ok.loaded) == (True, False, 5, 1)
    assert ok.latency_ms > 0 and ok.error is None and ok.token_source is None
    lmstudio.configure(auth_token=TOKEN)
    locked = health.server_status(server, None)
    assert (locked.reachable, locked.requires_token, locked.token_configured) == (True, True, False)
    unlocked = health.server_status(server, TOKEN, "$LM_API_TOKEN")
    assert (unlocked.requires_token, unlocked.token_accepted, unlocked.downloaded) == (True, True, 5)
    assert unlocked.token_source == "$LM_API_TOKEN"
    rejected = health.server_status(server, "sk-lm-wrongone:" + "x" * 20)
    assert (rejected.requires_token, rejected.token_accepted) == (True, False)


def test_status_of_a_hung_server_is_unreachable_within_the_connect_budget(hung_url, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", hung_url)
    monkeypatch.setenv("LMSTUDIO_CONNECT_TIMEOUT", "0.5")
    started = time.monotonic()
    result = health.server_status(manager.pick_server(), None)
    assert time.monotonic() - started < 6
    assert not result.reachable and hung_url in result.error


def test_status_of_lmstudio_0_3_5_is_healthy_without_counts(lmstudio):
    # 0.3.5 has neither /api/v1 (0.4) nor /api/v0 (0.3.6): only /v1/models, which cannot tell downloaded from loaded.
    lmstudio.configure(version="0.3.5")
    result = health.server_status(manager.pick_server(), None)
    assert (result.reachable, result.requires_token, result.downloaded, result.loaded, result.error) == (True, False, None, None, None)


@pytest.mark.minilm  # the stand-in's downloads include MiniLM
@pytest.mark.parametrize("version", ["0.3.15", "0.4"])
def test_status_counts_from_the_native_listing_each_generation_has(lmstudio, version):
    lmstudio.configure(version=version)
    lmstudio.load(LLAMA)
    result = health.server_status(manager.pick_server(), TOKEN)
    # with a token configured, it asks the listing that answered without it: 0.3.15 has no /api/v1/models to ask
    assert (result.downloaded, result.loaded, result.error, result.requires_token, result.token_accepted) == (5, 1, None, False, True)
