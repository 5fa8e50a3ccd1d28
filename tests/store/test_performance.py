"""Specifications for llm_lmstudio.store.performance and `llm lmstudio stats`: figures per model from a log with known
answers, failures by kind, the period filter, the terminal chart, and Prometheus output read by the official parser."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from itertools import count

import pytest
from click.testing import CliRunner
from llm.cli import cli
from prometheus_client.parser import text_string_to_metric_families

from llm_lmstudio.store import performance
from llm_lmstudio.store import call_history, log_mirror
from llm_lmstudio.cli.stats import sparkline
from tests.store.test_call_history import make_log

NOW = datetime.now(timezone.utc)
LLAMA = "lmstudio/test-org/tiny-llama"


_ids = count()


def turn(model, duration, output, *, ago_hours=1.0, resolved=None, payload=None, input_tokens=5):
    return {
        "id": f"01kturn{next(_ids):019d}",
        "model": model,
        "resolved_model": resolved,
        "duration_ms": duration,
        "output_tokens": output,
        "input_tokens": input_tokens,
        "datetime_utc": (NOW - timedelta(hours=ago_hours)).isoformat(),
        "response_json": json.dumps(payload) if payload is not None else None,
    }


def lmstudio(ttft_ms):
    return {"finish_reason": "stop", "client": {"endpoint": "/api/v0/chat/completions", "time_to_first_token_ms": ttft_ms}}


def routed(ttft_ms):
    return {
        "router": {"task": "general"},
        "attempts": [{"model": "lmstudio/a", "ok": False}, {"model": "mlx/b", "ok": True, "ttft_ms": ttft_ms}],
        "answer": {"engine": "mlx-lm", "finish_reason": "stop", "time_to_first_token_s": 9.9},
    }


@pytest.fixture
def known_log(tmp_path, store):
    """A log whose figures are worked out by hand in the tests below."""
    rows = [
        # lmstudio/a direct (LM Studio reports its bare key as resolved_model): rates 10, 20, 10, 20 tokens/s
        turn("lmstudio/a", 1000, 10, resolved="a", payload=lmstudio(100), ago_hours=40),
        turn("lmstudio/a", 2000, 40, resolved="a", payload=lmstudio(200), ago_hours=30),
        turn("lmstudio/a", 3000, 30, resolved="a", payload=lmstudio(300), ago_hours=20),
        turn("lmstudio/a", 4000, 80, resolved="a", payload=lmstudio(400), ago_hours=10),
        # served from the cache: an answer, but no latency, rate or tokens
        turn("lmstudio/a", 1, 80, payload=lmstudio(400) | {"cache": {"hit": True}}, ago_hours=5),
        # cut off mid-stream: not an answer (its failure is a recorded attempt)
        turn("lmstudio/a", 500, 3, payload={"cut": True, "client": {"time_to_first_token_ms": 1}}, ago_hours=4),
        # mlx/b: twice through the router (TTFT from its answering attempt), once direct (seconds in its own log)
        turn("lmstudio-router", 500, 10, resolved="mlx/b", payload=routed(50), ago_hours=3),
        turn("lmstudio-router", 500, 10, resolved="mlx/b", payload=routed(50), ago_hours=2),
        turn("mlx/b", 1500, 30, payload={"engine": "mlx-lm", "time_to_first_token_s": 0.15}, ago_hours=1),
        # a cloud model: counted when the router fell back to it, not when used directly
        turn("lmstudio-router", 2000, 20, resolved="gpt-4o-mini", payload=routed(700) | {"attempts": [{"ttft_ms": 700}]}),
        turn("gpt-4o-mini", 100, 10, payload={}),
        # long ago: outside --since 7d
        turn("lmstudio/a", 9000, 9, resolved="a", payload=lmstudio(9000), ago_hours=24 * 30),
        # a payload that is not JSON must not stop the copy
        turn("mlx/b", 1500, 30, payload=None, ago_hours=0.5) | {"response_json": "{not json"},
    ]
    log = tmp_path / "logs.db"
    db = make_log(log)
    db["turns"].insert_all(rows)
    # failures: two prompts sent straight to lmstudio/a, one router attempt; the router itself found no model once
    for kind in ("Unreachable", "Unreachable"):
        call_history.record_call("lmstudio/a", False, error_kind=kind, store_path=store)
    call_history.record_attempt("lmstudio/a", False, error_kind="StreamCut", store_path=store)
    call_history.record_attempt("lmstudio/a", True, ttft_ms=5, store_path=store)
    call_history.record_call("lmstudio/a", True, ttft_ms=5, store_path=store)
    call_history.record_call("lmstudio-router", False, error_kind="ModelError", store_path=store)
    return log


@pytest.fixture
def store(tmp_path):
    return tmp_path / "plugin" / "router.db"


def by_model(report):
    return {m.model: m for m in report.models}


def test_figures_per_model_on_a_log_with_known_answers(known_log, store):
    found = by_model(performance.report(known_log, since_seconds=7 * 86400, store_path=store))
    assert set(found) == {"lmstudio/a", "mlx/b", "gpt-4o-mini", "lmstudio-router"}
    a = found["lmstudio/a"]
    assert (a.answers, a.cached, a.routed) == (5, 1, 0)
    assert a.failures == {"StreamCut": 1, "Unreachable": 2}
    assert (a.ttft_ms_p50, a.ttft_ms_p95) == (250.0, pytest.approx(385.0))
    assert (a.duration_ms_p50, a.duration_ms_p95) == (2500.0, pytest.approx(3850.0))
    assert a.tokens_per_second_p50 == 15.0
    assert (a.input_tokens, a.output_tokens) == (20, 160)
    b = found["mlx/b"]
    assert (b.answers, b.routed, b.failures) == (4, 2, {})
    assert (b.ttft_ms_p50, b.ttft_ms_p95) == (50.0, pytest.approx(140.0))  # 50, 50, 150 (the last one logged none)
    assert b.tokens_per_second_p50 == 20.0
    assert (found["gpt-4o-mini"].answers, found["gpt-4o-mini"].routed) == (1, 1)
    router = found["lmstudio-router"]
    assert (router.answers, router.failures) == (0, {"ModelError": 1})
    assert [m.model for m in performance.report(known_log, since_seconds=7 * 86400, store_path=store).models][:2] == ["lmstudio/a", "mlx/b"]


def test_without_since_the_whole_copy_counts(known_log, store):
    a = by_model(performance.report(known_log, store_path=store))["lmstudio/a"]
    assert a.answers == 6
    assert a.duration_ms_p50 == 3000.0


def test_one_model_only(known_log, store):
    report = performance.report(known_log, model="mlx/b", store_path=store)
    assert [m.model for m in report.models] == ["mlx/b"]


def test_the_timeline_follows_latency_over_the_period(known_log, store):
    a = by_model(performance.report(known_log, since_seconds=48 * 3600, store_path=store, buckets=4))["lmstudio/a"]
    # slices of 12 hours, oldest first: 1000 ms (40 h ago), 2000 ms (30 h ago), 3000 ms (20 h ago), 4000 ms (10 h ago)
    assert a.timeline == [1000.0, 2000.0, 3000.0, 4000.0]
    assert sparkline(a.timeline) == "▁▃▆█"
    assert sparkline([None, 5.0, 5.0]) == " ▁▁"
    assert sparkline([None]) == ""


def test_percentiles_interpolate_between_ranks():
    assert performance.percentile([1, 2, 3, 4], 0.5) == 2.5
    assert performance.percentile([10], 0.95) == 10.0
    assert performance.percentile([], 0.5) is None
    assert performance.percentile(list(range(101)), 0.95) == 95.0


def samples(text):
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_prometheus_output_parses_with_the_official_parser(known_log, store):
    report = performance.report(known_log, since_seconds=7 * 86400, store_path=store)
    text = performance.prometheus(report)
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["llm_lmstudio_answers"] == "counter"
    assert families["llm_lmstudio_time_to_first_token_seconds"] == "summary"
    found = samples(text)
    assert found[("llm_lmstudio_answers_total", (("model", "lmstudio/a"),))] == 5
    assert found[("llm_lmstudio_failures_total", (("kind", "Unreachable"), ("model", "lmstudio/a")))] == 2
    assert found[("llm_lmstudio_time_to_first_token_seconds", (("model", "lmstudio/a"), ("quantile", "0.5")))] == 0.25
    assert found[("llm_lmstudio_time_to_first_token_seconds_count", (("model", "mlx/b"),))] == 3
    assert found[("llm_lmstudio_tokens_total", (("direction", "output"), ("model", "lmstudio/a")))] == 160
    assert found[("llm_lmstudio_output_tokens_per_second", (("model", "mlx/b"),))] == 20


def test_prometheus_labels_survive_quotes_and_backslashes():
    odd = 'mlx/we"ird\\name\nx'
    report = performance.Report(since=None, until=NOW.isoformat(), models=[performance.ModelMetrics(odd, answers=3)])
    assert samples(performance.prometheus(report))[("llm_lmstudio_answers_total", (("model", odd),))] == 3


def test_an_older_store_is_copied_afresh_in_the_new_shape(tmp_path, store):
    import sqlite3

    store.parent.mkdir(parents=True)
    old = sqlite3.connect(store)
    old.executescript(
        "create table lmstudio_turns (turn_rowid integer primary key, model text, duration_ms integer, output_tokens integer);"
        "create table lmstudio_sync (one integer primary key, source text not null, last_rowid integer not null, last_id text);"
        "insert into lmstudio_turns values (1, 'stale', 1, 1);"
    )
    old.close()
    log = tmp_path / "logs.db"
    make_log(log)["turns"].insert(turn("lmstudio/a", 1000, 10, payload=lmstudio(100)))
    found = by_model(performance.report(log, store_path=store))
    assert list(found) == ["lmstudio/a"] and found["lmstudio/a"].ttft_ms_p50 == 100.0


# ---------------------------------------------------------------- llm lmstudio stats, on answers logged by llm


def test_stats_command_on_answers_llm_logged(lmstudio, user_path):
    lmstudio.script("first answer", "second answer", "second answer")
    for prompt in ("one", "two", "two"):
        result = CliRunner().invoke(cli, ["-m", LLAMA, prompt, "-o", "cache", "1h"])
        assert result.exit_code == 0, result.output
    data = json.loads(CliRunner().invoke(cli, ["lmstudio", "stats", "--since", "1h", "--json"]).output)
    [llama] = data["models"]
    assert (llama["model"], llama["answers"], llama["cached"]) == (LLAMA, 3, 1)
    assert llama["ttft_ms_p50"] > 0 and llama["output_tokens"] > 0 and llama["failures"] == {}
    table = CliRunner().invoke(cli, ["lmstudio", "stats"]).output
    assert LLAMA in table and "3 (1 cached)" in table and "TTFT P50/P95" in table
    prom = CliRunner().invoke(cli, ["lmstudio", "stats", "--prometheus"]).output
    assert samples(prom)[("llm_lmstudio_answers_total", (("model", LLAMA),))] == 3
    # --since 0s is a period with nothing in it, not the whole log
    assert json.loads(CliRunner().invoke(cli, ["lmstudio", "stats", "--since", "0s", "--json"]).output)["models"] == []
    assert "No answers or failures recorded in that period" in CliRunner().invoke(cli, ["lmstudio", "stats", "--since", "0s"]).output


def test_stats_command_with_nothing_logged_and_bad_input(user_path):
    assert "No answers or failures recorded" in CliRunner().invoke(cli, ["lmstudio", "stats"]).output
    bad = CliRunner().invoke(cli, ["lmstudio", "stats", "--since", "last week"])
    assert bad.exit_code == 2 and "not a duration" in bad.output


def test_the_router_copies_only_recent_turns_and_stats_copies_back_further(tmp_path, store, monkeypatch):
    monkeypatch.setattr(log_mirror, "ROUTER_HORIZON", 3)
    monkeypatch.setattr(log_mirror, "HORIZON", 6)
    log = tmp_path / "logs.db"
    make_log(log)["turns"].insert_all([turn("lmstudio/a", 1000 * (i + 1), 10, ago_hours=10 - i) for i in range(10)])
    # a prompt's history lookup pays for the few turns the router needs, not for the whole log
    assert call_history.history(log, ["lmstudio/a"], store_path=store)["lmstudio/a"].turns == 3
    assert by_model(performance.report(log, store_path=store))["lmstudio/a"].answers == 6
    import sqlite_utils

    sqlite_utils.Database(log)["turns"].insert(turn("lmstudio/a", 1, 10, ago_hours=0.1))
    a = by_model(performance.report(log, store_path=store))["lmstudio/a"]
    assert a.answers == 6 and a.duration_ms_p50 == 7500.0  # the oldest turn left the copy: 6000..10000 and 1
