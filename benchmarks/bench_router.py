"""Benchmark: the router's decision overhead, against its parts measured directly in the same run.

- keyword classification alone (target: well under 1 ms);
- the router's whole decision (`make_plan`: classify, list local models, read history, score) with keywords;
- with the embedding classifier (MiniLM served by the stand-in, exemplar vectors and head from the package),
  against one direct embedding call of the same prompt (target: ratio close to 1), and its first use in a
  fresh process (loading the packaged vectors and head; no exemplar is embedded);
- with the small-model tier (`classifier_model`, asked on every prompt here), against one direct call of
  that model with the same request. The stand-in's tiny model answers from a script, so this is the tier's
  overhead, not a real model's speed.

Run: .venv/bin/python benchmarks/bench_router.py [--runs N] [--no-embedding]
"""

from __future__ import annotations

import os
import subprocess
import sys

from _common import ROOT, arguments, median, ms, ratio, samples, sandbox, stand_in, write_json

PROMPTS = [
    "Write a Python function that merges two sorted lists",
    "What is 17% of 2,340? Show the steps.",
    "Write a limerick about a cat who learns to code",
    "Explain how vaccines train the immune system",
    "hey, how's it going?",
]


def per_prompt(fn, runs: int) -> float:
    """The median over prompts of each prompt's median time."""
    return median(median(samples(lambda p=p: fn(p), runs)) for p in PROMPTS)


def main():
    args = arguments(__doc__, runs=50, no_embedding=(False, "skip the embedding classifier part"))
    sandbox("router")  # no LM Studio models folder or hub cache: only the stand-in's models are candidates

    import llm

    from llm_lmstudio.router import classifier_setup
    from llm_lmstudio.router import planning
    from llm_lmstudio.router import model as router_model
    from llm_lmstudio.core import settings
    from llm_lmstudio.router import config as router_config
    from llm_lmstudio.router import classification
    from tests.fake_lmstudio.models_dir import EMBEDDING_NAME, PUBLISHER

    rows = []
    keyword = classification.KeywordClassifier()
    kw = per_prompt(keyword.classify, args.runs)
    rows.append({"measure": "keyword classification", "median_ms": ms(kw, 4), "baseline": "-", "ratio": None})
    print(f"  keyword classification: {kw * 1e6:.1f} µs (target < 1 ms)", flush=True)

    with stand_in(include_minilm=not args.no_embedding) as server:
        model = router_model.Router()

        def plan(text, config):
            return planning.make_plan(llm.Prompt(text, model, options=model.Options()), config)

        keyword_config = router_config.RouterConfig(classifier="keyword")
        full = per_prompt(lambda p: plan(p, keyword_config), max(5, args.runs // 5))
        rows.append({"measure": "router decision, keyword classifier", "median_ms": ms(full, 2),
                     "baseline": "keyword classification", "ratio": ratio(full, kw)})
        print(f"  router decision with keywords: {full * 1000:.2f} ms (the rest is listing models and reading history)", flush=True)

        # the small-model tier, asked every time (threshold 1), each prompt's answer cache cleared first
        small = "lmstudio/test-org/tiny-llama"
        tier_config = router_config.RouterConfig(classifier="keyword", classifier_model=small, classifier_threshold=1.0)
        cache = settings.plugin_dir() / classifier_setup.LLM_CACHE

        def tiered(text):
            cache.unlink(missing_ok=True)
            server.script('{"task": "research"}')
            return plan(text, tier_config)

        def direct(text):
            server.script('{"task": "research"}')
            schema = {"type": "object", "properties": {"task": {"type": "string", "enum": list(classification.DEFAULT_TASKS)}}}
            return llm.get_model(small).prompt(text, schema=schema, stream=False, temperature=0.0, max_tokens=40).text()

        runs = max(3, args.runs // 10)
        tier = per_prompt(tiered, runs)
        call = per_prompt(direct, runs)
        rows.append({"measure": "router decision, small-model tier (scripted stand-in model)", "median_ms": ms(tier, 1),
                     "baseline": "one direct call of that model", "baseline_ms": ms(call, 1), "ratio": ratio(tier, call)})
        print(f"  router decision with the small-model tier: {tier * 1000:.1f} ms vs a direct call {call * 1000:.1f} ms", flush=True)

        if not args.no_embedding:
            embedder = f"lmstudio/{PUBLISHER}/{EMBEDDING_NAME}"
            embed_config = router_config.RouterConfig(classifier="embedding", embedding_model=embedder)
            server.load(f"{PUBLISHER}/{EMBEDDING_NAME}")
            embedding_model = llm.get_embedding_model(embedder)
            runs = max(3, args.runs // 10)
            one_call = per_prompt(lambda p: embedding_model.embed(classification.prompt_view(p)), runs)
            routed = per_prompt(lambda p: plan(p, embed_config), runs)
            assert plan(PROMPTS[0], embed_config).classifier == "embedding"
            rows.append({"measure": "router decision, embedding classifier (MiniLM on the stand-in)", "median_ms": ms(routed, 1),
                         "baseline": "one direct embedding call", "baseline_ms": ms(one_call, 1), "ratio": ratio(routed, one_call)})
            # first use in a fresh process: packaged vectors and head, no exemplar embedded
            code = ("import time, llm; from llm_lmstudio.router import classifier_setup as classifier, config as router_config; t = time.perf_counter(); "
                    f"c = classifier.embedding_classifier({embedder!r}, router_config.RouterConfig()); c.build(); "
                    "print(time.perf_counter() - t, len(c.pending()))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=os.environ).stdout.split()
            first, pending = float(out[0]), int(out[1])
            rows.append({"measure": "first use: packaged exemplar vectors and head loaded (fresh process)",
                         "median_ms": ms(first, 1), "baseline": "-", "ratio": None, "exemplars_embedded": pending})
            print(f"  router decision with embeddings: {routed * 1000:.1f} ms vs one embedding call {one_call * 1000:.1f} ms "
                  f"(ratio {routed / one_call:.2f}); first use {first * 1000:.0f} ms, {pending} exemplars embedded", flush=True)

    write_json("router", {"benchmark": "router", "results": rows})


if __name__ == "__main__":
    main()
