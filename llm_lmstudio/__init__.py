"""llm hook implementations for LM Studio and native MLX models.
Only hooks live here; registering must stay cheap and never wait on the network beyond a fixed budget."""

import llm


@llm.hookimpl
def register_commands(cli):
    from .cli import lmstudio_group

    cli.add_command(lmstudio_group)
