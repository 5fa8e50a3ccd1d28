"""The `llm lmstudio ...` click commands: tables for people, --json for scripts.
Commands call management/catalog/server; they never build URLs or SDK calls themselves."""

import click


@click.group(name="lmstudio")
def lmstudio_group():
    "Manage LM Studio and native MLX models"
