"""Exemplar vectors for the router's embedding classifier: a per-model store keyed by each text's digest,
the packaged all-MiniLM-L6-v2 vectors, and the softmax head fitted on them. It never calls a model itself."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from llm_lmstudio.core import files

PACKAGED_DIR = Path(__file__).parent.parent / "data"
# Vectors of the shipped exemplars computed with all-MiniLM-L6-v2 (Apache-2.0 weights) by
# benchmarks/eval_router.py --write-exemplars; any model whose id names that model reuses them.
PACKAGED = {"all-minilm-l6-v2": PACKAGED_DIR / "router_vectors_all-minilm-l6-v2.npz"}
PACKAGED_HEADS = {"all-minilm-l6-v2": PACKAGED_DIR / "router_head_all-minilm-l6-v2.npz"}
_FAMILY = {"all-minilm-l6-v2": re.compile(r"all-minilm-l6|minilm-l6-v2|(^|/)minilm$")}
_STORE_FORMAT = 1


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def family(model_id: str) -> str | None:
    """The packaged vector set a model id names, if any ("mlx/minilm", "lmstudio/.../all-minilm-l6-v2")."""
    lowered = model_id.lower()
    for name, pattern in _FAMILY.items():
        if pattern.search(lowered):
            return name
    return None


def _slug(model_id: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[:60]
    return f"{readable}-{hashlib.sha256(model_id.encode()).hexdigest()[:8]}"


def _read(path: Path) -> dict:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            keys, vectors = data["keys"], data["vectors"]
    except (OSError, ValueError, KeyError, EOFError):
        return {}  # a torn or foreign file is rebuilt, never trusted
    if vectors.ndim != 2 or len(keys) != len(vectors):
        return {}
    return {str(k): v for k, v in zip(keys, vectors.astype(np.float32))}


def _atomic_savez(path: Path, **arrays) -> None:
    """np.savez, write-then-rename, so a concurrent `llm` process never reads half a file."""
    import numpy as np

    with files.replacing(path) as temporary, temporary.open("wb") as handle:
        np.savez(handle, **arrays)


def write_store(path: Path, table: Mapping[str, Sequence[float]], dtype: str = "float32") -> None:
    """Writes {text key: vector} to `path`."""
    import numpy as np

    keys = sorted(table)
    vectors = np.asarray([table[k] for k in keys], dtype=dtype) if keys else np.zeros((0, 0), dtype=dtype)
    _atomic_savez(path, keys=np.asarray(keys), vectors=vectors, format=np.asarray(_STORE_FORMAT))


def read_head(path: Path, digest: str):
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["digest"]) != digest:
                return None
            return data["weights"].astype(np.float32), data["bias"].astype(np.float32)
    except (OSError, ValueError, KeyError, EOFError):
        return None


def write_head(path: Path, digest: str, weights, bias) -> None:
    _atomic_savez(path, digest=digest, weights=weights, bias=bias)


class VectorStore:
    """The vectors one embedding model gave for exemplar texts, keyed by text digest: changing the
    exemplars keeps every vector whose text did not change. Seeded from the packaged set when the model
    is one of the packaged family, so those exemplars cost no embedding call at all."""

    def __init__(self, model_id: str, cache_dir: str | os.PathLike | None):
        self.model_id = model_id
        self.path = Path(cache_dir) / "router-vectors" / f"{_slug(model_id)}.npz" if cache_dir else None
        self.packaged: dict = {}
        self.family = family(model_id)
        if self.family and PACKAGED[self.family].is_file():
            self.packaged = _read(PACKAGED[self.family])
        self.table: dict = {}
        self.reload()

    def reload(self) -> None:
        if self.path is not None and self.path.is_file():
            self.table = _read(self.path)

    def head(self, digest: str):
        """The head fitted on exactly these exemplars (by digest): this model's own, else the packaged one."""
        paths = [self.path.with_suffix(".head.npz")] if self.path is not None else []
        if self.family:
            paths.append(PACKAGED_HEADS[self.family])
        for path in paths:
            found = read_head(path, digest)
            if found is not None:
                return found
        return None

    def save_head(self, digest: str, weights, bias) -> None:
        if self.path is not None:
            try:
                write_head(self.path.with_suffix(".head.npz"), digest, weights, bias)
            except OSError:
                pass

    def get(self, text: str):
        key = text_key(text)
        found = self.table.get(key)
        return found if found is not None else self.packaged.get(key)

    def missing(self, texts: Iterable[str]) -> list[str]:
        return list(dict.fromkeys(t for t in texts if self.get(t) is None))

    def add(self, texts: Sequence[str], vectors: Sequence[Sequence[float]]) -> None:
        import numpy as np

        for text, vector in zip(texts, vectors):
            self.table[text_key(text)] = np.asarray(vector, dtype=np.float32)
        if self.path is not None:
            try:
                write_store(self.path, self.table)
            except OSError:
                pass  # no store is slower next time, not wrong


# ----------------------------------------------------------------------------------------- the head


def balanced_weights(labels: Sequence[str], groups: Sequence[str] | None = None):
    """Sample weights giving every label the same total weight, and within a label every group
    (source) the same share: one large source must not decide what a task looks like."""
    import numpy as np
    from collections import Counter

    groups = groups if groups is not None else ["-"] * len(labels)
    cell = Counter(zip(labels, groups))
    per_label = Counter()
    for label, _ in cell:
        per_label[label] += 1
    weights = np.asarray([1.0 / (cell[(l, g)] * per_label[l]) for l, g in zip(labels, groups)], dtype=np.float64)
    return weights * len(labels) / weights.sum()


def fit_softmax(matrix, targets, n_classes: int, weights=None, l2: float = 1e-3, steps: int = 300):
    """Multinomial logistic regression by Nesterov-accelerated gradient descent (deterministic, NumPy only).
    Returns (W, b) with logits = matrix @ W + b."""
    import numpy as np

    x = np.asarray(matrix, dtype=np.float32)
    n, d = x.shape
    y = np.zeros((n, n_classes), dtype=np.float32)
    y[np.arange(n), np.asarray(targets)] = 1.0
    w = np.ones(n, dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
    w = w / w.sum()
    # step 1/L: the softmax loss's curvature is at most 1/2 of the largest eigenvalue of X^T diag(w) X
    xw = x * np.sqrt(w)[:, None]
    lipschitz = 0.5 * (np.linalg.norm(xw, 2) ** 2 + 1.0) + l2
    step = 1.0 / lipschitz
    params = np.zeros((d + 1, n_classes), dtype=np.float32)
    velocity = params.copy()
    xb = np.hstack([x, np.ones((n, 1), dtype=np.float32)])
    for t in range(steps):
        look = params + (t / (t + 3)) * velocity
        logits = xb @ look
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        grad = xb.T @ ((probs - y) * w[:, None])
        grad[:-1] += l2 * look[:-1]  # the bias is not shrunk
        new = look - step * grad
        velocity = new - params
        params = new
    return params[:-1].astype(np.float32), params[-1].astype(np.float32)
