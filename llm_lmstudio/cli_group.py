"""The `llm lmstudio` click group, cheap to register: its commands (cli.py and the cli_*.py it imports) load only
when `llm lmstudio ...` runs, lists or completes them; must import nothing but click at plugin load."""

import click


class LMStudioGroup(click.Group):
    """A group whose commands load on first use, so `llm --version` or `llm -m gpt-4o` never pays for them;
    every command's unusable setting is one line naming it, whichever command read it."""

    def _load_commands(self) -> None:
        from . import cli  # noqa: F401 - defines every command on this group (once; later calls find it loaded)

    def list_commands(self, ctx):
        self._load_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        self._load_commands()
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        from .settings import SettingsError

        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(name="lmstudio", cls=LMStudioGroup)
def lmstudio_group():
    "Manage LM Studio and native MLX models"
