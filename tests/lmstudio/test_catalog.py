import contextlib
import time

import llm
import pytest

from llm_lmstudio.lmstudio import catalog
from llm_lmstudio.core import settings
from tests.helpers import cache_list_for, llm_process, model_list_cache

def test_models_from_the_stand_in_are_registered_with_capabilities(lmstudio):
    ids = {m.model_id: m for m in llm.get_models()}
    assert "lmstudio/test-org/tiny-llama" in ids
    # Every LM Studio chat model takes tools; the listing says which use them natively.
    assert ids["lmstudio/test-org/tiny-qwen-tools"].supports_tools and ids["lmstudio/test-org/tiny-llama"].supports_tools
    assert "native tool use" in str(ids["lmstudio/test-org/tiny-qwen-tools"])
    assert "default tool use" in str(ids["lmstudio/test-org/tiny-llama"])
    assert ids["lmstudio/test-org/tiny-vision"].attachment_types
    embedding_ids = {m.model_id for m in llm.get_embedding_models()}
    assert not any(i.startswith("lmstudio/test-org/tiny") for i in embedding_ids)
    assert "lmstudio/test-org/text-embedding-all-minilm-l6-v2" not in ids


def test_fresh_cache_means_no_network(lmstudio):
    catalog.models_for_registration()
    before = len(lmstudio.requests())
    for _ in range(5):
        assert catalog.models_for_registration()
    assert len(lmstudio.requests()) == before


def test_stale_cache_is_refreshed(lmstudio):
    catalog.models_for_registration()
    with model_list_cache() as servers:  # as old as the TTL: stale
        servers[lmstudio.base_url]["fetched_at"] -= settings.cache_ttl()
    before = len(lmstudio.requests())
    catalog.models_for_registration()
    assert len(lmstudio.requests()) > before


def _end_the_worker(spawned):
    """Wait for the one detached refresh worker to show, check it is one, and end it (it would wait out a hung
    server for seconds more)."""
    deadline = time.monotonic() + 30  # the worker shows once its interpreter has started (slower on a loaded machine)
    while not (alive := spawned.alive()) and time.monotonic() < deadline:
        time.sleep(0.05)
    [(pid, command)] = alive.items()
    assert command.endswith(f"-m {catalog.REFRESH_WORKER}")
    spawned.end(pid)
    assert spawned.wait(pid, timeout=10)  # SIGKILL lands asynchronously


def test_registration_on_hung_server_stays_within_budget(hung_url, monkeypatch, spawned):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", hung_url)
    # A budget a busy machine cannot use up before the first attempt even starts (0.25 s can be: the list is then
    # refreshed in the background straight away, which is right, but not what the first half of this test is about).
    monkeypatch.setenv("LMSTUDIO_DISCOVERY_BUDGET", "1")
    [server] = settings.servers()
    # Listed before (an empty list, long ago), now stale: this command waits at most the budget, then knows it hangs.
    with model_list_cache() as servers:
        servers[server.base_url] = {"fetched_at": 0, "status": "ok", "error": None,
                                    "digest": settings.listing_digest(server), "models": []}
    started = time.monotonic()
    assert catalog.models_for_registration() == []
    assert time.monotonic() - started < settings.timeouts().discovery_budget + 0.5
    assert catalog.server_status(server.base_url)["status"] == "timeout"
    assert spawned.alive() == {}  # waited for in this process: no worker
    # Once stale, the list is refreshed in a detached process instead of waiting again.
    with model_list_cache() as servers:
        servers[server.base_url]["fetched_at"] -= settings.cache_ttl()
    assert catalog.models_for_registration() == []
    assert catalog.server_status(server.base_url)["status"] == "timeout"  # nothing waited for in this process
    assert (settings.plugin_dir() / catalog.REFRESH_LOCK).exists()
    _end_the_worker(spawned)


