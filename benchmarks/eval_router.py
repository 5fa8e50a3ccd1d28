"""Measures the router's task classifiers on prompts from sources they never saw: leave-one-source-out
(choose settings and train on every source but one, test on that one), beside the in-distribution split.
Never tunes on a left-out source or on the split's test ids; every figure printed is from this run."""

from __future__ import annotations

import json
import random
from pathlib import Path
import sys
from collections import Counter, defaultdict

import numpy as np
from _common import OUT, ROOT, arguments, write_json

from llm_lmstudio.router import classification
from llm_lmstudio.router import embedding_classifier
from llm_lmstudio.router import exemplar_vectors  # importable because _common puts the repository on sys.path

DATA = ROOT / "benchmarks" / "data" / "router"
SPLIT_FILE = DATA / "split.json"
# Task anchors: short prompts the project wrote from the task definitions, for the shapes people type (greetings,
# text chores, "write a function that ...", list requests). Training-only: in every fit, never measured, never left out.
ANCHORS_FILE = DATA / "anchors.jsonl"
# A second, blind labelling of Arena-Hard's coding and math prompts (SOURCES.md): measured beside Arena's own labels,
# on the prompts both labellings put in the same task. Never trained on.
SECOND_LABELS_FILE = DATA / "arena_hard_second_labels.jsonl"
SEED = 20260523
TEST_FRACTION = 0.30
TASKS = list(classification.DEFAULT_TASKS)

# Each source's own labels mapped onto the router's tasks (SOURCES.md); a label missing here is left out.
# mmrouter's "reasoning" holds why-questions, comparisons and trade-offs: explaining, the router's `research`.
MMROUTER = {"code": "coding", "creative": "creative", "factual": "research", "reasoning": "research"}
ARENA = {"coding": "coding", "math": "analysis", "creative_writing": "creative"}
VICUNA = {"coding": "coding", "math": "analysis", "fermi": "analysis", "writing": "creative", "roleplay": "creative",
          "knowledge": "research", "counterfactual": "research", "common-sense": "research", "generic": "general"}
MT_BENCH = {"coding": "coding", "math": "analysis", "reasoning": "analysis", "extraction": "analysis",
            "writing": "creative", "roleplay": "creative", "stem": "research", "humanities": "research"}
# name: (file, id field, label field, prompt getter, mapping). Only sources whose licence lets the package ship
# their prompts as exemplars are vendored (SOURCES.md; THIRD_PARTY.md): every prompt measured on may ship.
SOURCES = {
    "arena-hard": ("arena_hard_v2.0_question.jsonl", "uid", "subcategory", lambda r: r["prompt"], ARENA),
    "vicuna": ("vicuna_bench_question.jsonl", "question_id", "category", lambda r: r["turns"][0], VICUNA),
    "mt-bench": ("mt_bench_question.jsonl", "question_id", "category", lambda r: r["turns"][0], MT_BENCH),
    "project": ("extra.jsonl", "id", "task", lambda r: r["prompt"], {t: t for t in TASKS}),
    # two YAML lists from the mmrouter 0.1.0 sdist (MIT): rows are numbered by file and position
    "mmrouter": (("mmrouter_test_set.yaml", "mmrouter_embedding_examples.yaml"), None, "category", lambda r: r["prompt"], MMROUTER),
}
PUBLIC = [name for name in SOURCES if name != "project"]
GRID = {"head": (1e-3, 1e-2), "centroid": (0.02, 0.05)}  # l2 of the head; temperature of the centroid similarities
WEIGHTS = (0.0, 0.2, 0.35, 0.5, 0.65)  # of the keyword classifier's log-probabilities
TEMPERATURES = (0.5, 0.7, 0.85, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0)


def _items(file: str) -> list[dict]:
    """The labelled items of one vendored file: JSON lines, or a YAML list."""
    with open(DATA / file, encoding="utf-8") as handle:
        if file.endswith(".yaml"):
            import yaml

            return yaml.safe_load(handle)
        return [json.loads(line) for line in handle]


