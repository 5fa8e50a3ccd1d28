"""Native MLX chat: decode speed through llm (Python API, CLI) and llm-mlx versus mlx_lm.stream_generate
directly, and turn-2 time to first token with and without the prompt cache. Writes benchmarks/out/mlx_chat.json."""

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
LLM_MLX_DIR = ROOT / ".cache" / "llm-mlx"  # llm-mlx installed with --no-deps --target, so it never registers itself
sys.path.insert(0, str(ROOT))

# The sandbox must exist before llm is imported anywhere: the plugin reads these on every lookup.
SANDBOX = Path(tempfile.mkdtemp(prefix="bench-mlx-chat-"))
os.environ.update(
    LLM_USER_PATH=str(SANDBOX / "llm"),
    LMSTUDIO_MODELS_DIR=str(SANDBOX / "no-lmstudio"),
    HF_HUB_CACHE=str(SANDBOX / "no-hub"),
    LMSTUDIO_BASE_URL="http://127.0.0.1:9",  # no LM Studio server: only native models get registered
)

from tests import model_factory  # noqa: E402

# The largest model that runs this benchmark in about two minutes with mlx[cpu] on a shared 2-core x86 box
# (mlx's CPU matmul reaches ~1-2 GFLOP/s there). On Apple Silicon pass --large for a Qwen2.5-0.5B-shaped model.
SMALL = model_factory.TinyModelSpec(
    arch="qwen2", seed=11, hidden_size=384, num_hidden_layers=6, intermediate_size=1024,
    num_attention_heads=6, num_key_value_heads=2, vocab_size=4096,
)
LARGE = model_factory.TinyModelSpec(
    arch="qwen2", seed=11, hidden_size=896, num_hidden_layers=24, intermediate_size=4864,
    num_attention_heads=14, num_key_value_heads=2, vocab_size=4096,
)
SHORT_PROMPT = "Write a Python function that returns the sum of a list of numbers."
LONG_TURN = "Explain the difference between a list and a tuple in Python, with examples. " * 14
FOLLOW_UPS = ["And what about sets?", "Which one is fastest?", "Show me a dictionary too.", "Summarise in one line."]


def parameter_count(model) -> int:
    from mlx.utils import tree_flatten

    return sum(v.size for _, v in tree_flatten(model.parameters()))


def _timed_stream(iterable):
    """Consume a token stream; (wall seconds, CPU seconds) from the first item to the end.

    CPU time is reported next to wall time because on a shared machine other processes stretch wall
    time at random, while this process's CPU time is what the plugin's own overhead would change."""
    first_wall = first_cpu = None
    last = None
    for item in iterable:
        if first_wall is None:
            first_wall, first_cpu = time.perf_counter(), time.process_time()
        last = item
    return time.perf_counter() - first_wall, time.process_time() - first_cpu, last


def direct_run(model, tokenizer, prompt_tokens, max_tokens):
    """mlx_lm.stream_generate on its own: (tok/s wall, tok/s CPU, mlx's generation_tps, tokens)."""
    from mlx_lm import stream_generate

    wall, cpu, final = _timed_stream(stream_generate(model, tokenizer, prompt_tokens, max_tokens=max_tokens))
    tokens = final.generation_tokens
    return (tokens - 1) / wall, (tokens - 1) / cpu, final.generation_tps, tokens


def llm_run(model, max_tokens):
    """llm's Python API, streaming: (tok/s wall, tok/s CPU, mlx's generation_tps from response_json, tokens)."""
    response = model.prompt(SHORT_PROMPT, max_tokens=max_tokens, temperature=0)
    wall, cpu, _ = _timed_stream(response)
    tokens = response.usage().output
    return (tokens - 1) / wall, (tokens - 1) / cpu, response.response_json["generation_tps"], tokens


def llm_mlx_run(model, max_tokens):
    response = model.prompt(SHORT_PROMPT, max_tokens=max_tokens, temperature=0)
    wall, cpu, _ = _timed_stream(response)
    tokens = response.usage().output
    return (tokens - 1) / wall, (tokens - 1) / cpu, tokens


