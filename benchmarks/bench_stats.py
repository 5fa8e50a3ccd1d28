"""Times the per-model figures on a synthetic 100,000-answer logs.db built with llm's own migrations: the router's
history query (stats.history) and `llm lmstudio stats` (metrics.report), against a direct scan of llm's turns."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from _common import OUT, arguments, machine, median, ms, ratio, samples, seconds, write_json

from llm_lmstudio.store import performance
from llm_lmstudio.store import call_history, log_mirror

SEED = 7

# (model id, share of answers, median duration ms, tokens/s): a few heavy hitters and a long tail,
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
ROUTED_SHARE = 0.15  # answers logged as model=lmstudio-router, resolved_model=<target>
LOCAL = [m[0] for m in MODELS if m[0].startswith(("lmstudio/", "mlx/"))]


def _payload(rng: random.Random, name: str, ttft_ms: float, routed: bool) -> dict:
    """response_json shaped like the plugin writes it (sizes matter: the direct scan reads every byte)."""
    if name.startswith("mlx/"):
        own = {"engine": "mlx-lm", "path": f"/models/{name}", "finish_reason": "stop", "prompt_tokens": 812,
               "prompt_tps": 410.2, "generation_tps": 41.7, "time_to_first_token_s": ttft_ms / 1000, "peak_memory_gb": 5.1}
    else:
        own = {"id": f"chatcmpl-{rng.getrandbits(48):x}", "object": "chat.completion", "created": 1735689600, "model": name,
               "stats": {"tokens_per_second": 44.1, "time_to_first_token": ttft_ms / 1000, "generation_time": 3.1, "stop_reason": "eosFound"},
               "model_info": {"arch": "qwen2", "quant": "Q4_K_M", "format": "gguf", "context_length": 32768},
               "runtime": {"name": "llama.cpp-mac-arm64-apple-metal-advsimd", "version": "1.21.0", "supported_formats": ["gguf"]},
               "finish_reason": "stop", "usage": {"prompt_tokens": 812, "completion_tokens": 180, "total_tokens": 992},
               "client": {"endpoint": "/api/v0/chat/completions", "time_to_first_token_ms": ttft_ms}}
    if not routed:
        return own
    return {"router": {"task": "coding", "confidence": 0.81, "classifier": "embedding", "candidates": [{"model": m} for m in LOCAL[:4]]},
            "attempts": [{"model": name, "ok": True, "duration_ms": 3000.0, "ttft_ms": ttft_ms}], "answer": own}


def build_log(path: Path, answers: int) -> None:
    import sqlite_utils
    from llm.migrations import migrate

    path.unlink(missing_ok=True)
    db = sqlite_utils.Database(path)
    migrate(db)
    rng = random.Random(SEED)
    names = [m[0] for m in MODELS]
    weights = [m[1] for m in MODELS]
    profile = {m[0]: m for m in MODELS}
    start = datetime.now(timezone.utc) - timedelta(seconds=60 * answers)  # one answer a minute, up to now

    def rows():
        for i in range(answers):
            name = rng.choices(names, weights)[0]
            _, _, median_ms, rate = profile[name]
            duration = int(median_ms * rng.lognormvariate(0, 0.4))
            output = max(1, int(rate * duration / 1000 * rng.uniform(0.8, 1.1)))
            routed = rng.random() < ROUTED_SHARE
            local = name in LOCAL
            yield {
                "id": f"01j{i:010d}{rng.getrandbits(40):013x}",  # ULID-shaped, increasing like real ids
                "model": "lmstudio-router" if routed else name,
                "resolved_model": name if routed else (name.split("/", 1)[1] if name.startswith("lmstudio/") else None),
                "options_json": "{}",
                "input_tokens": rng.randint(10, 4000),
                "output_tokens": output,
                "duration_ms": duration,
                "datetime_utc": (start + timedelta(seconds=60 * i)).isoformat(),
                "response_json": json.dumps(_payload(rng, name, rng.uniform(80, 900), routed)) if local or routed else None,
            }

    with db.conn:
        db["turns"].insert_all(rows(), batch_size=2000)
    db.close()


def build_attempts(path: Path, count: int) -> None:
    path.unlink(missing_ok=True)
    rng = random.Random(SEED + 1)
    for _ in range(count):
        ok = rng.random() > 0.05
        call_history.record_attempt(rng.choice(LOCAL), ok, error_kind=None if ok else rng.choice(["TimedOut", "Unreachable"]),
                             ttft_ms=rng.uniform(80, 900) if ok else None, duration_ms=rng.uniform(500, 9000), store_path=path)


def add_turns(path: Path, count: int) -> None:
    """What happens between two commands: llm logs a few more answers."""
    import sqlite_utils

    db = sqlite_utils.Database(path)
    newest = db.execute("select max(rowid) from turns").fetchone()[0]
    now = datetime.now(timezone.utc).isoformat()
    db["turns"].insert_all(
        {"id": f"01k{newest + i:010d}", "model": MODELS[0][0], "duration_ms": 3000, "output_tokens": 120, "datetime_utc": now,
         "response_json": json.dumps({"client": {"time_to_first_token_ms": 200.0}})}
        for i in range(1, count + 1)
    )
    db.close()


def direct_scan(log: Path, since: str | None) -> int:
    """The direct path: what a script reading llm's log itself does for the same figures (one pass, json in SQL)."""
    with contextlib.closing(sqlite3.connect(f"{log.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        return len(conn.execute(
            "select coalesce(resolved_model, model), duration_ms, output_tokens, input_tokens, datetime_utc,"
            " json_extract(response_json, '$.client.time_to_first_token_ms') from turns"
            " where (model like 'lmstudio%' or model like 'mlx/%')" + (" and datetime_utc >= ?" if since else ""),
            (since,) if since else (),
        ).fetchall())


