"""Native MLX chat against mlx_lm in the same run: decode tokens/s (Python API, CLI, llm-mlx), turn 2 of `llm -c`
in a new process with and without the disk prompt cache (and what saving costs), speculative decoding, schema-
constrained decoding, prompt chunk size. Writes benchmarks/out/mlx_chat.json."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import _common as common

SANDBOX = common.sandbox("mlx-chat")  # before llm is imported: the plugin reads these on every lookup
LLM_MLX_DIR = common.ROOT / ".cache" / "llm-mlx"  # llm-mlx installed with --no-deps --target: it never registers itself

from tests import model_factory  # noqa: E402

# The largest model that runs this benchmark in a few minutes with mlx[cpu] on a shared 2-core x86 box.
# --large: a Qwen2.5-0.5B-shaped model (358M parameters with this vocabulary), as on Apple Silicon.
SMALL = model_factory.TinyModelSpec(
    arch="qwen2", seed=11, hidden_size=384, num_hidden_layers=6, intermediate_size=1024,
    num_attention_heads=6, num_key_value_heads=2, vocab_size=4096,
)
LARGE = model_factory.TinyModelSpec(
    arch="qwen2", seed=11, hidden_size=896, num_hidden_layers=24, intermediate_size=4864,
    num_attention_heads=14, num_key_value_heads=2, vocab_size=4096,
)
SHORT_PROMPT = "Write a Python function that returns the sum of a list of numbers."
LONG_TURN = "Explain the difference between a list and a tuple in Python, with examples. " * 30
FOLLOW_UP = "And what about sets?"
# Unbounded, so that a constrained run lasts as long as an unconstrained one: only speed is measured here
# (tests/test_mlx_schema.py checks validity).
NUMBERS_SCHEMA = {"type": "object", "properties": {"numbers": {"type": "array", "items": {"type": "integer"}}}, "required": ["numbers"]}


def parameter_count(model) -> int:
    from mlx.utils import tree_flatten

    return sum(v.size for _, v in tree_flatten(model.parameters()))


def timed_stream(iterable):
    """(wall s, CPU s) from the first item of a token stream to its end, and the last item."""
    last = clock = None
    for item in iterable:
        if clock is None:
            clock = common.Clock().__enter__()
        last = item
    clock.__exit__()
    return clock.wall, clock.cpu, last


# ---------------------------------------------------------------- decode speed


def direct_decode(model, tokenizer, prompt_tokens, max_tokens):
    from mlx_lm import stream_generate

    wall, cpu, final = timed_stream(stream_generate(model, tokenizer, prompt_tokens, max_tokens=max_tokens))
    return (final.generation_tokens - 1) / wall, (final.generation_tokens - 1) / cpu, final.generation_tokens


def llm_decode(model, max_tokens):
    response = model.prompt(SHORT_PROMPT, max_tokens=max_tokens, temperature=0)
    wall, cpu, _ = timed_stream(response)
    tokens = response.usage().output
    return (tokens - 1) / wall, (tokens - 1) / cpu, tokens


def cli_decode(model_id, max_tokens):
    """`llm -m ... PROMPT` in a fresh process: mlx's generation tok/s from the log."""
    subprocess.run([common.LLM, "-m", model_id, SHORT_PROMPT, "-o", "max_tokens", str(max_tokens), "-o", "temperature", "0"],
                   check=True, capture_output=True)
    return last_turn()["generation_tps"]


def mlx_lm_cli_decode(path, max_tokens):
    """`mlx_lm generate` in a fresh process: the direct baseline for the llm CLI (same start-up costs)."""
    import re

    out = subprocess.run([sys.executable, "-m", "mlx_lm", "generate", "--model", str(path), "--prompt", SHORT_PROMPT,
                          "--max-tokens", str(max_tokens), "--temp", "0"], check=True, capture_output=True, text=True).stdout
    return float(re.search(r"Generation: \d+ tokens, ([\d.]+) tokens-per-sec", out).group(1))


def load_llm_mlx(path):
    if not (LLM_MLX_DIR / "llm_mlx.py").is_file():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(LLM_MLX_DIR), "llm-mlx"],
                       capture_output=True)
    sys.path.insert(0, str(LLM_MLX_DIR))
    try:
        import llm_mlx
    except ImportError as exc:
        return None, f"llm-mlx not installable here: {exc}"
    return llm_mlx.MlxModel(str(path)), None  # llm-mlx keys models by path; its class works unregistered


