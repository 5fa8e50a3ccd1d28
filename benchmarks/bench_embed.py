"""Benchmark: `llm embed-multi` of short documents through LM Studio (the stand-in, real MiniLM behind it) against the
same texts posted directly with httpx in batches of the same size, in one run; also counts the plugin's requests.

Run: .venv/bin/python benchmarks/bench_embed.py [--docs 1000] [--batch 64] [--runs 3]   (writes benchmarks/out/embed.json)
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

from _common import LLM, median, ratio, time_command, write_json

from tests.fake_lmstudio import FakeLMStudio
from tests.fake_lmstudio.models_dir import build_models_dir

KEY = "test-org/text-embedding-all-minilm-l6-v2"
TOPICS = ["cats", "stock markets", "python code", "the weather", "cooking pasta", "football", "space travel", "music"]


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
    import sqlite_utils

    with tempfile.TemporaryDirectory() as work:
        db = sqlite_utils.Database(Path(work) / "embeddings.db")
        collection = llm.Collection("docs", db, model_id=f"lmstudio/{KEY}")
        started = time.perf_counter()
        collection.embed_multi(((str(i), text) for i, text in enumerate(texts)), batch_size=batch)
        elapsed = time.perf_counter() - started
        assert db["embeddings"].count == len(texts)
        return elapsed


def plugin_cli(texts: list[str], batch: int) -> float:
    with tempfile.TemporaryDirectory() as work:
        csv = Path(work) / "docs.csv"
        csv.write_text("id,content\n" + "\n".join(f'{i},"{t}"' for i, t in enumerate(texts)))
        return time_command([LLM, "embed-multi", "docs", str(csv), "-m", f"lmstudio/{KEY}", "--batch-size", str(batch),
                             "-d", str(Path(work) / "e.db")], dict(os.environ))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    texts = [f"Document {i}: a short note about {TOPICS[i % len(TOPICS)]}, written on day {i % 31 + 1}." for i in range(args.docs)]
    timings = {"direct": [], "plugin": [], "cli": []}
    with tempfile.TemporaryDirectory() as work:
        with FakeLMStudio(build_models_dir(Path(work) / "models")) as server:
            os.environ.update(LMSTUDIO_BASE_URL=server.base_url, LLM_USER_PATH=str(Path(work) / "llm"))
            direct(server, texts[: args.batch], args.batch)  # JIT-load the model, warm both paths
            plugin_in_process(texts[: args.batch], args.batch)
            for _ in range(args.runs):  # interleaved, so drift hits every path alike
                timings["direct"].append(direct(server, texts, args.batch))
                server.clear_requests()
                timings["plugin"].append(plugin_in_process(texts, args.batch))
                requests = len([r for r in server.requests() if r["path"] == "/v1/embeddings"])
                timings["cli"].append(plugin_cli(texts, args.batch))
    labels = {"direct": "httpx direct (batches, no storage)", "plugin": "plugin: llm Collection.embed_multi (stores in SQLite)",
              "cli": "plugin: `llm embed-multi` CLI (includes llm start-up)"}
    rows = [{"path": labels[k], "median_s": round(median(v), 3), "docs_per_s": round(args.docs / median(v), 1),
             "ratio_to_direct": ratio(median(timings["direct"]), median(v))} for k, v in timings.items()]
    for row in rows:
        print(f"  {row['path']:55s} {row['median_s']:7.3f} s  {row['docs_per_s']:8.1f} docs/s  ratio {row['ratio_to_direct']}")
    expected = math.ceil(args.docs / args.batch)
    print(f"  HTTP requests made by the plugin: {requests} (expected ceil({args.docs}/{args.batch}) = {expected})")
    write_json("embed", {"benchmark": "embed", "docs": args.docs, "batch": args.batch, "runs": args.runs, "results": rows,
                         "http_requests": requests, "expected_requests": expected})
    if requests != expected:
        raise SystemExit("the plugin did not batch as configured")


if __name__ == "__main__":
    main()
