"""Writing the plugin's own files (listing cache, model list, download jobs, classifier answers, vectors) so that a
concurrent `llm` process never reads half a file; never decides where a file lives or what goes in it."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; once written it replaces `path` in one rename, and on any failure it
    is removed and the old file stays. The name is the writer's own (process and thread), so two `llm` processes
    writing the same file at once never write into one temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    with replacing(path) as temporary:
        temporary.write_text(text)