def main() -> None:
    args = arguments(__doc__, turns=100_000, attempts=300, repeat=15, window=call_history.DEFAULT_WINDOW)

    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / f"bench-logs-{args.turns}.db"
    store = OUT / "bench-router.db"
    template = OUT / "bench-router-template.db"
    began = time.perf_counter()
    build_log(log, args.turns)
    build_attempts(template, args.attempts)
    print(f"built {log.name}: {args.turns} answers ({log.stat().st_size / 1e6:.1f} MB) and {args.attempts} attempts "
          f"in {time.perf_counter() - began:.1f} s on {machine()}")
    results: dict[str, dict] = {}

    def record(name: str, times: list[float], baseline: float | None = None):
        entry = {"median_ms": ms(median(times), 2), "max_ms": ms(max(times), 2), "runs": len(times)}
        if baseline:
            entry["ratio_to_direct_scan"] = ratio(median(times), baseline)
        results[name] = entry
        extra = f"   {entry['ratio_to_direct_scan']:.3f} x direct scan" if baseline else ""
        print(f"{name:58s} median {entry['median_ms']:9.2f} ms   max {entry['max_ms']:9.2f} ms{extra}")

    week_ago = (datetime.now(timezone.utc) - timedelta(days=7)).isoformat()
    scan_all = samples(lambda: direct_scan(log, None), args.repeat)
    scan_week = samples(lambda: direct_scan(log, week_ago), args.repeat)
    record("direct scan of llm's turns, everything", scan_all)
    record("direct scan of llm's turns, last 7 days", scan_week)

    # a new store copies llm's turns once (per user, not per command): the router's first prompt only the
    # newest ROUTER_HORIZON, the first `stats` back to HORIZON
    first = []
    for _ in range(3):
        shutil.copyfile(template, store)
        first.append((seconds(lambda: call_history.history(log, LOCAL, args.window, store_path=store)), seconds(lambda: performance.report(log, store_path=store))))
    record(f"router's first prompt: copies the newest {log_mirror.ROUTER_HORIZON} turns", [r for r, _ in first])
    record(f"first stats after it: copies back to {log_mirror.HORIZON} turns", [s for _, s in first], median(scan_all))

    cases = {
        "llm lmstudio stats (everything)": (lambda: performance.report(log, store_path=store), median(scan_all)),
        "llm lmstudio stats --since 7d": (lambda: performance.report(log, since_seconds=7 * 86400, store_path=store), median(scan_week)),
        "llm lmstudio stats --since 7d --model (busiest)": (
            lambda: performance.report(log, since_seconds=7 * 86400, model=MODELS[0][0], store_path=store), median(scan_week)),
        "llm lmstudio stats --prometheus (everything)": (lambda: performance.prometheus(performance.report(log, store_path=store)), median(scan_all)),
        "router history, 7 local candidates": (lambda: call_history.history(log, LOCAL, args.window, store_path=store), None),
        "router history, a model never logged": (lambda: call_history.history(log, ["lmstudio/never-used"], args.window, store_path=store), None),
    }
    for name, (fn, baseline) in cases.items():
        record(name, samples(fn, args.repeat), baseline)
    incremental = []
    for _ in range(5):
        add_turns(log, 5)
        incremental.append(seconds(lambda: performance.report(log, since_seconds=7 * 86400, store_path=store)))
    record("stats --since 7d after llm logged 5 new answers", incremental, median(scan_week))

    week = performance.report(log, since_seconds=7 * 86400, store_path=store)
    for m in week.models[:3]:
        print(f"  {m.model}: answers={m.answers} routed={m.routed} ttft p50={m.ttft_ms_p50 and round(m.ttft_ms_p50)} ms "
              f"tok/s p50={m.tokens_per_second_p50 and round(m.tokens_per_second_p50, 1)} failures={m.failures}")
    write_json("bench_stats", {"answers": args.turns, "attempts": args.attempts, "repeat": args.repeat, "machine": machine(),
                               "db_bytes": log.stat().st_size, "results": results})


if __name__ == "__main__":
    main()
