"""One way to wrap a model's execute() (a sync or an async generator) with a watcher that sees each event on its way
to the caller and the run's end: the response cache (response_cache.py) and the call recorder (call_recording.py)
are two such wrappers, stacked. Each wrapper acts only for the outermost model: a model the router delegates to runs
inside the router's execute() and is left to the router (its watcher hears that it delegated)."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from typing import Callable, Iterable, Optional, Protocol

_END = object()


class Watcher(Protocol):
    delegated: bool  # set when a model wrapped the same way runs inside this one

    def begin(self) -> Optional[Iterable]:
        """Events to yield instead of running execute() at all (a cache hit), or None to run it."""

    def saw(self, event) -> None:
        """An event execute() produced, before the caller gets it."""

    def finished(self) -> None:
        """execute() ran to its end (not called when the caller stopped early)."""

    def failed(self, exc: Exception) -> None:
        """execute() raised exc, which then passes on."""


def around_execute(execute, inside: contextvars.ContextVar, start: Callable[..., Watcher]):
    """execute() wrapped: `start(model, prompt, response)` makes the watcher of an outermost run; `inside` holds that
    watcher while execute() is producing (between its events, not while the caller holds one), which is how a model
    run inside it knows. A KeyModel's `key=` (from --key, `llm keys` or the environment) passes through untouched."""

    def outermost(model, prompt, response) -> Watcher | None:
        outer = inside.get()
        if outer is not None:
            outer.delegated = True
            return None
        return start(model, prompt, response)

    @contextlib.contextmanager
    def producing(watcher: Watcher):
        token = inside.set(watcher)
        try:
            yield
        finally:
            inside.reset(token)

    @contextlib.contextmanager
    def outcome(watcher: Watcher):
        # A caller that stops early (GeneratorExit is no Exception) has neither finished nor failed.
        try:
            yield
        except Exception as exc:
            watcher.failed(exc)
            raise
        watcher.finished()

    if inspect.isasyncgenfunction(execute):

        @functools.wraps(execute)
        async def run_async(self, prompt, stream, response, conversation=None, **key):
            watcher = outermost(self, prompt, response)
            if watcher is None:
                async for event in execute(self, prompt, stream, response, conversation, **key):
                    yield event
                return
            instead = watcher.begin()
            if instead is not None:
                for event in instead:
                    yield event
                return
            events = execute(self, prompt, stream, response, conversation, **key)
            async with contextlib.aclosing(events):
                with outcome(watcher):
                    while True:
                        with producing(watcher):
                            event = await anext(events, _END)
                        if event is _END:
                            break
                        watcher.saw(event)
                        yield event

        return run_async

    @functools.wraps(execute)
    def run(self, prompt, stream, response, conversation=None, **key):
        watcher = outermost(self, prompt, response)
        if watcher is None:
            yield from execute(self, prompt, stream, response, conversation, **key)
            return
        instead = watcher.begin()
        if instead is not None:
            yield from instead
            return
        events = execute(self, prompt, stream, response, conversation, **key)
        with contextlib.closing(events), outcome(watcher):
            while True:
                with producing(watcher):
                    event = next(events, _END)
                if event is _END:
                    break
                watcher.saw(event)
                yield event

    return run
