"""Measures the router's task classifiers on labelled prompts with a fixed, seeded held-out split.
Model choices are made on dev folds of the training split only; the test split is read once, to report."""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llm_lmstudio import tasks  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "router"
OUT = Path(__file__).resolve().parent / "out"
SPLIT_FILE = DATA / "split.json"
SEED = 20260523
TEST_FRACTION = 0.30
DEV_FOLDS = 5

ARENA_TASK = {"coding": "coding", "math": "analysis", "creative_writing": "creative"}
VICUNA_TASK = {
    "coding": "coding",
    "math": "analysis",
    "fermi": "analysis",
    "writing": "creative",
    "roleplay": "creative",
    "knowledge": "research",
    "counterfactual": "research",
    "common-sense": "research",
    "generic": "general",
}


# --------------------------------------------------------------------------- data


def load_labelled() -> list[dict]:
    """Every labelled prompt as {id, source, task, prompt}, mapped onto tasks as SOURCES.md suggests."""
    rows = []
    with open(DATA / "arena_hard_v2.0_question.jsonl", encoding="utf-8") as handle:
        for line in handle:
            item = json.loads(line)
            rows.append({"id": f"arena-{item['uid']}", "source": "arena", "task": ARENA_TASK[item["subcategory"]], "prompt": item["prompt"]})
    with open(DATA / "vicuna_bench_question.jsonl", encoding="utf-8") as handle:
        for line in handle:
            item = json.loads(line)
            rows.append({"id": f"vicuna-{item['question_id']}", "source": "vicuna", "task": VICUNA_TASK[item["category"]], "prompt": item["turns"][0]})
    with open(DATA / "extra.jsonl", encoding="utf-8") as handle:
        for line in handle:
            item = json.loads(line)
            rows.append({"id": item["id"], "source": "extra", "task": item["task"], "prompt": item["prompt"]})
    return rows


def make_split(rows: list[dict]) -> dict:
    """70/30, stratified by (source, task), seeded; the test ids are written down so the split never drifts."""
    rng = random.Random(SEED)
    strata = defaultdict(list)
    for row in rows:
        strata[(row["source"], row["task"])].append(row["id"])
    test = []
    for key in sorted(strata):
        ids = sorted(strata[key])
        rng.shuffle(ids)
        test.extend(ids[: round(len(ids) * TEST_FRACTION)])
    return {"seed": SEED, "test_fraction": TEST_FRACTION, "stratified_by": ["source", "task"], "test_ids": sorted(test)}


def split_rows(rows: list[dict], resplit: bool) -> tuple[list[dict], list[dict], dict]:
    if resplit or not SPLIT_FILE.exists():
        split = make_split(rows)
        SPLIT_FILE.write_text(json.dumps(split, indent=1) + "\n")
    split = json.loads(SPLIT_FILE.read_text())
    test_ids = set(split["test_ids"])
    known = {row["id"] for row in rows}
    missing = test_ids - known
    if missing:
        raise SystemExit(f"{len(missing)} test ids in {SPLIT_FILE.name} are not in the data; rerun with --resplit")
    train = [r for r in rows if r["id"] not in test_ids]
    test = [r for r in rows if r["id"] in test_ids]
    return train, test, split


def dev_folds(train: list[dict]) -> list[tuple[list[int], list[int]]]:
    """Stratified folds over the training split, for choosing methods without touching the test split."""
    rng = random.Random(SEED + 1)
    fold_of = {}
    strata = defaultdict(list)
    for index, row in enumerate(train):
        strata[(row["source"], row["task"])].append(index)
    for key in sorted(strata):
        members = strata[key]
        rng.shuffle(members)
        for position, index in enumerate(members):
            fold_of[index] = position % DEV_FOLDS
    folds = []
    for fold in range(DEV_FOLDS):
        dev = [i for i in range(len(train)) if fold_of[i] == fold]
        fit = [i for i in range(len(train)) if fold_of[i] != fold]
        folds.append((fit, dev))
    return folds


# --------------------------------------------------------------------------- classifiers


