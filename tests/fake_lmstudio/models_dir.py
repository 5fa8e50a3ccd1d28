"""Lays out an LM Studio-style models folder (`<publisher>/<model>/` + `lmstudio-meta.json`) from generated tiny models.
Links files from the model factory's cache; it must never download anything except via `minilm_path()`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests import model_factory
from tests.model_factory import TinyModelSpec

PUBLISHER = "test-org"

# `tiny-vision` is a tiny llama behind a "vlm" entry, not a real mlx-vlm model: the server validates and
# decodes each image with Pillow and puts a text marker ("<image 1: PNG 4x3>") in the prompt instead.
# name -> (spec, LM Studio metadata). Metadata a real LM Studio would read from its model catalog.
CHAT_MODELS = {
    "tiny-llama": (TinyModelSpec(arch="llama"), {"params_string": "1M"}),
    "tiny-qwen-tools": (
        TinyModelSpec(arch="qwen2", template="tools", seed=1),
        {"trained_for_tool_use": True, "params_string": "1M"},
    ),
    "tiny-reasoner": (
        TinyModelSpec(arch="qwen2", seed=2),
        {"reasoning": True, "params_string": "1M", "display_name": "Tiny Reasoner"},
    ),
    "tiny-vision": (
        TinyModelSpec(arch="llama", seed=3),
        {"type": "vlm", "vision": True, "params_string": "1M", "display_name": "Tiny Vision"},
    ),
}
EMBEDDING_NAME = "text-embedding-all-minilm-l6-v2"
EMBEDDING_META = {
    "type": "embeddings",
    "arch": "bert",
    "display_name": "All MiniLM L6 v2",
    "params_string": "22M",
    "max_context_length": 512,
}


def _link_model(source: Path, target: Path, meta: dict) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name.startswith("."):
            continue
        link = target / item.name
        if link.is_symlink() or link.exists():
            if link.is_symlink() and Path(os.readlink(link)) == item.resolve():
                continue
            link.unlink()
        link.symlink_to(item.resolve(), target_is_directory=item.is_dir())
    (target / "lmstudio-meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def build_models_dir(root: Path, *, include_minilm: bool = True) -> Path:
    """Populate `root` with the stand-in's models and return it. MiniLM is skipped if it cannot be fetched."""
    root = Path(root)
    for name, (spec, meta) in CHAT_MODELS.items():
        _link_model(model_factory.cached_tiny_model(name, spec), root / PUBLISHER / name, meta)
    if include_minilm:
        try:
            source = model_factory.minilm_path()
        except model_factory.MiniLMUnavailable:
            source = None
        if source is not None:
            _link_model(source, root / PUBLISHER / EMBEDDING_NAME, EMBEDDING_META)
    return root
