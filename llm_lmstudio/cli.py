"""The `llm lmstudio ...` click commands: tables for people, --json for scripts.
Commands call management/catalog/server; they never build URLs or SDK calls themselves."""

import sys
from contextlib import contextmanager

import click


@click.group(name="lmstudio")
def lmstudio_group():
    "Manage LM Studio and native MLX models"


# ---------------------------------------------------------------- model management (load, unload, ps, ls, status)
# Every SDK call goes through management.py; its errors arrive here as server.LMStudioError, one line each.


class _GpuRatio(click.ParamType):
    name = "off|max|0..1"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        from .management import parse_gpu

        try:
            return parse_gpu(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_SERVER_OPTION = click.option(
    "--server",
    metavar="URL",
    help="LM Studio server to manage, as host:port or URL (default: the first in LMSTUDIO_BASE_URL)",
)


@contextmanager
def _managing(server):
    """An SDK session for a command; any failure becomes a one-line error and a non-zero exit."""
    from . import management
    from . import server as http
    from . import settings

    try:
        with management.connect(server) as manager:
            yield manager
    except (http.LMStudioError, settings.SettingsError) as exc:
        raise click.ClickException(str(exc)) from None


def _format_size(size: int | None) -> str:
    if not size:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def _format_seconds(seconds: float | None) -> str:
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


def _format_ttl(instance) -> str:
    if instance.ttl is None:
        return "-"
    if instance.ttl_remaining is None:
        return _format_seconds(instance.ttl)
    return f"{_format_seconds(instance.ttl_remaining)} / {_format_seconds(instance.ttl)}"


def _table(headers, rows) -> list[str]:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    return ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [headers, *rows]]


def _echo_json(data) -> None:
    import json

    click.echo(json.dumps(data, indent=2))


class _LoadProgress:
    """A progress bar on stderr that follows the SDK's load progress; nothing when stderr is not a terminal."""

    def __init__(self, label: str, enabled: bool):
        self.label = label
        self.enabled = enabled
        self.bar = None

    def update(self, fraction: float) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=1000, label=self.label, file=sys.stderr, show_eta=False)
            self.bar.__enter__()
        self.bar.update(max(0, int(fraction * 1000) - self.bar.pos))

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@lmstudio_group.command(name="load")
@click.argument("model")
@click.option("-c", "--context-length", type=click.IntRange(min=1), help="Context length in tokens")
@click.option("--gpu", type=_GpuRatio(), help="GPU offload: off, max, or a ratio between 0 and 1")
@click.option(
    "--ttl",
    type=click.IntRange(min=1),
    help="Unload after this many idle seconds (default: stay loaded until unloaded)",
)
@click.option("--identifier", help="Instance identifier to use in API calls (default: chosen by LM Studio)")
@_SERVER_OPTION
@click.option("json_", "--json", is_flag=True, help="Output the loaded instance as JSON, with no progress bar")
def load_command(model, context_length, gpu, ttl, identifier, server, json_):
    """Load a model into LM Studio

    MODEL is a model key from `llm lmstudio ls`, or a unique part of one.

    \b
    Example:
        llm lmstudio load qwen3-4b --context-length 8192 --gpu max --ttl 600
    """
    progress = _LoadProgress(f"Loading {model}", enabled=not json_ and sys.stderr.isatty())
    from . import management

    with _managing(server) as manager:
        try:
            result = manager.load(
                model,
                context_length=context_length,
                gpu=gpu,
                ttl=ttl,
                identifier=identifier,
                on_progress=progress.update,
            )
        finally:
            progress.finish()
        model_id = manager.server.model_id(result.model)
    management.refresh_catalog()
    if json_:
        _echo_json({**result.to_json(), "model_id": model_id, "server": manager.server.base_url})
        return
    details = [_format_size(result.size_bytes), f"context {result.context_length}"]
    if result.ttl is not None:
        details.append(f"idle TTL {_format_seconds(result.ttl)}")
    click.echo(f"Loaded {result.model} in {result.load_seconds:.2f} s ({', '.join(details)}).")
    click.echo(f'Identifier: "{result.identifier}" (the model name for LM Studio\'s API and SDK)')
    click.echo(f"Use it with: llm -m {model_id}")


