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
