"""What every `llm lmstudio` command shares: the --server option, a management session whose failures become one
line, sizes and durations for people, tables and JSON. Imports nothing heavy at module level; never prints on its own."""

from contextlib import contextmanager

import click


class Parsed(click.ParamType):
    """An option's text read by one of the package's parsers, parse(text, option name); the ValueError it
    raises (SettingsError is one) becomes click's one-line usage error."""

    def __init__(self, name: str, parse):
        self.name = name
        self._parse = parse

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value  # a default, already in its final form
        try:
            return self._parse(value, param.opts[0] if param else self.name)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def gpu_ratio(text: str, option: str) -> float:
    from llm_lmstudio.management.models import parse_gpu  # management imports only when a command runs, not at llm's start

    return parse_gpu(text)


SERVER_OPTION = click.option(
    "--server",
    "address",
    metavar="URL",
    help="LM Studio server to manage, as host:port or URL (default: the first in LMSTUDIO_BASE_URL)",
)


@contextmanager
def managing(address):
    """A management session for a command; any failure becomes a one-line error and a non-zero exit."""
    from llm_lmstudio.management import manager as management
    from llm_lmstudio.lmstudio import errors
    from llm_lmstudio.core import settings

    try:
        with management.connect(address) as manager:
            yield manager
    except (errors.LMStudioError, settings.SettingsError) as exc:
        raise click.ClickException(str(exc)) from None


def size(size) -> str:
    from llm_lmstudio.management.models import format_size

    return format_size(size)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def format_ttl(instance) -> str:
    if instance.ttl is None:
        return "-"
    if instance.ttl_remaining is None:
        return format_seconds(instance.ttl)
    return f"{format_seconds(instance.ttl_remaining)} / {format_seconds(instance.ttl)}"


def echo_table(headings, rows, err: bool = False) -> None:
    from llm.utils import dicts_to_table_string

    for line in dicts_to_table_string(list(headings), [dict(zip(headings, row)) for row in rows]):
        click.echo(line.rstrip(), err=err)


def echo_json(data) -> None:
    import json

    click.echo(json.dumps(data, indent=2))
