"""The `llm lmstudio ...` click commands: tables for people, --json for scripts.
Commands call management/catalog/server; they never build URLs or SDK calls themselves."""

# The group, its shared helpers and the management commands; `get`, `cache`/`stats`, `mlx` and `route` live
# in cli_get.py, cli_metrics.py, cli_mlx.py and cli_route.py.

import sys
from contextlib import contextmanager

import click

from .cli_group import lmstudio_group  # the group llm registers at start-up; this module fills it


# ---------------------------------------------------------------- model management (load, unload, ps, ls, get, status)
# Every SDK call goes through management.py; its errors arrive here as server.LMStudioError, one line each.


class _Parsed(click.ParamType):
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


def _gpu_ratio(text: str, option: str) -> float:
    from .management import parse_gpu  # management imports only when a command runs, not at llm's start

    return parse_gpu(text)


_SERVER_OPTION = click.option(
    "--server",
    "address",
    metavar="URL",
    help="LM Studio server to manage, as host:port or URL (default: the first in LMSTUDIO_BASE_URL)",
)


@contextmanager
def _managing(address):
    """A management session for a command; any failure becomes a one-line error and a non-zero exit."""
    from . import management, server, settings

    try:
        with management.connect(address) as manager:
            yield manager
    except (server.LMStudioError, settings.SettingsError) as exc:
        raise click.ClickException(str(exc)) from None


def _size(size) -> str:
    from .management import format_size

    return format_size(size)


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


def _echo_table(headings, rows, err: bool = False) -> None:
    from llm.utils import dicts_to_table_string

    for line in dicts_to_table_string(list(headings), [dict(zip(headings, row)) for row in rows]):
        click.echo(line.rstrip(), err=err)


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


def _echo_estimate(estimate) -> None:
    click.echo(f"Model: {estimate.model}")
    if estimate.context_length is not None:
        click.echo(f"Context Length: {estimate.context_length:,}")
    if estimate.gpu is not None:
        click.echo(f"GPU Offload: {estimate.gpu * 100:g}%")
    click.echo(f"Estimated GPU Memory:   {_size(estimate.gpu_bytes)}")
    click.echo(f"Estimated Total Memory: {_size(estimate.total_bytes)} "
               f"(model {_size(estimate.model_bytes)}, context {_size(estimate.context_bytes)})")
    if estimate.confidence == "low":
        click.echo("Confidence: LOW")
    verdict = "may be loaded" if estimate.fits else "will fail to load"
    click.echo(f"Estimate: this model {verdict} under LM Studio's resource guardrails.")


@lmstudio_group.command(name="load")
@click.argument("model")
@click.option("-c", "--context-length", type=click.IntRange(min=1), help="Context length in tokens")
@click.option("--gpu", type=_Parsed("off|max|0..1", _gpu_ratio), help="GPU offload: off, max, or a ratio between 0 and 1")
@click.option(
    "--flash-attention/--no-flash-attention", default=None, help="Flash attention (llama.cpp engine; LLMs only)"
)
@click.option("--eval-batch-size", type=click.IntRange(min=1), help="Tokens evaluated per batch (llama.cpp; LLMs only)")
@click.option("--num-experts", type=click.IntRange(min=1), help="Experts used per token by a MoE model (llama.cpp)")
@click.option(
    "--offload-kv-cache/--no-offload-kv-cache",
    default=None,
    help="Keep the KV cache in GPU memory, or in RAM (llama.cpp; LLMs only)",
)
@click.option(
    "--ttl",
    type=click.IntRange(min=1),
    help="Unload after this many idle seconds (default: stay loaded until unloaded)",
)
@click.option("--identifier", help="Instance identifier to use in API calls (default: chosen by LM Studio)")
@click.option("--estimate-only", is_flag=True, help="Print LM Studio's memory estimate for this load and exit")
@_SERVER_OPTION
@click.option("json_", "--json", is_flag=True, help="Output the loaded instance (or the estimate) as JSON")
def load_command(
    model, context_length, gpu, flash_attention, eval_batch_size, num_experts, offload_kv_cache, ttl, identifier,
    estimate_only, address, json_,
):
    """Load a model into LM Studio

    MODEL is a model key from `llm lmstudio ls`, or a unique part of one; `KEY@VARIANT` picks a variant.
    A load LM Studio estimates will not fit is refused before anything is loaded.

    \b
    Examples:
        llm lmstudio load qwen3-4b --context-length 8192 --gpu max --ttl 600
        llm lmstudio load gpt-oss-20b --flash-attention --num-experts 4 --estimate-only
        llm lmstudio load nomic-embed-text-v1.5@q8_0
    """
    from . import management

    settings_ = management.LoadSettings(
        context_length=context_length,
        gpu=gpu,
        flash_attention=flash_attention,
        eval_batch_size=eval_batch_size,
        num_experts=num_experts,
        offload_kv_cache=offload_kv_cache,
        ttl=ttl,
        identifier=identifier,
    )
    if estimate_only:
        with _managing(address) as manager:
            estimate = manager.estimate(model, settings_)
        if json_:
            _echo_json(estimate.to_json())
        else:
            _echo_estimate(estimate)
        return
    progress = _LoadProgress(f"Loading {model}", enabled=not json_ and sys.stderr.isatty())
    with _managing(address) as manager:
        try:
            result = manager.load(model, settings_, on_progress=progress.update)
        finally:
            progress.finish()
        model_id = manager.server.model_id(result.model)
    management.refresh_catalog()
    if json_:
        _echo_json({**result.to_json(), "model_id": model_id, "server": manager.server.base_url})
        return
    details = [_size(result.size_bytes), f"context {result.context_length}"]
    if result.ttl is not None:
        details.append(f"idle TTL {_format_seconds(result.ttl)}")
    click.echo(f"Loaded {result.model} in {result.load_seconds:.2f} s ({', '.join(details)}).")
    click.echo(f'Identifier: "{result.identifier}" (the model name for LM Studio\'s API and SDK)')
    usage = "llm embed -m" if result.type == "embedding" else "llm -m"
    click.echo(f"Use it with: {usage} {model_id}")


