"""Benchmark: the router's decision overhead, against its parts measured directly in the same run.

- keyword classification alone (target: well under 1 ms);
- the router's whole decision (`make_plan`: classify, list local models, read history, score) with the
  keyword classifier, against the stand-in's model list;
- with the embedding classifier (native MiniLM), against one direct embedding call of the same prompt
  (target: the decision costs one embedding call, so the ratio should be close to 1).

Run: .venv/bin/python benchmarks/bench_router.py [--runs N] [--no-embedding]
Results also in benchmarks/out/router.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_lmstudio import FakeLMStudio  # noqa: E402
from tests.fake_lmstudio.models_dir import build_models_dir  # noqa: E402

PROMPTS = [
    "Write a Python function that merges two sorted lists",
    "What is 17% of 2,340? Show the steps.",
    "Write a limerick about a cat who learns to code",
    "Explain how vaccines train the immune system",
    "hey, how's it going?",
]


def median_of(fn, runs: int) -> float:
    fn()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--no-embedding", action="store_true", help="skip the embedding classifier part")
    args = parser.parse_args()

    import llm

    from llm_lmstudio import router, settings, tasks

    rows = []
    keyword = tasks.KeywordClassifier()
    kw = statistics.median(median_of(lambda p=p: keyword.classify(p), args.runs) for p in PROMPTS)
    rows.append({"measure": "keyword classification", "median_ms": round(kw * 1000, 4), "baseline": "-", "ratio": None})
    print(f"  keyword classification: {kw * 1e6:.1f} µs (target < 1 ms)", flush=True)

    with tempfile.TemporaryDirectory() as work:
        models = build_models_dir(Path(work) / "models", include_minilm=not args.no_embedding)
        user_dir = Path(work) / "llm"
        user_dir.mkdir()
        with FakeLMStudio(models) as server:
            os.environ.update(LMSTUDIO_BASE_URL=server.base_url, LLM_USER_PATH=str(user_dir))
            model = router.Router()
            config = settings.RouterConfig(classifier="keyword")

            def plan(text, config=config):
                return router.make_plan(llm.Prompt(text, model, options=model.Options()), config)

            full = statistics.median(median_of(lambda p=p: plan(p), max(5, args.runs // 5)) for p in PROMPTS)
            rows.append({"measure": "router decision, keyword classifier", "median_ms": round(full * 1000, 2),
                         "baseline": "keyword classification", "ratio": round(full / kw, 1)})
            print(f"  router decision with the keyword classifier: {full * 1000:.2f} ms "
                  f"(classification {kw * 1000:.3f} ms; the rest is listing models and reading history)", flush=True)

            if not args.no_embedding:
                from tests.model_factory import minilm_path

                from llm_lmstudio import local_models

                local_models.add(minilm_path(), name="minilm")
                embed_config = settings.RouterConfig(classifier="embedding", embedding_model="mlx/minilm")
                started = time.perf_counter()
                decision = plan(PROMPTS[0], embed_config)
                setup = time.perf_counter() - started
                assert decision.classifier == "embedding", decision.classifier_note
                embedding_model = llm.get_embedding_model("mlx/minilm")
                runs = max(3, args.runs // 10)
                direct = statistics.median(
                    median_of(lambda p=p: embedding_model.embed(tasks.prompt_view(p)), runs) for p in PROMPTS
                )
                routed = statistics.median(median_of(lambda p=p: plan(p, embed_config), runs) for p in PROMPTS)
                rows.append({"measure": "router decision, embedding classifier (MiniLM, native)",
                             "median_ms": round(routed * 1000, 2), "baseline": "one direct embedding call",
                             "baseline_ms": round(direct * 1000, 2), "ratio": round(routed / direct, 3)})
                rows.append({"measure": "first use: embedding the exemplars (cached on disk afterwards)",
                             "median_ms": round(setup * 1000, 1), "baseline": "-", "ratio": None})
                print(f"  router decision with the embedding classifier: {routed * 1000:.1f} ms vs one embedding "
                      f"call {direct * 1000:.1f} ms (ratio {routed / direct:.2f}); first use embeds the exemplars: "
                      f"{setup:.1f} s, once", flush=True)

    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "router.json").write_text(json.dumps({"benchmark": "router", "results": rows}, indent=2))


if __name__ == "__main__":
    main()