@lmstudio_group.command(name="unload")
@click.argument("identifier", required=False)
@click.option("-a", "--all", "all_", is_flag=True, help="Unload every loaded model")
@_SERVER_OPTION
@click.option("json_", "--json", is_flag=True, help="Output the unloaded instances as JSON")
def unload_command(identifier, all_, server, json_):
    """Unload a model from LM Studio

    IDENTIFIER is an identifier from `llm lmstudio ps`; it may be left out when only one model is loaded.

    \b
    Examples:
        llm lmstudio unload qwen3-4b
        llm lmstudio unload --all
    """
    from . import management

    if identifier and all_:
        raise click.UsageError("Give an IDENTIFIER or --all, not both")
    with _managing(server) as manager:
        if all_:
            unloaded = manager.unload_all()
        else:
            if not identifier:
                loaded = manager.loaded()
                if len(loaded) > 1:
                    names = ", ".join(i.identifier for i in loaded)
                    raise click.ClickException(f"Several models are loaded ({names}): name one, or use --all")
                identifier = loaded[0].identifier if loaded else None
            unloaded = [manager.unload(identifier)] if identifier else []
    if unloaded:
        management.refresh_catalog()
    if json_:
        _echo_json({"unloaded": [i.to_json() for i in unloaded]})
        return
    if not unloaded:
        click.echo("No models are loaded.")
    for instance in unloaded:
        click.echo(f'Unloaded "{instance.identifier}" ({instance.model}).')


@lmstudio_group.command(name="ps")
@_SERVER_OPTION
@click.option("json_", "--json", is_flag=True, help="Output as JSON")
def ps_command(server, json_):
    """List the models LM Studio has loaded

    TTL shows the idle time left before LM Studio unloads a model, over its total.

    \b
    Example:
        llm lmstudio ps --json
    """
    with _managing(server) as manager:
        loaded = manager.loaded()
    if json_:
        _echo_json([i.to_json() for i in loaded])
        return
    if not loaded:
        click.echo("No models are currently loaded.")
        return
    headers = ("IDENTIFIER", "MODEL", "TYPE", "SIZE", "CONTEXT", "TTL", "STATUS")
    rows = [
        (i.identifier, i.model, i.type, _format_size(i.size_bytes), i.context_length, _format_ttl(i), i.status)
        for i in loaded
    ]
    for line in _table(headers, rows):
        click.echo(line)


def _native_models(kind: str | None) -> list:
    try:
        from . import local_models

        models = local_models.discover()
    except (ImportError, AttributeError):
        return []
    return [m for m in models if kind is None or m.kind == kind]


@lmstudio_group.command(name="ls")
@click.option("--llm", "only_llm", is_flag=True, help="Only language models")
@click.option("--embedding", "only_embedding", is_flag=True, help="Only embedding models")
@_SERVER_OPTION
@click.option("json_", "--json", is_flag=True, help="Output as JSON")
def ls_command(only_llm, only_embedding, server, json_):
    """List the models LM Studio has downloaded, and native MLX models found on disk

    \b
    Example:
        llm lmstudio ls --llm
    """
    if only_llm and only_embedding:
        raise click.UsageError("Give --llm or --embedding, not both")
    namespace = "llm" if only_llm else "embedding" if only_embedding else None
    with _managing(server) as manager:
        models = manager.downloaded(namespace)
    native = _native_models({"llm": "chat", "embedding": "embedding"}.get(namespace))
    if json_:
        _echo_json(
            {
                "lmstudio": [m.to_json() for m in models],
                "native": [
                    m.to_json()
                    for m in native
                ],
            }
        )
        return
    total = sum(m.size_bytes for m in models)
    click.echo(f"You have {len(models)} models, taking up {_format_size(total)} of disk space.")
    for title, group in (
        ("LLM", [m for m in models if m.type != "embedding"]),
        ("EMBEDDING", [m for m in models if m.type == "embedding"]),
    ):
        if not group:
            continue
        click.echo("")
        rows = [
            (
                m.key,
                m.type,
                m.format,
                m.params or "-",
                m.arch or "-",
                _format_size(m.size_bytes),
                ("LOADED" if len(m.identifiers) == 1 else f"LOADED ×{len(m.identifiers)}") if m.loaded else "",
            )
            for m in group
        ]
        for line in _table((title, "TYPE", "FORMAT", "PARAMS", "ARCH", "SIZE", ""), rows):
            click.echo(line)
    if native:
        click.echo("")
        click.echo("native MLX (run inside llm, not by LM Studio)")
        rows = [(m.model_id, m.kind, m.arch, _format_size(m.size_bytes), m.source) for m in native]
        for line in _table(("MODEL", "KIND", "ARCH", "SIZE", "SOURCE"), rows):
            click.echo(line)