@lmstudio_group.command(name="unload")
@click.argument("identifier", required=False)
@click.option("-a", "--all", "all_", is_flag=True, help="Unload every loaded model")
@_SERVER_OPTION
@click.option("json_", "--json", is_flag=True, help="Output the unloaded instances as JSON")
def unload_command(identifier, all_, address, json_):
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
    with _managing(address) as manager:
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
def ps_command(address, json_):
    """List the models LM Studio has loaded

    TTL shows the idle time left before LM Studio unloads a model, over its total.

    \b
    Example:
        llm lmstudio ps --json
    """
    with _managing(address) as manager:
        loaded = manager.loaded()
    if json_:
        _echo_json([i.to_json() for i in loaded])
        return
    if not loaded:
        click.echo("No models are currently loaded.")
        return
    headers = ("IDENTIFIER", "MODEL", "TYPE", "SIZE", "CONTEXT", "TTL", "STATUS")
    rows = [
        (i.identifier, i.model, i.type, _size(i.size_bytes), i.context_length, _format_ttl(i), i.status)
        for i in loaded
    ]
    _echo_table(headers, rows)


def _native_models(kind: str | None) -> list:
    from . import local_models

    return [m for m in local_models.discover() if kind is None or m.kind == kind]


def _loaded_marker(model) -> str:
    if not model.loaded:
        return ""
    return "LOADED" if len(model.identifiers) == 1 else f"LOADED ×{len(model.identifiers)}"


