"""Whether another installed distribution claims this plugin's `llm_lmstudio` import name or its `lmstudio` llm
entry point (the unrelated `llm-lmstudio` on PyPI does both). Reads installed metadata only; never imports them."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "llm-lmstudio-mlx"  # pyproject.toml's `name`
IMPORT_NAME = "llm_lmstudio"
ENTRY_POINT = ("llm", "lmstudio")


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _registers_entry_point(entry_points_txt: str) -> bool:
    group, name = ENTRY_POINT
    section = None
    for line in entry_points_txt.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == group and line.partition("=")[0].strip() == name:
            return True
    return False


def _claims(dist: metadata.Distribution) -> bool:
    # the two small files a wheel's metadata holds for this (reading RECORD or parsing every METADATA is slow)
    top_level = dist.read_text("top_level.txt") or ""
    return IMPORT_NAME in top_level.split() or _registers_entry_point(dist.read_text("entry_points.txt") or "")


def conflicting_distributions(path: list[str] | None = None) -> list[tuple[str, str]]:
    """(name, version) of every installed distribution other than this one that claims the import name or the
    entry point, in `path` (default: sys.path). Two such installs overwrite each other's files and models."""
    found = {}
    for dist in metadata.distributions() if path is None else metadata.distributions(path=path):
        if _claims(dist):
            name = dist.metadata["Name"] or ""
            if _canonical(name) != DISTRIBUTION:
                found.setdefault(_canonical(name), (name, dist.version))
    return sorted(found.values())


def conflict_line(others: list[tuple[str, str]]) -> str:
    """The one line `llm lmstudio status` prints about `conflicting_distributions()` when there are any."""
    named = ", ".join(f"{name} {version}" for name, version in others)
    uninstall = " ".join(name for name, _ in others)
    return (
        f"Also installed: {named}, with the same `llm_lmstudio` module and `lmstudio` plugin name as "
        f"{DISTRIBUTION}: only one of them can work; remove it with `llm uninstall {uninstall} -y`"
    )
