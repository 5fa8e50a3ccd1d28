"""Benchmark: what the LM Studio plugin costs, measured against the direct path in one run.

(a) `llm models` wall time with the plugin versus the same llm without it (LLM_LOAD_PLUGINS=''),
    with the server up, down (connection refused) and hung (accepts, never answers), both with a
    fresh model-list cache and with a cache that is always stale.
(b) Per-request overhead of the plugin's model (Python API, warm process) versus the same request
    made directly with httpx to the same stand-in server: non-streamed total, streamed time to first token.

Run: .venv/bin/python benchmarks/bench_lmstudio.py [--runs N]   (results also in benchmarks/out/lmstudio.json)
"""

from __future__ import annotations

import argparse
import json
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
from tests.fake_lmstudio.faults import HungServer, RefusedPort  # noqa: E402
from tests.fake_lmstudio.models_dir import build_models_dir  # noqa: E402

LLM = str(Path(sys.executable).parent / "llm")
MODEL_KEY = "test-org/tiny-llama"


def median_ms(values):
    return round(statistics.median(values) * 1000, 1)


def time_command(args, env) -> float:
    started = time.perf_counter()
    proc = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {proc.stderr}")
    return elapsed


def bench_models(urls: dict, runs: int) -> list[dict]:
    rows = []
    for state, url in urls.items():
        for cache in ("fresh", "stale"):
            with tempfile.TemporaryDirectory() as user_dir:
                env = dict(os.environ, LLM_USER_PATH=user_dir, LMSTUDIO_BASE_URL=url)
                if cache == "stale":
                    env["LMSTUDIO_CACHE_TTL"] = "0.000001"
                without = dict(env, LLM_LOAD_PLUGINS="")
                time_command([LLM, "models"], env)  # warm the OS file cache and, for "fresh", the model list
                with_plugin, baseline = [], []
                for _ in range(runs):  # interleaved, so drift hits both sides alike
                    baseline.append(time_command([LLM, "models"], without))
                    with_plugin.append(time_command([LLM, "models"], env))
                added = statistics.median(with_plugin) - statistics.median(baseline)
                rows.append(
                    {
                        "server": state,
                        "cache": cache,
                        "with_plugin_ms": median_ms(with_plugin),
                        "without_plugin_ms": median_ms(baseline),
                        "added_ms": round(added * 1000, 1),
                        "ratio": round(statistics.median(with_plugin) / statistics.median(baseline), 3),
                        "max_with_plugin_ms": round(max(with_plugin) * 1000, 1),
                    }
                )
                print(f"  llm models, server {state:8s} cache {cache:5s}: +{rows[-1]['added_ms']:6.1f} ms "
                      f"(median {rows[-1]['with_plugin_ms']} vs {rows[-1]['without_plugin_ms']} ms)", flush=True)
    return rows


HOOKS_PROBE = """
import time
started = time.perf_counter()
import llm_lmstudio
from llm_lmstudio import catalog
registered = []
catalog_models = catalog.models_for_registration()
llm_lmstudio.register_models(lambda *a, **k: registered.append(a))
llm_lmstudio.register_embedding_models(lambda *a, **k: registered.append(a))
print(time.perf_counter() - started)
"""


def bench_hooks(urls: dict, runs: int) -> list[dict]:
    """The plugin's own share of `llm models`: importing it and running its hooks, in a fresh process
    each time (llm itself is imported first and not counted). Far less noisy than whole-process timing."""
    rows = []
    for state, url in urls.items():
        for cache in ("fresh", "stale"):
            with tempfile.TemporaryDirectory() as user_dir:
                env = dict(os.environ, LLM_USER_PATH=user_dir, LMSTUDIO_BASE_URL=url)
                if cache == "stale":
                    env["LMSTUDIO_CACHE_TTL"] = "0.000001"
                code = "import llm, llm.cli\n" + HOOKS_PROBE
                samples = []
                for index in range(runs + 1):
                    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
                    if index:  # the first run fills the cache
                        samples.append(float(out.stdout.strip().splitlines()[-1]))
                rows.append({"server": state, "cache": cache, "plugin_ms": median_ms(samples),
                             "max_ms": round(max(samples) * 1000, 1)})
                print(f"  plugin import + hooks, server {state:4s} cache {cache:5s}: {rows[-1]['plugin_ms']:6.1f} ms "
                      f"(max {rows[-1]['max_ms']} ms)", flush=True)
    return rows