@lmstudio_group.command(name="ls")
@click.option("--llm", "only_llm", is_flag=True, help="Only language models")
@click.option("--embedding", "only_embedding", is_flag=True, help="Only embedding models")
@click.option("--variants", "with_variants", is_flag=True, help="List each model's downloaded variants under it")
@_SERVER_OPTION
@click.option("json_", "--json", is_flag=True, help="Output as JSON")
def ls_command(only_llm, only_embedding, with_variants, address, json_):
    """List the models LM Studio has downloaded, and native MLX models found on disk

    Models of a type or format this plugin does not know are listed as LM Studio reports them.

    \b
    Examples:
        llm lmstudio ls --llm
        llm lmstudio ls --variants
    """
    if only_llm and only_embedding:
        raise click.UsageError("Give --llm or --embedding, not both")
    namespace = "llm" if only_llm else "embedding" if only_embedding else None
    with _managing(address) as manager:
        models = manager.downloaded(namespace)
        variants = {m.key: manager.variants(m) for m in models} if with_variants else {}
    native = _native_models({"llm": "chat", "embedding": "embedding"}.get(namespace))
    if json_:
        rows = []
        for m in models:
            row = m.to_json()
            if with_variants:
                row["variant_details"] = [v.to_json() for v in variants[m.key]]
            rows.append(row)
        _echo_json({"lmstudio": rows, "native": [m.to_json() for m in native]})
        return
    total = sum(m.size_bytes for m in models)
    click.echo(f"You have {len(models)} models, taking up {_size(total)} of disk space.")
    groups = {"LLM": [], "EMBEDDING": [], "OTHER": []}
    for m in models:
        groups["EMBEDDING" if m.type == "embedding" else "LLM" if m.namespace else "OTHER"].append(m)
    for title, group in groups.items():
        if not group:
            continue
        click.echo("")
        rows = []
        for m in group:
            count = len(m.variants)
            label = f"{m.key} ({count} variant{'s' if count != 1 else ''})" if count else m.key
            rows.append((label, m.type, m.format, m.params or "-", m.arch or "-", _size(m.size_bytes), _loaded_marker(m)))
            for variant in variants.get(m.key, []):
                mark = " * " if variant.key == m.selected_variant else "   "
                rows.append((mark + variant.key, "", variant.format, variant.params or "-", variant.arch or "-",
                             _size(variant.size_bytes), ""))
        _echo_table((title, "TYPE", "FORMAT", "PARAMS", "ARCH", "SIZE", ""), rows)
        if title == "OTHER":
            click.echo("(types this plugin cannot load or chat with; LM Studio lists them)")
    if native:
        click.echo("")
        click.echo("native MLX (run inside llm, not by LM Studio)")
        rows = [(m.model_id, m.kind, m.arch, _size(m.size_bytes), m.source) for m in native]
        _echo_table(("MODEL", "KIND", "ARCH", "SIZE", "SOURCE"), rows)


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

    Says where the API token came from (`llm keys set lmstudio`, $LM_API_TOKEN or $LMSTUDIO_API_TOKEN),
    never the token. Exits with status 0 only when every configured server is reachable and, where it
    requires a token, accepts ours, so scripts can use it as a health check.

    \b
    Example:
        llm lmstudio status && llm -m lmstudio/qwen3-4b "hello"
    """
    from . import install_check, management, management_sdk, settings, status

    try:
        servers = settings.servers()
        token, source = settings.api_token_source()
    except settings.SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    statuses = [status.server_status(server, token, source) for server in servers]
    version = management_sdk.sdk_version()
    sdk = {
        "installed": version is not None,
        "version": version,
        "token_support": version is not None and management_sdk.sdk_supports_token(),
    }
    conflicts = install_check.conflicting_distributions()
    if json_:
        conflicts_json = [{"name": name, "version": version} for name, version in conflicts]
        _echo_json({"servers": [s.to_json() for s in statuses], "sdk": sdk, "conflicts": conflicts_json})
    else:
        for state in statuses:
            if not state.reachable:
                click.echo(f"{state.base_url}  unreachable: {state.error}")
                continue
            models = (
                f"models: {state.downloaded} downloaded, {state.loaded} loaded"
                if state.downloaded is not None
                else "models: unknown"
            )
            click.echo(f"{state.base_url}  reachable ({state.latency_ms:g} ms)  {_token_text(state)}  {models}")
            if state.error:
                click.echo(f"  {state.error}")
        click.echo(f"API token: {'from ' + source if source else 'none configured'}")
        if version is None:
            click.echo("SDK: lmstudio is not installed; load/unload/ps/ls need it (`llm install lmstudio`)")
        elif any(s.requires_token for s in statuses) and not sdk["token_support"]:
            click.echo(
                f"SDK: lmstudio {version} cannot send API tokens: load/unload/ps/ls use LM Studio's REST API "
                f"instead (no --gpu, --ttl, --identifier or estimates); lmstudio {management.TOKEN_SDK_VERSION}+ "
                "can do those"
            )
        if conflicts:
            click.echo(install_check.conflict_line(conflicts))
    if not all(s.reachable and not (s.requires_token and not s.token_accepted) for s in statuses):
        ctx.exit(1)


from . import cli_metrics  # noqa: E402,F401 - registers `cache` and `stats` on this group (their own module)
from . import cli_get  # noqa: E402,F401 - registers `get` on this group (its own module)
from . import cli_mlx  # noqa: E402,F401 - registers the `mlx` group
from . import cli_route  # noqa: E402,F401 - registers `route`
