"""Native MLX embeddings: documents/s for `llm embed-multi` into a collection via mlx/<name> against mlx_embeddings called
directly on the same documents and batch size, real all-MiniLM-L6-v2 (needs the [mlx-embeddings] extra; the test extra has it).

Run: .venv/bin/python benchmarks/bench_mlx_embed.py [--docs 48] [--reps 3]   (writes benchmarks/out/mlx_embed.json)
"""

from __future__ import annotations

import itertools
import json
import time

from _common import arguments, clocked, interleave, machine, median, sandbox, write_json

SANDBOX = sandbox("mlx-embed")  # before llm is imported

from tests import model_factory  # noqa: E402

SUBJECTS = ["The cat", "A delivery driver", "The central bank", "My neighbour", "The new compiler", "A small startup",
            "The river", "Our football team"]
VERBS = ["quietly improved", "suddenly rejected", "carefully studied", "finally released", "slowly crossed", "proudly announced"]
OBJECTS = ["the quarterly report", "a bridge over the valley", "the interest rate", "its first product", "an old garden",
           "the championship"]


def direct(model, tokenizer, texts, batch_size, max_length):
    """mlx_embeddings as its README shows it: tokenize a padded batch, run it, read text_embeds."""
    vectors = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer.batch_encode_plus(texts[start : start + batch_size], return_tensors="mlx", padding=True,
                                              truncation=True, max_length=max_length)
        vectors.extend(model(encoded["input_ids"], attention_mask=encoded["attention_mask"]).text_embeds.tolist())
    return vectors


def main():
    args = arguments(__doc__, docs=48, reps=3)
    started = time.perf_counter()

    path = model_factory.minilm_path()
    import llm
    import mlx.core as mx
    import sqlite_utils
    from click.testing import CliRunner
    from llm.cli import cli
    from mlx_embeddings.utils import load

    from llm_lmstudio.mlx import discovery
    from llm_lmstudio.mlx import embeddings

    discovery.add(path, "minilm")
    # Short, varied sentences (6-10 tokens), deterministic; ids keep them distinct in the collection.
    texts = [f"{SUBJECTS[i % 8]} {VERBS[(i // 3) % 6]} {OBJECTS[(i // 7) % 6]}." for i in range(args.docs)]
    docs_file = SANDBOX / "docs.json"
    docs_file.write_text(json.dumps([{"id": f"doc-{i}", "content": t} for i, t in enumerate(texts)]))

    plugin = llm.get_embedding_model("mlx/minilm")
    runtime = embeddings.load_embedding(discovery.find("minilm"))
    model, tokenizer = load(str(path))
    batch_size = min(100, plugin.batch_size)  # what llm's collections use

    # Warm-up and a correctness check in one: both paths must produce the same vectors.
    pairs = zip(plugin.embed_multi(texts[:batch_size]), direct(model, tokenizer, texts[:batch_size], batch_size, runtime.max_length))
    max_difference = max(abs(a - b) for u, v in pairs for a, b in zip(u, v))

    collections = itertools.count()

    def embed_multi():  # into a new collection each run (llm skips documents a collection already holds)
        result = CliRunner().invoke(cli, ["embed-multi", f"docs{next(collections)}", str(docs_file), "-m", "mlx/minilm"])
        assert result.exit_code == 0, result.output

    clocks = interleave({"direct": lambda: clocked(lambda: direct(model, tokenizer, texts, batch_size, runtime.max_length)),
                         "llm": lambda: clocked(embed_multi)}, args.reps, warmup=False)  # the check above warmed both paths
    stored = sqlite_utils.Database(str(SANDBOX / "llm" / "embeddings.db"))["embeddings"].count
    rate = {k: args.docs / median(c.wall for c in v) for k, v in clocks.items()}
    cpu_rate = {k: args.docs / median(c.cpu for c in v) for k, v in clocks.items()}
    result = {
        "benchmark": "mlx_embed", "machine": f"{machine()}, mlx {mx.__version__} ({mx.default_device()})",
        "model": "sentence-transformers/all-MiniLM-L6-v2 (22.7M parameters, float32)",
        "docs": args.docs, "batch_size": batch_size, "reps": args.reps, "docs_per_s": rate, "docs_per_cpu_s": cpu_rate,
        "ratio": rate["llm"] / rate["direct"], "ratio_cpu": cpu_rate["llm"] / cpu_rate["direct"],
        "max_abs_difference_vs_direct": max_difference, "embeddings_stored": stored,
    }
    print(f"all-MiniLM-L6-v2, {args.docs} short documents, batches of {batch_size}, median of {args.reps}; {result['machine']}")
    print("                                  docs/s (wall)           docs per CPU-second")
    print(f"  mlx_embeddings directly        {rate['direct']:7.2f}                  {cpu_rate['direct']:7.2f}")
    print(f"  llm embed-multi (collection)   {rate['llm']:7.2f}  ratio {result['ratio']:.3f}      {cpu_rate['llm']:7.2f}  "
          f"ratio {result['ratio_cpu']:.3f}   (target >= 0.9)")
    print(f"  max |plugin - direct| per component: {max_difference:.2e}; {stored} embeddings stored")
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_json("mlx_embed", result)


if __name__ == "__main__":
    main()
