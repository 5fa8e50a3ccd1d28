"""Benchmark: `llm embed-multi` of short documents through LM Studio (the stand-in, real MiniLM behind it) against the
same texts posted directly with httpx in batches of the same size, in one run; also counts the plugin's requests.

Run: .venv/bin/python benchmarks/bench_embed.py [--docs 1000] [--batch 64] [--runs 3]   (writes benchmarks/out/embed.json)
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from _common import LLM, arguments, interleave, median, ratio, seconds, stand_in, time_command, write_json

KEY = "test-org/text-embedding-all-minilm-l6-v2"
TOPICS = ["cats", "stock markets", "python code", "the weather", "cooking pasta", "football", "space travel", "music"]


def direct(server, texts: list[str], batch: int) -> float:
    import httpx

    def post_all():
        for start in range(0, len(texts), batch):
            response = client.post("/v1/embeddings", json={"model": KEY, "input": texts[start : start + batch]})
            response.raise_for_status()
            assert len(response.json()["data"]) == len(texts[start : start + batch])

    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        return seconds(post_all)


def plugin_in_process(texts: list[str], batch: int) -> float:
    import llm
    import sqlite_utils

    with tempfile.TemporaryDirectory() as work:
        db = sqlite_utils.Database(Path(work) / "embeddings.db")
        collection = llm.Collection("docs", db, model_id=f"lmstudio/{KEY}")
        elapsed = seconds(lambda: collection.embed_multi(((str(i), text) for i, text in enumerate(texts)), batch_size=batch))
        assert db["embeddings"].count == len(texts)
        return elapsed


def plugin_cli(texts: list[str], batch: int) -> float:
    with tempfile.TemporaryDirectory() as work:
        csv = Path(work) / "docs.csv"
        csv.write_text("id,content\n" + "\n".join(f'{i},"{t}"' for i, t in enumerate(texts)))
        return time_command([LLM, "embed-multi", "docs", str(csv), "-m", f"lmstudio/{KEY}", "--batch-size", str(batch),
                             "-d", str(Path(work) / "e.db")], dict(os.environ))


def main():
    args = arguments(__doc__, docs=1000, batch=64, runs=3)
    texts = [f"Document {i}: a short note about {TOPICS[i % len(TOPICS)]}, written on day {i % 31 + 1}." for i in range(args.docs)]
    requests = []
    with stand_in() as server:
        def in_process():
            server.clear_requests()
            elapsed = plugin_in_process(texts, args.batch)
            requests.append(len([r for r in server.requests() if r["path"] == "/v1/embeddings"]))
            return elapsed

        direct(server, texts[: args.batch], args.batch)  # JIT-load the model, warm both paths
        plugin_in_process(texts[: args.batch], args.batch)
        timings = interleave({"direct": lambda: direct(server, texts, args.batch), "plugin": in_process,
                              "cli": lambda: plugin_cli(texts, args.batch)}, args.runs, warmup=False)
    labels = {"direct": "httpx direct (batches, no storage)", "plugin": "plugin: llm Collection.embed_multi (stores in SQLite)",
              "cli": "plugin: `llm embed-multi` CLI (includes llm start-up)"}
    rows = [{"path": labels[k], "median_s": round(median(v), 3), "docs_per_s": round(args.docs / median(v), 1),
             "ratio_to_direct": ratio(median(timings["direct"]), median(v))} for k, v in timings.items()]
    for row in rows:
        print(f"  {row['path']:55s} {row['median_s']:7.3f} s  {row['docs_per_s']:8.1f} docs/s  ratio {row['ratio_to_direct']}")
    expected = math.ceil(args.docs / args.batch)
    print(f"  HTTP requests made by the plugin: {requests[-1]} (expected ceil({args.docs}/{args.batch}) = {expected})")
    write_json("embed", {"benchmark": "embed", "docs": args.docs, "batch": args.batch, "runs": args.runs, "results": rows,
                         "http_requests": requests[-1], "expected_requests": expected})
    if requests[-1] != expected:
        raise SystemExit("the plugin did not batch as configured")


if __name__ == "__main__":
    main()
