"""`llm lmstudio mlx add|remove|list`: the native MLX models llm can run, as local_models.py finds and records them.
Only talks; finding, adding and forgetting models happens in local_models.py."""

import click

from .cli import _echo_json, _echo_table, _size, lmstudio_group


@lmstudio_group.group(name="mlx")
def mlx_group():
    "Native MLX models, run inside llm with mlx-lm (registered as mlx/<name>)"


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
    click.echo(f"Added {model.model_id}: {model.kind} model, {model.arch}, {_size(model.size_bytes)}, {model.path}")
    if model.kind == "embedding":
        from .mlx_embed import missing_engine

        problem = missing_engine(model.model_id)
        if problem:
            click.echo(f"Note: {problem}", err=True)


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
    from . import local_models

    models = local_models.discover()
    if json_:
        _echo_json([m.to_json() | {"problem": m.problem} for m in models])
        return
    if not models:
        click.echo("No native MLX models found. Add one with: llm lmstudio mlx add PATH")
        return
    headers = ("MODEL", "KIND", "ARCH", "SIZE", "SOURCE", "PATH")
    rows = [
        (m.model_id, m.kind, m.arch, _size(m.size_bytes), m.source, m.problem or str(m.path)) for m in models
    ]
    _echo_table(headers, rows)