def cli_run(model_id, max_tokens):
    """`llm -m ... PROMPT` in a fresh process (start-up and model load included in wall time)."""
    import sqlite_utils

    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "llm", "-m", model_id, SHORT_PROMPT, "-o", "max_tokens", str(max_tokens), "-o", "temperature", "0"],
        check=True, capture_output=True, env=os.environ,
    )
    wall = time.perf_counter() - started
    db = sqlite_utils.Database(str(SANDBOX / "llm" / "logs.db"))
    turn = list(db.query("select output_tokens, response_json from turns order by datetime_utc desc limit 1"))[0]
    stats = json.loads(turn["response_json"])
    return stats["generation_tps"], turn["output_tokens"], wall


def mlx_lm_cli_run(path, max_tokens):
    """`mlx_lm generate` in a fresh process: the direct baseline for the llm CLI (same start-up costs)."""
    import re

    result = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "generate", "--model", str(path), "--prompt", SHORT_PROMPT,
         "--max-tokens", str(max_tokens), "--temp", "0"],
        check=True, capture_output=True, text=True,
    )
    match = re.search(r"Generation: (\d+) tokens, ([\d.]+) tokens-per-sec", result.stdout)
    return float(match.group(2)), int(match.group(1))


def load_llm_mlx(path):
    if not (LLM_MLX_DIR / "llm_mlx.py").is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(LLM_MLX_DIR), "llm-mlx"],
            capture_output=True,
        )
    sys.path.insert(0, str(LLM_MLX_DIR))
    try:
        import llm_mlx
    except ImportError as exc:
        return None, f"llm-mlx not installable here: {exc}"
    # llm-mlx keys models by path; its class works without being registered.
    return llm_mlx.MlxModel(str(path)), None


def ttft(response) -> tuple[float, float]:
    """(wall time to first streamed event, the plugin's own time_to_first_token_s)."""
    started = time.perf_counter()
    first = None
    for _ in response.stream_events():
        first = first or time.perf_counter()
    return first - started, response.response_json["time_to_first_token_s"]


