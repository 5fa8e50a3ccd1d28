"""The `llm lmstudio cache ...` and `llm lmstudio stats` commands: tables and charts for people, --json for scripts.
Thin: parse, call cache_store.py / metrics.py, print; they never open a database themselves."""

from __future__ import annotations

import click

from llm_lmstudio.cli.common import (
    echo_json,
    echo_table,
    Parsed,
    size,
)


def _duration(text: str, option: str) -> float:
    from llm_lmstudio.core import settings

    return settings.parse_duration(text, option)


_DURATION = Parsed("DURATION", _duration)


@click.group(name="cache")
def cache_group():
    "The response cache (opt-in: -o cache 1h, or LMSTUDIO_RESPONSE_CACHE=1h)"


def _store():
    from llm_lmstudio.store import cache_db
    from llm_lmstudio.core import settings

    try:
        return cache_db.Store()
    except settings.SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@cache_group.command(name="stats")
@click.option("json_", "--json", is_flag=True, help="Output as JSON")
def cache_stats(json_):
    "How many answers the cache holds, their size and hits"
    data = _store().stats()
    if json_:
        echo_json(data)
        return
    click.echo(f"{data['entries']} answers, {size(data['bytes'])} of {size(data['max_bytes'])}, {data['hits']} hits")
    click.echo(f"File: {data['path']}")
    if data["entries"]:
        click.echo(f"Stored between {data['oldest']} and {data['newest']}; {data['expired']} expired (removed on the next write)")
        echo_table(["MODEL", "ANSWERS"], sorted(data["models"].items()))


@cache_group.command(name="clear")
@click.option("--older-than", type=_DURATION, help="Only answers first stored longer ago than this (30m, 12h, 7d)")
@click.option("json_", "--json", is_flag=True, help="Output as JSON")
def cache_clear(older_than, json_):
    "Delete cached answers"
    try:
        removed = _store().clear(older_than)
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    if json_:
        echo_json({"removed": removed})
    else:
        click.echo(f"Removed {removed} cached answer{'' if removed == 1 else 's'}")


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list) -> str:
    """One character per slice of the period, low to high within the line; a blank where nothing was answered."""
    present = [v for v in values if v is not None]
    if not present:
        return ""
    low, high = min(present), max(present)
    scale = (len(SPARKS) - 1) / (high - low) if high > low else 0
    return "".join(" " if v is None else SPARKS[round((v - low) * scale)] for v in values)


def failures_cell(failures: dict) -> str:
    """The FAILURES column, one short cell however many kinds: "0", "2 StreamCut", "7 (4 TimedOut, 3 other)"."""
    total = sum(failures.values())
    if len(failures) <= 1:
        return f"{total} {next(iter(failures))}" if failures else "0"
    kind, most = max(failures.items(), key=lambda item: (item[1], item[0]))
    return f"{total} ({most} {kind}, {total - most} other)"


def _forms(model_id: str) -> set[str]:
    """The names a user types for a recorded model: llm's id, the key after its prefix, the key's last part."""
    key = model_id.split("/", 1)[1] if "/" in model_id else model_id
    return {model_id.lower(), key.lower(), key.rsplit("/", 1)[-1].lower()}


