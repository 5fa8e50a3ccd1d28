"""Task classification for the router: which kind of work a prompt asks for (coding, analysis, ...).
Owns the keyword and embedding classifiers and their exemplars; never calls a model or the network itself."""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from llm_lmstudio.router import prompt_shape

DEFAULT_TASKS = ("coding", "analysis", "creative", "research", "general")
FALLBACK_TASK = "general"

RULES_FILE = Path(__file__).parent.parent / "data" / "router_keywords.json"  # the keyword classifier's rules



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

    def _view(self, text: str) -> str:
        return text[: self.head] + "\n" + text[-self.tail :] if len(text) > self.head + self.tail else text

    def raw_scores(self, text: str, system: str | None = None, attachments: Sequence = ()) -> dict[str, float]:
        text = text or ""
        scores = dict.fromkeys(self.tasks, 0.0)
        scores[FALLBACK_TASK] = 0.5  # a prompt without any signal is everyday chat
        shape = prompt_shape.split(text)
        if shape.material:
            # a passage with a question about it: the question says what is asked, the passage only what it is about
            view = shape.instruction.lower()
            for rule in self._fired(self._view(shape.material).lower()):
                scores[rule.task] += rule.weight * prompt_shape.MATERIAL_WEIGHT
        else:
            view = self._view(text).lower()
        for rule in self._fired(view):
            scores[rule.task] += rule.weight
        for task, points in prompt_shape.evidence(shape).items():
            if task in scores:
                scores[task] += points
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


# ----------------------------------------------------------------------------------------- entry point

_DEFAULT_KEYWORD: KeywordClassifier | None = None


def classify(
    text: str,
    system: str | None = None,
    attachments: Sequence = (),
    *,
    embedding=None,
    keyword: KeywordClassifier | None = None,
) -> TaskDecision:
    """The task of one prompt, from the best classifier available: the embedding classifier
    (embedding_classifier.EmbeddingClassifier) when one is given and works, else keywords. A failed embedding call
    falls back and says why."""
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
                # in words, as classifier_setup notes a failed build: never a class name before the message
                reason = f"embedding model {getattr(embedding, 'model_id', 'unknown')} failed: {str(exc) or type(exc).__name__}"
        else:
            reason = "empty prompt"
    decision = keyword.classify(text, system, attachments)
    if reason:
        decision = TaskDecision(decision.task, decision.confidence, decision.classifier, decision.scores, fallback_reason=reason)
    return decision
