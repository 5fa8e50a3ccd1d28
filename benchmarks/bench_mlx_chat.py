"""Native MLX chat against mlx_lm in the same run: decode tokens/s (Python API, CLI, llm-mlx), turn 2 of `llm -c`
in a new process with and without the disk prompt cache (and what saving costs), speculative decoding, schema-
constrained decoding, prompt chunk size. Writes benchmarks/out/mlx_chat.json."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
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
SHAPE = dict(arch="qwen2", seed=11, num_key_value_heads=2, vocab_size=4096)
SMALL = model_factory.TinyModelSpec(**SHAPE, hidden_size=384, num_hidden_layers=6, intermediate_size=1024, num_attention_heads=6)
LARGE = model_factory.TinyModelSpec(**SHAPE, hidden_size=896, num_hidden_layers=24, intermediate_size=4864, num_attention_heads=14)
SHORT_PROMPT = "Write a Python function that returns the sum of a list of numbers."
LONG_TURN = "Explain the difference between a list and a tuple in Python, with examples. " * 30
FOLLOW_UP = "And what about sets?"
GREEDY = ["-o", "temperature", "0"]
# Unbounded, so that a constrained run lasts as long as an unconstrained one: only speed is measured here
# (tests/test_mlx_schema.py checks validity).
NUMBERS_SCHEMA = {"type": "object", "properties": {"numbers": {"type": "array", "items": {"type": "integer"}}}, "required": ["numbers"]}


def parameter_count(model) -> int:
    from mlx.utils import tree_flatten

    return sum(v.size for _, v in tree_flatten(model.parameters()))


def decode_rates(stream, count=lambda last: last.generation_tokens) -> dict:
    """Tokens/s per wall and per CPU second from a stream's first item to its end (the first token is not counted)."""
    clock = None
    for last in stream:
        clock = clock or common.Clock().__enter__()
    clock.__exit__()
    tokens = count(last) - 1
    return {"wall": tokens / clock.wall, "cpu": tokens / clock.cpu}


def last_turn() -> dict:
    with sqlite3.connect(SANDBOX / "llm" / "logs.db") as db:
        conversation, payload = db.execute(
            "select thread_id, response_json from turns order by datetime_utc desc limit 1"  # thread ids are conversation ids
        ).fetchone()
    return json.loads(payload) | {"conversation_id": conversation}


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
    from mlx_lm import stream_generate

    prompt = runtime.render([{"role": "user", "content": SHORT_PROMPT}], None)

    def through_llm(model):
        response = model.prompt(SHORT_PROMPT, max_tokens=args.tokens, temperature=0)
        return decode_rates(response, lambda _: response.usage().output)

    def cli():  # `llm -m ... PROMPT` in a fresh process: mlx's generation tok/s from the log
        subprocess.run([common.LLM, "-m", model_id, SHORT_PROMPT, "-o", "max_tokens", str(args.tokens), *GREEDY], check=True, capture_output=True)
        return last_turn()["generation_tps"]

    def mlx_lm_cli():  # `mlx_lm generate` in a fresh process: the direct baseline for the llm CLI (same start-up costs)
        out = subprocess.run([sys.executable, "-m", "mlx_lm", "generate", "--model", str(path), "--prompt", SHORT_PROMPT,
                              "--max-tokens", str(args.tokens), "--temp", "0"], check=True, capture_output=True, text=True).stdout
        return float(re.search(r"Generation: \d+ tokens, ([\d.]+) tokens-per-sec", out).group(1))

    llm_mlx_model, note = load_llm_mlx(path)
    paths = {"direct": lambda: decode_rates(stream_generate(runtime.model, runtime.tokenizer, prompt, max_tokens=args.tokens)),
             "llm_python": lambda: through_llm(plugin)}
    if llm_mlx_model is not None:
        paths["llm_mlx"] = lambda: through_llm(llm_mlx_model)
    med = {name: common.medians(rows) for name, rows in common.interleave(paths, args.reps).items()}
    fresh = {name: common.median(rows) for name, rows in common.interleave({"llm_cli": cli, "mlx_lm_cli": mlx_lm_cli}, args.cli_reps, warmup=False).items()}
    ratios = {"llm_python": common.ratio(med["llm_python"]["wall"], med["direct"]["wall"]),
              "llm_python_cpu": common.ratio(med["llm_python"]["cpu"], med["direct"]["cpu"]),
              "llm_mlx": common.ratio(med["llm_mlx"]["wall"], med["direct"]["wall"]) if "llm_mlx" in med else None,
              "llm_cli": common.ratio(fresh["llm_cli"], fresh["mlx_lm_cli"])}
    print(f"decode, {args.tokens} tokens, greedy, median of {args.reps} (tok/s wall; ratio to mlx_lm.stream_generate):")
    print(f"  mlx_lm {med['direct']['wall']:.1f}   llm Python API {med['llm_python']['wall']:.1f} ({ratios['llm_python']}; "
          f"CPU time {ratios['llm_python_cpu']})   llm-mlx {med.get('llm_mlx', {}).get('wall', float('nan')):.1f} ({ratios['llm_mlx']})")
    print(f"  fresh processes: mlx_lm generate {fresh['mlx_lm_cli']:.1f}, llm -m {fresh['llm_cli']:.1f} ({ratios['llm_cli']})")
    return {"tokens_per_s": med, "fresh_process_generation_tps": fresh, "ratios": ratios,
            "llm_mlx": note or "llm-mlx 0.4 (MlxModel driven through llm's Python API)"}


