"""Benchmark: what the LM Studio plugin costs, against the direct path in one run.
(a) The plugin's own share of `llm models`: importing it and running its hooks in a fresh process (llm imported first,
    not counted), with the server up, down (connection refused) and hung (accepts, never answers), with a fresh
    model-list cache and an always-stale one. What installing the plugin costs `llm` as a whole: bench_startup.py.
(b) Per request, the plugin's model (Python API, warm process) against the same request posted with httpx to the
    same stand-in: non-streamed total and streamed time to first token, each with this process's CPU time per
    request beside it (the stand-in runs in its own process, so that is the client's cost alone, and steadier than
    wall time on a shared machine).

Run: .venv/bin/python benchmarks/bench_lmstudio.py [--runs N] [--request-runs N]   (writes benchmarks/out/lmstudio.json)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from _common import Clock, arguments, interleave, machine, median, ms, ratio, stand_in, write_json

from tests.fake_lmstudio.faults import HungServer, RefusedPort

MODEL_KEY = "test-org/tiny-llama"
PROMPT = "Say something short"
HOOKS_PROBE = """import llm, llm.cli, time
started = time.perf_counter()
import llm_lmstudio
llm_lmstudio.register_models(lambda *a, **k: None)
llm_lmstudio.register_embedding_models(lambda *a, **k: None)
print(time.perf_counter() - started)
"""


def bench_hooks(urls: dict, runs: int) -> list[dict]:
    rows = []
    for state, url in urls.items():
        for cache in ("fresh", "stale"):
            with tempfile.TemporaryDirectory() as user_dir:
                env = dict(os.environ, LLM_USER_PATH=user_dir, LMSTUDIO_BASE_URL=url)
                # An installed plugin runs from bytecode (pip compiles it; a first run writes it): so does the probe.
                env.pop("PYTHONDONTWRITEBYTECODE", None)
                if cache == "stale":
                    env["LMSTUDIO_CACHE_TTL"] = "0.000001"
                times = [float(subprocess.run([sys.executable, "-c", HOOKS_PROBE], env=env, capture_output=True, text=True,
                                              check=True).stdout.split()[-1]) for _ in range(runs + 1)][1:]  # 1st fills the caches
                rows.append({"server": state, "cache": cache, "plugin_ms": ms(median(times)), "max_ms": ms(max(times))})
                print(f"  plugin import + hooks, server {state:4s} cache {cache:5s}: {rows[-1]['plugin_ms']:6.1f} ms "
                      f"(max {rows[-1]['max_ms']} ms)", flush=True)
    return rows


def bench_requests(server, runs: int) -> dict:
    import httpx
    import llm

    from llm_lmstudio.lmstudio import chat

    model = llm.get_model(f"lmstudio/{MODEL_KEY}")
    options = {"max_tokens": 16, "temperature": 0.0, "seed": 1}
    endpoint = "/api/v0/chat/completions"
    client = httpx.Client(base_url=server.base_url, timeout=60)

    def payload(stream: bool) -> dict:
        return chat.build_payload(MODEL_KEY, llm.Prompt(PROMPT, model, options=model.Options(**options)), stream)

    def timed(fn):
        """(wall, CPU) seconds of one whole request."""
        with Clock() as clock:
            fn()
        return clock.wall, clock.cpu

    def plugin_ttft():
        """(wall to the first token, CPU of the whole request)."""
        with Clock() as clock:
            started = time.perf_counter()
            response = model.prompt(PROMPT, stream=True, **options)
            first = next(time.perf_counter() for e in response.stream_events() if e.type == "text" and e.chunk) - started
            for _ in response.stream_events():  # drain the rest
                pass
        return first, clock.cpu

    def direct_ttft():
        with Clock() as clock:
            started, first = time.perf_counter(), None
            with client.stream("POST", endpoint, json=payload(True)) as response:
                for line in response.iter_lines():
                    if first is None and line.startswith("data: {"):
                        choices = json.loads(line[6:])["choices"]
                        if choices and choices[0]["delta"].get("content"):
                            first = time.perf_counter() - started
        return first, clock.cpu

    # the warm-up call JIT-loads the model and warms both clients
    results = interleave({"plugin_total": lambda: timed(lambda: model.prompt(PROMPT, stream=False, **options).text()),
                          "direct_total": lambda: timed(lambda: client.post(endpoint, json=payload(False)).raise_for_status()),
                          "plugin_ttft": plugin_ttft, "direct_ttft": direct_ttft}, runs)
    out = {}
    for kind, label in (("total", "non-streamed total"), ("ttft", "streamed time to first token")):
        plugin, base = (median(wall for wall, _ in results[f"{path}_{kind}"]) for path in ("plugin", "direct"))
        plugin_cpu, base_cpu = (median(cpu for _, cpu in results[f"{path}_{kind}"]) for path in ("plugin", "direct"))
        out[kind] = {"plugin_ms": ms(plugin), "direct_ms": ms(base), "overhead_ms": ms(plugin - base, 2), "ratio": ratio(plugin, base),
                     "plugin_cpu_ms": ms(plugin_cpu, 2), "direct_cpu_ms": ms(base_cpu, 2), "cpu_overhead_ms": ms(plugin_cpu - base_cpu, 2)}
        print(f"  {label:28s}: plugin {out[kind]['plugin_ms']} ms, httpx {out[kind]['direct_ms']} ms, "
              f"overhead {out[kind]['overhead_ms']} ms (ratio {out[kind]['ratio']}); client CPU per request "
              f"plugin {out[kind]['plugin_cpu_ms']} ms, httpx {out[kind]['direct_cpu_ms']} ms, overhead {out[kind]['cpu_overhead_ms']} ms",
              flush=True)
    return out


def main():
    args = arguments(__doc__, runs=(7, "fresh processes per hooks measurement (medians reported)"), request_runs=20)
    refused, hung = RefusedPort(), HungServer()
    with stand_in(include_minilm=False) as server:
        print("The plugin's own time in `llm models` (import + hooks, fresh process each run, medians):", flush=True)
        hooks = bench_hooks({"up": server.base_url, "down": refused.url, "hung": hung.url}, args.runs)
        print(f"Per-request overhead against raw httpx ({args.request_runs} runs each, medians):", flush=True)
        requests = bench_requests(server, args.request_runs)
    refused.close()
    hung.close()
    print(f"Worst plugin share of `llm models` (median): {max(row['plugin_ms'] for row in hooks)} ms (target < 50 ms); "
          f"per-request overhead {requests['total']['overhead_ms']} ms total, "
          f"{requests['ttft']['overhead_ms']} ms to first token (target < 10 ms); client CPU per request "
          f"+{requests['total']['cpu_overhead_ms']} ms non-streamed, +{requests['ttft']['cpu_overhead_ms']} ms streamed")
    write_json("lmstudio", {"benchmark": "lmstudio", "machine": machine(), "plugin_hooks": hooks, "per_request": requests})


if __name__ == "__main__":
    main()
