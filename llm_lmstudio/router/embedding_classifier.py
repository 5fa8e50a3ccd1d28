"""The embedding classifier: the shipped exemplars (and a user's), a softmax head or per-task centroids over their
vectors, combined with the keyword classifier's evidence. It never calls a model itself: `embed` is given to it."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from llm_lmstudio.router.classification import KeywordClassifier, TaskDecision, prompt_view

EXEMPLARS_FILE = Path(__file__).parent.parent / "data" / "router_exemplars.json"

Embed = Callable[[list[str]], Sequence[Sequence[float]]]


# ----------------------------------------------------------------------------------------- exemplars


@functools.lru_cache(maxsize=1)
def _exemplar_file() -> dict:
    """The shipped exemplars, sources and settings (read once per process; callers copy what they change)."""
    return json.loads(EXEMPLARS_FILE.read_text(encoding="utf-8"))


def default_exemplars() -> dict[str, list[str]]:
    """The shipped exemplars: every prompt of the vendored sources that may ship (benchmarks/data/router)."""
    return {task: list(prompts) for task, prompts in _exemplar_file()["tasks"].items()}


def load_exemplars(extra: Mapping[str, Iterable[str]] | None = None, *, base: Mapping[str, Iterable[str]] | None = None) -> dict[str, list[str]]:
    """The default exemplars with the user's merged in: new prompts are appended to a task, and
    a task name the defaults do not know becomes a new task. Duplicates are dropped."""
    merged = {task: list(prompts) for task, prompts in (base if base is not None else default_exemplars()).items()}
    for task, prompts in (extra or {}).items():
        if isinstance(prompts, str):
            prompts = [prompts]
        bucket = merged.setdefault(str(task), [])
        seen = set(bucket)
        for prompt in prompts:
            if isinstance(prompt, str) and prompt.strip() and prompt not in seen:
                bucket.append(prompt)
                seen.add(prompt)
    return {task: prompts for task, prompts in merged.items() if prompts}


# ----------------------------------------------------------------------------------------- embeddings


def log_softmax(logits):
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def centroids(matrix, targets, n_classes: int, weights=None):
    """One unit vector per class: the weighted mean of its members' (unit) vectors."""
    import numpy as np

    weights = np.ones(len(matrix)) if weights is None else np.asarray(weights)
    rows = np.stack([(matrix[targets == i] * weights[targets == i, None]).sum(axis=0) for i in range(n_classes)])
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)  # a task without exemplars stays a zero vector


def _unit(matrix):
    import numpy as np

    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