def first_output(args: list[str], env: dict) -> tuple[float, str]:
    """(seconds from spawning the process to its first byte of answer, its output)."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = proc.stdout.read(1)
    first_at = time.perf_counter()
    rest, errors = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed: {errors.decode()[-2000:]}")
    return first_at - started, (first + rest).decode()


def continue_section(args, runtime, model_id):
    from mlx_lm import stream_generate
    from mlx_lm.models.cache import load_prompt_cache, make_prompt_cache, save_prompt_cache

    from llm_lmstudio.mlx.prompt_cache import common_prefix

    # Unbuffered: llm's piped stdout would otherwise show the first token only when the process exits.
    on = dict(os.environ, PYTHONUNBUFFERED="1")
    off = dict(on, LMSTUDIO_MLX_PROMPT_CACHE="off")
    rows = []
    for _ in range(args.cache_reps):
        # Two identical conversations (greedy): one continued with the disk cache, one without.
        starts = []
        for _ in range(2):
            reply = first_output([common.LLM, "-m", model_id, LONG_TURN, "-o", "max_tokens", "16", *GREEDY], on)[1]
            starts.append(last_turn() | {"reply": reply.removesuffix("\n")})
        turn_two = {}
        for name, start, env in (("cached", starts[0], on), ("uncached", starts[1], off)):
            process_ttft = first_output([common.LLM, "--cid", start["conversation_id"], FOLLOW_UP, "-o", "max_tokens", "4", *GREEDY], env)[0]
            logged = last_turn()
            turn_two |= {f"process_ttft_{name}_s": process_ttft, f"plugin_ttft_{name}_s": logged["time_to_first_token_s"],
                         f"tokens_processed_{name}": logged["prompt_tokens_processed"]}
            if name == "cached":
                turn_two["save_s_turn_two"] = logged["prompt_cache_save_s"]
        rows.append(turn_two | {"save_s_turn_one": starts[0]["prompt_cache_save_s"], "turn_one_total_s": starts[0]["total_s"]})
    sizes = [f.stat().st_size for f in (SANDBOX / "llm" / "lmstudio" / "mlx-prompt-cache").glob("*.safetensors")]

    # The direct path, in this process with the model loaded: mlx_lm with its own prompt-cache file vs without.
    history = [{"role": "user", "content": LONG_TURN}, {"role": "assistant", "content": starts[0]["reply"]},
               {"role": "user", "content": FOLLOW_UP}]
    full = runtime.render(history, None)
    held = runtime.render(history[:1], None) + runtime.tokenizer.encode(starts[0]["reply"], add_special_tokens=False)
    common_tokens = min(common_prefix(full, held), len(full) - 1)
    prefix_cache = make_prompt_cache(runtime.model)
    list(stream_generate(runtime.model, runtime.tokenizer, full[:common_tokens + 1], max_tokens=1, prompt_cache=prefix_cache))
    for layer in prefix_cache:
        layer.trim(layer.offset - common_tokens)
    cache_file = SANDBOX / "direct-cache.safetensors"
    save_prompt_cache(str(cache_file), prefix_cache)

    def direct_ttft(use_file: bool) -> float:  # loading the file is timed, as the plugin's turn times its own
        return common.seconds(lambda: next(stream_generate(
            runtime.model, runtime.tokenizer, full[common_tokens:] if use_file else full, max_tokens=1,
            prompt_cache=load_prompt_cache(str(cache_file)) if use_file else make_prompt_cache(runtime.model))))

    direct = common.medians([{"cached": direct_ttft(True), "uncached": direct_ttft(False)} for _ in range(args.cache_reps)])
    med = common.medians(rows)
    result = med | {
        "turn_two_prompt_tokens": len(full), "cache_file_mb": round(common.median(sizes) / 1e6, 2), "direct_ttft_s": direct,
        "ratio_process": common.ratio(med["process_ttft_cached_s"], med["process_ttft_uncached_s"]),
        "ratio_plugin": common.ratio(med["plugin_ttft_cached_s"], med["plugin_ttft_uncached_s"]),
        "ratio_direct": common.ratio(direct["cached"], direct["uncached"]),
    }
    print(f"`llm -c` turn 2 in a new process, {len(full)}-token history, median of {args.cache_reps} "
          f"(tokens processed {med['tokens_processed_cached']:.0f} with the disk cache, {med['tokens_processed_uncached']:.0f} without):")
    print(f"  time to first token, from the turn's start: {med['plugin_ttft_cached_s']:.3f} vs {med['plugin_ttft_uncached_s']:.3f} s "
          f"(ratio {result['ratio_plugin']}; target <= 0.3); mlx_lm with its cache file: {direct['cached']:.3f} vs "
          f"{direct['uncached']:.3f} s ({result['ratio_direct']})")
    print(f"  from spawning the process (start-up and model load included): {med['process_ttft_cached_s']:.2f} vs "
          f"{med['process_ttft_uncached_s']:.2f} s (ratio {result['ratio_process']})")
    print(f"  saving the cache: {med['save_s_turn_one'] * 1000:.0f} ms after turn 1, {med['save_s_turn_two'] * 1000:.0f} ms after turn 2 "
          f"(files {result['cache_file_mb']} MB; turn 1 took {med['turn_one_total_s']:.2f} s)")
    return result


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

    from llm_lmstudio.mlx import discovery
    from llm_lmstudio.mlx import runtime as mlx_runtime

    discovery.add(truncated_draft(path, args.draft_layers), "bench-draft")
    draft = mlx_runtime.load_chat(discovery.find("bench-draft"))
    prompt = runtime.render([{"role": "user", "content": SHORT_PROMPT}], None)
    tokens = args.tokens * 2

    def through_llm(**options) -> dict:
        response = plugin.prompt(SHORT_PROMPT, max_tokens=tokens, temperature=0, **options)
        response.text()
        return response.response_json

    def direct_tps(**kwargs):
        return common.median(list(stream_generate(runtime.model, runtime.tokenizer, prompt, max_tokens=tokens, **kwargs))[-1].generation_tps
                             for _ in range(args.reps))

    def plugin_tps(**options):
        return common.median(through_llm(**options)["generation_tps"] for _ in range(args.reps))

    speculative = {"draft_layers": f"{args.draft_layers} of {len(runtime.model.layers)}", "draft_parameters": parameter_count(draft.model),
                   "direct_tps": direct_tps(), "direct_draft_tps": direct_tps(draft_model=draft.model),
                   "llm_tps": plugin_tps(), "llm_draft_tps": plugin_tps(draft_model="mlx/bench-draft")}
    accepted = through_llm(draft_model="mlx/bench-draft")
    speculative |= {"accepted_share": round(accepted["draft_tokens_accepted"] / accepted["generation_tokens"], 3),
                    "ratio_direct": common.ratio(speculative["direct_draft_tps"], speculative["direct_tps"]),
                    "ratio_llm": common.ratio(speculative["llm_draft_tps"], speculative["llm_tps"])}
    print(f"speculative decoding, draft = the model's first {speculative['draft_layers']} layers, {tokens} tokens, "
          f"{speculative['accepted_share']:.0%} of tokens drafted and accepted:")
    print(f"  mlx_lm {speculative['direct_tps']:.1f} -> {speculative['direct_draft_tps']:.1f} tok/s ({speculative['ratio_direct']}x); "
          f"llm {speculative['llm_tps']:.1f} -> {speculative['llm_draft_tps']:.1f} tok/s ({speculative['ratio_llm']}x)")

    with contextlib.redirect_stderr(io.StringIO()):  # the schema never closes, so each run warns of max_tokens
        plugin.prompt("x", schema=NUMBERS_SCHEMA, max_tokens=2).text()  # builds the grammar tokenizer, as a first schema prompt does
        schema = {"llm_tps": speculative["llm_tps"], "llm_schema_tps": plugin_tps(schema=NUMBERS_SCHEMA), "direct_tps": speculative["direct_tps"]}
    schema["ratio"] = common.ratio(schema["llm_schema_tps"], schema["llm_tps"])
    print(f"schema-constrained decoding: {schema['llm_schema_tps']:.1f} vs {schema['llm_tps']:.1f} tok/s unconstrained "
          f"(ratio {schema['ratio']}; mlx_lm unconstrained {schema['direct_tps']:.1f})")

    long_prompt = runtime.render([{"role": "user", "content": LONG_TURN}], None)
    # the plugin's prompt chunk (Ctrl-C acts between chunks) vs mlx-lm's default
    prefill = {step: lambda step=step: list(stream_generate(runtime.model, runtime.tokenizer, long_prompt, max_tokens=1,
                                                             prefill_step_size=step))[-1].prompt_tps for step in (512, 2048)}
    chunks = {f"prefill_tps_{step}": common.median(found) for step, found in common.interleave(prefill, args.reps, warmup=False).items()}
    chunks["ratio"] = common.ratio(chunks["prefill_tps_512"], chunks["prefill_tps_2048"])
    print(f"prompt processing, {len(long_prompt)} tokens: {chunks['prefill_tps_512']:.0f} tok/s in 512-token chunks vs "
          f"{chunks['prefill_tps_2048']:.0f} in 2048 ({chunks['ratio']})")
    return speculative, schema, chunks


def main():
    args = common.arguments(
        __doc__, reps=(5, "in-process runs per path"), cli_reps=(3, "fresh-process decode runs per path (each pays start-up)"),
        cache_reps=(3, "`llm -c` turn-2 pairs (with, without the disk cache)"), tokens=(48, "tokens generated per decode run"),
        draft_layers=(2, "layers of the truncated draft model"), large=(False, "a 358M-parameter Qwen2.5-0.5B-shaped model"),
        sections=("decode,continue,speculative", "which parts to run: decode (vs mlx_lm, llm-mlx), continue (llm -c and the disk "
                  "cache), speculative (with schema and prompt chunks)"))
    started = time.perf_counter()
    spec = LARGE if args.large else SMALL
    path = model_factory.cached_tiny_model("bench-chat-large" if args.large else "bench-chat", spec)

    import llm
    import mlx.core as mx

    from llm_lmstudio.mlx import discovery
    from llm_lmstudio.mlx import runtime as mlx_runtime

    discovery.add(path, "bench-chat")
    model_id = "mlx/bench-chat"
    plugin = llm.get_model(model_id)
    runtime = mlx_runtime.load_chat(discovery.find(model_id))  # loaded once, as in `llm chat`
    params = parameter_count(runtime.model)
    print(f"model: {spec.arch}, {params / 1e6:.1f}M parameters, float32; {common.machine()}, mlx {mx.__version__}")

    decode = decode_section(args, plugin, runtime, path, model_id) if "decode" in args.sections else None
    disk_cache = continue_section(args, runtime, model_id) if "continue" in args.sections else None
    speculative = schema = chunks = None
    if "speculative" in args.sections:
        speculative, schema, chunks = speculative_and_schema_section(args, plugin, runtime, path)
    common.write_json("mlx_chat", {
        "benchmark": "mlx_chat", "machine": common.machine(), "mlx": mx.__version__,
        "model": {"arch": spec.arch, "parameters": params, "hidden_size": spec.hidden_size, "layers": spec.num_hidden_layers, "dtype": "float32"},
        "reps": {"decode": args.reps, "cli": args.cli_reps, "prompt_cache": args.cache_reps},
        "tokens_per_decode_run": args.tokens, "decode": decode, "disk_prompt_cache": disk_cache,
        "speculative": speculative, "schema": schema, "prompt_chunks": chunks, "seconds": round(time.perf_counter() - started, 1),
    })


if __name__ == "__main__":
    main()
