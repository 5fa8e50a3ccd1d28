"""Native MLX embeddings: documents/s for `llm embed-multi` into a collection via mlx/<name> versus mlx_embeddings
called directly on the same documents and batch size, with real all-MiniLM-L6-v2. Writes benchmarks/out/mlx_embed.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out"
sys.path.insert(0, str(ROOT))

SANDBOX = Path(tempfile.mkdtemp(prefix="bench-mlx-embed-"))
os.environ.update(
    LLM_USER_PATH=str(SANDBOX / "llm"),
    LMSTUDIO_MODELS_DIR=str(SANDBOX / "no-lmstudio"),
    HF_HUB_CACHE=str(SANDBOX / "no-hub"),
    LMSTUDIO_BASE_URL="http://127.0.0.1:9",
)

from tests import model_factory  # noqa: E402

SUBJECTS = ["The cat", "A delivery driver", "The central bank", "My neighbour", "The new compiler", "A small startup",
            "The river", "Our football team"]
VERBS = ["quietly improved", "suddenly rejected", "carefully studied", "finally released", "slowly crossed",
         "proudly announced"]
OBJECTS = ["the quarterly report", "a bridge over the valley", "the interest rate", "its first product",
           "an old garden", "the championship"]


def documents(count: int) -> list[dict]:
    """Short, varied sentences (6-10 tokens), deterministic; ids keep them distinct in the collection."""
    docs = []
    for i in range(count):
        text = f"{SUBJECTS[i % len(SUBJECTS)]} {VERBS[(i // 3) % len(VERBS)]} {OBJECTS[(i // 7) % len(OBJECTS)]}."
        docs.append({"id": f"doc-{i}", "content": text})
    return docs


def direct(model, tokenizer, texts, batch_size, max_length):
    """mlx_embeddings as its README shows it: tokenize a padded batch, run it, read text_embeds."""
    vectors = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        encoded = tokenizer.batch_encode_plus(batch, return_tensors="mlx", padding=True, truncation=True, max_length=max_length)
        output = model(encoded["input_ids"], attention_mask=encoded["attention_mask"])
        vectors.extend(output.text_embeds.tolist())
    return vectors


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=48)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--python", action="store_true", help="also time llm's Python embed_multi")
    parser.add_argument("--cold", action="store_true", help="also time one cold `llm embed-multi` command")
    args = parser.parse_args()
    started = time.perf_counter()

    path = model_factory.minilm_path()
    import llm
    import mlx.core as mx
    from click.testing import CliRunner
    from llm.cli import cli
    from mlx_embeddings.utils import load

    from llm_lmstudio import local_models, mlx_embed

    local_models.add(path, "minilm")
    docs = documents(args.docs)
    texts = [d["content"] for d in docs]
    docs_file = SANDBOX / "docs.json"
    docs_file.write_text(json.dumps(docs))

    plugin = llm.get_embedding_model("mlx/minilm")
    runtime = mlx_embed.load_embedding(local_models.find("minilm"))
    model, tokenizer = load(str(path))
    batch_size = min(100, plugin.batch_size)  # what llm's collections use

    # Warm-up and a correctness check in one: both paths must produce the same vectors.
    plugin_vectors = list(plugin.embed_multi(texts[:batch_size]))
    direct_vectors = direct(model, tokenizer, texts[:batch_size], batch_size, runtime.max_length)
    max_difference = max(abs(a - b) for u, v in zip(plugin_vectors, direct_vectors) for a, b in zip(u, v))

    runner = CliRunner()
    paths = ["direct", "llm_embed_multi"] + (["llm_python"] if args.python else [])
    wall = {p: [] for p in paths}
    cpu = {p: [] for p in paths}

    def timed(name, action):
        # CPU time as well as wall time: on a shared machine other processes stretch wall time at random,
        # while the CPU time this process spends is what the plugin's overhead would change.
        w0, c0 = time.perf_counter(), time.process_time()
        action()
        wall[name].append(time.perf_counter() - w0)
        cpu[name].append(time.process_time() - c0)

    for rep in range(args.reps):  # interleaved so that load from other processes hits every path alike
        timed("direct", lambda: direct(model, tokenizer, texts, batch_size, runtime.max_length))

        def embed_multi():
            result = runner.invoke(cli, ["embed-multi", f"docs{rep}", str(docs_file), "-m", "mlx/minilm"])
            assert result.exit_code == 0, result.output

        timed("llm_embed_multi", embed_multi)
        if args.python:
            timed("llm_python", lambda: list(plugin.embed_multi(texts)))

    cold = None
    if args.cold:  # start-up, plugin discovery and model load included
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "llm", "embed-multi", "cold", str(docs_file), "-m", "mlx/minilm"],
                       check=True, capture_output=True, env=os.environ)
        cold = time.perf_counter() - t0

    import sqlite_utils

    stored = sqlite_utils.Database(str(SANDBOX / "llm" / "embeddings.db"))["embeddings"].count
    rate = {k: args.docs / statistics.median(v) for k, v in wall.items()}
    cpu_rate = {k: args.docs / statistics.median(v) for k, v in cpu.items()}
    result = {
        "benchmark": "mlx_embed",
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, mlx {mx.__version__} ({mx.default_device()})",
        "model": "sentence-transformers/all-MiniLM-L6-v2 (22.7M parameters, float32)",
        "docs": args.docs,
        "batch_size": batch_size,
        "reps": args.reps,
        "docs_per_s": rate,
        "docs_per_cpu_s": cpu_rate,
        "ratio_llm_embed_multi": rate["llm_embed_multi"] / rate["direct"],
        "ratio_llm_embed_multi_cpu": cpu_rate["llm_embed_multi"] / cpu_rate["direct"],
        "cold_cli_s": cold,
        "max_abs_difference_vs_direct": max_difference,
        "embeddings_stored": stored,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.python:
        result["ratio_llm_python"] = rate["llm_python"] / rate["direct"]
        result["ratio_llm_python_cpu"] = cpu_rate["llm_python"] / cpu_rate["direct"]
    OUT.mkdir(exist_ok=True)
    (OUT / "mlx_embed.json").write_text(json.dumps(result, indent=2))

    print(f"all-MiniLM-L6-v2, {args.docs} short documents, batches of {batch_size}, median of {args.reps}; {result['machine']}")
    print("                                  docs/s (wall)           docs per CPU-second")
    print(f"  mlx_embeddings directly        {rate['direct']:7.2f}                  {cpu_rate['direct']:7.2f}")
    print(f"  llm embed-multi (collection)   {rate['llm_embed_multi']:7.2f}  ratio {result['ratio_llm_embed_multi']:.3f}    "
          f"{cpu_rate['llm_embed_multi']:7.2f}  ratio {result['ratio_llm_embed_multi_cpu']:.3f}   (target >= 0.9)")
    if args.python:
        print(f"  llm Python embed_multi         {rate['llm_python']:7.2f}  ratio {result['ratio_llm_python']:.3f}    "
              f"{cpu_rate['llm_python']:7.2f}  ratio {result['ratio_llm_python_cpu']:.3f}")
    if cold is not None:
        print(f"  cold `llm embed-multi` command {cold:7.1f} s (start-up + load + {args.docs} docs)")
    print(f"  max |plugin - direct| per component: {max_difference:.2e}; {stored} embeddings stored")
    print(f"wrote {OUT / 'mlx_embed.json'} in {result['seconds']}s")


if __name__ == "__main__":
    main()
