"""Specifications for llm_lmstudio.router.classification: the keyword and embedding task classifiers and their exemplars."""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_lmstudio.router import classification
from llm_lmstudio.router import embedding_classifier

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- a real, cheap embedding


class HashedBagOfWords:
    """A deterministic embedding: words hashed into 256 buckets, L2-normalised. Similar wording gives
    similar vectors, which is all the exemplar classifier needs; it counts the texts it embeds."""

    dims = 256

    def __init__(self):
        self.calls = 0
        self.texts = 0

    def __call__(self, texts):
        self.calls += 1
        self.texts += len(texts)
        vectors = []
        for text in texts:
            vector = [0.0] * self.dims
            for word in re.findall(r"\w+", text.lower()):
                bucket = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big") % self.dims
                vector[bucket] += 1.0
            norm = math.sqrt(sum(x * x for x in vector)) or 1.0
            vectors.append([x / norm for x in vector])
        return vectors


SMALL_EXEMPLARS = {
    "coding": ["write a python function to parse json", "fix this javascript bug in my react component", "sql query to join two tables"],
    "analysis": ["calculate the area of a circle with radius 3", "solve the equation 2x + 3 = 7", "what is the probability of two heads"],
    "creative": ["write a poem about the sea", "tell me a story about a dragon", "write song lyrics about summer love"],
    "research": ["explain how vaccines work", "what is the history of the roman empire", "compare nuclear and solar power"],
    "general": ["hi how are you", "thanks that was helpful", "what should I cook for dinner tonight"],
}


# ----------------------------------------------------------------------------- keyword classifier


@pytest.mark.parametrize(
    "prompt, task",
    [
        ("why does this fail?\n```python\ndef f(x):\n    return x[0]\n```", "coding"),
        ('Traceback (most recent call last):\n  File "app.py", line 3, in <module>\nKeyError: "port"', "coding"),
        ("how do I fix the import error in utils.py", "coding"),
        ("write a haiku about autumn", "creative"),
        ("pretend you're a pirate captain and give a speech to your crew", "creative"),
        ("what is 17 * 23 + 4?", "analysis"),
        ("prove that the square root of 2 is irrational", "analysis"),
        ("hi, how are you", "general"),
        ("thanks!", "general"),
        ("summarise this: the meeting moved to Friday and the budget was approved.", "general"),
        ("explain how vaccines work", "research"),
        ("compare the french and american revolutions", "research"),
        # kinds of writing, named outright, and role-play set-ups are creative work
        ("Write a descriptive paragraph about a bustling marketplace at dawn", "creative"),
        ("Compose an engaging travel blog post about a week in Lisbon", "creative"),
        ("Help me construct a catchy headline for an article about solar panels", "creative"),
        ("Give me a slogan for a bakery that opens at 5am", "creative"),
        ("Act as a grumpy medieval innkeeper and greet me as I walk in", "creative"),
    ],
)
def test_keyword_classifier_recognises_the_obvious_cases(prompt, task):
    decision = classification.classify(prompt)
    assert decision.task == task
    assert decision.classifier == "keyword"


def test_scores_are_a_distribution_with_the_winner_on_top():
    decision = classification.classify("write a python script that reads a csv file")
    assert set(decision.scores) == set(classification.DEFAULT_TASKS)
    assert sum(decision.scores.values()) == pytest.approx(1.0)
    assert decision.confidence == max(decision.scores.values()) == decision.scores[decision.task]


def test_confidence_is_higher_for_a_clearer_prompt():
    clear = classification.classify("```python\nimport os\ndef main():\n    return os.listdir()\n```\nthis function raises an exception, debug it")
    vague = classification.classify("can you look at this for me")
    ambiguous = classification.classify("write a story about a programmer who fixes a bug in a python script")
    assert clear.task == "coding"
    assert clear.confidence > ambiguous.confidence
    assert clear.confidence > vague.confidence


