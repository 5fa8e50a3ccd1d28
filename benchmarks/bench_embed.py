"""Benchmark: `llm embed-multi` of short documents into a collection through LM Studio (the stand-in,
real MiniLM weights behind it), against the same texts embedded directly with httpx in batches of the
same size, measured in one run. Also counts the HTTP requests the plugin made (must be ceil(N / batch)).

Run: .venv/bin/python benchmarks/bench_embed.py [--docs 1000] [--batch 64] [--runs 3]
Results also in benchmarks/out/embed.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_lmstudio import FakeLMStudio  # noqa: E402
from tests.fake_lmstudio.models_dir import build_models_dir  # noqa: E402

KEY = "test-org/text-embedding-all-minilm-l6-v2"
LLM = str(Path(sys.executable).parent / "llm")
TOPICS = ["cats", "stock markets", "python code", "the weather", "cooking pasta", "football", "space travel", "music"]


def documents(count: int) -> list[str]:
    return [f"Document {i}: a short note about {TOPICS[i % len(TOPICS)]}, written on day {i % 31 + 1}." for i in range(count)]


def direct(server: FakeLMStudio, texts: list[str], batch: int) -> float:
    import httpx

    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        started = time.perf_counter()
        for start in range(0, len(texts), batch):
            response = client.post("/v1/embeddings", json={"model": KEY, "input": texts[start : start + batch]})
            response.raise_for_status()
            assert len(response.json()["data"]) == len(texts[start : start + batch])
        return time.perf_counter() - started


def plugin_in_process(texts: list[str], batch: int) -> float:
    import llm

    with tempfile.TemporaryDirectory() as work:
        import sqlite_utils

        db = sqlite_utils.Database(Path(work) / "embeddings.db")
        collection = llm.Collection("docs", db, model_id=f"lmstudio/{KEY}")
        started = time.perf_counter()
        collection.embed_multi(((str(i), text) for i, text in enumerate(texts)), batch_size=batch)
        elapsed = time.perf_counter() - started
        assert db["embeddings"].count == len(texts)
        return elapsed


def plugin_cli(texts: list[str], batch: int, env: dict) -> float:
    with tempfile.TemporaryDirectory() as work:
        csv = Path(work) / "docs.csv"
        csv.write_text("id,content\n" + "\n".join(f'{i},"{t}"' for i, t in enumerate(texts)))
        started = time.perf_counter()
        subprocess.run(
            [LLM, "embed-multi", "docs", str(csv), "-m", f"lmstudio/{KEY}", "--batch-size", str(batch),
             "-d", str(Path(work) / "e.db")],
            env=env, check=True, stdout=subprocess.DEVNULL,
        )
        return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    texts = documents(args.docs)
    with tempfile.TemporaryDirectory() as work:
        models = build_models_dir(Path(work) / "models")
        with FakeLMStudio(models) as server, tempfile.TemporaryDirectory() as user_dir:
            os.environ.update(LMSTUDIO_BASE_URL=server.base_url, LLM_USER_PATH=user_dir)
            env = dict(os.environ)
            direct(server, texts[: args.batch], args.batch)  # JIT-load the model, warm both paths
            plugin_in_process(texts[: args.batch], args.batch)
            timings = {"direct": [], "plugin": [], "cli": []}
            requests = None
            for _ in range(args.runs):
                timings["direct"].append(direct(server, texts, args.batch))
                server.clear_requests()
                timings["plugin"].append(plugin_in_process(texts, args.batch))
                requests = len([r for r in server.requests() if r["path"] == "/v1/embeddings"])
                timings["cli"].append(plugin_cli(texts, args.batch, env))
    rate = {k: args.docs / statistics.median(v) for k, v in timings.items()}
    expected_requests = math.ceil(args.docs / args.batch)
    result = {
        "benchmark": "embed",
        "docs": args.docs,
        "batch": args.batch,
        "runs": args.runs,
        "results": [
            {"path": "httpx direct (batches, no storage)", "median_s": round(statistics.median(timings["direct"]), 3),
             "docs_per_s": round(rate["direct"], 1), "ratio_to_direct": 1.0},
            {"path": "plugin: llm Collection.embed_multi (stores in SQLite)", "median_s": round(statistics.median(timings["plugin"]), 3),
             "docs_per_s": round(rate["plugin"], 1), "ratio_to_direct": round(rate["plugin"] / rate["direct"], 3)},
            {"path": "plugin: `llm embed-multi` CLI (includes llm start-up)", "median_s": round(statistics.median(timings["cli"]), 3),
             "docs_per_s": round(rate["cli"], 1), "ratio_to_direct": round(rate["cli"] / rate["direct"], 3)},
        ],
        "http_requests": requests,
        "expected_requests": expected_requests,
    }
    for row in result["results"]:
        print(f"  {row['path']:55s} {row['median_s']:7.3f} s  {row['docs_per_s']:8.1f} docs/s  ratio {row['ratio_to_direct']}")
    print(f"  HTTP requests made by the plugin: {requests} (expected ceil({args.docs}/{args.batch}) = {expected_requests})")
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "embed.json").write_text(json.dumps(result, indent=2))
    if requests != expected_requests:
        raise SystemExit("the plugin did not batch as configured")


if __name__ == "__main__":
    main()