def decode_section(args, plugin, runtime, path, model_id):
    prompt = runtime.render([{"role": "user", "content": SHORT_PROMPT}], None)
    llm_mlx_model, note = load_llm_mlx(path)
    direct_decode(runtime.model, runtime.tokenizer, prompt, 4)  # warm-up: lazy imports, kernel set-up
    llm_decode(plugin, 4)
    runs = {"direct": [], "llm_python": [], "llm_mlx": [], "llm_cli": [], "mlx_lm_cli": []}
    for rep in range(args.reps):  # interleaved, so load from other processes hits every path alike
        runs["direct"].append(direct_decode(runtime.model, runtime.tokenizer, prompt, args.tokens))
        runs["llm_python"].append(llm_decode(plugin, args.tokens))
        if llm_mlx_model is not None:
            runs["llm_mlx"].append(llm_decode(llm_mlx_model, args.tokens))
        if rep < args.cli_reps:
            runs["llm_cli"].append((cli_decode(model_id, args.tokens),))
            runs["mlx_lm_cli"].append((mlx_lm_cli_decode(path, args.tokens),))
    med = {name: [common.median(r[i] for r in rows) for i in range(len(rows[0]))] for name, rows in runs.items() if rows}
    decode = {"direct_tokens_per_s": med["direct"][0], "direct_tokens_per_cpu_s": med["direct"][1],
              "llm_python_tokens_per_s": med["llm_python"][0], "llm_python_tokens_per_cpu_s": med["llm_python"][1],
              "llm_cli_mlx_generation_tps": med["llm_cli"][0], "mlx_lm_cli_generation_tps": med["mlx_lm_cli"][0],
              "ratio_llm_python": common.ratio(med["llm_python"][0], med["direct"][0]),
              "ratio_llm_python_cpu": common.ratio(med["llm_python"][1], med["direct"][1]),
              "ratio_llm_cli": common.ratio(med["llm_cli"][0], med["mlx_lm_cli"][0])}
    if "llm_mlx" in med:
        decode |= {"llm_mlx_tokens_per_s": med["llm_mlx"][0], "ratio_llm_mlx": common.ratio(med["llm_mlx"][0], med["direct"][0])}
    decode["llm_mlx"] = note or "llm-mlx 0.4 (MlxModel driven through llm's Python API)"
    print(f"decode, {args.tokens} tokens, greedy, median of {args.reps} (tok/s wall; ratio to mlx_lm.stream_generate):")
    print(f"  mlx_lm {decode['direct_tokens_per_s']:.1f}   llm Python API {decode['llm_python_tokens_per_s']:.1f} "
          f"({decode['ratio_llm_python']}; CPU time {decode['ratio_llm_python_cpu']})   llm-mlx "
          f"{decode.get('llm_mlx_tokens_per_s', float('nan')):.1f} ({decode.get('ratio_llm_mlx')})")
    print(f"  fresh processes: mlx_lm generate {decode['mlx_lm_cli_generation_tps']:.1f}, llm -m {decode['llm_cli_mlx_generation_tps']:.1f} "
          f"({decode['ratio_llm_cli']})")
    return decode


# ---------------------------------------------------------------- turn 2 of `llm -c` in a new process


def last_turn() -> dict:
    with sqlite3.connect(SANDBOX / "llm" / "logs.db") as db:
        conversation, payload = db.execute(
            "select thread_id, response_json from turns order by datetime_utc desc limit 1"  # thread ids are conversation ids
        ).fetchone()
    return json.loads(payload) | {"conversation_id": conversation}