def _token_text(status) -> str:
    if status.requires_token is None:
        return "token: unknown"
    if not status.requires_token:
        return "token: not required"
    if not status.token_configured:
        return "token: required, none configured (run `llm keys set lmstudio`)"
    return "token: required, ours accepted" if status.token_accepted else "token: required, ours rejected"


@lmstudio_group.command(name="status")
@click.option("json_", "--json", is_flag=True, help="Output as JSON")
@click.pass_context
def status_command(ctx, json_):
    """Check each configured LM Studio server: reachable, token, models, latency

    Exits with status 0 only when every configured server is reachable, so scripts can use it
    as a health check.

    \b
    Example:
        llm lmstudio status && llm -m lmstudio/qwen3-4b "hello"
    """
    from . import management
    from . import settings

    try:
        servers = settings.servers()
        token = settings.api_token()
    except settings.SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    statuses = [management.server_status(server, token) for server in servers]
    version = management.sdk_version()
    sdk = {
        "installed": version is not None,
        "version": version,
        "token_support": management.sdk_supports_token(),
    }
    if json_:
        _echo_json({"servers": [s.to_json() for s in statuses], "sdk": sdk})
    else:
        for status in statuses:
            if not status.reachable:
                click.echo(f"{status.base_url}  unreachable: {status.error}")
                continue
            models = (
                f"models: {status.downloaded} downloaded, {status.loaded} loaded"
                if status.downloaded is not None
                else "models: unknown"
            )
            click.echo(f"{status.base_url}  reachable ({status.latency_ms:g} ms)  {_token_text(status)}  {models}")
            if status.error:
                click.echo(f"  {status.error}")
        if version is None:
            click.echo("SDK: lmstudio is not installed; load/unload/ps/ls need it (`llm install lmstudio`)")
        elif any(s.requires_token for s in statuses) and not sdk["token_support"]:
            click.echo(
                f"SDK: lmstudio {version} cannot send API tokens, so load/unload/ps/ls cannot reach a server "
                f"that requires one; upgrade to {management.TOKEN_SDK_VERSION} or later"
            )
    if not all(s.reachable for s in statuses):
        ctx.exit(1)


# ---------------------------------------------------------------- native MLX models (`llm lmstudio mlx ...`)


@lmstudio_group.group(name="mlx")
def mlx_group():
    "Native MLX models, run inside llm with mlx-lm (registered as mlx/<name>)"


def _human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


@mlx_group.command(name="add")
@click.argument("path")
@click.option("--name", help="Register as mlx/NAME (default: the folder name, lower-cased)")
def mlx_add(path, name):
    "Add an MLX model folder (config.json + .safetensors) by path"
    from . import local_models

    try:
        model = local_models.add(path, name)
    except local_models.LocalModelError as exc:
        raise click.ClickException(str(exc))
    click.echo(f"Added {model.model_id}: {model.kind} model, {model.arch}, {_human_size(model.size_bytes)}, {model.path}")


@mlx_group.command(name="remove")
@click.argument("name")
def mlx_remove(name):
    "Forget a model added with `llm lmstudio mlx add` (its files stay where they are)"
    from . import local_models

    try:
        path = local_models.remove(name)
    except local_models.LocalModelError as exc:
        raise click.ClickException(str(exc))
    click.echo(f"Removed mlx/{name.removeprefix('mlx/')} (files left in {path})")


