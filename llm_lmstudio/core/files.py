"""The plugin's own files (model registry, listing cache, verdicts, download jobs, SQLite stores, prompt caches):
written whole or not at all, and a damaged one moved aside with a warning before it is rebuilt. Never decides where
a file lives or what goes in it; never deletes or overwrites a file it could not read."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

CORRUPT = ".corrupt-"  # <name>.corrupt-<UTC timestamp>: where a damaged file goes
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")  # SQLite's files beside a database: they move with it
KEEP_DAMAGED = 3  # damaged copies kept per file, the most recent; older ones (with their companions) are removed
T = TypeVar("T")


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


def write_text(path: Path, text: str, *, backup: Path | None = None) -> None:
    """Replace `path` with `text` in one rename; with `backup`, the version it replaces is first kept there (also
    replaced whole), so a file damaged later can be restored from the version before."""
    if backup is not None and path.is_file():
        with replacing(backup) as temporary:
            shutil.copyfile(path, temporary)
    with replacing(path) as temporary:
        temporary.write_text(text)


# ---------------------------------------------------------------- damaged files


def _identity(stat: os.stat_result) -> tuple:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _aside_path(path: Path, now: float) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    aside, counter = path.with_name(f"{path.name}{CORRUPT}{stamp}"), 2
    while aside.exists():  # a second damaged copy within the same second keeps the first
        aside, counter = path.with_name(f"{path.name}{CORRUPT}{stamp}-{counter}"), counter + 1
    return aside


def warn(message: str) -> None:
    """One line on stderr, `llm-lmstudio-mlx: warning: ...`. Inside a command it comes once the command is done, so that
    it never lands in the middle of a streamed answer on the terminal."""
    from llm_lmstudio.core.errors import note

    note(f"warning: {message}")


def set_aside(
    path: Path,
    reason: str,
    *,
    then: str = "a new one is built in its place",
    seen: os.stat_result | None = None,
    companions: tuple[str, ...] = (),
    now: float | None = None,
) -> Path | None:
    """Move the damaged file `path` (and its `companions`, e.g. SQLite's -wal) to `<name>.corrupt-<timestamp>`, and
    say so in one line naming both paths and what happens `then`. Returns where it went; None when there was nothing
    to move, or when the file is no longer the one found damaged (`seen`): another process set it aside and rebuilt
    it first, and the rebuilt file must not be moved in its turn."""
    try:
        current = path.stat()
    except FileNotFoundError:
        return None
    if seen is not None and _identity(current) != _identity(seen):
        return None
    aside = _aside_path(path, time.time() if now is None else now)
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return None  # another process moved it a moment ago
    for suffix in companions:
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    _prune_damaged(path, companions)
    warn(f"{path} was damaged ({reason}) and has been moved to {aside}; {then}")
    return aside


def _prune_damaged(path: Path, companions: tuple[str, ...]) -> None:
    """Keep the KEEP_DAMAGED most recent copies of `path` set aside, so a file damaged again and again (a full disk,
    a broken sync tool) cannot fill the folder."""

    def order(copy: Path) -> tuple[str, int]:
        stamp, _, counter = copy.name[len(path.name) + len(CORRUPT):].partition("-")
        return stamp, int(counter) if counter.isdigit() else 1

    prefix, suffixes = f"{path.name}{CORRUPT}", SQLITE_COMPANIONS + companions
    copies = sorted((p for p in path.parent.iterdir() if p.name.startswith(prefix) and not p.name.endswith(suffixes)), key=order)
    for old in copies[:-KEEP_DAMAGED]:
        for name in (old.name, *(old.name + suffix for suffix in suffixes)):
            with contextlib.suppress(OSError):
                (path.parent / name).unlink()


def read_json(
    path: Path,
    valid: Callable[[Any], bool] = lambda data: isinstance(data, dict),
    *,
    backup: Path | None = None,
    then: str = "a new one is built in its place",
) -> Any | None:
    """The JSON held in `path`, or None when there is no such file. A file that is not JSON, or not of the shape
    `valid` accepts, is damaged: it is set aside with a warning, and the version kept in `backup` (see write_text)
    is restored and returned when it is sound; otherwise None, and the caller builds a new file. Other read errors
    (permissions) are raised, so that a file that merely cannot be read now is never rebuilt over."""
    data, seen, problem = _load(path, valid)
    if problem is None:
        return data
    restored, kept, backup_problem = _load(backup, valid) if backup is not None else (None, None, None)
    if kept is not None and backup_problem is None:
        if set_aside(path, problem, then=f"restored the version before its last change from {backup}", seen=seen) is not None:
            write_text(path, backup.read_text())
        return restored
    set_aside(path, problem, then=then, seen=seen)
    return None


def _load(path: Path, valid: Callable[[Any], bool]) -> tuple[Any, os.stat_result | None, str | None]:
    """(data, the file's stat, None) for a sound file; (None, stat, what is wrong) for a damaged one; (None, None,
    None) for a missing one."""
    try:
        with open(path, "rb") as handle:
            seen = os.fstat(handle.fileno())
            raw = handle.read()
    except FileNotFoundError:
        return None, None, None
    try:
        data = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError too
        return None, seen, "empty" if not raw.strip() else f"not JSON: {str(exc).splitlines()[0]}"
    if not valid(data):
        return None, seen, "not the JSON this plugin writes there"
    return data, seen, None


def sqlite_damaged(exc: BaseException) -> bool:
    """Whether a SQLite error means the file itself is bad ("file is not a database", "database disk image is
    malformed"), as opposed to this moment being bad (locked, busy, disk I/O: OperationalError)."""
    import sqlite3

    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


def set_aside_damaged_db(path: Path, exc: BaseException, *, then: str, seen: os.stat_result | None = None) -> bool:
    """When `exc` says the SQLite file `path` is damaged, set it aside (its -wal and -shm with it) and return True, so
    that the caller opens a new one; False for any other error (locked, busy: the file is fine)."""
    if not sqlite_damaged(exc):
        return False
    set_aside(path, str(exc).splitlines()[0], then=then, seen=seen, companions=SQLITE_COMPANIONS)
    return True


def open_db(path: Path, connect: Callable[[], T], *, then: str) -> T:
    """connect() to the SQLite file `path`; when it fails because the file is damaged, the file is set aside with a
    warning and connect() makes a new one (once). Other failures are raised as they come."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for last in (False, True):
        try:
            seen = path.stat()
        except FileNotFoundError:
            seen = None
        try:
            return connect()
        except Exception as exc:
            if last or not set_aside_damaged_db(path, exc, then=then, seen=seen):
                raise
    raise AssertionError("unreachable")
