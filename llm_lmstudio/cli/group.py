"""The `llm lmstudio` click group, cheap to register: each command's module loads only when that command runs,
is listed or completed. Imports nothing but click at plugin load; command modules never import this one."""

import importlib

import click

# command name -> (module in this package, the click command it defines)
COMMANDS = {
    "load": ("manage", "load_command"),
    "unload": ("manage", "unload_command"),
    "ps": ("manage", "ps_command"),
    "ls": ("manage", "ls_command"),
    "status": ("manage", "status_command"),
    "get": ("get", "get_command"),
    "cache": ("stats", "cache_group"),
    "stats": ("stats", "stats_command"),
    "mlx": ("mlx", "mlx_group"),
    "route": ("route", "route"),
}


class LMStudioGroup(click.Group):
    """A group whose commands load on first use, so `llm --version` or `llm -m gpt-4o` never pays for them;
    every command's unusable setting is one line naming it, whichever command read it."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name]
        return getattr(importlib.import_module(f"{__package__}.{module}"), attribute)

    def invoke(self, ctx):
        from llm_lmstudio.core.settings import SettingsError

        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(name="lmstudio", cls=LMStudioGroup)
def lmstudio_group():
    "Manage LM Studio and native MLX models"
