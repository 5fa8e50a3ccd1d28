"""The `llm lmstudio ...` click commands: tables for people, --json for scripts.
Commands call management/catalog/server; they never build URLs or SDK calls themselves."""


import sys

import click

from llm_lmstudio.cli.common import SERVER_OPTION, Parsed, echo_json, echo_table, format_seconds, format_ttl, gpu_ratio, managing, size


# ---------------------------------------------------------------- model management (load, unload, ps, ls, get, status)
# Every SDK call goes through management.py; its errors arrive here as server.LMStudioError, one line each.


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
    click.echo(f"Estimated GPU Memory:   {size(estimate.gpu_bytes)}")
    click.echo(f"Estimated Total Memory: {size(estimate.total_bytes)} "
               f"(model {size(estimate.model_bytes)}, context {size(estimate.context_bytes)})")
    if estimate.confidence == "low":
        click.echo("Confidence: LOW")
    verdict = "may be loaded" if estimate.fits else "will fail to load"
    click.echo(f"Estimate: this model {verdict} under LM Studio's resource guardrails.")


@click.command(name="load")
@click.argument("model")
@click.option("-c", "--context-length", type=click.IntRange(min=1), help="Context length in tokens")
@click.option("--gpu", type=Parsed("off|max|0..1", gpu_ratio), help="GPU offload: off, max, or a ratio between 0 and 1")
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
# `lms load` has no such flag (it always loads another copy); the name is the SDK's load_new_instance.
@click.option("--new-instance", is_flag=True, help="Load another copy even when the model is loaded already")
@SERVER_OPTION
@click.option("json_", "--json", is_flag=True, help="Output the loaded instance (or the estimate) as JSON")
def load_command(
    model, context_length, gpu, flash_attention, eval_batch_size, num_experts, offload_kv_cache, ttl, identifier,
    estimate_only, new_instance, address, json_,
):
    """Load a model into LM Studio

    MODEL is a model key from `llm lmstudio ls`, or a unique part of one; `KEY@VARIANT` picks a variant.
    A model already loaded (by `load`, or by a request that loaded it just in time) is left as it is
    unless --new-instance asks for another copy. A load LM Studio estimates will not fit, or with a
    context longer than the model takes, is refused before anything is loaded.

    \b
    Examples:
        llm lmstudio load qwen3-4b --context-length 8192 --gpu max --ttl 600
        llm lmstudio load gpt-oss-20b --flash-attention --num-experts 4 --estimate-only
        llm lmstudio load nomic-embed-text-v1.5@q8_0
    """
    from llm_lmstudio.management import manager as management

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
        with managing(address) as manager:
            estimate = manager.estimate(model, settings_)
        if json_:
            echo_json(estimate.to_json())
        else:
            _echo_estimate(estimate)
        return
    progress = _LoadProgress(f"Loading {model}", enabled=not json_ and sys.stderr.isatty())
    with managing(address) as manager:
        try:
            result = manager.load(model, settings_, on_progress=progress.update, new_instance=new_instance)
        finally:
            progress.finish()
        model_id = management.model_id(manager.server, result.model)
    if not result.already_loaded:
        management.refresh_catalog()
    if json_:
        echo_json({**result.to_json(), "model_id": model_id, "server": manager.server.base_url})
        return
    if result.already_loaded:
        click.echo(f'{result.model} is already loaded as "{result.identifier}" (context {result.context_length}): '
                   "nothing was loaded; --new-instance loads another copy")
        return
    details = [size(result.size_bytes), f"context {result.context_length}"]
    if result.ttl is not None:
        details.append(f"idle TTL {format_seconds(result.ttl)}")
    click.echo(f"Loaded {result.model} in {result.load_seconds:.2f} s ({', '.join(details)}).")
    click.echo(f'Identifier: "{result.identifier}" (the model name for LM Studio\'s API and SDK)')
    usage = "llm embed -m" if result.type == "embedding" else "llm -m"
    click.echo(f"Use it with: {usage} {model_id}" if model_id else f"To use it: {management.not_configured(manager.server)}")


