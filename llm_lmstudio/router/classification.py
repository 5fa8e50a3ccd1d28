"""Task classification for the router: which kind of work a prompt asks for (coding, analysis, ...).
Owns the keyword and embedding classifiers and their exemplars; never calls a model or the network itself."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

DEFAULT_TASKS = ("coding", "analysis", "creative", "research", "general")
FALLBACK_TASK = "general"

EXEMPLARS_FILE = Path(__file__).parent.parent / "data" / "router_exemplars.json"
RULES_FILE = Path(__file__).parent.parent / "data" / "router_keywords.json"  # the keyword classifier's rules

Embed = Callable[[list[str]], Sequence[Sequence[float]]]


@dataclass(frozen=True)
class TaskDecision:
    task: str
    confidence: float  # probability-like, 0..1; the top entry of `scores`
    classifier: str  # "keyword" or "embedding"
    scores: dict[str, float] = field(default_factory=dict)  # every task's share, summing to 1
    fallback_reason: str | None = None  # why the embedding classifier was not used, when it was wanted


# ----------------------------------------------------------------------------------------- prompt views


def prompt_view(text: str, system: str | None = None, *, head: int = 700, tail: int = 300, system_chars: int = 200) -> str:
    """The part of a prompt worth classifying: the instruction usually sits at the start or the end,
    while pasted material (logs, articles, code) fills the middle."""
    text = text or ""
    if len(text) > head + tail:
        text = text[:head] + "\n…\n" + text[-tail:]
    if system:
        text = system[:system_chars] + "\n\n" + text
    return text


def _attachment_type(attachment) -> str:
    if isinstance(attachment, str):
        return attachment.lower()
    kind = getattr(attachment, "type", None)
    if not kind and hasattr(attachment, "resolve_type"):
        try:
            kind = attachment.resolve_type()
        except Exception:  # an unreadable attachment must not stop routing; it just gives no hint
            kind = None
    return (kind or "").lower()


def _softmax(scores: Mapping[str, float], temperature: float) -> dict[str, float]:
    top = max(scores.values())
    exps = {task: math.exp((value - top) / temperature) for task, value in scores.items()}
    total = sum(exps.values())
    return {task: value / total for task, value in exps.items()}


def _decision(raw: Mapping[str, float], classifier: str, temperature: float) -> TaskDecision:
    probs = _softmax(raw, temperature)
    # ties go to the order tasks were declared in, which puts the defaults first
    task = max(probs, key=lambda name: probs[name])
    return TaskDecision(task=task, confidence=probs[task], classifier=classifier, scores=probs)


# ----------------------------------------------------------------------------------------- keywords


@dataclass(frozen=True)
class _Rule:
    """One piece of evidence for a task. It fires once if any of its words or phrases (whole words,
    up to three) occurs, any stem occurs as a substring (stems of inflected words, and scripts written
    without spaces), or its pattern matches. Python's `re` is slow on long alternations, so keywords
    are set lookups and the few patterns left look for code and maths notation only."""

    task: str
    weight: float
    words: frozenset = frozenset()
    stems: tuple = ()
    pattern: re.Pattern | None = None


def _rule(task: str, weight: float, words: str = "", stems: str = "", pattern: str | None = None) -> _Rule:
    return _Rule(
        task,
        weight,
        frozenset(w.strip() for w in words.split("|") if w.strip()),
        tuple(s for s in stems.split("|") if s),
        re.compile(pattern, re.MULTILINE) if pattern else None,
    )


@functools.lru_cache(maxsize=1)
def _builtin_rules() -> tuple[_Rule, ...]:
    """The shipped rules, a data table fitted on the training split (read and compiled once per process)."""
    table = json.loads(RULES_FILE.read_text(encoding="utf-8"))["rules"]
    return tuple(
        _rule(r["task"], r["weight"], r.get("words", ""), r.get("stems", ""), r.get("pattern")) for r in table
    )


# Attachments hint at the work before any text is read. An image with little text is usually
# "what is this / describe it" (general); charts and tables are caught by the analysis words.
_ATTACHMENT_HINTS: tuple[tuple[str, str, float], ...] = (
    ("image/", "general", 1.5),
    ("audio/", "general", 1.5),
    ("application/pdf", "research", 1.0),
    ("text/x-", "coding", 2.0),
    ("application/json", "analysis", 1.0),
    ("text/csv", "analysis", 2.0),
)

_GREETING = re.compile(r"\s*(hi|hello|hey|yo|hiya|howdy|good (morning|afternoon|evening|night)|thanks|thank you|thx|ok(ay)?|cool|lol|haha|bye|goodbye|sup|what's up)\b")
_WORD = re.compile(r"\w+(?:['+#.;-]\w+)*")
_SHORT_PROMPT = 40  # characters: below this, with nothing else to go on, it is chit-chat
_KEYWORD_TEMPERATURE = 1.5


class KeywordClassifier:
    """Weighted keyword and notation rules over the head and tail of a prompt: no model, well under 1 ms."""

    name = "keyword"

    def __init__(self, extra_keywords: Mapping[str, Iterable[str]] | None = None, *, head: int = 800, tail: int = 400):
        # 1,200 characters hold the instruction of nearly every prompt; on the training split, views of
        # 750 to 3,000 characters classify equally well, and cost grows with the view
        self.head = head
        self.tail = tail
        rules = list(_builtin_rules())
        self.tasks: list[str] = list(DEFAULT_TASKS)
        for task, words in (extra_keywords or {}).items():
            words = [" ".join(_WORD.findall(w.lower())) for w in words if w and w.strip()]
            if task not in self.tasks:
                self.tasks.append(task)
            if any(words):
                # user keywords are whole words or phrases; they outrank one built-in rule
                rules.append(_Rule(task, 3.0, frozenset(w for w in words if w)))
        self._rules = tuple(rules)

    def _fired(self, view: str) -> list[_Rule]:
        tokens = _WORD.findall(view)
        grams = set(tokens)
        grams.update(" ".join(tokens[i : i + 2]) for i in range(len(tokens) - 1))
        grams.update(" ".join(tokens[i : i + 3]) for i in range(len(tokens) - 2))
        fired = []
        for rule in self._rules:
            if (
                not rule.words.isdisjoint(grams)
                or any(stem in view for stem in rule.stems)
                or (rule.pattern is not None and rule.pattern.search(view))
            ):
                fired.append(rule)
        return fired

    def raw_scores(self, text: str, system: str | None = None, attachments: Sequence = ()) -> dict[str, float]:
        text = text or ""
        scores = dict.fromkeys(self.tasks, 0.0)
        scores[FALLBACK_TASK] = 0.5  # a prompt without any signal is everyday chat
        if len(text) > self.head + self.tail:
            view = text[: self.head] + "\n" + text[-self.tail :]
        else:
            view = text
        view = view.lower()
        for rule in self._fired(view):
            scores[rule.task] += rule.weight
        # "hi!" is chit-chat; "hi, I am learning C++ and ..." is a request that opens politely
        if _GREETING.match(view):
            scores[FALLBACK_TASK] += 3.0 if len(text) < 80 else 0.5
        if system:
            for rule in self._fired(system[:500].lower()):
                scores[rule.task] += rule.weight * 0.5
        # two or more fences anywhere (even past the truncated view) means code was pasted
        if text.count("```") >= 2:
            scores["coding"] += 1.0
        if len(text.strip()) < _SHORT_PROMPT and max(scores.values()) <= 0.5:
            scores[FALLBACK_TASK] += 1.0
        media = False
        for attachment in attachments:
            kind = _attachment_type(attachment)
            media = media or kind.startswith(("image/", "audio/"))
            for prefix, task, weight in _ATTACHMENT_HINTS:
                if kind.startswith(prefix) and task in scores:
                    scores[task] += weight
                    break
        # "what's this?" next to a photo asks about the photo; a clear task word still wins
        if media and len(text) < 60 and max(v for t, v in scores.items() if t != FALLBACK_TASK) <= 2.0:
            scores[FALLBACK_TASK] += 1.0
        return scores

    def classify(self, text: str, system: str | None = None, attachments: Sequence = ()) -> TaskDecision:
        return _decision(self.raw_scores(text, system, attachments), self.name, _KEYWORD_TEMPERATURE)


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


# ----------------------------------------------------------------------------------------- entry point

_DEFAULT_KEYWORD: KeywordClassifier | None = None


def classify(
    text: str,
    system: str | None = None,
    attachments: Sequence = (),
    *,
    embedding: EmbeddingClassifier | None = None,
    keyword: KeywordClassifier | None = None,
) -> TaskDecision:
    """The task of one prompt, from the best classifier available: the embedding classifier when one
    is given and works, else keywords. A failed embedding call falls back and says why."""
    global _DEFAULT_KEYWORD
    if keyword is None:
        if _DEFAULT_KEYWORD is None:
            _DEFAULT_KEYWORD = KeywordClassifier()
        keyword = _DEFAULT_KEYWORD
    reason = None
    if embedding is not None:
        if (text or "").strip() or (system or "").strip():
            try:
                return embedding.classify(text, system, attachments)
            except Exception as exc:  # any embedding failure (server down, bad vector) must not block routing
                reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = "empty prompt"
    decision = keyword.classify(text, system, attachments)
    if reason:
        decision = TaskDecision(decision.task, decision.confidence, decision.classifier, decision.scores, fallback_reason=reason)
    return decision