@mlx_group.command(name="list")
@click.option("json_", "--json", is_flag=True, help="Output as JSON")
def mlx_list(json_):
    "List native MLX models found in LM Studio's folder, the Hugging Face cache and added paths"
    import json

    from . import local_models

    models = local_models.discover()
    if json_:
        rows = [m.to_json() | {"problem": m.problem} for m in models]
        click.echo(json.dumps(rows, indent=2))
        return
    if not models:
        click.echo("No native MLX models found. Add one with: llm lmstudio mlx add PATH")
        return
    headers = ("MODEL", "KIND", "ARCH", "SIZE", "SOURCE", "PATH")
    rows = [
        (m.model_id, m.kind, m.arch, _human_size(m.size_bytes), m.source, m.problem or str(m.path)) for m in models
    ]
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers) - 1)]
    for row in [headers] + rows:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) + "  " + str(row[-1]))


# ---------------------------------------------------------------- route (the router's decision, explained)


@lmstudio_group.command(name="route")
@click.argument("prompt", required=False)
@click.option("-s", "--system", help="System prompt, as the router would see it")
@click.option("-a", "--attachment", "attachments", multiple=True, help="Attachment path or URL (images need a vision model)")
@click.option("--tools", "needs_tools", is_flag=True, help="Route as if the prompt offered tools (-T)")
@click.option("--schema", "needs_schema", is_flag=True, help="Route as if the prompt had a --schema")
@click.option("--task", help="Skip classification: route as this task")
@click.option("json_", "--json", is_flag=True, help="Output the decision as JSON")
def route(prompt, system, attachments, needs_tools, needs_schema, task, json_):
    """Show how the router would handle PROMPT, without running it.

    Prints the task and confidence, the classifier used, every candidate with its score and
    reasons, excluded models and why, and the fallback chain. Reads the prompt from standard
    input when it is not given.

    Example:

        llm lmstudio route "Write a Python function that parses ISO dates"
        cat error.log | llm lmstudio route --json
    """
    import json
    import sys

    import llm

    from . import router, settings

    if prompt is None:
        if sys.stdin.isatty():
            raise click.UsageError("give a PROMPT or pipe one in")
        prompt = sys.stdin.read()
    try:
        config = settings.router_config()
    except settings.SettingsError as exc:
        raise click.ClickException(str(exc))
    model = router.Router()
    resolved = []
    for value in attachments:
        if value.startswith(("http://", "https://")):
            resolved.append(llm.Attachment(url=value))
        else:
            resolved.append(llm.Attachment(path=value))
    tools = [llm.Tool(name="tool", description="", input_schema={"type": "object"}, implementation=lambda: "")] if needs_tools else None
    fake_prompt = llm.Prompt(
        prompt,
        model,
        system=system,
        attachments=resolved,
        tools=tools,
        schema={"type": "object"} if needs_schema else None,
        options=model.Options(),
    )
    plan = router.make_plan(fake_prompt, config, task)
    data = plan.to_json()
    if json_:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"Task: {data['task']} (confidence {data['confidence']:.2f}, {data['classifier']} classifier)")
    if data["classifier_note"]:
        click.echo(f"  note: {data['classifier_note']}")
    click.echo("Candidates:")
    for candidate in data["candidates"] or []:
        marker = "*" if candidate["model"] == data["chosen"] else " "
        click.echo(f" {marker} {candidate['score']:7.1f}  {candidate['model']}" + ("  [loaded]" if candidate["loaded"] else ""))
        for reason in candidate["reasons"]:
            click.echo(f"              {reason}")
    if not data["candidates"]:
        click.echo("   (none)")
    for item in data["excluded"]:
        click.echo(f"   excluded: {item['model']}: {item['reason']}")
    click.echo("Chain: " + (" -> ".join(data["chain"]) if data["chain"] else "(empty: nothing can answer this prompt)"))


from . import cli_metrics  # noqa: E402,F401 - registers `cache` and `stats` on this group (their own module)
