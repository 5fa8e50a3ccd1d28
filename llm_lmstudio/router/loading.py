"""Loading the LM Studio model a plan chose before the router sends it the prompt: through the management layer
(SDK or REST), with the router config's TTL and one progress line on stderr. It never loads a second instance."""

from __future__ import annotations

import sys
import time

import click

from llm_lmstudio.core import settings
from llm_lmstudio.lmstudio import errors


class _Progress:
    """`llm-lmstudio: loading KEY on URL for the router (unloaded after TTL s idle)… done in 1.2 s` on stderr;
    on a terminal the percentage follows the load on the same line."""

    def __init__(self, key: str, base_url: str, ttl: int):
        self.line = f"llm-lmstudio: loading {key} on {base_url} for the router (unloaded after {ttl} s idle)…"
        self.terminal = sys.stderr.isatty()
        self.started = time.monotonic()
        click.echo(self.line, err=True, nl=False)

    def update(self, fraction: float) -> None:
        if self.terminal:
            click.echo(f"\r{self.line} {fraction:.0%}", err=True, nl=False)

    def finish(self, outcome: str) -> None:
        prefix = f"\r{self.line}" if self.terminal else ""
        click.echo(f"{prefix} {outcome}", err=True)


def ensure_loaded(model, ttl: int) -> str | None:
    """Load `model` (an LM Studio chat model: .entry.key, .server) unless its server already has an instance of it.
    The identifier of the instance this call loaded, else None. Raises errors.LMStudioError kinds (AuthRequired, Unreachable, ModelLoadFailed,
    LoadRefused, ManagementError...) and ImportError when the SDK is missing."""
    from llm_lmstudio.management import manager as management

    key = model.entry.key
    manager = management.Manager(model.server, token=settings.api_token())
    try:
        loaded = manager.open().loaded()
    except BaseException as exc:
        manager.close()
        if isinstance(exc, errors.TimedOut):
            # no answer before any load began: the server itself is stuck, so the router skips its other models too
            raise errors.TimedOut(f"{exc}: it looks hung") from None
        raise
    with manager:
        if any(instance.model == key or instance.identifier == key for instance in loaded):
            return None
        progress = _Progress(key, model.server.base_url, ttl)
        try:
            result = manager.load(key, management.LoadSettings(ttl=ttl), on_progress=progress.update)
        except BaseException:
            progress.finish("failed")
            raise
        progress.finish(f"done in {time.monotonic() - progress.started:.1f} s")
    _refresh_listing(model.server)
    return result.identifier


def unload(model, identifier: str) -> None:
    """Unload an instance the router loaded for an attempt that then failed: a model that did not answer must not
    hold its memory while the router loads the next one. Best effort: its TTL unloads it anyway."""
    from llm_lmstudio.management import manager as management

    try:
        with management.Manager(model.server, token=settings.api_token()) as manager:
            manager.unload(identifier)
    except Exception:  # noqa: BLE001 - the prompt's outcome does not depend on this
        return
    _refresh_listing(model.server)


def _refresh_listing(server) -> None:
    """So the next prompt's plan knows the model is loaded (and does not ask management again)."""
    from llm_lmstudio.lmstudio import catalog

    try:
        catalog.refresh([server])
    except errors.LMStudioError:
        pass  # a stale listing costs one `loaded()` query next time, nothing else