def test_system_prompt_counts_but_less_than_the_prompt():
    assert classification.classify("what's wrong here?", system="You are an expert Python programmer. Review code.").task == "coding"
    # the user's own words outweigh a generic system prompt
    assert classification.classify("write a poem about the sea", system="You are a Python expert.").task == "creative"


def test_image_attachment_hints_at_everyday_questions():
    class Attachment:  # the shape of llm.Attachment that matters here
        type = "image/png"

    assert classification.classify("what's this?", attachments=[Attachment()]).task == "general"
    assert classification.classify("", attachments=["image/jpeg"]).task == "general"
    assert classification.classify("what is the integral shown in this picture? solve it", attachments=[Attachment()]).task == "analysis"


def test_long_prompts_are_classified_from_head_and_tail_quickly():
    pasted = "lorem ipsum dolor sit amet " * 4000  # ~100 kB of pasted material in the middle
    prompt = "Here is a log from my server.\n" + pasted + "\nwhy does my python script crash with this traceback?"
    keyword = classification.KeywordClassifier()
    keyword.classify(prompt)
    start = time.perf_counter()
    for _ in range(20):
        decision = keyword.classify(prompt)
    per_call_ms = (time.perf_counter() - start) * 1000 / 20
    assert decision.task == "coding"
    # the budget is < 1 ms on an idle machine; this bound only catches a scan of the whole 100 kB
    assert per_call_ms < 20


def test_user_keywords_add_a_task():
    keyword = classification.KeywordClassifier(extra_keywords={"legal": ["contract", "tenancy agreement", "clause"]})
    assert keyword.classify("is this clause in my tenancy agreement enforceable?").task == "legal"
    assert keyword.classify("write a haiku about autumn").task == "creative"