def load_labelled(without: tuple = ()) -> list[dict]:
    """Every labelled prompt as {id, source, task, prompt}, the sources named in `without` left out."""
    rows = []
    for source, (files, id_field, label_field, prompt_of, mapping) in SOURCES.items():
        if source in without:
            continue
        for file in (files,) if isinstance(files, str) else files:
            for position, item in enumerate(_items(file)):
                task = mapping.get(item[label_field])
                if task is None:
                    continue
                if id_field is None:
                    ident = f"{source}-{Path(file).stem}-{position}"
                else:
                    ident = item[id_field] if source == "project" else f"{source}-{item[id_field]}"
                rows.append({"id": str(ident), "source": source, "task": task, "prompt": prompt_of(item)})
    return rows


def second_labels() -> dict[str, str]:
    """{row id: task} from the blind second labelling ("unsure" included, which confirms nothing)."""
    if not SECOND_LABELS_FILE.exists():
        return {}
    return {f"arena-hard-{item['uid']}": item["task"] for item in _items(SECOND_LABELS_FILE.name)}


def confirmed(rows, second: dict) -> np.ndarray:
    """Rows whose label stands: not second-labelled, or put in the same task by both labellings."""
    return np.asarray([second.get(r["id"], r["task"]) == r["task"] for r in rows])


def agreement(rows, second: dict) -> str:
    """How the second labelling agrees with the source's, per source label: `coding 212/253 (analysis 10, ...)`."""
    parts = []
    for task in TASKS:
        relabelled = [second[r["id"]] for r in rows if r["id"] in second and r["task"] == task]
        if relabelled:
            others = Counter(t for t in relabelled if t != task)
            parts.append(f"{task} {relabelled.count(task)}/{len(relabelled)}" + (" (" + ", ".join(f"{t} {n}" for t, n in others.most_common()) + ")" if others else ""))
    return "; ".join(parts)


def _words(text: str) -> set:
    return set(" ".join(text.split()).lower().rstrip("?.!").split())


def load_anchors(labelled: list[dict]) -> list[dict]:
    """The training-only anchors as {id, source: "anchors", task, prompt}. An anchor that repeats a labelled prompt,
    or nearly (60% of their words shared), would leak that prompt into the fits that leave its source out: refused."""
    anchors = [{**item, "source": "anchors"} for item in _items(ANCHORS_FILE.name)]
    for anchor in anchors:
        mine = _words(anchor["prompt"])
        for row in labelled:
            theirs = _words(row["prompt"])
            if len(mine & theirs) >= 0.6 * len(mine | theirs):
                raise SystemExit(f"{anchor['id']} is (nearly) {row['id']}: rewrite it, anchors must not repeat a measured prompt")
    return anchors


def minilm():
    """all-MiniLM-L6-v2 (weights from tests/model_factory) loaded by the plugin's own mlx-embeddings path."""
    from llm_lmstudio.mlx import embeddings
    from llm_lmstudio.mlx.discovery import LocalModel
    from tests.model_factory import minilm_path

    return embeddings.load_embedding(LocalModel("all-minilm-l6-v2", minilm_path(), "embedding", "bert", 0, "user"))


def embed_all(texts: list[str], batch_size: int = 16):
    """MiniLM vectors of texts, embedded in batches shortest first so they pad little. Each is kept in
    benchmarks/out/ under its text's digest: only the first run embeds the ~1,300 prompts (5.5 minutes on
    2 cores with the OpenBLAS preload of docs/mlx-cpu.md, which benchmarks/run_all sets)."""
    store = exemplar_vectors.VectorStore("eval/minilm-mlx-256", OUT)
    todo = sorted(store.missing(texts), key=len)
    runtime = minilm() if todo else None
    for start in range(0, len(todo), batch_size):
        store.add(todo[start : start + batch_size], runtime.embed(todo[start : start + batch_size]))
        print(f"\r  embedded {min(start + batch_size, len(todo))}/{len(todo)}", end="", file=sys.stderr, flush=True)
    return np.asarray([store.get(t) for t in texts], dtype=np.float32)


# --------------------------------------------------------------------------- classifiers as matrices


def keyword_log_probs(rows):
    keyword = classification.KeywordClassifier()
    return np.log(np.asarray([[keyword.classify(r["prompt"]).scores[t] for t in TASKS] for r in rows]) + 1e-12)