def _listing_deadlines(monkeypatch, real: bool = False) -> list[float]:
    """The deadline of each model listing the catalog asks for from now on; the listing itself is real (a server's
    answer or failure) or, by default, an empty list."""
    waited, fetch = [], catalog.fetch

    def recorded(host, *, token, deadline):
        waited.append(deadline)
        return fetch(host, token=token, deadline=deadline) if real else []

    monkeypatch.setattr(catalog, "fetch", recorded)
    return waited


def test_a_server_never_listed_before_gets_a_share_of_the_budget_then_a_background_listing(hung_url, monkeypatch, spawned):
    # The first command after install (no cache at all) with a server that does not answer: it waits a fifth of
    # the budget, not all of it, and leaves the listing to a detached worker for the next command.
    monkeypatch.setenv("LMSTUDIO_BASE_URL", hung_url)
    monkeypatch.setenv("LMSTUDIO_DISCOVERY_BUDGET", "2")
    waited = _listing_deadlines(monkeypatch, real=True)
    assert catalog.models_for_registration() == []
    [server] = settings.servers()
    assert len(waited) == 1 and 0 < waited[0] <= 2 * catalog.FIRST_CONTACT_SHARE
    assert catalog.server_status(server.base_url)["status"] == "timeout"
    _end_the_worker(spawned)


def test_a_first_contact_timeout_is_no_verdict_a_command_that_needs_the_list_asks_again(hung_url, monkeypatch, spawned):
    # `llm models` on first contact gave up after its share; `llm -m lmstudio/...` next must still ask, with the whole
    # budget, rather than take that short wait for "hung last time" (CI: the router failed after 30 ms on a busy box)
    from llm_lmstudio.lmstudio import unavailable

    monkeypatch.setenv("LMSTUDIO_BASE_URL", hung_url)
    monkeypatch.setenv("LMSTUDIO_DISCOVERY_BUDGET", "1")
    waited = _listing_deadlines(monkeypatch, real=True)
    monkeypatch.setattr(catalog, "_spawn_background_refresh", lambda: None)  # this test is about this process's waits
    [server] = settings.servers()
    assert catalog.models_for_registration() == [] and catalog.read_cache()[server.base_url]["first_contact"]
    assert len(waited) == 1 and waited[0] <= catalog.FIRST_CONTACT_SHARE
    monkeypatch.setattr(unavailable, "requested_ids", lambda kind: ["lmstudio/qwen3-4b"])  # as `llm -m lmstudio/qwen3-4b`
    assert unavailable.catalog_models("chat") == []
    assert len(waited) == 2 and waited[1] > catalog.FIRST_CONTACT_SHARE
    # after a whole-budget timeout the server is "hung last time": the next command does not wait for it again
    assert "first_contact" not in catalog.read_cache()[server.base_url]
    assert unavailable.catalog_models("chat") == [] and len(waited) == 2


def test_a_server_whose_model_the_command_names_gets_the_whole_budget_on_first_contact(monkeypatch, refused_url):
    from llm_lmstudio.lmstudio import unavailable

    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)
    monkeypatch.setenv("LMSTUDIO_DISCOVERY_BUDGET", "2")
    waited = _listing_deadlines(monkeypatch)
    monkeypatch.setattr(unavailable, "requested_ids", lambda kind: ["lmstudio/qwen3-4b"])  # as `llm -m lmstudio/qwen3-4b`
    assert unavailable.catalog_models("chat") == []
    assert len(waited) == 1 and waited[0] > 2 * catalog.FIRST_CONTACT_SHARE


@contextlib.contextmanager
def _command_context(argv):
    """The click context llm's hooks see while running `llm ARGV` (parsed, not run)."""
    import warnings

    import click
    from llm.cli import cli

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # click 8.2+: protected_args, still how DefaultGroup parses
        context = cli.make_context("llm", list(argv))
        stack = [context]
        while isinstance(context.command, click.Group) and context.protected_args + context.args:
            name, command, rest = context.command.resolve_command(context, context.protected_args + context.args)
            context = command.make_context(name, rest, parent=context)
            stack.append(context)
    with contextlib.ExitStack() as entered:
        for each in stack:
            entered.enter_context(each)
        yield context


