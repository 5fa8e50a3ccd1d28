"""Loading the LM Studio model a plan chose before the router sends it the prompt: through the management layer
(SDK or REST), with the router config's TTL and one progress line on stderr. It never loads a second instance.
LM Studio's REST load cannot set a TTL: there the request itself carries it (JIT loading honours it), and only when
JIT loading is off does the router load the model over REST, without a TTL, and say so."""

from __future__ import annotations

import sys
import time

import click

from llm_lmstudio.core import settings
from llm_lmstudio.lmstudio import errors


class LeftToJit(Exception):
    """Management cannot give this server's loads a TTL (LM Studio's REST API): rather than load a model that would
    stay loaded, the router sends the request, whose `ttl` LM Studio's JIT loading honours."""


class _Progress:
    """`llm-lmstudio: loading KEY on URL for the router (unloaded after TTL s idle)… done in 1.2 s` on stderr;
    on a terminal the percentage follows the load on the same line. Without a TTL the line does not promise one."""

    def __init__(self, key: str, base_url: str, ttl: int | None):
        idle = f" (unloaded after {ttl} s idle)" if ttl else ""
        self.line = f"llm-lmstudio: loading {key} on {base_url} for the router{idle}…"
        self.terminal = sys.stderr.isatty()
        self.started = time.monotonic()
        click.echo(self.line, err=True, nl=False)

    def update(self, fraction: float) -> None:
        if self.terminal:
            click.echo(f"\r{self.line} {fraction:.0%}", err=True, nl=False)

    def finish(self, outcome: str) -> None:
        prefix = f"\r{self.line}" if self.terminal else ""
        click.echo(f"{prefix} {outcome}", err=True)


def ensure_loaded(model, ttl: int, token: str | None = None, *, untimed: bool = False) -> str | None:
    """Load `model` (an LM Studio chat model: .entry.key, .server) unless its server already has an instance of it,
    managing its server with `token` (`--key`'s, else settings.api_token()). The identifier of the instance this call
    loaded, else None. Where management cannot set the TTL, raises LeftToJit, or with `untimed` (the request came back
    "not loaded": JIT loading is off) loads without one. Raises errors.LMStudioError kinds (AuthRequired, Unreachable,
    ModelLoadFailed, LoadRefused, ManagementError...) and ImportError when the SDK is missing."""
    from llm_lmstudio.management import manager as management

    key = model.entry.key
    manager = management.Manager(model.server, token=token if token is not None else settings.api_token())
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
        if not manager.sets_ttl and not untimed:
            raise LeftToJit(key)
        timed = ttl if manager.sets_ttl else None
        progress = _Progress(key, model.server.base_url, timed)
        try:
            result = manager.load(key, management.LoadSettings(ttl=timed), on_progress=progress.update)
        except BaseException:
            progress.finish("failed")
            raise
        done = f"done in {time.monotonic() - progress.started:.1f} s"
        if not timed:
            done += f" (no TTL: LM Studio's REST load cannot set one; `{_unload_command(model)}` frees it)"
        progress.finish(done)
    _refresh_listing(model.server)
    return result.identifier


def _unload_command(model) -> str:
    first = model.server.prefix == "lmstudio"  # the first configured server, which `unload` manages by default
    return f"llm lmstudio unload {model.entry.key}" + ("" if first else f" --server {model.server.base_url}")


def unload(model, identifier: str, token: str | None = None) -> None:
    """Unload an instance the router loaded for an attempt that then failed: a model that did not answer must not
    hold its memory while the router loads the next one. Best effort: its TTL unloads it anyway."""
    from llm_lmstudio.management import manager as management

    try:
        with management.Manager(model.server, token=token if token is not None else settings.api_token()) as manager:
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