def embedding_log_probs(method: str, param: float, fit_rows, fit_x, test_x, anchors=None):
    """Per-task log-probabilities of the test vectors, from a head or centroids trained on fit_rows and the
    anchors (rows, vectors), if any."""
    if anchors is not None and anchors[0]:
        fit_rows, fit_x = list(fit_rows) + list(anchors[0]), np.vstack([fit_x, anchors[1]])
    labels = [r["task"] for r in fit_rows]
    weights = exemplar_vectors.balanced_weights(labels, [r["source"] for r in fit_rows])
    targets = np.asarray([TASKS.index(t) for t in labels])
    if method == "head":
        w, b = exemplar_vectors.fit_softmax(fit_x, targets, len(TASKS), weights, l2=param)
        return embedding_classifier.log_softmax(test_x @ w + b)
    return embedding_classifier.log_softmax((embedding_classifier.centroids(fit_x, targets, len(TASKS), weights) @ test_x.T).T / param)


def predict(log_emb, log_kw, weight: float, temperature: float = 1.0):
    return embedding_classifier.log_softmax(((1 - weight) * log_emb + weight * log_kw) / temperature)


def held_out(rows, source: str):
    """Masks (fit, test) for leaving `source` out. MT-bench reuses two Vicuna prompts: a prompt of the
    left-out source is never trained on, whichever source also carries it."""
    test = np.asarray([r["source"] == source for r in rows])
    seen = {" ".join(r["prompt"].split()).lower() for r, t in zip(rows, test) if t}
    fit = np.asarray([not t and " ".join(r["prompt"].split()).lower() not in seen for r, t in zip(rows, test)])
    return fit, test


def accuracy_by_source(rows, log_probs) -> dict:
    hits = defaultdict(list)
    for row, lp in zip(rows, log_probs):
        hits[row["source"]].append(TASKS[int(lp.argmax())] == row["task"])
    return {source: sum(h) / len(h) for source, h in hits.items()}


def choose(rows, x, log_kw, method: str, anchors=None) -> dict:
    """Settings for `method` by leave-one-source-out over `rows` only (the caller has removed whatever
    it will test on): the parameter and keyword weight with the best mean accuracy over sources, then a
    temperature that makes the confidence honest on those same out-of-source predictions. Returns the
    best settings without keywords ("alone") and with them ("combined")."""
    held = {}
    for param in GRID[method]:
        held[param] = np.zeros((len(rows), len(TASKS)))
        for source in sorted({r["source"] for r in rows}):
            fit, test = held_out(rows, source)
            held[param][test] = embedding_log_probs(method, param, [r for r, f in zip(rows, fit) if f], x[fit], x[test], anchors)
    gold = np.asarray([TASKS.index(r["task"]) for r in rows])
    chosen = {}
    for variant, weights in (("alone", (0.0,)), ("combined", WEIGHTS)):
        best = None
        for param, log_emb in held.items():
            for weight in weights:
                score = np.mean(list(accuracy_by_source(rows, predict(log_emb, log_kw, weight)).values()))
                if best is None or score > best[0] + 1e-9:
                    best = (score, param, weight)
        _, param, weight = best
        combined = predict(held[param], log_kw, weight)
        temperature = min(TEMPERATURES, key=lambda t: -embedding_classifier.log_softmax(combined / t)[np.arange(len(rows)), gold].mean())
        chosen[variant] = {"method": method, "param": param, "keyword_weight": weight, "temperature": temperature}
    return chosen


def fit_and_test(rows, x, log_kw, method: str, fit, test, anchors=None) -> dict:
    """{variant: (settings, log-probabilities of the test rows)}: settings chosen, and the classifier trained,
    on the fit rows alone (choose() runs its own leave-one-source-out inside them)."""
    fit_rows = [r for r, f in zip(rows, fit) if f]
    found = {}
    for variant, settings in choose(fit_rows, x[fit], log_kw[fit], method, anchors).items():
        log_emb = embedding_log_probs(method, settings["param"], fit_rows, x[fit], x[test], anchors)
        found[variant] = settings, predict(log_emb, log_kw[test], settings["keyword_weight"], settings["temperature"])
    return found


# --------------------------------------------------------------------------- metrics