class EmbeddingClassifier:
    """Exemplars in an embedding space: a softmax head trained on the exemplar vectors (or their per-task
    centroids), combined with the keyword classifier's evidence and scaled so the confidence is honest.
    Exemplar vectors are stored per model and text (vectors.VectorStore); a prompt then costs one call."""

    name = "embedding"

    def __init__(
        self,
        embed: Embed,
        exemplars: Mapping[str, Sequence[str]],
        *,
        model_id: str = "unknown",
        cache_dir: str | os.PathLike | None = None,
        method: str | None = None,
        l2: float | None = None,
        centroid_temperature: float | None = None,
        keyword_weight: float | None = None,
        temperature: float | None = None,
        keyword: KeywordClassifier | None = None,
        head: int = 700,
        tail: int = 300,
        batch_size: int = 32,
        build: bool = True,
    ):
        from llm_lmstudio.router import exemplar_vectors as vectors

        chosen = dict(_exemplar_file()["settings"])
        self.method = method or chosen["method"]
        if self.method not in ("head", "centroid"):
            raise ValueError(f"method must be 'head' or 'centroid', not {self.method!r}")
        self.l2 = l2 if l2 is not None else chosen.get("l2", 1e-2)
        self.centroid_temperature = centroid_temperature if centroid_temperature is not None else chosen.get("centroid_temperature", 0.05)
        # Code syntax and non-English prompts are where MiniLM-sized models are weak and keywords strong:
        # the decision multiplies both classifiers' probabilities, weighted (0: embeddings alone).
        self.keyword_weight = keyword_weight if keyword_weight is not None else chosen["keyword_weight"]
        self.temperature = temperature if temperature is not None else chosen["temperature"]
        self.embed = embed
        self.model_id = model_id
        self.head = head
        self.tail = tail
        self.batch_size = batch_size
        self.keyword = keyword if keyword is not None else KeywordClassifier()
        shipped = _exemplar_file()
        self.pairs = []
        for task, prompts in exemplars.items():
            known = dict(zip(shipped["tasks"].get(task, []), shipped.get("sources", {}).get(task, [])))
            for prompt in prompts:
                # balance sources as benchmarks/eval_router.py trained: a user's exemplars are their own source
                self.pairs.append((task, prompt_view(prompt, head=head, tail=tail), known.get(prompt, "user")))
        if not self.pairs:
            raise ValueError("the embedding classifier needs at least one exemplar")
        self.tasks = list(dict.fromkeys(task for task, _, _ in self.pairs))
        self.store = vectors.VectorStore(model_id, cache_dir)
        self._weights = None
        if build:
            self.build()

    # -- exemplar vectors

    def pending(self) -> list[str]:
        """Exemplar texts this model has not embedded yet."""
        return self.store.missing(text for _, text, _ in self.pairs)

    def build(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Embeds every exemplar not stored yet, a batch at a time (each batch is kept as it arrives, so an
        interrupted build resumes where it stopped), then fits the decision on the vectors."""
        todo = self.pending()
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            self.store.add(batch, self._embed_checked(batch))
            if progress is not None:
                progress(min(start + self.batch_size, len(todo)), len(todo))
        self._fit()

    @property
    def ready(self) -> bool:
        return self._weights is not None

    def _embed_checked(self, texts: list[str]):
        vectors = [list(map(float, v)) for v in self.embed(texts)]
        if len(vectors) != len(texts):
            raise ValueError(f"embedding model {self.model_id} returned {len(vectors)} vectors for {len(texts)} texts")
        return vectors

    def _fit(self) -> None:
        import numpy as np

        from llm_lmstudio.router import exemplar_vectors as vectors

        matrix = _unit([self.store.get(text) for _, text, _ in self.pairs])
        targets = np.asarray([self.tasks.index(task) for task, _, _ in self.pairs])
        weights = vectors.balanced_weights([t for t, _, _ in self.pairs], [g for _, _, g in self.pairs])
        if self.method == "centroid":
            self._weights = (centroids(matrix, targets, len(self.tasks), weights).T / self.centroid_temperature, np.zeros(len(self.tasks)))
            return
        # fitting takes a good fraction of a second: keep the head beside the vectors it was fitted on
        self.head_digest = hashlib.sha256(json.dumps([self.tasks, self.l2, [(t, vectors.text_key(x), g) for t, x, g in self.pairs]]).encode()).hexdigest()[:16]
        self._weights = self.store.head(self.head_digest)
        if self._weights is None:
            self._weights = vectors.fit_softmax(matrix, targets, len(self.tasks), weights, l2=self.l2)
            self.store.save_head(self.head_digest, *self._weights)

    # -- deciding

    def view(self, text: str, system: str | None = None) -> str:
        return prompt_view(text, system, head=self.head, tail=self.tail)

    def decide(self, vector: Sequence[float], text: str, system: str | None = None, attachments: Sequence = ()) -> TaskDecision:
        """The decision for a prompt whose view is already embedded as `vector`."""
        import numpy as np

        if not self.ready:
            self._fit()
        query = _unit(vector)
        if not np.any(query):
            raise ValueError(f"embedding model {self.model_id} returned a zero vector")
        weights, bias = self._weights
        combined = log_softmax(query @ weights + bias) * (1 - self.keyword_weight)
        if self.keyword_weight > 0:
            keyword = self.keyword.classify(text, system, attachments).scores
            # a user's task without keywords is judged by its exemplars alone: the keyword side gives it
            # the best score it gave anything, so it can lift the built-in tasks against each other but
            # never hold a user's task back
            neutral = max(keyword.values())
            combined = combined + self.keyword_weight * np.log([max(keyword.get(t, neutral), 1e-12) for t in self.tasks])
        probs = np.exp(log_softmax(combined / self.temperature))
        scores = {task: float(p) for task, p in zip(self.tasks, probs)}
        task = self.tasks[int(np.argmax(probs))]  # ties go to the order tasks were declared in
        return TaskDecision(task=task, confidence=scores[task], classifier=self.name, scores=scores)

    def classify(self, text: str, system: str | None = None, attachments: Sequence = ()) -> TaskDecision:
        [vector] = self._embed_checked([self.view(text, system)])
        return self.decide(vector, text, system, attachments)
