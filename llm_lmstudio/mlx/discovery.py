"""Finds native MLX models on disk: LM Studio's models folder, the Hugging Face cache, user-added paths.
Reads small files only (config.json, *.index.json, directory listings, file sizes); never imports mlx or loads weights."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from llm_lmstudio.core import files
from llm_lmstudio.core import settings

USER_FILE = "mlx-models.json"

# model_type values of encoder models that mlx-embeddings runs and mlx-lm does not.
EMBEDDING_MODEL_TYPES = frozenset(
    {
        "bert",
        "roberta",
        "xlm-roberta",
        "xlm_roberta",
        "distilbert",
        "mpnet",
        "modernbert",
        "nomic_bert",
        "new",  # gte-*-v1.5 / Alibaba "NewModel"
        "siglip",
    }
)
# Files sentence-transformers writes next to a model; their presence marks an embedding model
# even when the backbone is a decoder (Qwen3-Embedding ships as Qwen3ForCausalLM).
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")

_NAME_CHARS = re.compile(r"[^a-z0-9._-]+")
_VALID_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class LocalModelError(ValueError):
    """A path or name given by the user is unusable; the message says why in one line."""


@dataclass(frozen=True)
class LocalModel:
    """One native MLX model folder, as found on disk."""

    name: str  # registered as mlx/<name>
    path: Path
    kind: str  # "chat" | "embedding"
    arch: str  # config.json model_type, e.g. "llama"
    size_bytes: int  # weights on disk
    source: str  # "lmstudio" | "hf-cache" | "user"
    problem: str | None = None  # set when a user-added folder has gone missing or broken

    @property
    def model_id(self) -> str:
        return f"mlx/{self.name}"

    def to_json(self) -> dict:
        """The row `llm lmstudio ls --json` and `mlx list --json` print (documented in docs/commands.md)."""
        return {
            "model_id": self.model_id,
            "name": self.name,
            "kind": self.kind,
            "arch": self.arch,
            "size_bytes": self.size_bytes,
            "source": self.source,
            "path": str(self.path),
        }


@dataclass(frozen=True)
class _Candidate:
    path: Path
    publisher: str | None
    repo: str
    source: str
    kind: str
    arch: str
    size_bytes: int


def inspect_folder(path: Path) -> tuple[str, str, int]:
    """(kind, arch, size_bytes) of an MLX model folder, or LocalModelError saying what is wrong with it."""
    if not path.is_dir():
        raise LocalModelError(f"{path} is not a folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        if any(path.glob("*.gguf")):
            raise LocalModelError(f"{path} holds GGUF weights; native MLX needs config.json + .safetensors")
        raise LocalModelError(f"{path} has no config.json, so it is not an MLX model folder")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise LocalModelError(f"{config_file} is unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise LocalModelError(f"{config_file} is not a JSON object")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise LocalModelError(f"{path} has no .safetensors weights")
    for index_file in path.glob("*.safetensors.index.json"):
        try:
            shards = set(json.loads(index_file.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError) as exc:
            raise LocalModelError(f"{index_file} is unreadable: {exc}") from None
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise LocalModelError(f"{path} is incomplete: {len(missing)} weight shard(s) missing, e.g. {missing[0]}")
    size = 0
    for weight in weights:
        try:
            size += weight.stat().st_size  # follows the HF cache's blob symlinks
        except OSError:
            raise LocalModelError(f"{weight} is a broken link (interrupted download?)") from None
    arch = str(config.get("model_type") or "unknown")
    return _classify(path, config), arch, size


# What transformers' AutoTokenizer (which mlx-lm and mlx-embeddings load with) builds a tokenizer from: a `tokenizers`
# file, a sentencepiece or tiktoken model, BPE or WordPiece vocabularies, or the model's own tokenizer code.
TOKENIZER_FILES = ("tokenizer.json", "*.model", "*.tiktoken", "vocab.json", "vocab.txt", "tokenization_*.py")


def tokenizer_problem(path: Path) -> str | None:
    """Why the folder cannot give a tokenizer (one line), or None. Weights without one cannot be prompted."""
    if any(next(iter(path.glob(pattern)), None) is not None for pattern in TOKENIZER_FILES):
        return None
    return (f"{path} has no tokenizer: none of tokenizer.json, tokenizer.model, vocab.json or vocab.txt is there; "
            "copy the tokenizer files (with tokenizer_config.json) from the model's repository")


def _classify(path: Path, config: dict) -> str:
    if any((path / name).is_file() for name in SENTENCE_TRANSFORMERS_FILES):
        return "embedding"
    model_type = str(config.get("model_type") or "").lower()
    if model_type in EMBEDDING_MODEL_TYPES:
        return "embedding"
    architectures = [str(a) for a in config.get("architectures") or []]
    generative = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")
    if architectures and not any(a.endswith(generative) for a in architectures):
        if any(a.endswith(("Model", "ForMaskedLM", "ForSentenceEmbedding")) for a in architectures):
            return "embedding"
    return "chat"


def _slug(text: str) -> str:
    return _NAME_CHARS.sub("-", text.lower()).strip("-") or "model"


# ---------------------------------------------------------------- sources


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved the way huggingface_hub resolves it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _lmstudio_candidates(root: Path) -> list[_Candidate]:
    # LM Studio keeps <publisher>/<repo>/; a model dropped straight into the root is accepted too.
    found = []
    for first in _subdirs(root):
        if (first / "config.json").is_file():
            found.append(_try_candidate(first, None, first.name, "lmstudio"))
            continue
        for second in _subdirs(first):
            found.append(_try_candidate(second, first.name, second.name, "lmstudio"))
    return [c for c in found if c is not None]


def _hf_snapshot(repo_dir: Path) -> Path | None:
    snapshots = repo_dir / "snapshots"
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        try:
            revision = ref.read_text().strip()
        except OSError:
            revision = ""
        if revision and (snapshots / revision).is_dir():
            return snapshots / revision
    candidates = _subdirs(snapshots)
    if not candidates:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime)


def _hf_candidates(root: Path) -> list[_Candidate]:
    found = []
    for repo_dir in _subdirs(root):
        if not repo_dir.name.startswith("models--"):
            continue
        _, _, rest = repo_dir.name.partition("models--")
        publisher, _, repo = rest.partition("--")
        if not repo:
            publisher, repo = None, publisher
        snapshot = _hf_snapshot(repo_dir)
        if snapshot is not None:
            candidate = _try_candidate(snapshot, publisher, repo, "hf-cache")
            if candidate is not None:
                found.append(candidate)
    return found


def _try_candidate(path: Path, publisher: str | None, repo: str, source: str) -> _Candidate | None:
    # Folders that are not (complete) MLX models are simply not native models: GGUF downloads,
    # PyTorch-only repos and interrupted downloads all land here.
    if not (path / "config.json").is_file():
        return None
    try:
        kind, arch, size = inspect_folder(path)
    except LocalModelError:
        return None
    return _Candidate(path, publisher, repo, source, kind, arch, size)


# ---------------------------------------------------------------- user-added paths


def _user_file() -> Path:
    return settings.plugin_dir() / USER_FILE


def _backup_file() -> Path:
    return settings.plugin_dir() / (USER_FILE + ".bak")  # the registry before its last change


def _registry_shape(data) -> bool:
    models = data.get("models") if isinstance(data, dict) else None
    return isinstance(models, dict) and all(isinstance(v, dict) and isinstance(v.get("path"), str) for v in models.values())


def _read_user_entries() -> dict[str, dict]:
    """The registered models. A damaged registry is moved aside (warned) and the version before restored, so that
    the next `mlx add` never writes over models it could not read."""
    data = files.read_json(_user_file(), _registry_shape, backup=_backup_file(),
                           then="no earlier version to restore: add its models again with `llm lmstudio mlx add`")
    return {str(k): v for k, v in data["models"].items()} if data else {}


def _write_user_entries(entries: dict[str, dict]) -> None:
    text = json.dumps({"models": entries}, indent=2, sort_keys=True) + "\n"
    files.write_text(_user_file(), text, backup=_backup_file())


def _user_models(entries: dict[str, dict]) -> list[LocalModel]:
    result = []
    for name, entry in sorted(entries.items()):
        path = Path(entry["path"])
        try:
            kind, arch, size = inspect_folder(path)
            problem = None
        except LocalModelError as exc:
            # Keep listing it so that running it gives a clear error instead of "Unknown model".
            kind, arch, size = entry.get("kind") or "chat", entry.get("arch") or "unknown", 0
            problem = str(exc)
        result.append(LocalModel(name, path, kind, arch, size, "user", problem))
    return result


def _default_name(path: Path) -> str:
    # An HF snapshot folder is named after a commit hash; name it after its repo instead.
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return _slug(path.parent.parent.name.split("--")[-1])
    return _slug(path.name)


def add(path: str | os.PathLike, name: str | None = None) -> LocalModel:
    """Register a model folder by path; returns it as discovered. Raises LocalModelError."""
    folder = Path(path).expanduser().resolve()
    kind, arch, size = inspect_folder(folder)
    problem = tokenizer_problem(folder)
    if problem:
        raise LocalModelError(problem)
    name = name if name is not None else _default_name(folder)
    if not _VALID_USER_NAME.match(name):
        raise LocalModelError(f"invalid name {name!r}: use letters, digits, '.', '_' and '-'")
    name = name.lower()  # names are lower-case, as discovered ones are: mlx/TL and mlx/tl are one model
    entries = _read_user_entries()
    existing_name = next((key for key in entries if key.lower() == name), None)
    existing = entries.pop(existing_name) if existing_name is not None else None
    if existing is not None and Path(existing["path"]) != folder:
        raise LocalModelError(
            f"mlx/{name} already points at {existing['path']}; remove it first or choose another --name"
        )
    if existing is None:
        # A name discovery gave a model in LM Studio's folder or the HF cache stays that model's: taking it would
        # rename that model and silently switch the weights every alias, script and `llm -c` using it runs.
        found = next((m for m in discover() if m.name == name and m.path.resolve() != folder), None)
        if found is not None:
            where = "LM Studio's models folder" if found.source == "lmstudio" else "the Hugging Face cache"
            raise LocalModelError(f"mlx/{name} is already the name of {found.path} (in {where}): choose another --name")
    entries[name] = {"path": str(folder), "kind": kind, "arch": arch}
    _write_user_entries(entries)
    _MEMO.clear()
    return LocalModel(name, folder, kind, arch, size, "user")


def remove(name: str) -> Path:
    """Forget a user-added model; returns the path it pointed at. Raises LocalModelError."""
    if name.startswith("mlx/"):
        name = name[len("mlx/") :]
    entries = _read_user_entries()
    name = next((key for key in entries if key.lower() == name.lower()), name.lower())
    if name not in entries:
        found = next((m for m in discover() if m.name == name), None)
        if found is not None:
            raise LocalModelError(
                f"mlx/{name} was found in {found.source} ({found.path}), not added by path; delete it there instead"
            )
        raise LocalModelError(f"no user-added MLX model named {name!r} (see `llm lmstudio mlx list`)")
    entry = entries.pop(name)
    _write_user_entries(entries)
    _MEMO.clear()
    return Path(entry["path"])


# ---------------------------------------------------------------- discovery

_MEMO: dict[tuple, list[LocalModel]] = {}


def _mtime(path: Path):
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _signature(lmstudio_root: Path, hf_root: Path) -> tuple:
    # llm re-runs register_models on every model lookup, so discovery is memoised per process.
    # These stats notice a model folder (or HF snapshot) appearing or disappearing, or a file
    # landing in an LM Studio model folder (a download finishing), without reading any file.
    stamps = [(str(p), _mtime(p)) for p in (lmstudio_root, hf_root, _user_file())]
    for publisher in _subdirs(lmstudio_root):
        stamps.append((str(publisher), _mtime(publisher)))
        stamps.extend((str(repo), _mtime(repo)) for repo in _subdirs(publisher))
    for repo_dir in _subdirs(hf_root):
        stamps.append((str(repo_dir), _mtime(repo_dir / "snapshots")))
    return tuple(stamps)


def discover() -> list[LocalModel]:
    """Every native MLX model: user-added first, then LM Studio's folder, then the HF cache.

    Names are unique: the folder name lower-cased (`qwen3-0.6b-4bit`); when two models share
    one, the later in that order is qualified with its publisher (`mlx-community--qwen3-0.6b-4bit`).
    The same publisher/repo in both LM Studio and the HF cache is listed once, from LM Studio."""
    lmstudio_root = settings.lmstudio_models_dir()
    hf_root = hf_cache_dir()
    key = _signature(lmstudio_root, hf_root)
    cached = _MEMO.get(key)
    if cached is not None:
        return list(cached)

    result = _user_models(_read_user_entries())
    taken = {m.name for m in result}
    seen_repos: set[tuple[str, str]] = set()
    user_paths = {m.path.resolve() for m in result}
    for candidate in _lmstudio_candidates(lmstudio_root) + _hf_candidates(hf_root):
        identity = ((candidate.publisher or "").lower(), candidate.repo.lower())
        if identity in seen_repos or candidate.path.resolve() in user_paths:
            continue
        seen_repos.add(identity)
        name = _slug(candidate.repo)
        if name in taken and candidate.publisher:
            name = f"{_slug(candidate.publisher)}--{_slug(candidate.repo)}"
        base, counter = name, 2
        while name in taken:
            name = f"{base}-{counter}"
            counter += 1
        taken.add(name)
        result.append(
            LocalModel(name, candidate.path, candidate.kind, candidate.arch, candidate.size_bytes, candidate.source)
        )
    _MEMO.clear()
    _MEMO[key] = result
    return list(result)


def find(name: str) -> LocalModel | None:
    """The discovered model called `name` (with or without the `mlx/` prefix; in any case)."""
    if name.startswith("mlx/"):
        name = name[len("mlx/") :]
    return next((m for m in discover() if m.name.lower() == name.lower()), None)
