"""What a release must hold: the Apache-2.0 LICENSE; every vendored data file listed in THIRD_PARTY.md with a licence
that lets anyone redistribute it, commercially too; one version, in pyproject.toml, heading CHANGELOG.md; and an sdist
that carries what its tests need and no caches, build outputs or dropped data (scripts/release_check.py's rules)."""

import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import release_check  # noqa: E402

# Where vendored or generated data lives; every file there that is not our code or its notes must be listed.
DATA_FOLDERS = ("llm_lmstudio/data", "benchmarks/data/router", "tests/recorded")
PERMISSIVE = ("Apache-2.0", "MIT", "this repository's licence", "interface facts")
NON_COMMERCIAL = re.compile(r"\bNC\b|non-?commercial|BY-NC|research (use )?only", re.IGNORECASE)


def pyproject_version() -> str:
    return re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)


def third_party_rows() -> dict[str, str]:
    """file name -> the licence cell of its row in THIRD_PARTY.md's tables."""
    rows = {}
    for line in (ROOT / "THIRD_PARTY.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("| `") else []
        if len(cells) == 3:
            for name in re.findall(r"`([^`]+)`", cells[0]):
                rows[name] = cells[2]
    return rows


def test_license_is_the_apache_2_0_text_pyproject_declares():
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text and "END OF TERMS AND CONDITIONS" in text
    assert re.search(r'^license = "Apache-2.0"$', (ROOT / "pyproject.toml").read_text(), re.M)


def test_every_vendored_data_file_is_listed_with_a_licence_that_allows_commercial_redistribution():
    rows = third_party_rows()
    for folder in DATA_FOLDERS:
        for path in sorted((ROOT / folder).iterdir()):
            if path.is_dir() or path.suffix in (".py", ".pyc") or path.name == "SOURCES.md":
                continue
            assert path.name in rows, f"{folder}/{path.name} is not listed in THIRD_PARTY.md"
            licence = rows[path.name]
            assert any(p in licence for p in PERMISSIVE), f"{path.name}: licence {licence!r}"
            assert not NON_COMMERCIAL.search(licence), f"{path.name}: licence {licence!r}"
    assert not NON_COMMERCIAL.search("Apache-2.0 (the repository's `LICENSE`)")
    assert NON_COMMERCIAL.search("CC BY-NC 4.0")  # the rule catches the licence the repository dropped


def test_changelog_is_keep_a_changelog_with_the_one_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.M)
    assert headings[0] == ("Unreleased", "")
    version, date = headings[1]
    assert version == pyproject_version() and date
    assert f"[{version}]: " in text and "[Unreleased]: " in text
    sections = re.findall(r"^### (\w+)$", text.split(f"## [{version}]")[1], re.M)
    assert set(sections) <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"} and "Added" in sections


def test_the_distribution_name_is_the_same_everywhere():
    name = re.search(r'^name = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert name == release_check.DISTRIBUTION == "llm-lmstudio-mlx"
    from llm_lmstudio.core import installation as install_check
    from llm_lmstudio.mlx import embeddings as mlx_embed

    assert install_check.DISTRIBUTION == name and f"'{name}[mlx-embeddings]'" in mlx_embed.INSTALL_COMMAND
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        # an install line naming the other plugin's distribution would install the wrong plugin
        assert not re.search(r"(llm|pip) install[^\n`]*\bllm-lmstudio\b(?!-mlx)", doc.read_text()), doc.name


@pytest.mark.slow  # builds an sdist in an isolated build environment (pip fetches setuptools)
def test_the_sdist_holds_the_tests_and_none_of_the_caches(tmp_path):
    # The tree as a developer has it (minus the big folders), with a decoy of each thing an sdist must not carry.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", ".demo-venv", ".cache", "*.egg-info"))
    decoys = ["tests/__pycache__/decoy.cpython-311.pyc", "build/lib/llm_lmstudio/decoy.py", "benchmarks/out/decoy.json",
              ".cache/models/decoy.bin", ".venv/decoy.txt", "llm_lmstudio/__pycache__/decoy.pyc",
              "benchmarks/data/router/wizardlm_testset.jsonl", "stray.egg-info/PKG-INFO"]
    for decoy in decoys:
        (src / decoy).parent.mkdir(parents=True, exist_ok=True)
        (src / decoy).write_text("decoy")
    built = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path / "dist"), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [sdist] = (tmp_path / "dist").glob("*.tar.gz")
    assert sdist.name == f"llm_lmstudio_mlx-{pyproject_version()}.tar.gz"
    with tarfile.open(sdist) as archive:
        names = {m.name.split("/", 1)[1] for m in archive.getmembers() if m.isfile() and "/" in m.name}
    # MANIFEST.in leaves out every decoy but the data file inside a grafted folder, which the release check catches
    assert {d for d in decoys if d in names} == {"benchmarks/data/router/wizardlm_testset.jsonl"}
    assert release_check.sdist_problems(sdist) == ["carries benchmarks/data/router/wizardlm_testset.jsonl"]
    assert {"tests/conftest.py", "tests/fake_lmstudio/__main__.py", "tests/recorded/v0_models.json",
            "tests/test_release.py", "LICENSE", "THIRD_PARTY.md"} <= names
