"""Times the router's history query (llm_lmstudio.stats.history) on a synthetic 100,000-turn logs.db
built with llm's own migrations. Reads and writes only files under benchmarks/out/ (or --db)."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llm_lmstudio import stats  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
SEED = 7

# (model id, share of turns, median duration ms, tokens/s): a few heavy hitters and a long tail,
# as one user's history looks after months of use
MODELS = [
    ("lmstudio/qwen2.5-7b-instruct", 0.30, 4000, 45.0),
    ("gpt-4o-mini", 0.20, 3000, 80.0),
    ("lmstudio/llama-3.2-3b-instruct", 0.15, 2000, 90.0),
    ("mlx/qwen2.5-coder-7b", 0.10, 5000, 40.0),
    ("claude-3.5-sonnet", 0.08, 6000, 60.0),
    ("lmstudio/gemma-2-9b-it", 0.06, 7000, 30.0),
    ("mlx/phi-3.5-mini", 0.04, 2500, 70.0),
    ("lmstudio/mistral-nemo", 0.03, 6500, 35.0),
    ("lmstudio/deepseek-r1-distill-qwen-14b", 0.02, 30000, 20.0),
    ("gemini-2.0-flash", 0.015, 2000, 120.0),
    ("lmstudio/rarely-used-model", 0.005, 9000, 15.0),
]
ROUTED_SHARE = 0.15  # turns logged as model=lmstudio-router, resolved_model=<target>


def build_log(path: Path, turns: int) -> None:
    import sqlite_utils
    from llm.migrations import migrate

    if path.exists():
        path.unlink()
    db = sqlite_utils.Database(path)
    migrate(db)
    rng = random.Random(SEED)
    names = [m[0] for m in MODELS]
    weights = [m[1] for m in MODELS]
    profile = {m[0]: m for m in MODELS}
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)

    def rows():
        for i in range(turns):
            name = rng.choices(names, weights)[0]
            _, _, median_ms, rate = profile[name]
            duration = int(median_ms * rng.lognormvariate(0, 0.4))
            output = max(1, int(rate * duration / 1000 * rng.uniform(0.8, 1.1)))
            routed = rng.random() < ROUTED_SHARE
            yield {
                "id": f"01J{i:010d}{rng.getrandbits(40):010x}",  # ULID-shaped, increasing like real ids
                "thread_id": None,
                "model": "lmstudio-router" if routed else name,
                "resolved_model": name if routed else None,
                "options_json": "{}",
                "input_tokens": rng.randint(10, 4000),
                "output_tokens": output,
                "duration_ms": duration,
                "datetime_utc": (start + timedelta(seconds=40 * i)).isoformat(),
                "response_json": None,
            }

    with db.conn:
        db["turns"].insert_all(rows(), batch_size=2000)
    db.close()


def build_attempts(path: Path, count: int) -> None:
    if path.exists():
        path.unlink()
    rng = random.Random(SEED + 1)
    local = [m[0] for m in MODELS if m[0].startswith(("lmstudio/", "mlx/"))]
    for _ in range(count):
        ok = rng.random() > 0.05
        stats.record_attempt(rng.choice(local), ok, error_kind=None if ok else "timeout", ttft_ms=rng.uniform(80, 900) if ok else None,
                             duration_ms=rng.uniform(500, 9000), store_path=path)


def add_turns(path: Path, count: int) -> None:
    """What happens between two prompts: llm logs a few more turns."""
    import sqlite_utils

    db = sqlite_utils.Database(path)
    newest = db.execute("select max(rowid) from turns").fetchone()[0]
    db["turns"].insert_all({"id": f"01K{newest + i:010d}", "model": MODELS[0][0], "duration_ms": 3000, "output_tokens": 120} for i in range(1, count + 1))
    db.close()


def median_ms(fn, repeat: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), max(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=100_000)
    parser.add_argument("--attempts", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--window", type=int, default=stats.DEFAULT_WINDOW)
    args = parser.parse_args()

    OUT.mkdir(exist_ok=True)
    log = OUT / f"bench-logs-{args.turns}.db"
    attempts = OUT / "bench-router.db"
    template = OUT / "bench-router-template.db"
    began = time.perf_counter()
    build_log(log, args.turns)
    build_attempts(template, args.attempts)
    print(f"built {log.name}: {args.turns} turns ({log.stat().st_size / 1e6:.1f} MB) and {args.attempts} attempts in {time.perf_counter() - began:.1f} s")

    local = [m[0] for m in MODELS if m[0].startswith(("lmstudio/", "mlx/"))]
    results = {}

    def timed(name, fn, repeat):
        median, worst = median_ms(fn, repeat)
        results[name] = {"median_ms": round(median, 3), "max_ms": round(worst, 3), "repeat": repeat}
        print(f"{name:52s} median {median:8.2f} ms   max {worst:8.2f} ms")

    def fresh_store():
        # a store with attempts but no copy of llm's turns yet
        shutil.copyfile(template, attempts)

    # the first call of a new store copies llm's turns (once per user, not per prompt)
    first = []
    for _ in range(3):
        fresh_store()
        start = time.perf_counter()
        stats.history(log, local, args.window, store_path=attempts)
        first.append((time.perf_counter() - start) * 1000)
    results["first call: initial copy of the newest turns"] = {"median_ms": round(statistics.median(first), 3), "max_ms": round(max(first), 3), "repeat": 3}
    print(f"{'first call: initial copy of the newest turns':52s} median {statistics.median(first):8.2f} ms   max {max(first):8.2f} ms")
    cases = {
        "router candidates (7 local models)": lambda: stats.history(log, local, args.window, store_path=attempts),
        "one busy model": lambda: stats.history(log, [MODELS[0][0]], args.window, store_path=attempts),
        "one rare model (0.5% of turns)": lambda: stats.history(log, ["lmstudio/rarely-used-model"], args.window, store_path=attempts),
        "a model never logged": lambda: stats.history(log, ["lmstudio/never-used"], args.window, store_path=attempts),
        "every model (model_ids=None)": lambda: stats.history(log, None, args.window, store_path=attempts),
    }
    for name, fn in cases.items():
        fn()
        timed(name, fn, args.repeat)
    incremental = []
    for _ in range(5):
        add_turns(log, 5)
        start = time.perf_counter()
        stats.history(log, local, args.window, store_path=attempts)
        incremental.append((time.perf_counter() - start) * 1000)
    name = "7 models, after llm logged 5 new turns"
    results[name] = {"median_ms": round(statistics.median(incremental), 3), "max_ms": round(max(incremental), 3), "repeat": 5}
    print(f"{name:52s} median {statistics.median(incremental):8.2f} ms   max {max(incremental):8.2f} ms")

    sample = stats.history(log, local[:3], args.window, store_path=attempts)
    for model, s in sample.items():
        print(f"  {model}: turns={s.turns} median={s.median_duration_ms} ms tok/s={s.output_tokens_per_second and round(s.output_tokens_per_second, 1)} "
              f"ttft={s.median_ttft_ms and round(s.median_ttft_ms)} ms failures={s.failures}/{s.attempts}")
    payload = {"turns": args.turns, "attempts": args.attempts, "window": args.window, "repeat": args.repeat, "results": results,
               "db_bytes": log.stat().st_size}
    (OUT / "bench_stats.json").write_text(json.dumps(payload, indent=2))
    print(f"wrote {OUT / 'bench_stats.json'}")


if __name__ == "__main__":
    main()