@click.command(name="unload")
@click.argument("identifier", required=False)
@click.option("-a", "--all", "all_", is_flag=True, help="Unload every loaded model")
@SERVER_OPTION
@click.option("json_", "--json", is_flag=True, help="Output the unloaded instances as JSON")
def unload_command(identifier, all_, address, json_):
    """Unload a model from LM Studio

    IDENTIFIER is an identifier from `llm lmstudio ps`, or any name `llm lmstudio load` takes (a model
    key or a unique part of one); it may be left out when only one model is loaded. A model loaded
    several times is named by the identifier of the copy to unload.

    \b
    Examples:
        llm lmstudio unload qwen3-4b
        llm lmstudio unload qwen/qwen3-4b:2
        llm lmstudio unload --all
    """
    from llm_lmstudio.management import manager as management

    if identifier and all_:
        raise click.UsageError("Give an IDENTIFIER or --all, not both")
    with managing(address) as manager:
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
        echo_json({"unloaded": [i.to_json() | {"server": manager.server.base_url, "status": "unloaded"} for i in unloaded]})
        return
    if not unloaded:
        click.echo("No models are loaded.")
    for instance in unloaded:
        click.echo(f'Unloaded "{instance.identifier}" ({instance.model}).')


ONE_SERVER_OPTION = click.option("--server", "address", metavar="URL", help="Only this LM Studio server, as host:port "
                                  "or URL (default: every server in LMSTUDIO_BASE_URL)")  # ps and status


def _exit_with(ctx, *failures: str | None) -> None:  # each an `Error:` line after what could be listed; exit 1
    for message in filter(None, failures):
        click.echo(f"Error: {message}", err=True)
    if any(failures):
        ctx.exit(1)


@click.command(name="ps")
@ONE_SERVER_OPTION
@click.option("json_", "--json", is_flag=True, help="Output as JSON")
@click.pass_context
def ps_command(ctx, address, json_):
    """List the models LM Studio has loaded, on every configured server

    TTL shows the idle time left before LM Studio unloads a model, over its total. With several
    servers in LMSTUDIO_BASE_URL a SERVER column says which one holds each; a server that cannot be
    asked is named on stderr, and the command then exits 1 after listing the others.

    \b
    Example:
        llm lmstudio ps --json
    """
    from llm_lmstudio.core import settings

    try:
        targets = [address] if address else [server.base_url for server in settings.servers()]
    except settings.SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    loaded, failures = [], []
    for target in targets:
        try:
            with managing(target) as manager:
                loaded += [(manager.server, instance) for instance in manager.loaded()]
        except click.ClickException as exc:
            if len(targets) == 1:
                raise
            failures.append(exc.message)
    if failures and len(failures) == len(targets):
        raise click.ClickException(failures[0])
    if json_:
        echo_json([i.to_json() | {"server": server.base_url} for server, i in loaded])
    elif not loaded:
        click.echo("No models are currently loaded.")
    else:
        headers = ("IDENTIFIER", "MODEL", "TYPE", "SIZE", "CONTEXT", "TTL", "STATUS") + (("SERVER",) if len(targets) > 1 else ())
        rows = [
            (i.identifier, i.model, i.type, size(i.size_bytes), i.context_length, format_ttl(i), i.status, server.host_port)
            for server, i in loaded
        ]
        echo_table(headers, [row[: len(headers)] for row in rows])
    _exit_with(ctx, *failures)


def _native_models(kind: str | None) -> list:
    from llm_lmstudio.mlx import discovery

    return [m for m in discovery.discover() if kind is None or m.kind == kind]


def _loaded_marker(model) -> str:
    if not model.loaded:
        return ""
    return "LOADED" if len(model.identifiers) == 1 else f"LOADED ×{len(model.identifiers)}"


@click.command(name="ls")
@click.option("--llm", "only_llm", is_flag=True, help="Only language models")
@click.option("--embedding", "only_embedding", is_flag=True, help="Only embedding models")
@click.option("--variants", "with_variants", is_flag=True, help="List each model's downloaded variants under it")
@SERVER_OPTION
@click.option("json_", "--json", is_flag=True, help="Output as JSON")
@click.pass_context
def ls_command(ctx, only_llm, only_embedding, with_variants, address, json_):
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
    models, variants, failure = [], {}, None
    try:
        with managing(address) as manager:
            models = manager.downloaded(namespace)
            variants = {m.key: manager.variants(m) for m in models} if with_variants else {}
    except click.ClickException as exc:  # LM Studio down: the native models need no server, so they are still listed
        failure = exc.message
    native = _native_models({"llm": "chat", "embedding": "embedding"}.get(namespace))
    if json_:
        rows = []
        for m in models:
            row = m.to_json()
            if with_variants:
                row["variant_details"] = [v.to_json() for v in variants[m.key]]
            rows.append(row)
        echo_json({"lmstudio": rows, "native": [m.to_json() for m in native]})
        return _exit_with(ctx, failure)
    total = sum(m.size_bytes for m in models)
    if not failure:
        click.echo(f"You have {len(models)} models, taking up {size(total)} of disk space.")
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
            rows.append((label, m.type, m.format, m.params or "-", m.arch or "-", size(m.size_bytes), _loaded_marker(m)))
            for variant in variants.get(m.key, []):
                mark = " * " if variant.key == m.selected_variant else "   "
                rows.append((mark + variant.key, "", variant.format, variant.params or "-", variant.arch or "-",
                             size(variant.size_bytes), ""))
        echo_table((title, "TYPE", "FORMAT", "PARAMS", "ARCH", "SIZE", ""), rows)
        if title == "OTHER":
            click.echo("(types this plugin cannot load or chat with; LM Studio lists them)")
    if native:
        click.echo("")
        click.echo("native MLX (run inside llm, not by LM Studio)")
        rows = [(m.model_id, m.kind, m.arch, size(m.size_bytes), m.source) for m in native]
        echo_table(("MODEL", "KIND", "ARCH", "SIZE", "SOURCE"), rows)
    _exit_with(ctx, failure)