def per_token_overhead(llm, mlx_native, local_models, tokens=400):
    """What the plugin adds per token, measured where it would show: a model so small its forward pass is cheap."""
    from mlx_lm import stream_generate

    path = model_factory.cached_tiny_model("tiny-llama", model_factory.TinyModelSpec(arch="llama"))
    local_models.add(path, "overhead-probe")
    plugin = llm.get_model("mlx/overhead-probe")
    runtime = mlx_native.load_chat(local_models.find("overhead-probe"))
    prompt = runtime.render([{"role": "user", "content": SHORT_PROMPT}], None)

    def direct_ms():
        started = time.process_time()
        for final in stream_generate(runtime.model, runtime.tokenizer, prompt, max_tokens=tokens):
            pass
        return (time.process_time() - started) * 1000 / final.generation_tokens

    def plugin_ms():
        started = time.process_time()
        response = plugin.prompt(SHORT_PROMPT, max_tokens=tokens, temperature=0)
        for _ in response:
            pass
        return (time.process_time() - started) * 1000 / response.usage().output

    direct_ms(), plugin_ms()  # warm-up
    samples = [(direct_ms(), plugin_ms()) for _ in range(3)]
    return {
        "parameters": parameter_count(runtime.model),
        "tokens": tokens,
        "direct": min(s[0] for s in samples),
        "llm_python": min(s[1] for s in samples),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5, help="in-process decode runs per path")
    parser.add_argument("--cli-reps", type=int, default=3, help="fresh-process runs per path (each pays start-up)")
    parser.add_argument("--cache-reps", type=int, default=3, help="turn-2 pairs (cached, uncached)")
    parser.add_argument("--tokens", type=int, default=48, help="tokens generated per decode run")
    parser.add_argument("--large", action="store_true", help="a ~360M-parameter Qwen2.5-0.5B-shaped model")
    args = parser.parse_args()

    spec = LARGE if args.large else SMALL
    started = time.perf_counter()
    path = model_factory.cached_tiny_model("bench-chat-large" if args.large else "bench-chat", spec)

    import llm
    import mlx.core as mx
    from mlx_lm import load

    from llm_lmstudio import local_models, mlx_native

    local_models.add(path, "bench-chat")
    model_id = "mlx/bench-chat"
    plugin = llm.get_model(model_id)
    runtime = mlx_native.load_chat(local_models.find(model_id))  # loaded once, as in `llm chat`
    direct_model, direct_tokenizer = load(str(path))
    params = parameter_count(direct_model)
    prompt_tokens = runtime.render([{"role": "user", "content": SHORT_PROMPT}], None)
    llm_mlx_model, llm_mlx_note = load_llm_mlx(path)

    # Warm-up: the first call of each path pays one-off costs (lazy imports, kernel set-up).
    direct_run(direct_model, direct_tokenizer, prompt_tokens, 4)
    llm_run(plugin, 4)
    if llm_mlx_model is not None:
        llm_mlx_run(llm_mlx_model, 4)

    runs = {"direct": [], "llm_python": [], "llm_cli": [], "mlx_lm_cli": [], "llm_mlx": []}
    for rep in range(args.reps):  # interleaved, so load from other processes hits every path alike
        runs["direct"].append(direct_run(direct_model, direct_tokenizer, prompt_tokens, args.tokens))
        runs["llm_python"].append(llm_run(plugin, args.tokens))
        if llm_mlx_model is not None:
            runs["llm_mlx"].append(llm_mlx_run(llm_mlx_model, args.tokens))
        if rep < args.cli_reps:
            runs["llm_cli"].append(cli_run(model_id, args.tokens))
            runs["mlx_lm_cli"].append(mlx_lm_cli_run(path, args.tokens))

    median = statistics.median
    direct_wall = median(r[0] for r in runs["direct"])
    direct_cpu = median(r[1] for r in runs["direct"])
    decode = {
        "direct_tokens_per_s": direct_wall,
        "direct_tokens_per_cpu_s": direct_cpu,
        "llm_python_tokens_per_s": median(r[0] for r in runs["llm_python"]),
        "llm_python_tokens_per_cpu_s": median(r[1] for r in runs["llm_python"]),
        "llm_cli_mlx_generation_tps": median(r[0] for r in runs["llm_cli"]),
        "mlx_lm_cli_generation_tps": median(r[0] for r in runs["mlx_lm_cli"]),
        "llm_cli_wall_s": median(r[2] for r in runs["llm_cli"]),
        "tokens_per_run": {k: [r[1] if k in ("llm_cli", "mlx_lm_cli") else r[-1] for r in v] for k, v in runs.items()},
    }
    decode["ratio_llm_python"] = decode["llm_python_tokens_per_s"] / direct_wall
    decode["ratio_llm_python_cpu"] = decode["llm_python_tokens_per_cpu_s"] / direct_cpu
    decode["ratio_llm_cli"] = decode["llm_cli_mlx_generation_tps"] / decode["mlx_lm_cli_generation_tps"]
    if runs["llm_mlx"]:
        decode["llm_mlx_tokens_per_s"] = median(r[0] for r in runs["llm_mlx"])
        decode["llm_mlx_tokens_per_cpu_s"] = median(r[1] for r in runs["llm_mlx"])
        decode["ratio_llm_mlx"] = decode["llm_mlx_tokens_per_s"] / direct_wall
        decode["ratio_llm_mlx_cpu"] = decode["llm_mlx_tokens_per_cpu_s"] / direct_cpu

    # Turn 2 after a long turn 1: with the cache only the new turn is processed; without, everything is.
    conversation = plugin.conversation()
    turn_one = conversation.prompt(LONG_TURN, max_tokens=16, temperature=0)
    turn_one.text()
    history = turn_one.prompt.messages + turn_one.messages()
    cached, uncached, processed = [], [], {}
    for follow_up in FOLLOW_UPS[: max(args.cache_reps, 1)]:
        response = plugin.prompt(follow_up, messages=history, max_tokens=4, temperature=0)
        cached.append(ttft(response))
        processed["cached"] = response.response_json["prompt_tokens_processed"]
        runtime.caches.take(None)  # forget the cache: the next turn processes the whole history
        response = plugin.prompt(follow_up, messages=history, max_tokens=4, temperature=0)
        uncached.append(ttft(response))
        processed["uncached"] = response.response_json["prompt_tokens_processed"]
    turn_two_tokens = response.response_json["prompt_tokens"]
    cache = {
        "turn_one_prompt_tokens": turn_one.response_json["prompt_tokens"],
        "turn_two_prompt_tokens": turn_two_tokens,
        "turn_two_tokens_processed": processed,
        "ttft_cached_s": median(c[0] for c in cached),
        "ttft_uncached_s": median(u[0] for u in uncached),
        "ttft_cached_plugin_s": median(c[1] for c in cached),
        "ttft_uncached_plugin_s": median(u[1] for u in uncached),
    }
    cache["ratio"] = cache["ttft_cached_s"] / cache["ttft_uncached_s"]

    overhead = per_token_overhead(llm, mlx_native, local_models)

    result = {
        "benchmark": "mlx_chat",
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, mlx {mx.__version__} ({mx.default_device()})",
        "model": {"arch": spec.arch, "parameters": params, "hidden_size": spec.hidden_size,
                  "layers": spec.num_hidden_layers, "dtype": "float32"},
        "reps": {"decode": args.reps, "cli": args.cli_reps, "prompt_cache": args.cache_reps},
        "tokens_per_decode_run": args.tokens,
        "decode": decode,
        "prompt_cache": cache,
        "per_token_cpu_ms": overhead,
        "llm_mlx": llm_mlx_note or "llm-mlx 0.4 (MlxModel driven through llm's Python API)",
        "seconds": round(time.perf_counter() - started, 1),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "mlx_chat.json").write_text(json.dumps(result, indent=2))

    print(f"model: {spec.arch}, {params / 1e6:.1f}M parameters, float32; {result['machine']}")
    print(f"decode, {args.tokens} tokens, greedy, median of {args.reps}:")
    print("  in one process                 tok/s (wall)            tok per CPU-second")
    print(f"  mlx_lm.stream_generate       {direct_wall:7.1f}                  {direct_cpu:7.1f}")
    print(f"  llm Python API               {decode['llm_python_tokens_per_s']:7.1f}  ratio {decode['ratio_llm_python']:.3f}    "
          f"{decode['llm_python_tokens_per_cpu_s']:7.1f}  ratio {decode['ratio_llm_python_cpu']:.3f}   (target >= 0.95)")
    if "llm_mlx_tokens_per_s" in decode:
        print(f"  llm-mlx 0.4                  {decode['llm_mlx_tokens_per_s']:7.1f}  ratio {decode['ratio_llm_mlx']:.3f}    "
              f"{decode['llm_mlx_tokens_per_cpu_s']:7.1f}  ratio {decode['ratio_llm_mlx_cpu']:.3f}")
    else:
        print(f"  llm-mlx                      skipped: {llm_mlx_note}")
    print(f"  fresh processes, median of {args.cli_reps} (mlx-reported generation tok/s)")
    print(f"  mlx_lm generate              {decode['mlx_lm_cli_generation_tps']:7.1f}")
    print(f"  llm -m mlx/bench-chat        {decode['llm_cli_mlx_generation_tps']:7.1f}  ratio {decode['ratio_llm_cli']:.3f}"
          f"   (target >= 0.95; {decode['llm_cli_wall_s']:.1f} s per command)")
    print(f"turn-2 time to first token after a {cache['turn_one_prompt_tokens']}-token turn 1 "
          f"(turn 2 = {turn_two_tokens} tokens; processed: {processed}):")
    print(f"  with prompt cache        {cache['ttft_cached_s'] * 1000:7.0f} ms")
    print(f"  without                  {cache['ttft_uncached_s'] * 1000:7.0f} ms   ratio {cache['ratio']:.3f}  (target <= 0.5)")
    print(f"per-token CPU cost with a {overhead['parameters'] / 1e3:.0f}K-parameter model (so the model's own work is small), "
          f"best of 3 x {overhead['tokens']} tokens:")
    print(f"  mlx_lm.stream_generate   {overhead['direct']:.3f} ms   llm Python API {overhead['llm_python']:.3f} ms   "
          f"difference {overhead['llm_python'] - overhead['direct']:+.3f} ms per token")
    print(f"wrote {OUT / 'mlx_chat.json'} in {result['seconds']}s")


if __name__ == "__main__":
    main()