def first_output(args: list[str], env: dict) -> tuple[float, float, str]:
    """(seconds from spawning the process to its first byte of answer, to its exit; its output)."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = proc.stdout.read(1)
    first_at = time.perf_counter()
    rest, errors = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed: {errors.decode()[-2000:]}")
    return first_at - started, time.perf_counter() - started, (first + rest).decode()


def continue_section(args, runtime, model_id):
    from mlx_lm import stream_generate
    from mlx_lm.models.cache import load_prompt_cache, make_prompt_cache, save_prompt_cache

    from llm_lmstudio.mlx_cache import common_prefix

    greedy = ["-o", "temperature", "0"]
    # Unbuffered: llm's piped stdout would otherwise show the first token only when the process exits.
    on = dict(os.environ, PYTHONUNBUFFERED="1")
    off = dict(on, LMSTUDIO_MLX_PROMPT_CACHE="off")
    rows = []
    for _ in range(args.cache_reps):
        # Two identical conversations (greedy): one continued with the disk cache, one without.
        starts = []
        for _ in range(2):
            _, _, reply = first_output([common.LLM, "-m", model_id, LONG_TURN, "-o", "max_tokens", "16", *greedy], on)
            starts.append(last_turn() | {"reply": reply.removesuffix("\n")})
        cached = first_output([common.LLM, "--cid", starts[0]["conversation_id"], FOLLOW_UP, "-o", "max_tokens", "4", *greedy], on)
        cached_stats = last_turn()
        uncached = first_output([common.LLM, "--cid", starts[1]["conversation_id"], FOLLOW_UP, "-o", "max_tokens", "4", *greedy], off)
        uncached_stats = last_turn()
        rows.append({"process_ttft_cached_s": cached[0], "process_ttft_uncached_s": uncached[0],
                     "plugin_ttft_cached_s": cached_stats["time_to_first_token_s"],
                     "plugin_ttft_uncached_s": uncached_stats["time_to_first_token_s"],
                     "tokens_processed_cached": cached_stats["prompt_tokens_processed"],
                     "tokens_processed_uncached": uncached_stats["prompt_tokens_processed"],
                     "save_s_turn_one": starts[0]["prompt_cache_save_s"], "save_s_turn_two": cached_stats["prompt_cache_save_s"],
                     "turn_one_total_s": starts[0]["total_s"]})
    folder = SANDBOX / "llm" / "lmstudio" / "mlx-prompt-cache"
    sizes = [f.stat().st_size for f in folder.glob("*.safetensors")]

    # The direct path, in this process with the model loaded: mlx_lm with its own prompt-cache file vs without.
    history = [{"role": "user", "content": LONG_TURN}, {"role": "assistant", "content": starts[0]["reply"]},
               {"role": "user", "content": FOLLOW_UP}]
    full = runtime.render(history, None)
    held = runtime.render(history[:1], None) + runtime.tokenizer.encode(starts[0]["reply"], add_special_tokens=False)
    common_tokens = min(common_prefix(full, held), len(full) - 1)
    prefix_cache = make_prompt_cache(runtime.model)
    for _ in stream_generate(runtime.model, runtime.tokenizer, full[:common_tokens + 1], max_tokens=1, prompt_cache=prefix_cache):
        pass
    for layer in prefix_cache:
        layer.trim(layer.offset - common_tokens)
    cache_file = SANDBOX / "direct-cache.safetensors"
    save_prompt_cache(str(cache_file), prefix_cache)

    def direct_ttft(use_file: bool) -> float:
        started = time.perf_counter()
        cache = load_prompt_cache(str(cache_file)) if use_file else make_prompt_cache(runtime.model)
        tokens = full[common_tokens:] if use_file else full
        next(iter(stream_generate(runtime.model, runtime.tokenizer, tokens, max_tokens=1, prompt_cache=cache)))
        return time.perf_counter() - started

    direct = [(direct_ttft(True), direct_ttft(False)) for _ in range(args.cache_reps)]
    med = {key: common.median(row[key] for row in rows) for key in rows[0]}
    result = med | {
        "turn_two_prompt_tokens": len(full), "cache_file_mb": round(common.median(sizes) / 1e6, 2),
        "direct_ttft_cached_s": common.median(d[0] for d in direct), "direct_ttft_uncached_s": common.median(d[1] for d in direct),
        "ratio_process": common.ratio(med["process_ttft_cached_s"], med["process_ttft_uncached_s"]),
        "ratio_plugin": common.ratio(med["plugin_ttft_cached_s"], med["plugin_ttft_uncached_s"]),
    }
    result["ratio_direct"] = common.ratio(result["direct_ttft_cached_s"], result["direct_ttft_uncached_s"])
    print(f"`llm -c` turn 2 in a new process, {len(full)}-token history, median of {args.cache_reps} "
          f"(tokens processed {med['tokens_processed_cached']:.0f} with the disk cache, {med['tokens_processed_uncached']:.0f} without):")
    print(f"  time to first token, from the turn's start: {med['plugin_ttft_cached_s']:.3f} vs {med['plugin_ttft_uncached_s']:.3f} s "
          f"(ratio {result['ratio_plugin']}; target <= 0.3); mlx_lm with its cache file: {result['direct_ttft_cached_s']:.3f} vs "
          f"{result['direct_ttft_uncached_s']:.3f} s ({result['ratio_direct']})")
    print(f"  from spawning the process (start-up and model load included): {med['process_ttft_cached_s']:.2f} vs "
          f"{med['process_ttft_uncached_s']:.2f} s (ratio {result['ratio_process']})")
    print(f"  saving the cache: {med['save_s_turn_one'] * 1000:.0f} ms after turn 1, {med['save_s_turn_two'] * 1000:.0f} ms after turn 2 "
          f"(files {result['cache_file_mb']} MB; turn 1 took {med['turn_one_total_s']:.2f} s)")
    return result


# ---------------------------------------------------------------- speculative and constrained decoding


def truncated_draft(path: Path, layers: int) -> Path:
    """The model's first `layers` layers with its own embeddings and head: a draft that agrees with it often,
    as a smaller model of the same family would (independent random weights would never agree)."""
    import mlx.core as mx

    target = path.parent / f"{path.name}-draft{layers}"
    if (target / "config.json").is_file():
        return target
    staging = Path(str(target) + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(path, staging, ignore=shutil.ignore_patterns("*.safetensors*"))
    config = json.loads((path / "config.json").read_text()) | {"num_hidden_layers": layers}
    (staging / "config.json").write_text(json.dumps(config, indent=2))
    weights = {}
    for file in path.glob("*.safetensors"):
        weights |= mx.load(str(file))
    keep = {k: v for k, v in weights.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
    mx.save_safetensors(str(staging / "model.safetensors"), keep)
    staging.rename(target)
    return target


def speculative_and_schema_section(args, plugin, runtime, path):
    from mlx_lm import stream_generate

    from llm_lmstudio import local_models, mlx_native

    draft_path = truncated_draft(path, args.draft_layers)
    local_models.add(draft_path, "bench-draft")
    draft = mlx_native.load_chat(local_models.find("bench-draft"))
    prompt = runtime.render([{"role": "user", "content": SHORT_PROMPT}], None)
    tokens = args.tokens * 2

    def direct(**kwargs):
        return stream_generate(runtime.model, runtime.tokenizer, prompt, max_tokens=tokens, **kwargs)

    def through_llm(**options) -> dict:
        response = plugin.prompt(SHORT_PROMPT, max_tokens=tokens, temperature=0, **options)
        response.text()
        return response.response_json

    def direct_tps(**kwargs):
        return common.median(list(direct(**kwargs))[-1].generation_tps for _ in range(args.reps))

    def plugin_tps(**options):
        return common.median(through_llm(**options)["generation_tps"] for _ in range(args.reps))

    speculative = {
        "draft_layers": f"{args.draft_layers} of {len(runtime.model.layers)}",
        "draft_parameters": parameter_count(draft.model),
        "direct_tps": direct_tps(),
        "direct_draft_tps": direct_tps(draft_model=draft.model),
        "llm_tps": plugin_tps(),
        "llm_draft_tps": plugin_tps(draft_model="mlx/bench-draft"),
    }
    accepted = through_llm(draft_model="mlx/bench-draft")
    speculative["accepted_share"] = round(accepted["draft_tokens_accepted"] / accepted["generation_tokens"], 3)
    speculative["ratio_direct"] = common.ratio(speculative["direct_draft_tps"], speculative["direct_tps"])
    speculative["ratio_llm"] = common.ratio(speculative["llm_draft_tps"], speculative["llm_tps"])
    print(f"speculative decoding, draft = the model's first {speculative['draft_layers']} layers, {tokens} tokens, "
          f"{speculative['accepted_share']:.0%} of tokens drafted and accepted:")
    print(f"  mlx_lm {speculative['direct_tps']:.1f} -> {speculative['direct_draft_tps']:.1f} tok/s ({speculative['ratio_direct']}x); "
          f"llm {speculative['llm_tps']:.1f} -> {speculative['llm_draft_tps']:.1f} tok/s ({speculative['ratio_llm']}x)")

    with contextlib.redirect_stderr(io.StringIO()):  # the schema never closes, so each run warns of max_tokens
        plugin.prompt("x", schema=NUMBERS_SCHEMA, max_tokens=2).text()  # builds the grammar tokenizer, as a first schema prompt does
        schema = {"llm_tps": speculative["llm_tps"], "llm_schema_tps": plugin_tps(schema=NUMBERS_SCHEMA),
                  "direct_tps": speculative["direct_tps"]}
    schema["ratio"] = common.ratio(schema["llm_schema_tps"], schema["llm_tps"])
    print(f"schema-constrained decoding: {schema['llm_schema_tps']:.1f} vs {schema['llm_tps']:.1f} tok/s unconstrained "
          f"(ratio {schema['ratio']}; mlx_lm unconstrained {schema['direct_tps']:.1f})")

    long_prompt = runtime.render([{"role": "user", "content": LONG_TURN}], None)
    runs = {512: [], 2048: []}  # the plugin's prompt chunk (Ctrl-C acts between chunks) vs mlx-lm's default
    for _ in range(args.reps):
        for step, found in runs.items():  # interleaved
            stream = stream_generate(runtime.model, runtime.tokenizer, long_prompt, max_tokens=1, prefill_step_size=step)
            found.append(list(stream)[-1].prompt_tps)
    chunks = {f"prefill_tps_{step}": common.median(found) for step, found in runs.items()}
    chunks["ratio"] = common.ratio(chunks["prefill_tps_512"], chunks["prefill_tps_2048"])
    print(f"prompt processing, {len(long_prompt)} tokens: {chunks['prefill_tps_512']:.0f} tok/s in 512-token chunks vs "
          f"{chunks['prefill_tps_2048']:.0f} in 2048 ({chunks['ratio']})")
    return speculative, schema, chunks


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5, help="in-process runs per path")
    parser.add_argument("--cli-reps", type=int, default=3, help="fresh-process decode runs per path (each pays start-up)")
    parser.add_argument("--cache-reps", type=int, default=3, help="`llm -c` turn-2 pairs (with, without the disk cache)")
    parser.add_argument("--tokens", type=int, default=48, help="tokens generated per decode run")
    parser.add_argument("--draft-layers", type=int, default=2, help="layers of the truncated draft model")
    parser.add_argument("--large", action="store_true", help="a 358M-parameter Qwen2.5-0.5B-shaped model")
    parser.add_argument("--sections", default="decode,continue,speculative",
                        help="which parts to run: decode (vs mlx_lm, llm-mlx), continue (llm -c and the disk cache), "
                        "speculative (with schema and prompt chunks)")
    args = parser.parse_args()

    started = time.perf_counter()
    spec = LARGE if args.large else SMALL
    path = model_factory.cached_tiny_model("bench-chat-large" if args.large else "bench-chat", spec)

    import llm
    import mlx.core as mx

    from llm_lmstudio import local_models, mlx_native

    local_models.add(path, "bench-chat")
    model_id = "mlx/bench-chat"
    plugin = llm.get_model(model_id)
    runtime = mlx_native.load_chat(local_models.find(model_id))  # loaded once, as in `llm chat`
    params = parameter_count(runtime.model)
    print(f"model: {spec.arch}, {params / 1e6:.1f}M parameters, float32; {common.machine()}, mlx {mx.__version__}")

    decode = decode_section(args, plugin, runtime, path, model_id) if "decode" in args.sections else None
    disk_cache = continue_section(args, runtime, model_id) if "continue" in args.sections else None
    speculative = schema = chunks = None
    if "speculative" in args.sections:
        speculative, schema, chunks = speculative_and_schema_section(args, plugin, runtime, path)
    common.write_json("mlx_chat", {
        "benchmark": "mlx_chat", "machine": common.machine(), "mlx": mx.__version__,
        "model": {"arch": spec.arch, "parameters": params, "hidden_size": spec.hidden_size, "layers": spec.num_hidden_layers,
                  "dtype": "float32"},
        "reps": {"decode": args.reps, "cli": args.cli_reps, "prompt_cache": args.cache_reps},
        "tokens_per_decode_run": args.tokens, "decode": decode, "disk_prompt_cache": disk_cache,
        "speculative": speculative, "schema": schema, "prompt_chunks": chunks,
        "seconds": round(time.perf_counter() - started, 1),
    })


if __name__ == "__main__":
    main()