def naive_keyword(prompt: str) -> str:
    """The original design notes' matcher, reconstructed: first substring hit wins, else general."""
    p = prompt.lower()
    if "code" in p or "function" in p or "bug" in p or "program" in p:
        return "coding"
    if "calculate" in p or "math" in p or "solve" in p or "equation" in p:
        return "analysis"
    if "story" in p or "poem" in p or "creative" in p:
        return "creative"
    if "explain" in p or "what is" in p or "research" in p or "compare" in p:
        return "research"
    return "general"


class MiniLM:
    """all-MiniLM-L6-v2 through mlx_embeddings: the real path for single prompts, and a NumPy replay of
    the same weights for embedding the ~1,000 evaluation prompts (MLX's Linux CPU matmul is ~25x slower
    than OpenBLAS). The replay is checked against mlx_embeddings before it is used."""

    def __init__(self, path: Path, max_length: int = 256):
        from mlx.utils import tree_flatten
        from mlx_embeddings.utils import load

        import numpy as np

        self.model, self.tokenizer = load(str(path))
        self.max_length = max_length
        self.weights = {k: np.array(v, dtype=np.float32) for k, v in tree_flatten(self.model.parameters())}
        self.model_id = "mlx/all-minilm-l6-v2"

    def embed_mlx(self, texts: list[str]) -> list[list[float]]:
        import mlx.core as mx

        inputs = self.tokenizer.batch_encode_plus(texts, return_tensors="mlx", padding=True, truncation=True, max_length=self.max_length)
        out = self.model(inputs["input_ids"], attention_mask=inputs["attention_mask"]).text_embeds
        mx.eval(out)
        return out.tolist()

    def embed_numpy(self, texts: list[str]):
        import numpy as np
        from scipy.special import erf

        w = self.weights
        inputs = self.tokenizer.batch_encode_plus(texts, return_tensors="np", padding=True, truncation=True, max_length=self.max_length)
        ids = np.asarray(inputs["input_ids"])
        mask = np.asarray(inputs["attention_mask"]).astype(np.float32)
        batch, length = ids.shape

        def layer_norm(x, prefix):
            mean = x.mean(-1, keepdims=True)
            var = ((x - mean) ** 2).mean(-1, keepdims=True)
            return (x - mean) / np.sqrt(var + 1e-12) * w[prefix + ".weight"] + w[prefix + ".bias"]

        def linear(x, prefix):
            return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]

        h = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length][None] + w["embeddings.token_type_embeddings.weight"][0]
        h = layer_norm(h, "embeddings.LayerNorm")
        bias = ((1.0 - mask) * -10000.0)[:, None, None, :]
        heads, size = 12, 32
        for i in range(6):
            p = f"encoder.layer.{i}."

            def split(x):
                return x.reshape(batch, length, heads, size).transpose(0, 2, 1, 3)

            q, k, v = (split(linear(h, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(size) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, heads * size)
            h = layer_norm(linear(context, p + "attention.output.dense") + h, p + "attention.output.LayerNorm")
            inner = linear(h, p + "intermediate.dense")
            inner = 0.5 * inner * (1.0 + erf(inner / np.sqrt(2.0)))
            h = layer_norm(linear(inner, p + "output.dense") + h, p + "output.LayerNorm")
        pooled = (h * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def check_replay(self, texts: list[str]) -> float:
        import numpy as np

        reference = np.asarray(self.embed_mlx(texts))
        replay = self.embed_numpy(texts)
        return float((reference * replay).sum(1).min())

    def embed_many(self, texts: list[str], batch_size: int = 16):
        """Embeds many texts, shortest first so batches pad little; cached under benchmarks/out/."""
        import numpy as np

        key = hashlib.sha256(json.dumps([self.model_id, self.max_length, texts]).encode()).hexdigest()[:16]
        cache = OUT / f"minilm-{key}.npy"
        if cache.exists():
            return np.load(cache)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        result = np.zeros((len(texts), 384), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            result[chunk] = self.embed_numpy([texts[i] for i in chunk])
        OUT.mkdir(exist_ok=True)
        np.save(cache, result)
        return result


def lookup_embed(rows, vectors, fallback=None):
    """An embed function that answers from vectors already computed for these rows' views."""
    table = {tasks.prompt_view(row["prompt"]): vector for row, vector in zip(rows, vectors)}

    def embed(texts):
        if fallback is not None and any(t not in table for t in texts):
            return fallback(texts)
        return [table[t] for t in texts]

    return embed


def exemplars_of(rows) -> dict[str, list[str]]:
    exemplars = defaultdict(list)
    for row in rows:
        exemplars[row["task"]].append(row["prompt"])
    return dict(exemplars)


def embedding_predictions(train_rows, train_vectors, query_rows, query_vectors, **options):
    clf = tasks.EmbeddingClassifier(lookup_embed(train_rows, train_vectors), exemplars_of(train_rows), batch_size=len(train_rows), **options)
    return [clf.decide(v, r["prompt"]).task for r, v in zip(query_rows, query_vectors)]


# --------------------------------------------------------------------------- metrics


def report(name: str, gold: list[str], pred: list[str], task_names) -> dict:
    per_task = {}
    for task in task_names:
        tp = sum(1 for g, p in zip(gold, pred) if g == task and p == task)
        fp = sum(1 for g, p in zip(gold, pred) if g != task and p == task)
        fn = sum(1 for g, p in zip(gold, pred) if g == task and p != task)
        support = tp + fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_task[task] = {"support": support, "precision": precision, "recall": recall, "f1": f1}
    accuracy = sum(1 for g, p in zip(gold, pred) if g == p) / len(gold)
    macro = statistics.mean(v["recall"] for v in per_task.values())
    confusion = Counter(f"{g}->{p}" for g, p in zip(gold, pred) if g != p)
    return {"name": name, "accuracy": accuracy, "balanced_accuracy": macro, "per_task": per_task, "confusions": dict(confusion.most_common(10))}


def markdown(results: list[dict], task_names, n: int, what: str = "test") -> str:
    header = "| classifier | " + " | ".join(task_names) + " | overall | balanced |"
    lines = [header, "|" + "---|" * (len(task_names) + 3)]
    for result in results:
        cells = []
        for task in task_names:
            t = result["per_task"][task]
            cells.append(f"{t['recall']:.0%} (P {t['precision']:.0%})")
        lines.append(f"| {result['name']} | " + " | ".join(cells) + f" | **{result['accuracy']:.1%}** | {result['balanced_accuracy']:.1%} |")
    lines.append(f"\nPer task: recall = share of that task's test prompts classified correctly; P = precision. n = {n} {what} prompts.")
    return "\n".join(lines)


def is_english(prompt: str) -> bool:
    """Mostly ASCII letters in the first 500 characters: a rough but reproducible language split."""
    head = prompt[:500]
    return sum(c.isascii() for c in head) >= 0.9 * max(1, len(head))


def describe(options: dict) -> str:
    method = options["method"] + (f" k={options['k']}" if options["method"] == "knn" else "")
    return f"{method}, T={options['temperature']}, keyword weight {options['keyword_weight']}"


def median_us(fn, items, repeat=3) -> float:
    samples = []
    for _ in range(repeat):
        for item in items:
            start = time.perf_counter_ns()
            fn(item)
            samples.append((time.perf_counter_ns() - start) / 1000)
    return statistics.median(samples)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resplit", action="store_true", help="draw the split again (changes the recorded test ids)")
    parser.add_argument("--no-embedding", action="store_true", help="skip MiniLM (keyword classifiers only)")
    parser.add_argument("--write-exemplars", action="store_true", help="write llm_lmstudio/data/router_exemplars.json from the training split")
    parser.add_argument("--dev-only", action="store_true", help="report dev-fold results only, never the test split")
    parser.add_argument("--timing-prompts", type=int, default=10, help="prompts to time one real MiniLM call on")
    args = parser.parse_args()

    rows = load_labelled()
    train, test, split = split_rows(rows, args.resplit)
    task_names = list(tasks.DEFAULT_TASKS)
    print(f"labelled prompts: {len(rows)}; train {len(train)}, test {len(test)} (seed {split['seed']})")
    print("train per task:", dict(Counter(r["task"] for r in train)), "test per task:", dict(Counter(r["task"] for r in test)))
    OUT.mkdir(exist_ok=True)

    if args.write_exemplars:
        view = {}
        for row in train:
            view.setdefault(row["task"], []).append(tasks.prompt_view(row["prompt"]))
        payload = {
            "about": "Default router exemplars: every prompt of the training split of benchmarks/eval_router.py "
            f"(seed {SEED}, {1 - TEST_FRACTION:.0%} of arena-hard v2.0, vicuna-bench and benchmarks/data/router/extra.jsonl), "
            "each cut to the head and tail the classifier embeds. Test-split prompts are never included.",
            "tasks": {task: view[task] for task in task_names},
        }
        tasks.EXEMPLARS_FILE.write_text(json.dumps(payload, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        print(f"wrote {tasks.EXEMPLARS_FILE} ({sum(len(v) for v in view.values())} exemplars)")

    keyword = tasks.KeywordClassifier()
    folds = dev_folds(train)
    dev = {"naive keyword (baseline)": [naive_keyword(r["prompt"]) for r in train], "keyword": [keyword.classify(r["prompt"]).task for r in train]}
    dev_results = {name: report(name, [r["task"] for r in train], pred, task_names) for name, pred in dev.items()}

    minilm = None
    chosen = chosen_pure = None
    if not args.no_embedding:
        from tests.model_factory import minilm_path

        minilm = MiniLM(minilm_path())
        agreement = minilm.check_replay([tasks.prompt_view(r["prompt"]) for r in train[:6]] + ["hi", "write a haiku about rain"])
        print(f"NumPy replay vs mlx_embeddings: min cosine {agreement:.6f}")
        if agreement < 0.9999:
            raise SystemExit("the NumPy replay of MiniLM disagrees with mlx_embeddings; refusing to report")
        train_vectors = minilm.embed_many([tasks.prompt_view(r["prompt"]) for r in train])
        # The shipped exemplars are the training views, so their MiniLM vectors are already here: put
        # them in the classifier's own cache (keyed by model id + exemplar digest) that the MiniLM test
        # reads. A shipped exemplar outside the training split would fail this lookup.
        from tests.model_factory import cache_root

        try:
            tasks.EmbeddingClassifier(lookup_embed(train, train_vectors), tasks.load_exemplars(), model_id=minilm.model_id,
                                      cache_dir=cache_root() / "router", batch_size=len(train))
        except KeyError as exc:
            raise SystemExit(f"router_exemplars.json holds a prompt that is not in the training split: {exc}; rerun with --write-exemplars")
        # choose the method, k, temperature and keyword weight on dev folds of the training split
        grid = [
            {"method": method, "k": k, "temperature": temperature, "keyword_weight": weight}
            for method, k in [("centroid", 0), ("knn", 3), ("knn", 5), ("knn", 10)]
            for temperature in (0.02, 0.05)
            for weight in (0.0, 0.3, 0.5, 0.7)
        ]
        grid_results = []
        for options in grid:
            pred = [None] * len(train)
            for fit, held in folds:
                out = embedding_predictions([train[i] for i in fit], train_vectors[fit], [train[i] for i in held], train_vectors[held], **options)
                for i, p in zip(held, out):
                    pred[i] = p
            name = describe(options)
            result = report(name, [r["task"] for r in train], pred, task_names)
            grid_results.append((options, result))
            print(f"dev {name}: {result['accuracy']:.1%} (balanced {result['balanced_accuracy']:.1%})")
        chosen, best = max(grid_results, key=lambda item: (item[1]["balanced_accuracy"], item[1]["accuracy"]))
        pure = [item for item in grid_results if item[0]["keyword_weight"] == 0.0]
        chosen_pure, best_pure = max(pure, key=lambda item: (item[1]["balanced_accuracy"], item[1]["accuracy"]))
        dev_results["embedding only"] = best_pure
        dev_results["embedding + keyword"] = best
        print(f"chosen on dev folds: {describe(chosen)}; best without keywords: {describe(chosen_pure)}")

    print("\n## Dev (5-fold over the training split)\n")
    print(markdown(list(dev_results.values()), task_names, len(train), "training (dev-fold)"))

    result = {
        "split": {"seed": split["seed"], "test_fraction": split["test_fraction"], "train": len(train), "test": len(test),
                  "train_per_task": dict(Counter(r["task"] for r in train)), "test_per_task": dict(Counter(r["task"] for r in test))},
        "dev": dev_results,
        "embedding_choice": chosen,
        "embedding_only_choice": chosen_pure,
    }
    if args.dev_only:
        (OUT / "router_eval_dev.json").write_text(json.dumps(result, indent=2))
        return

    gold = [r["task"] for r in test]
    predictions = {
        "naive keyword (baseline)": [naive_keyword(r["prompt"]) for r in test],
        "keyword": [keyword.classify(r["prompt"]).task for r in test],
    }
    timing = {"keyword_median_us": median_us(lambda r: keyword.classify(r["prompt"]), test),
              "keyword_max_prompt_median_us": median_us(lambda r: keyword.classify(r["prompt"]), sorted(test, key=lambda r: -len(r["prompt"]))[:10])}
    if minilm is not None:
        test_vectors = minilm.embed_many([tasks.prompt_view(r["prompt"]) for r in test])
        for options in (chosen_pure, chosen):
            predictions[f"MiniLM {describe(options)}"] = embedding_predictions(train, train_vectors, test, test_vectors, **options)
        # decision overhead: one real mlx_embeddings call per prompt, plus scoring against the exemplars
        clf = tasks.EmbeddingClassifier(lookup_embed(train, train_vectors, fallback=minilm.embed_mlx), exemplars_of(train), model_id=minilm.model_id, batch_size=len(train), **chosen)
        sample = random.Random(SEED).sample(test, args.timing_prompts)
        minilm.embed_mlx(["warm up"])
        timing["embedding_call_median_ms"] = median_us(lambda r: minilm.embed_mlx([clf.view(r["prompt"])]), sample, repeat=1) / 1000
        timing["embedding_short_prompt_median_ms"] = median_us(lambda t: minilm.embed_mlx([t]), ["hi, how are you", "write a haiku about rain", "explain how vaccines work"], repeat=3) / 1000
        timing["embedding_decision_without_call_median_us"] = median_us(lambda i: clf.decide(test_vectors[i], test[i]["prompt"]), list(range(50)))
        timing["embedding_classify_median_ms"] = median_us(lambda r: clf.classify(r["prompt"]), sample[:5], repeat=1) / 1000
        # for the record: what pure-Python cosine over every exemplar would cost instead of NumPy
        rows_py = [list(map(float, v)) for v in train_vectors]
        query = list(map(float, test_vectors[0]))
        timing["pure_python_knn_scan_median_us"] = median_us(lambda q: [sum(a * b for a, b in zip(q, row)) for row in rows_py], [query], repeat=5)
        timing["exemplars"] = len(rows_py)
    test_results = [report(name, gold, pred, task_names) for name, pred in predictions.items()]
    print("\n## Test (held out)\n")
    table = markdown(test_results, task_names, len(test))
    print(table)
    # MiniLM was trained on English; a third of arena-hard is not. Reported, never tuned on.
    english = [is_english(r["prompt"]) for r in test]
    by_language = {}
    for name, pred in predictions.items():
        by_language[name] = {
            label: sum(p == g for p, g, e in zip(pred, gold, english) if e == flag) / max(1, sum(1 for e in english if e == flag))
            for label, flag in (("english", True), ("other", False))
        }
    print(f"\nBy language (english {sum(english)}, other {len(english) - sum(english)} test prompts):")
    for name, values in by_language.items():
        print(f"- {name}: english {values['english']:.1%}, other {values['other']:.1%}")
    print("\n## Decision overhead\n")
    for key, value in timing.items():
        print(f"- {key}: {value:.1f}" if isinstance(value, float) else f"- {key}: {value}")
    result.update({"test": test_results, "test_by_language": by_language, "timing": timing, "markdown": table})
    (OUT / "router_eval.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {OUT / 'router_eval.json'}")


if __name__ == "__main__":
    main()