@pytest.mark.parametrize("argv", [["-m", "router", "hi"], ["-m", "lmstudio-router", "hi"], ["chat", "-m", "router"],
                                  ["lmstudio", "route", "hi"], ["hi"]])
def test_a_command_that_routes_gets_the_whole_budget_on_first_contact(argv, monkeypatch, refused_url, user_path):
    # The router needs every server's models: `llm -m router` right after install must not give up after 30 ms.
    from llm_lmstudio.lmstudio import unavailable

    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)
    monkeypatch.setenv("LMSTUDIO_DISCOVERY_BUDGET", "2")
    (user_path / "default_model.txt").write_text("router")  # `llm hi` with the router as the default model
    waited = _listing_deadlines(monkeypatch)
    with _command_context(argv):
        unavailable.catalog_models("chat")
    assert len(waited) == 1 and waited[0] > 2 * catalog.FIRST_CONTACT_SHARE


def test_a_command_that_does_not_route_keeps_the_first_contact_share(monkeypatch, refused_url, user_path):
    from llm_lmstudio.lmstudio import unavailable

    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)
    monkeypatch.setenv("LMSTUDIO_DISCOVERY_BUDGET", "2")
    waited = _listing_deadlines(monkeypatch)
    with _command_context(["-m", "gpt-4o-mini", "hi"]):
        unavailable.catalog_models("chat")
    assert len(waited) == 1 and waited[0] <= 2 * catalog.FIRST_CONTACT_SHARE


def test_last_known_models_survive_a_server_going_down(lmstudio, refused_url, monkeypatch):
    catalog.models_for_registration()
    listed = {m["key"] for m in catalog.read_cache()[lmstudio.base_url]["models"]}
    dead = cache_list_for(refused_url, like=lmstudio.base_url, fetched_at=0)  # stale: asked again, and down
    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)
    models = catalog.models_for_registration()
    assert {m.key for m in models} == listed
    assert catalog.server_status(dead)["status"] == "unreachable"


@pytest.mark.slow  # three real llm processes
@pytest.mark.parametrize("state", ["refused", "hung"])
def test_llm_commands_stay_fast_and_quiet_whatever_lmstudio_does(state, refused_url, hung_url, user_path, spawned):
    from llm.migrations import migrate
    import sqlite_utils

    migrate(sqlite_utils.Database(user_path / "logs.db"))
    env = {"LMSTUDIO_BASE_URL": refused_url if state == "refused" else hung_url}
    for args in (["models"], ["logs", "-n", "1"], ["--help"]):
        started = time.monotonic()
        proc = llm_process(*args, env=env, timeout=60)
        elapsed = time.monotonic() - started
        assert proc.returncode == 0, proc.stderr
        assert "lmstudio" not in proc.stderr.lower() and "lm studio" not in proc.stderr.lower()
        # The plugin's own share is benchmarked; here we only rule out waiting on the server.
        assert elapsed < 15, f"llm {' '.join(args)} took {elapsed:.1f}s with a {state} server"
    if state == "hung":  # never listed before: the first command left the listing to a detached worker
        _end_the_worker(spawned)


def test_the_detached_refresh_worker_runs_as_a_module_fills_the_cache_and_exits(lmstudio, user_path):
    # What _spawn_background_refresh starts, started for real: `python -m <REFRESH_WORKER>` in a new session.
    import httpx

    assert not (settings.plugin_dir() / catalog.CACHE_FILE).exists()
    worker = catalog._spawn_background_refresh()
    assert worker is not None and worker.args[1:] == ["-m", catalog.REFRESH_WORKER]
    assert worker.wait(timeout=60) == 0
    assert not (settings.plugin_dir() / catalog.REFRESH_LOCK).exists()
    served = {m["id"] for m in httpx.get(lmstudio.base_url + "/api/v0/models", timeout=10).json()["data"]}
    assert served and {m["key"] for m in catalog.read_cache()[lmstudio.base_url]["models"]} == served
