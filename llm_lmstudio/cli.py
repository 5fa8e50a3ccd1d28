"""The `llm lmstudio ...` click commands: tables for people, --json for scripts.
Commands call management/catalog/server; they never build URLs or SDK calls themselves."""

import click


@click.group(name="lmstudio")
def lmstudio_group():
    "Manage LM Studio and native MLX models"


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
        rows = [
            {
                "model_id": m.model_id,
                "name": m.name,
                "kind": m.kind,
                "arch": m.arch,
                "size_bytes": m.size_bytes,
                "source": m.source,
                "path": str(m.path),
                "problem": m.problem,
            }
            for m in models
        ]
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