def _token_text(status) -> str:
    if status.requires_token is None:
        return "token: unknown"
    if not status.requires_token:
        return "token: not required"
    if not status.token_configured:
        return "token: required, none configured (run `llm keys set lmstudio`)"
    return "token: required, ours accepted" if status.token_accepted else "token: required, ours rejected"


@click.command(name="status")
@ONE_SERVER_OPTION
@click.option("json_", "--json", is_flag=True, help="Output as JSON")
@click.pass_context
def status_command(ctx, address, json_):
    """Check each configured LM Studio server: reachable, token, models, latency

    Says where the API token came from (`llm keys set lmstudio`, $LM_API_TOKEN or $LMSTUDIO_API_TOKEN),
    never the token. Exits with status 0 only when every configured server is reachable and, where it
    requires a token, accepts ours, so scripts can use it as a health check.

    \b
    Example:
        llm lmstudio status && llm -m lmstudio/qwen3-4b "hello"
    """
    from llm_lmstudio.management.models import TOKEN_SDK_VERSION
    from llm_lmstudio.management import sdk as management_sdk
    from llm_lmstudio.core import settings
    from llm_lmstudio.lmstudio import health
    from llm_lmstudio.core import installation

    from llm_lmstudio.management import manager as management

    try:
        servers = [management.pick_server(address)] if address else settings.servers()
        token, source = settings.api_token_source()
    except settings.SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    statuses = [health.server_status(server, token, source) for server in servers]
    version = management_sdk.sdk_version()
    sdk = {
        "installed": version is not None,
        "version": version,
        "token_support": version is not None and management_sdk.sdk_supports_token(),
    }
    conflicts = installation.conflicting_distributions()
    if json_:
        conflicts_json = [{"name": name, "version": version} for name, version in conflicts]
        echo_json({"servers": [s.to_json() for s in statuses], "sdk": sdk, "conflicts": conflicts_json})
    else:
        for state in statuses:
            if not state.reachable and state.latency_ms is not None:  # it answered, but it is not LM Studio
                click.echo(state.error)
                continue
            if not state.reachable:
                click.echo(f"{state.base_url}  unreachable: {state.error}")
                continue
            if state.downloaded is not None:
                models = f"models: {state.downloaded} downloaded, {state.loaded} loaded"
            elif state.error:
                models = "models: unknown"
            else:  # LM Studio before 0.3.6: only /v1/models, which says too little to count them
                models = "models: not counted (no /api/v0 listing before LM Studio 0.3.6; `llm lmstudio ls` lists them)"
            click.echo(f"{state.base_url}  reachable ({state.latency_ms:g} ms)  {_token_text(state)}  {models}")
            if state.error:
                click.echo(f"  {state.error}")
        click.echo(f"API token: {'from ' + source if source else 'none configured'}")
        if version is None:
            click.echo("SDK: lmstudio is not installed; load/unload/ps/ls need it (`llm install lmstudio`)")
        elif any(s.requires_token for s in statuses) and not sdk["token_support"]:
            click.echo(
                f"SDK: lmstudio {version} cannot send API tokens: load/unload/ps/ls use LM Studio's REST API "
                f"instead (no --gpu, --ttl, --identifier or estimates); lmstudio {TOKEN_SDK_VERSION}+ "
                "can do those"
            )
        if conflicts:
            click.echo(installation.conflict_line(conflicts))
    if not all(s.reachable and not (s.requires_token and not s.token_accepted) for s in statuses):
        ctx.exit(1)