def resolve_model(name: str, known: list[str]) -> str:
    """The recorded model id `-m name` means (llm id, LM Studio key or short name, any case); one-line error otherwise."""
    import difflib

    wanted = name.strip().lower()
    exact = [m for m in known if m.lower() == wanted]
    matches = exact or [m for m in known if wanted in _forms(m)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise click.ClickException(f"-m {name} matches several models with recorded outcomes: {', '.join(sorted(matches))}; "
                                   "give the full id")
    if not known:
        raise click.ClickException(f"-m {name}: nothing is recorded for any LM Studio, native MLX or router model yet")
    forms = {form: m for m in sorted(known) for form in sorted(_forms(m))}
    close = [forms[f] for f in difflib.get_close_matches(wanted, list(forms), n=10, cutoff=0.6)]
    shown = list(dict.fromkeys(close + sorted(known)))[:5]
    more = f" and {len(known) - len(shown)} more (`llm lmstudio stats` lists them)" if len(known) > len(shown) else ""
    raise click.ClickException(f"-m {name}: no model of that name has recorded outcomes; "
                               f"{'did you mean' if close else 'recorded'}: {', '.join(shown)}{more}")


def _reset(model: str | None, json_: bool) -> None:
    import sqlite3

    from llm_lmstudio.store import call_history

    try:
        removed = call_history.reset(model)
    except (OSError, sqlite3.Error) as exc:
        raise click.ClickException(f"cannot clear the plugin's statistics store: {exc}") from None
    if json_:
        echo_json({"model": model, "removed": removed})
        return
    total = sum(removed.values())
    who = model or "every model"
    click.echo(f"Forgot {total} recorded outcome{'' if total == 1 else 's'} of {who} ({removed['attempts']} routed, "
               f"{removed['calls']} direct): the router ranks {'it' if model else 'them'} afresh. Answers in llm's own log stay.")


def _ms(value) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f}s" if value >= 10_000 else f"{value:.0f}ms"


@click.command(name="stats")
@click.option("--since", type=_DURATION, help="Only the last 30m, 12h, 7d... (default: all the log the plugin has copied)")
@click.option("-m", "--model", help="Only this model (the one that answered): its llm id, LM Studio key or short name, "
              "e.g. lmstudio/qwen/qwen3-4b, qwen/qwen3-4b or qwen3-4b")
@click.option("json_", "--json", is_flag=True, help="Output as JSON")
@click.option("--prometheus", is_flag=True, help="Output in the Prometheus text format (node_exporter textfile collector)")
@click.option("--reset", is_flag=True, help="Forget the recorded failures and successes of -m MODEL (of every model without -m): "
              "the router ranks it afresh")
def stats_command(since, model, json_, prometheus, reset):
    """Per model: answers, failures, time to first token, tokens/s, tokens, latency over the period

    \b
    Examples:
        llm lmstudio stats --since 7d
        llm lmstudio stats -m lmstudio/qwen/qwen3-4b --json
        llm lmstudio stats --reset -m lmstudio/qwen/qwen3-4b
    """
    import sqlite3

    import llm

    from llm_lmstudio.store import performance

    if json_ and prometheus:
        raise click.UsageError("Give --json or --prometheus, not both")

    def read(since_seconds, model_id):
        try:
            return performance.report(llm.user_dir() / "logs.db", since_seconds=since_seconds, model=model_id)
        except (OSError, sqlite3.Error) as exc:
            raise click.ClickException(f"cannot read the plugin's statistics store: {exc}") from None

    if model is not None:  # matched against every model with a record, whatever the period
        whole = read(None, None)
        model = resolve_model(model, [m.model for m in whole.models])
    if reset:
        _reset(model, json_)
        return
    data = read(since, model)
    if prometheus:
        click.echo(performance.prometheus(data), nl=False)
        return
    if json_:
        echo_json(data.to_json())
        return
    if not data.models:
        click.echo("No answers or failures recorded" + (" in that period" if since is not None else "") + " for LM Studio, native MLX or router models")
        return
    rows = []
    for m in data.models:
        extra = ", ".join(part for part in (f"{m.cached} cached" if m.cached else "", f"{m.routed} routed" if m.routed else "") if part)
        failures = failures_cell(m.failures)
        rows.append(
            [
                m.model,
                f"{m.answers}" + (f" ({extra})" if extra else ""),
                failures,
                f"{_ms(m.ttft_ms_p50)} / {_ms(m.ttft_ms_p95)}",
                f"{m.tokens_per_second_p50:.1f}" if m.tokens_per_second_p50 is not None else "-",
                f"{m.input_tokens} / {m.output_tokens}",
                sparkline(m.timeline),
            ]
        )
    echo_table(["MODEL", "ANSWERS", "FAILURES", "TTFT P50/P95", "TOK/S P50", "TOKENS IN/OUT", "LATENCY"], rows)
    period = f"since {data.since[:16].replace('T', ' ')} UTC" if data.since else "over the whole log copied"
    click.echo(f"\nLatency: median answer duration per slice of the period ({period}), low ▁ to high █ per model.")
