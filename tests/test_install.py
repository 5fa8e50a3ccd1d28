"""The default install stays lean: its dependency closure, read from the installed metadata, has no pandas,
pyarrow or datasets (each makes every `llm` command slower: benchmarks/bench_startup.py)."""

from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HEAVY = {"pandas", "pyarrow", "datasets"}
DISTRIBUTION = "llm-lmstudio-mlx"  # pyproject.toml's name: the metadata of the install under test


def closure(name: str, extras: frozenset = frozenset()) -> dict[str, str]:
    """Every distribution `pip install name[extras]` brings in, each mapped to the one that asked for it.
    Markers are evaluated for this interpreter and platform; a dependency's extras are taken only when asked for."""
    found: dict[str, str] = {}
    walked = set()
    pending = [(canonicalize_name(name), frozenset(extras), "")]
    while pending:
        current, wanted, parent = pending.pop()
        if (current, wanted) in walked:
            continue
        walked.add((current, wanted))
        found.setdefault(current, parent)
        try:
            requires = metadata.distribution(current).requires or []
        except metadata.PackageNotFoundError:
            pytest.fail(f"{current} (required by {parent}) is not installed, so its dependencies cannot be checked")
        for line in requires:
            requirement = Requirement(line)
            # "" stands for no extra: plain requirements match it, extra-only ones need their extra asked for.
            if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in {"", *wanted}):
                continue
            pending.append((canonicalize_name(requirement.name), frozenset(requirement.extras), current))
    return found


def chain(found: dict[str, str], name: str) -> str:
    links = [name]
    while found.get(links[-1]):
        links.append(found[links[-1]])
    return " <- ".join(links)


def test_the_default_install_brings_no_pandas_pyarrow_or_datasets():
    found = closure(DISTRIBUTION)
    assert {"llm", "mlx-lm", "lmstudio"} <= set(found)  # the walk really followed the runtime requirements
    heavy = sorted(HEAVY & set(found))
    assert not heavy, "; ".join(chain(found, name) for name in heavy)


def test_the_mlx_embeddings_extra_is_where_they_come_from():
    # The same walk with the extra taken finds them, so the check above can fail.
    found = closure(DISTRIBUTION, frozenset({"mlx-embeddings"}))
    assert HEAVY <= set(found), chain(found, "mlx-embeddings")
