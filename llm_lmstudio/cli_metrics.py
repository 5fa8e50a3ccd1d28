"""The `llm lmstudio cache ...` and `llm lmstudio stats` commands: tables and charts for people, --json for scripts.
Thin: parse, call cache.py / metrics.py, print; they never open a database themselves."""

from __future__ import annotations

import json

import click

from .cli import lmstudio_group  # only the group: cli.py's private helpers change under us


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2))


def _echo_table(headings: list[str], rows: list) -> None:
    from llm.utils import dicts_to_table_string

    for line in dicts_to_table_string(headings, [dict(zip(headings, row)) for row in rows]):
        click.echo(line.rstrip())


def _size(size: int) -> str:
    from .management import format_size

    return format_size(size)


class _Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        from . import settings

        try:
            return settings.parse_duration(value, param.opts[0] if param else "duration")
        except settings.SettingsError as exc:
            self.fail(str(exc), param, ctx)


@lmstudio_group.group(name="cache")
def cache_group():
    "The response cache (opt-in: -o cache 1h, or LMSTUDIO_RESPONSE_CACHE=1h)"


def _store():
    from . import cache, settings

    try:
        return cache.Store()
    except settings.SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@cache_group.command(name="stats")
@click.option("json_", "--json", is_flag=True, help="Output as JSON")
def cache_stats(json_):
    "How many answers the cache holds, their size and hits"
    data = _store().stats()
    if json_:
        _echo_json(data)
        return
    click.echo(f"{data['entries']} answers, {_size(data['bytes'])} of {_size(data['max_bytes'])}, {data['hits']} hits")
    click.echo(f"File: {data['path']}")
    if data["entries"]:
        click.echo(f"Stored between {data['oldest']} and {data['newest']}; {data['expired']} expired (removed on the next write)")
        _echo_table(["MODEL", "ANSWERS"], sorted(data["models"].items()))


@cache_group.command(name="clear")
@click.option("--older-than", type=_Duration(), help="Only answers first stored longer ago than this (30m, 12h, 7d)")
@click.option("json_", "--json", is_flag=True, help="Output as JSON")
def cache_clear(older_than, json_):
    "Delete cached answers"
    try:
        removed = _store().clear(older_than)
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    if json_:
        _echo_json({"removed": removed})
    else:
        click.echo(f"Removed {removed} cached answer{'' if removed == 1 else 's'}")
