"""README.md's examples are run: every command of its fenced shell blocks goes through llm (in-process, with click's
CliRunner) against a stand-in that serves the model names the README uses; the few that cannot run in a test are
named below with the reason. Its router configuration is checked by the router itself. The guide cannot drift."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner
from llm.cli import cli

from tests import model_factory
from tests.fake_lmstudio import FakeLMStudio
from tests.fake_lmstudio.models_dir import CHAT_MODELS, EMBEDDING_META, EMBEDDING_NAME

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
LIMIT = 12_000  # characters: a user guide, the reference lives in docs/

# Commands that cannot run here, each with the reason. Every one must still be in the README (checked below).
NOT_RUN = {
    "scripts/demo": "builds a fresh virtualenv and installs everything (minutes); tests/test_demo.py runs scripts/demo.py",
    "scripts/test": "the whole suite, of which this test is a part",
    "llm install llm-lmstudio-mlx": "installs from PyPI; scripts/release-check installs the built wheel with `llm install`",
    "llm install 'llm-lmstudio-mlx[mlx-embeddings]'": "installs from PyPI, as above; the test extra installs the same extra",
}

# README model names served by the README's own stand-in: folder -> (the tiny model behind it, what LM Studio's
# catalog says of the real one). The embedding models are MiniLM under both names; the router prefers the one it
# ships vectors for, as it would on a machine with both.
SERVED = {
    "qwen/qwen3-4b": ("tiny-qwen-tools", {"max_context_length": 32768}),
    "qwen/qwen3-vl-8b": ("tiny-vision", {}),
}
EMBEDDINGS = {
    "nomic-ai/text-embedding-nomic-embed-text-v1.5": {"key": "text-embedding-nomic-embed-text-v1.5"},
    f"test-org/{EMBEDDING_NAME}": {},
}
ANSWER = "A short answer."  # every chat prediction's, so that each ends as a real answer does (not cut at max_tokens)
MLX_FOLDER = "models/Qwen2.5-0.5B-Instruct-4bit"  # under $HOME, as in `llm lmstudio mlx add ~/models/...`

# What some commands must print, beyond exiting 0 (regular expressions, searched in the output).
EXPECT = {
    "llm models -q lmstudio": r"lmstudio/qwen/qwen3-4b\b.*\n(.*\n)*.*lmstudio/qwen/qwen3-vl-8b",
    "llm embed-models": r"lmstudio/text-embedding-nomic-embed-text-v1\.5",
    "llm embed -m lmstudio/text-embedding-nomic-embed-text-v1.5 -c hello": r"^\[-?\d",
    "llm lmstudio mlx list": r"qwen-small",
    "llm lmstudio status": r"reachable .*models: \d+ downloaded",
    "llm lmstudio ps": r"qwen/qwen3-4b",
    "llm lmstudio route 'Prove that sqrt(2) is irrational' --json": r'"task": "analysis"',
    "llm lmstudio cache stats": r"1 answer",
}


def shell_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(line number, commands) of each ```bash block; a command is a line without its comment."""
    blocks = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        if match.group(1) not in ("bash", "sh", "shell"):
            continue
        commands = [_requote(line) for line in match.group(2).splitlines() if shlex.split(line, comments=True)]
        blocks.append((text[: match.start()].count("\n") + 1, commands))
    return blocks


def _requote(line: str) -> str:
    # The command as the README spells it, without its comment and with its own quoting kept.
    return " ".join(w if w in ("|", "&&") or re.fullmatch(r"[\w@%+=:,./~-]+", w) else shlex.quote(w) for w in _words(line))


def _words(line: str) -> list[str]:
    # shell words and operators (`|`, `&&`) apart, quotes removed, the comment dropped
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def yaml_blocks(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^```yaml\n(.*?)^```", text, re.M | re.S)]


README_TEXT = README.read_text()
BLOCKS = shell_blocks(README_TEXT)


def test_readme_is_a_guide_that_starts_with_the_demo_and_the_test_command():
    assert len(README_TEXT) <= LIMIT
    first_line, first = BLOCKS[0]
    assert first == ["scripts/demo", "scripts/test"]
    assert first_line <= 5  # right under the title and one line saying what they need
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci[0] == "scripts/test -q"  # CI runs the README's test command first


def test_every_command_left_unrun_is_still_in_the_readme():
    commands = {command for _, block in BLOCKS for command in block}
    assert set(NOT_RUN) <= commands, set(NOT_RUN) - commands
    assert set(EXPECT) <= commands, set(EXPECT) - commands


def test_every_readme_link_to_a_file_points_at_one():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README_TEXT):
        if not target.startswith(("http://", "https://")):
            assert (REPO / target).exists(), target


