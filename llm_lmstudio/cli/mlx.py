"""`llm lmstudio mlx add|remove|list`: the native MLX models llm can run, as mlx/discovery.py finds and records them.
Only talks; finding, adding and forgetting models happens in mlx/discovery.py."""

import click

from llm_lmstudio.cli.common import (
    echo_json,
    echo_table,
    size,
)


@click.group(name="mlx")
def mlx_group():
    "Native MLX models, run inside llm with mlx-lm (registered as mlx/<name>)"


@mlx_group.command(name="add")
@click.argument("path")
@click.option("--name", help="Register as mlx/NAME (default: the folder name, lower-cased)")
@click.option("json_", "--json", is_flag=True, help="Output the added model as JSON (the shape of `mlx list --json`)")
def mlx_add(path, name, json_):
    "Add an MLX model folder (config.json + .safetensors) by path"
    from llm_lmstudio.mlx import discovery

    try:
        model = discovery.add(path, name)
    except discovery.LocalModelError as exc:
        raise click.ClickException(str(exc))
    if json_:
        echo_json(model.to_json() | {"problem": model.problem})
    else:
        click.echo(f"Added {model.model_id}: {model.kind} model, {model.arch}, {size(model.size_bytes)}, {model.path}")
    if model.kind == "embedding":
        from llm_lmstudio.mlx.embeddings import missing_engine

        problem = missing_engine(model.model_id)
        if problem:
            click.echo(f"Note: {problem}", err=True)


@mlx_group.command(name="remove")
@click.argument("name")
@click.option("json_", "--json", is_flag=True, help="Output what was forgotten as JSON")
def mlx_remove(name, json_):
    "Forget a model added with `llm lmstudio mlx add` (its files stay where they are)"
    from llm_lmstudio.mlx import discovery

    try:
        path = discovery.remove(name)
    except discovery.LocalModelError as exc:
        raise click.ClickException(str(exc))
    name = name.removeprefix("mlx/").lower()  # names are lower-case (mlx/discovery.py)
    if json_:
        echo_json({"removed": {"model_id": f"mlx/{name}", "name": name, "path": str(path), "folder_exists": path.is_dir()}})
    elif path.is_dir():
        click.echo(f"Removed mlx/{name} (its files stay in {path})")
    else:
        click.echo(f"Removed mlx/{name} (its folder had already been deleted)")


@mlx_group.command(name="list")
@click.option("json_", "--json", is_flag=True, help="Output as JSON")
def mlx_list(json_):
    "List native MLX models found in LM Studio's folder, the Hugging Face cache and added paths"
    from llm_lmstudio.mlx import discovery

    models = discovery.discover()  # an unusable LMSTUDIO_MODELS_DIR is one line (cli/group.py)
    if json_:
        echo_json([m.to_json() | {"problem": m.problem} for m in models])
        return
    if not models:
        click.echo("No native MLX models found. Add one with: llm lmstudio mlx add PATH")
        return
    headers = ("MODEL", "KIND", "ARCH", "SIZE", "SOURCE", "PATH")
    rows = [
        (m.model_id, m.kind, m.arch, size(m.size_bytes), m.source, m.problem or str(m.path)) for m in models
    ]
    echo_table(headers, rows)