def expected_calibration_error(rows, log_probs, bins: int = 10) -> float:
    probs = np.exp(log_probs)
    confidence = probs.max(axis=1)
    correct = np.asarray([TASKS[int(p.argmax())] == r["task"] for r, p in zip(rows, probs)])
    error = 0.0
    for low in np.linspace(0, 1, bins, endpoint=False):
        inside = (confidence > low) & (confidence <= low + 1 / bins)
        if inside.any():
            error += inside.mean() * abs(confidence[inside].mean() - correct[inside].mean())
    return float(error)


def summary(rows, log_probs) -> dict:
    by_source = accuracy_by_source(rows, log_probs)
    per_task = {}
    for task in TASKS:
        members = [lp for r, lp in zip(rows, log_probs) if r["task"] == task]
        per_task[task] = sum(TASKS[int(lp.argmax())] == task for lp in members) / len(members) if members else None
    public = [by_source[s] for s in PUBLIC if s in by_source]
    return {"by_source": by_source, "per_task": per_task, "public_mean": sum(public) / len(public) if public else None,
            "mean": sum(by_source.values()) / len(by_source), "ece": expected_calibration_error(rows, log_probs)}


def misses(rows, log_probs) -> str:
    """Where each task's misses went, by source: `coding → analysis 34 (arena-hard 34)`."""
    lines = []
    for task in TASKS:
        went = Counter((T, r["source"]) for r, lp in zip(rows, log_probs) if r["task"] == task and (T := TASKS[int(lp.argmax())]) != task)
        for other in sorted({t for t, _ in went}, key=lambda t: -sum(n for (u, _), n in went.items() if u == t)):
            by_source = ", ".join(f"{s} {n}" for (u, s), n in went.most_common() if u == other)
            lines.append(f"{task} → {other} {sum(n for (u, _), n in went.items() if u == other)} ({by_source})")
    return "; ".join(lines)