def bench_requests(server: FakeLMStudio, runs: int) -> dict:
    import httpx
    import llm

    from llm_lmstudio import chat

    os.environ["LMSTUDIO_BASE_URL"] = server.base_url
    model = llm.get_model(f"lmstudio/{MODEL_KEY}")
    options = {"max_tokens": 16, "temperature": 0.0, "seed": 1}
    endpoint = "/api/v0/chat/completions"
    direct = httpx.Client(base_url=server.base_url, timeout=60)

    def payload(stream: bool) -> dict:
        prompt = llm.Prompt("Say something short", model, options=model.Options(**options))
        return chat.build_payload(MODEL_KEY, prompt, stream)

    def plugin_total():
        started = time.perf_counter()
        model.prompt("Say something short", stream=False, **options).text()
        return time.perf_counter() - started

    def direct_total():
        started = time.perf_counter()
        direct.post(endpoint, json=payload(False)).raise_for_status()
        return time.perf_counter() - started

    def plugin_ttft():
        started = time.perf_counter()
        response = model.prompt("Say something short", stream=True, **options)
        for event in response.stream_events():
            if event.type == "text" and event.chunk:
                first = time.perf_counter() - started
                break
        for _ in response.stream_events():
            pass
        return first

    def direct_ttft():
        started = time.perf_counter()
        first = None
        with direct.stream("POST", endpoint, json=payload(True)) as response:
            for line in response.iter_lines():
                if first is None and line.startswith("data: {") and '"content":' in line:
                    data = json.loads(line[6:])
                    if data["choices"] and data["choices"][0]["delta"].get("content"):
                        first = time.perf_counter() - started
        return first

    for warm in (plugin_total, direct_total, plugin_ttft, direct_ttft):
        warm()  # load the model (JIT) and warm both clients
    results = {"plugin_total": [], "direct_total": [], "plugin_ttft": [], "direct_ttft": []}
    for _ in range(runs):
        results["direct_total"].append(direct_total())
        results["plugin_total"].append(plugin_total())
        results["direct_ttft"].append(direct_ttft())
        results["plugin_ttft"].append(plugin_ttft())
    out = {}
    for kind in ("total", "ttft"):
        plugin, base = results[f"plugin_{kind}"], results[f"direct_{kind}"]
        out[kind] = {
            "plugin_ms": median_ms(plugin),
            "direct_ms": median_ms(base),
            "overhead_ms": round((statistics.median(plugin) - statistics.median(base)) * 1000, 2),
            "ratio": round(statistics.median(plugin) / statistics.median(base), 3),
        }
        label = "non-streamed total" if kind == "total" else "streamed time to first token"
        print(f"  {label:28s}: plugin {out[kind]['plugin_ms']} ms, httpx {out[kind]['direct_ms']} ms, "
              f"overhead {out[kind]['overhead_ms']} ms (ratio {out[kind]['ratio']})", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per measurement (medians are reported)")
    parser.add_argument("--request-runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        models = build_models_dir(Path(work) / "models", include_minilm=False)
        refused, hung = RefusedPort(), HungServer()
        with FakeLMStudio(models) as server:
            print(f"llm models with and without the plugin ({args.runs} runs each, medians):", flush=True)
            urls = {"up": server.base_url, "down": refused.url, "hung": hung.url}
            print("The plugin's own time in `llm models` (import + hooks, fresh process each run, medians):", flush=True)
            hooks = bench_hooks(urls, max(args.runs, 5))
            startup = bench_models(urls, args.runs)
            print(f"Per-request overhead against raw httpx ({args.request_runs} runs each, medians):", flush=True)
            with tempfile.TemporaryDirectory() as user_dir:
                os.environ["LLM_USER_PATH"] = user_dir
                requests = bench_requests(server, args.request_runs)
        refused.close()
        hung.close()
    result = {"benchmark": "lmstudio", "plugin_hooks": hooks, "llm_models": startup, "per_request": requests,
              "machine": machine()}
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "lmstudio.json").write_text(json.dumps(result, indent=2))
    worst = max(row["plugin_ms"] for row in hooks)
    print(f"Worst plugin share of `llm models` (median): {worst} ms (target < 50 ms); "
          f"per-request overhead {requests['total']['overhead_ms']} ms total, "
          f"{requests['ttft']['overhead_ms']} ms to first token (target < 10 ms)")


def machine() -> dict:
    import platform

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}


if __name__ == "__main__":
    main()