def _link_folder(source: Path, target: Path, meta: dict | None = None) -> None:
    target.mkdir(parents=True)
    for item in source.iterdir():
        if not item.name.startswith("."):
            (target / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
    if meta is not None:
        (target / "lmstudio-meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def minilm():
    try:
        return model_factory.minilm_path()
    except model_factory.MiniLMUnavailable:
        return None


@pytest.fixture(scope="module")
def readme_lmstudio(tmp_path_factory, minilm):
    """A stand-in serving the README's model names (tiny generated models behind them)."""
    root = tmp_path_factory.mktemp("readme-models")
    for folder, (tiny, catalog) in SERVED.items():
        spec, meta = CHAT_MODELS[tiny]
        _link_folder(model_factory.cached_tiny_model(tiny, spec), root / folder, {**meta, **catalog})
    if minilm is not None:
        for folder, catalog in EMBEDDINGS.items():
            _link_folder(minilm, root / folder, {**EMBEDDING_META, **catalog})
    server = FakeLMStudio(root).start()
    yield server
    server.stop()


@pytest.fixture
def shell(readme_lmstudio, minilm, user_path, tmp_path, monkeypatch):
    """A working folder with the files the examples name, an llm user folder, and the README's stand-in."""
    readme_lmstudio.reset()
    readme_lmstudio.script(*[ANSWER] * 20)
    monkeypatch.setenv("LMSTUDIO_BASE_URL", readme_lmstudio.base_url)
    home = Path(tmp_path / "home")
    spec, _ = CHAT_MODELS["tiny-llama"]
    _link_folder(model_factory.cached_tiny_model("tiny-llama", spec), home / MLX_FOLDER)
    (user_path / "model_options.json").write_text(json.dumps({"mlx/qwen-small": {"max_tokens": 8}}))
    work = tmp_path / "work"
    (work / "notes").mkdir(parents=True)
    (work / "app.py").write_text("def add(a, b):\n    return a + b\n")
    (work / "notes" / "logs.md").write_text("Rotate the logs with logrotate, weekly.\n")
    (work / "notes" / "backup.md").write_text("Back up the database every night.\n")
    from PIL import Image

    Image.new("RGB", (4, 3), (200, 30, 30)).save(work / "photo.jpg")
    monkeypatch.chdir(work)
    return Shell(home, minilm is not None)


class Shell:
    """Runs the README's command lines: `llm ...`, `cat FILE | llm ...`, `A && B`; `~/` is $HOME."""

    def __init__(self, home: Path, has_embeddings: bool):
        self.home = home
        self.has_embeddings = has_embeddings

    def run(self, line: str) -> str:
        words = [str(self.home / w[2:]) if w.startswith("~/") else w for w in _words(line)]
        output = ""
        for command in _split(words, "&&"):
            stdin = None
            if "|" in command:
                source, command = _split(command, "|")
                assert source[0] == "cat" and len(source) == 2, f"no way to run {line!r} here: add it to NOT_RUN"
                stdin = Path(source[1]).read_text()
            assert command[0] == "llm", f"no way to run {line!r} here: add it to NOT_RUN with the reason"
            result = CliRunner().invoke(cli, command[1:], input=stdin, catch_exceptions=False)
            assert result.exit_code == 0, f"{line!r} exited {result.exit_code}:\n{result.output}"
            output += result.output
        return output


def _split(words: list[str], operator: str) -> list[list[str]]:
    parts, current = [], []
    for word in words:
        if word == operator:
            parts.append(current)
            current = []
        else:
            current.append(word)
    return [*parts, current]


@pytest.mark.parametrize("line, block", [(line, block) for line, block in BLOCKS], ids=[f"line{line}" for line, _ in BLOCKS])
def test_readme_shell_block_runs(shell, line, block):
    if any("embed" in command for command in block) and not shell.has_embeddings:
        pytest.skip("the embedding examples need the real all-MiniLM-L6-v2 weights, which could not be fetched")
    ran = 0
    for command in block:
        if command in NOT_RUN:
            continue
        output = shell.run(command)
        ran += 1
        if command in EXPECT:
            assert re.search(EXPECT[command], output, re.M), f"{command!r} printed:\n{output}"
    assert ran or all(command in NOT_RUN for command in block)


@pytest.mark.parametrize("config", yaml_blocks(README_TEXT))
def test_readme_router_configuration_is_accepted_by_the_router(shell, user_path, config):
    (user_path / "lmstudio-router.yaml").write_text(config)
    output = shell.run("llm lmstudio route 'Write a Python function that reverses a list' --json")
    decision = json.loads(output)
    assert decision["task"] == "coding"
    broken = config.replace("prefer:", "prefer: 3\nunused:")
    (user_path / "lmstudio-router.yaml").write_text(broken)
    result = CliRunner().invoke(cli, ["lmstudio", "route", "hello"])
    assert result.exit_code == 1 and "lmstudio-router.yaml" in result.output