def test_importing_tasks_stays_cheap():
    # llm itself may already have numpy loaded; what matters is that tasks.py adds nothing heavy
    code = (
        "import sys, llm_lmstudio; before = set(sys.modules); import llm_lmstudio.router.classification; "
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('numpy', 'mlx', 'mlx_embeddings', 'sqlite_utils', 'httpx')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------- exemplars


def _eval_router():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import eval_router
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return eval_router


def test_default_exemplars_cover_every_task_and_come_only_from_the_vendored_sources_and_anchors():
    # every vendored source's licence lets the package ship its prompts (THIRD_PARTY.md; tests/test_release.py)
    exemplars = embedding_classifier.load_exemplars()
    assert set(exemplars) == set(classification.DEFAULT_TASKS)
    assert all(len(prompts) >= 40 for prompts in exemplars.values())
    eval_router = _eval_router()
    labelled = eval_router.load_labelled()
    vendored = {classification.prompt_view(r["prompt"]) for r in labelled + eval_router.load_anchors(labelled)}
    shipped = {p for prompts in exemplars.values() for p in prompts}
    assert shipped <= vendored
    sources = json.loads(embedding_classifier.EXEMPLARS_FILE.read_text())["sources"]
    assert {t: len(v) for t, v in sources.items()} == {t: len(v) for t, v in exemplars.items()}


def test_second_labelling_covers_exactly_arena_hards_coding_and_math_prompts_and_confirms_only_agreement():
    eval_router = _eval_router()
    labelled = eval_router.load_labelled()
    second = eval_router.second_labels()
    arena = {r["id"]: r["task"] for r in labelled if r["source"] == "arena-hard"}
    assert set(second) == {i for i, task in arena.items() if task in ("coding", "analysis")}
    assert len(second) == 500 and set(second.values()) <= set(classification.DEFAULT_TASKS) | {"unsure"}
    rows = [{"id": "arena-hard-a", "task": "coding"}, {"id": "arena-hard-b", "task": "analysis"},
            {"id": "arena-hard-c", "task": "coding"}, {"id": "vicuna-1", "task": "general"}]
    labels = {"arena-hard-a": "coding", "arena-hard-b": "coding", "arena-hard-c": "unsure"}
    # a row keeps its label when both labellings agree, or when it was never second-labelled
    assert eval_router.confirmed(rows, labels).tolist() == [True, False, False, True]
    assert eval_router.agreement(rows, labels) == "coding 1/2 (unsure 1); analysis 0/1 (coding 1)"


def test_user_exemplars_extend_tasks_and_add_new_ones():
    merged = embedding_classifier.load_exemplars({"legal": ["review this NDA clause", "is my lease agreement fair"], "coding": ["write a bash loop"]}, base=SMALL_EXEMPLARS)
    assert merged["legal"] == ["review this NDA clause", "is my lease agreement fair"]
    assert merged["coding"][-1] == "write a bash loop"
    assert len(merged["coding"]) == len(SMALL_EXEMPLARS["coding"]) + 1
    # merging the same prompt twice does not duplicate it
    again = embedding_classifier.load_exemplars({"coding": ["write a bash loop"]}, base=merged)
    assert again["coding"].count("write a bash loop") == 1


# ----------------------------------------------------------------------------- embedding classifier


def test_embedding_classifier_picks_the_nearest_task():
    embed = HashedBagOfWords()
    clf = embedding_classifier.EmbeddingClassifier(embed, SMALL_EXEMPLARS, model_id="hashed-bow", method="head", keyword_weight=0, temperature=1.0)
    cases = {
        "write a python function to reverse a list": "coding",
        "solve the equation 5x - 2 = 8": "analysis",
        "write a poem about winter": "creative",
        "explain how the roman empire fell": "research",
        "hi, how are you today": "general",
    }
    for prompt, task in cases.items():
        decision = clf.classify(prompt)
        assert (prompt, decision.task) == (prompt, task)
        assert decision.classifier == "embedding"
        assert sum(decision.scores.values()) == pytest.approx(1.0)


def test_centroid_method_also_classifies():
    clf = embedding_classifier.EmbeddingClassifier(HashedBagOfWords(), SMALL_EXEMPLARS, model_id="hashed-bow", method="centroid", keyword_weight=0, temperature=1.0)
    assert clf.classify("tell me a story about a brave dragon").task == "creative"


def test_keyword_evidence_is_combined_with_the_exemplars():
    prompt = "```\nstory = poem + song_lyrics\nprint(story)\n```"
    # bag-of-words similarities spread far wider than a sentence model's, hence the higher temperature
    alone = embedding_classifier.EmbeddingClassifier(HashedBagOfWords(), SMALL_EXEMPLARS, model_id="hashed-bow", method="centroid", centroid_temperature=0.5, keyword_weight=0)
    combined = embedding_classifier.EmbeddingClassifier(HashedBagOfWords(), SMALL_EXEMPLARS, model_id="hashed-bow", method="centroid", centroid_temperature=0.5, keyword_weight=0.7)
    # the words match the creative exemplars; the code fence and syntax say coding
    assert alone.classify(prompt).task == "creative"
    decision = combined.classify(prompt)
    assert decision.task == "coding"
    assert decision.classifier == "embedding"
    assert sum(decision.scores.values()) == pytest.approx(1.0)


def test_user_task_from_extra_exemplars_is_recognised():
    exemplars = embedding_classifier.load_exemplars(
        {"legal": ["is this contract clause enforceable", "review my tenancy agreement", "can my landlord keep the deposit under the lease"]},
        base=SMALL_EXEMPLARS,
    )
    for weight in (0.0, 0.7):  # keywords know nothing of "legal" and must not hold it back
        clf = embedding_classifier.EmbeddingClassifier(HashedBagOfWords(), exemplars, model_id="hashed-bow", method="head", keyword_weight=weight)
        assert "legal" in clf.tasks
        assert clf.classify("is this clause in my lease enforceable").task == "legal"
        assert clf.classify("write a poem about winter").task == "creative"


def test_exemplar_vectors_are_stored_per_model_and_text(tmp_path):
    first = HashedBagOfWords()
    clf = embedding_classifier.EmbeddingClassifier(first, SMALL_EXEMPLARS, model_id="hashed-bow", cache_dir=tmp_path, batch_size=4)
    exemplar_count = sum(len(v) for v in SMALL_EXEMPLARS.values())
    assert first.texts == exemplar_count and first.calls == math.ceil(exemplar_count / 4)
    assert clf.store.path is not None and clf.store.path.exists()

    second = HashedBagOfWords()
    cached = embedding_classifier.EmbeddingClassifier(second, SMALL_EXEMPLARS, model_id="hashed-bow", cache_dir=tmp_path)
    assert second.calls == 0  # nothing re-embedded
    decision = cached.classify("write a poem about the moon")
    assert (second.calls, second.texts) == (1, 1)  # one call, the prompt only
    assert decision == clf.classify("write a poem about the moon")

    # another model must not reuse those vectors
    other_model = HashedBagOfWords()
    embedding_classifier.EmbeddingClassifier(other_model, SMALL_EXEMPLARS, model_id="another-model", cache_dir=tmp_path)
    assert other_model.texts == exemplar_count
    # changing the exemplars (a user's `tasks:`) embeds only what changed
    changed = HashedBagOfWords()
    extended = embedding_classifier.load_exemplars({"general": ["good night"], "legal": ["is this clause enforceable"]}, base=SMALL_EXEMPLARS)
    embedding_classifier.EmbeddingClassifier(changed, extended, model_id="hashed-bow", cache_dir=tmp_path)
    assert changed.texts == 2


def test_a_damaged_store_is_rebuilt(tmp_path):
    clf = embedding_classifier.EmbeddingClassifier(HashedBagOfWords(), SMALL_EXEMPLARS, model_id="hashed-bow", cache_dir=tmp_path)
    clf.store.path.write_bytes(b"not a numpy file")
    embed = HashedBagOfWords()
    rebuilt = embedding_classifier.EmbeddingClassifier(embed, SMALL_EXEMPLARS, model_id="hashed-bow", cache_dir=tmp_path)
    assert embed.texts == sum(len(v) for v in SMALL_EXEMPLARS.values())
    assert rebuilt.classify("write a poem about the sea").task == "creative"


def test_an_unbuilt_classifier_says_what_is_missing_and_builds_with_progress(tmp_path):
    embed = HashedBagOfWords()
    clf = embedding_classifier.EmbeddingClassifier(embed, SMALL_EXEMPLARS, model_id="hashed-bow", cache_dir=tmp_path, batch_size=5, build=False)
    assert embed.calls == 0 and not clf.ready
    assert len(clf.pending()) == 15
    seen = []
    clf.build(progress=lambda done, total: seen.append((done, total)))
    assert seen == [(5, 15), (10, 15), (15, 15)] and clf.ready and clf.pending() == []


def test_packaged_minilm_vectors_and_head_need_no_embedding_call():
    from llm_lmstudio.router import exemplar_vectors as vectors

    def no_calls(texts):
        raise AssertionError(f"embedded {len(texts)} texts")

    for model_id in ("mlx/minilm", "lmstudio/test-org/text-embedding-all-minilm-l6-v2"):
        clf = embedding_classifier.EmbeddingClassifier(no_calls, embedding_classifier.load_exemplars(), model_id=model_id)
        assert clf.ready and clf.pending() == []
        if clf.method == "head":
            assert clf.store.head(clf.head_digest) is not None  # the shipped head, not one fitted here
    # another model gets nothing from the package
    assert embedding_classifier.EmbeddingClassifier(no_calls, embedding_classifier.load_exemplars(), model_id="lmstudio/nomic-embed-text-v1.5", build=False).pending()
    assert vectors.family("lmstudio/nomic-embed-text-v1.5") is None


def test_the_head_learns_separable_tasks_and_balances_sources():
    import numpy as np

    from llm_lmstudio.router import exemplar_vectors as vectors

    rng = np.random.default_rng(0)
    centres = np.eye(4)[:3] * 3
    x = np.concatenate([c + rng.normal(0, 0.3, (20, 4)) for c in centres])
    y = np.repeat(np.arange(3), 20)
    w, b = vectors.fit_softmax(x, y, 3, l2=1e-3)
    assert ((x @ w + b).argmax(axis=1) == y).mean() == 1.0
    weights = vectors.balanced_weights(["a"] * 9 + ["b"], ["big"] * 8 + ["small"] + ["big"])
    # each task weighs the same, and inside task "a" both sources weigh the same
    assert weights[:9].sum() == pytest.approx(weights[9]) and weights[8] == pytest.approx(weights[:8].sum())


def test_long_prompts_are_embedded_as_head_and_tail():
    embed = HashedBagOfWords()
    seen = []

    def recording(texts):
        seen.extend(texts)
        return embed(texts)

    clf = embedding_classifier.EmbeddingClassifier(recording, SMALL_EXEMPLARS, model_id="hashed-bow")
    seen.clear()
    clf.classify("START " + "filler " * 5000 + " END")
    [view] = seen
    assert view.startswith("START") and view.endswith("END")
    assert len(view) <= clf.head + clf.tail + 10


def test_classify_prefers_embeddings_and_falls_back_to_keywords_with_a_reason():
    clf = embedding_classifier.EmbeddingClassifier(HashedBagOfWords(), SMALL_EXEMPLARS, model_id="hashed-bow")
    assert classification.classify("write a poem about winter", embedding=clf).classifier == "embedding"

    def broken(texts):
        raise ConnectionError("LM Studio is not running")

    clf.embed = broken
    decision = classification.classify("write a poem about winter", embedding=clf)
    assert decision.classifier == "keyword"
    assert decision.task == "creative"
    assert decision.fallback_reason == "embedding model hashed-bow failed: LM Studio is not running"


def test_wrong_number_of_vectors_is_an_error_not_a_guess():
    with pytest.raises(ValueError):
        embedding_classifier.EmbeddingClassifier(lambda texts: [[1.0, 0.0]], SMALL_EXEMPLARS, model_id="bad")


# ----------------------------------------------------------------------------- the real MiniLM


# Written for this test, never part of any split or exemplar set: plain prompts of each kind.
MINILM_CASES = {
    "write a function in rust that merges two sorted vectors": "coding",
    "my flask app returns a 500 error when I post a form, how do I debug it": "coding",
    "what is the sum of the first 100 odd numbers? show your working": "analysis",
    "a car travels 150 km in 2.5 hours, what is its average speed": "analysis",
    "write a short poem about a lighthouse in a storm": "creative",
    "write a bedtime story about a sleepy owl": "creative",
    "what caused the fall of the Byzantine empire": "research",
    "explain how a refrigerator keeps food cold": "research",
    "hey, good morning! how's your day going?": "general",
    "any tips for staying motivated when working from home?": "general",
}


@pytest.mark.minilm
@pytest.mark.slow
def test_minilm_classifier_gets_held_out_prompts_right():
    from tests import model_factory

    try:
        minilm = _eval_router().minilm()
    except model_factory.MiniLMUnavailable as exc:
        pytest.skip(f"MiniLM weights unavailable: {exc}")
    import numpy as np

    calls = []

    def embed(texts):
        calls.append(len(texts))
        return minilm.embed(texts)

    clf = embedding_classifier.EmbeddingClassifier(embed, embedding_classifier.load_exemplars(), model_id=minilm.local.model_id)
    assert calls == []  # every exemplar vector ships with the package
    # ...and they are this model's vectors: spot-check two against mlx_embeddings itself
    for text in (embedding_classifier.load_exemplars()["creative"][0], embedding_classifier.load_exemplars()["coding"][-1]):
        assert float(np.dot(clf.store.get(text), minilm.embed([text])[0])) > 0.999
    calls.clear()
    results = {prompt: clf.classify(prompt).task for prompt in MINILM_CASES}
    assert calls == [1] * len(MINILM_CASES)
    assert results == MINILM_CASES