def table(results: dict, rows) -> str:
    def pct(value) -> str:
        return "–" if value is None else f"{value:.0%}"

    sources = [s for s in SOURCES if any(r["source"] == s for r in rows)]
    count, tcount = Counter(r["source"] for r in rows), Counter(r["task"] for r in rows)
    head = ["classifier"] + [f"{s} ({count[s]})" for s in sources] + ["**public mean**"] + [f"{t} ({tcount[t]})" for t in TASKS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, result in results.items():
        cells = [pct(result["by_source"].get(s)) for s in sources] + [f"**{pct(result['public_mean'])}**"]
        lines.append(f"| {name} | " + " | ".join(cells + [pct(result["per_task"][t]) for t in TASKS]) + " |")
    return "\n".join(lines)


def split_ids(rows: list[dict], resplit: bool) -> set:
    """A 70/30 split stratified by (source, task), seeded; the test ids are written down so it never drifts."""
    if resplit or not SPLIT_FILE.exists():
        rng, strata, test = random.Random(SEED), defaultdict(list), []
        for row in rows:
            strata[(row["source"], row["task"])].append(row["id"])
        for key in sorted(strata):
            ids = sorted(strata[key])
            rng.shuffle(ids)
            test.extend(ids[: round(len(ids) * TEST_FRACTION)])
        split = {"seed": SEED, "test_fraction": TEST_FRACTION, "stratified_by": ["source", "task"], "test_ids": sorted(test)}
        SPLIT_FILE.write_text(json.dumps(split, indent=1) + "\n")
    test_ids = set(json.loads(SPLIT_FILE.read_text())["test_ids"])
    present = {row["id"] for row in rows}
    sources = {row["source"] for row in rows}
    missing = {i for i in test_ids - present if not any(i.startswith(f"{s}-") for s in SOURCES if s not in sources)}
    if missing:
        raise SystemExit(f"{len(missing)} test ids in {SPLIT_FILE.name} are not in the data; rerun with --resplit")
    # a source added after the file was drawn gets its own seeded, stratified draw, leaving the file as it is
    covered = {row["source"] for row in rows if row["id"] in test_ids}
    rng, strata = random.Random(SEED), defaultdict(list)
    for row in rows:
        if row["source"] not in covered:
            strata[(row["source"], row["task"])].append(row["id"])
    for key in sorted(strata):
        ids = sorted(strata[key])
        rng.shuffle(ids)
        test_ids.update(ids[: round(len(ids) * TEST_FRACTION)])
    return test_ids & present


def small_model_log_probs(rows, model_id: str):
    """The small-model tier asked about every prompt (nothing is trained, so every source is unseen, as with
    classifier_threshold: 1); an unusable answer scores as "general", the task the tier cannot tell."""
    from llm_lmstudio.router import classifier_setup as classifier

    log_model = np.full((len(rows), len(TASKS)), -1e9)
    for i, row in enumerate(rows):
        try:
            log_model[i, TASKS.index(classifier.ask_model(model_id, classification.prompt_view(row["prompt"]), TASKS, {})[0])] = 0.0
        except ValueError:
            log_model[i, TASKS.index(classification.FALLBACK_TASK)] = -1.0
    return log_model


def write_exemplars(rows, x, log_kw, method: str, anchors=None) -> dict:
    """The package's exemplars (every vendored prompt and the anchors), the settings chosen for them by
    leave-one-source-out, and their MiniLM vectors, keyed by text digest."""
    chosen = choose(rows, x, log_kw, method, anchors)["combined"]
    if anchors is not None and anchors[0]:
        rows, x = list(rows) + list(anchors[0]), np.vstack([x, anchors[1]])
    views, groups, table = defaultdict(list), defaultdict(list), {}
    for i in range(len(rows)):
        view = classification.prompt_view(rows[i]["prompt"])
        if view not in views[rows[i]["task"]]:
            views[rows[i]["task"]].append(view)
            groups[rows[i]["task"]].append(rows[i]["source"])
        table[exemplar_vectors.text_key(view)] = x[i]
    payload = {
        "about": "The router's default exemplars: every prompt of the vendored sources and the project's task anchors "
        "(benchmarks/data/router/SOURCES.md), cut to the head and tail the classifier embeds. Settings chosen by "
        "leave-one-source-out in benchmarks/eval_router.py (all-MiniLM-L6-v2).",
        "settings": {"method": chosen["method"], ("l2" if method == "head" else "centroid_temperature"): chosen["param"],
                     "keyword_weight": chosen["keyword_weight"], "temperature": chosen["temperature"]},
        "tasks": {task: views[task] for task in TASKS},
        "sources": {task: groups[task] for task in TASKS},  # training balances sources within each task
    }
    embedding_classifier.EXEMPLARS_FILE.write_text(json.dumps(payload, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    embedding_classifier._exemplar_file.cache_clear()
    exemplar_vectors.write_store(exemplar_vectors.PACKAGED["all-minilm-l6-v2"], table, dtype=np.float16)
    exemplar_vectors.PACKAGED_HEADS["all-minilm-l6-v2"].unlink(missing_ok=True)
    if method == "head":
        # fitted exactly as the router fits it, from the packaged vectors alone (no embedding call)
        classifier = embedding_classifier.EmbeddingClassifier(None, embedding_classifier.load_exemplars(), model_id="all-minilm-l6-v2")
        exemplar_vectors.write_head(exemplar_vectors.PACKAGED_HEADS["all-minilm-l6-v2"], classifier.head_digest, *classifier._weights)
    print(f"wrote {embedding_classifier.EXEMPLARS_FILE.name} and {exemplar_vectors.PACKAGED['all-minilm-l6-v2'].name}: {len(table)} exemplars, {payload['settings']}")
    return payload


def main() -> None:
    args = arguments(
        __doc__, no_embedding=(False, "keywords only (no MiniLM)"), resplit=(False, "draw the in-distribution split again"),
        write_exemplars=(False, "write the package's exemplars, settings and MiniLM vectors"),
        without=(None, "leave out these sources, comma-separated (e.g. a source whose licence bars it)"),
        no_anchors=(False, "train without the task anchors (anchors.jsonl), to measure what they add"),
        classifier_model=(None, "also measure the small-model tier with this local chat model (e.g. lmstudio/qwen/qwen3-1.7b; "
                          "needs the server running; answers cached in llm's user dir)"))

    rows = load_labelled(tuple(name.strip() for name in (args.without or "").split(",") if name.strip()))
    print("prompts per source:", dict(Counter(r["source"] for r in rows)), "per task:", dict(Counter(r["task"] for r in rows)))
    log_kw = keyword_log_probs(rows)
    test_ids = split_ids(rows, args.resplit)
    is_test = np.asarray([r["id"] in test_ids for r in rows])
    test_rows = [r for r, t in zip(rows, is_test) if t]
    loso, split, chosen_log, loso_log_probs = {"keywords": summary(rows, log_kw)}, {"keywords": summary(test_rows, log_kw[is_test])}, {}, {}
    loso_log_probs_all = {"keywords": log_kw}
    if args.classifier_model:
        loso[f"{args.classifier_model} (small-model tier)"] = summary(rows, small_model_log_probs(rows, args.classifier_model))
    if not args.no_embedding:
        x = embed_all([classification.prompt_view(r["prompt"]) for r in rows])
        anchor_rows = [] if args.no_anchors else load_anchors(rows)
        anchors = (anchor_rows, embed_all([classification.prompt_view(r["prompt"]) for r in anchor_rows]) if anchor_rows else None)
        print(f"task anchors (training only): {len(anchor_rows)}")
        for method in ("centroid", "head"):
            out = {v: np.zeros((len(rows), len(TASKS))) for v in ("alone", "combined")}
            for source in [s for s in SOURCES if any(r["source"] == s for r in rows)]:  # each classified by settings and training that never saw it
                fit, test = held_out(rows, source)
                for variant, (settings, log_probs) in fit_and_test(rows, x, log_kw, method, fit, test, anchors).items():
                    chosen_log[f"{method} {variant}, {source} left out"] = settings
                    out[variant][test] = log_probs
            for variant, (settings, log_probs) in fit_and_test(rows, x, log_kw, method, ~is_test, is_test, anchors).items():
                name = f"MiniLM {method}" + (" + keywords" if variant == "combined" else "")
                loso[name], split[name] = summary(rows, out[variant]), summary(test_rows, log_probs)
                loso_log_probs_all[name] = out[variant]
                if variant == "combined":
                    loso_log_probs[method] = out[variant]
                # undone with the split's temperature, not each left-out source's own
                loso[name]["ece_uncalibrated"] = expected_calibration_error(rows, embedding_classifier.log_softmax(out[variant] * settings["temperature"]))
                print(f"{name}: leave-one-source-out {loso[name]['public_mean']:.1%} (public mean), in-distribution {split[name]['mean']:.1%}", flush=True)
        if args.write_exemplars:  # the package ships whichever method did better on sources it never saw
            write_exemplars(rows, x, log_kw, max(("centroid", "head"), key=lambda m: loso[f"MiniLM {m} + keywords"]["public_mean"]), anchors)
    print("\n## Leave-one-source-out (each source classified by settings and training that never saw it)\n")
    print(table(loso, rows))
    if not args.no_embedding:
        shipped = max(("centroid", "head"), key=lambda m: loso[f"MiniLM {m} + keywords"]["public_mean"])
        print(f"\nMisses of MiniLM {shipped} + keywords (the one that ships), leave-one-source-out: " + misses(rows, loso_log_probs[shipped]))
    second = second_labels()
    if second:
        keep = confirmed(rows, second)
        kept = [r for r, k in zip(rows, keep) if k]
        print(f"\n## Leave-one-source-out on confirmed labels ({len(rows) - len(kept)} prompts dropped: a blind second labelling of "
              f"Arena-Hard's {sum(r['id'] in second for r in rows)} coding and math prompts put them elsewhere or was unsure)\n")
        print("Second labelling against Arena-Hard's own (theirs → second's): " + agreement(rows, second) + "\n")
        for name, log_probs in loso_log_probs_all.items():
            loso[name]["confirmed"] = summary(kept, log_probs[keep])
        print(table({name: loso[name]["confirmed"] for name in loso_log_probs_all}, kept))
    print("\nCalibration (expected calibration error of the confidence, leave-one-source-out): "
          + "; ".join(f"{k} {v['ece']:.3f}" + (f" (before temperature {v['ece_uncalibrated']:.3f})" if "ece_uncalibrated" in v else "") for k, v in loso.items()))
    print(f"\n## In-distribution ({int(is_test.sum())} test prompts of the seeded 70/30 split; trained on the rest)\n")
    print(table(split, test_rows))
    write_json("router_eval", {"loso": loso, "split": split, "chosen": chosen_log})


if __name__ == "__main__":
    main()
