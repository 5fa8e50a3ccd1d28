"""Native MLX prompt caches on disk: `llm -c` in a new process skips the history; torn, foreign and stale files
are moved aside and rebuilt; writes are atomic; the size cap evicts the least recently used; the setting turns it off."""

import json
import os
import shutil
import subprocess

import llm
import pytest
import sqlite_utils
from click.testing import CliRunner
from llm.cli import cli

from llm_lmstudio.mlx import discovery
from llm_lmstudio.mlx import runtime as mlx_runtime
from llm_lmstudio.mlx import prompt_cache
from llm_lmstudio.mlx import chat
from tests.conftest import llm_command
from tests.mlx.test_chat import fresh_cache, models  # noqa: F401 - the native-model fixtures

LONG_QUESTION = "Explain the difference between a list and a tuple in Python, with examples. " * 8


def cache_files(user_path):
    folder = user_path / "lmstudio" / "mlx-prompt-cache"
    return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []


def logged_turns(user_path):
    rows = sqlite_utils.Database(str(user_path / "logs.db")).query("select * from turns order by datetime_utc")
    return [dict(row, stats=json.loads(row["response_json"])) for row in rows]


def run_llm(*args, **env):
    result = subprocess.run(
        [llm_command(), *args], capture_output=True, text=True, timeout=300, env=os.environ | env
    )
    assert result.returncode == 0, result.stderr
    return result


def start_conversation(model_id="mlx/tiny-qwen", question=LONG_QUESTION):
    """Turn 1 of a conversation in this process, then the model unloaded: what a finished `llm` process leaves."""
    conversation = llm.get_model(model_id).conversation()
    first = conversation.prompt(question, temperature=0, max_tokens=6)
    first.text()
    mlx_runtime.unload_all()
    return conversation, first


@pytest.mark.slow  # two real llm processes
def test_continue_in_a_new_process_processes_only_the_new_turn(models, user_path):
    run_llm("-m", "mlx/tiny-qwen", LONG_QUESTION, "-o", "temperature", "0", "-o", "max_tokens", "6")
    assert len(cache_files(user_path)) == 1
    run_llm("-c", "And a set?", "-o", "temperature", "0", "-o", "max_tokens", "6")
    run_llm("-c", "And a dict?", "-o", "temperature", "0", "-o", "max_tokens", "6", LMSTUDIO_MLX_PROMPT_CACHE="off")
    one, two, three = (turn["stats"] for turn in logged_turns(user_path))
    assert one["prompt_cache"] is None and one["prompt_tokens_processed"] == one["prompt_tokens"] > 100
    # Turn 2 ran in a process of its own: everything turn 1 held came from the file.
    assert two["prompt_cache"] == "disk"
    assert two["prompt_tokens_cached"] >= one["prompt_tokens"]
    assert two["prompt_tokens_processed"] == two["prompt_tokens"] - two["prompt_tokens_cached"]
    assert two["prompt_tokens_processed"] < two["prompt_tokens"] / 5
    assert two["prompt_cache_save_s"] >= 0
    # Turned off, the same continuation processes the whole history again.
    assert three["prompt_cache"] is None and three["prompt_tokens_processed"] == three["prompt_tokens"]


def test_a_cache_from_disk_gives_the_answer_an_uncached_run_gives(models, fresh_cache):
    from mlx_lm import stream_generate

    conversation, first = start_conversation()
    second = conversation.prompt("And a set?", temperature=0, max_tokens=12)
    text = second.text()
    assert second.response_json["prompt_cache"] == "disk"
    runtime = mlx_runtime.load_chat(discovery.find("tiny-qwen"))
    history = [
        {"role": "user", "content": LONG_QUESTION},
        {"role": "assistant", "content": first.text()},
        {"role": "user", "content": "And a set?"},
    ]
    direct = stream_generate(runtime.model, runtime.tokenizer, runtime.render(history, None), max_tokens=12)
    assert text == "".join(r.text for r in direct)


def test_torn_file_is_moved_aside_with_a_warning_and_rebuilt(models, user_path, fresh_cache):
    options = ["-o", "temperature", "0", "-o", "max_tokens", "4"]
    assert CliRunner().invoke(cli, ["-m", "mlx/tiny-qwen", LONG_QUESTION, *options]).exit_code == 0
    mlx_runtime.unload_all()  # what a finished `llm` process leaves: the cache on disk only
    (path,) = cache_files(user_path)
    torn = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(torn)
    second = CliRunner().invoke(cli, ["-c", "And a set?", *options])
    assert second.exit_code == 0, second.output
    [aside] = path.parent.glob(f"{path.name}.corrupt-*")
    assert aside.read_bytes() == torn
    [warning] = second.stderr.splitlines()
    assert warning.startswith(f"llm-lmstudio-mlx: warning: {path} was damaged (") and warning.endswith(
        f"moved to {aside}; this turn goes through the whole conversation and saves a new one")
    stats = logged_turns(user_path)[-1]["stats"]
    assert stats["prompt_cache"] is None and stats["prompt_tokens_processed"] == stats["prompt_tokens"]
    mlx_runtime.unload_all()
    third = CliRunner().invoke(cli, ["-c", "And a dict?", *options])
    assert third.exit_code == 0 and third.stderr == ""
    assert logged_turns(user_path)[-1]["stats"]["prompt_cache"] == "disk"  # the rebuilt file loads


def test_file_of_another_model_is_ignored(models, user_path, fresh_cache):
    """A cache made by tiny-llama, put where tiny-qwen's conversation looks, is never fed to tiny-qwen."""
    llama_conversation, _ = start_conversation("mlx/tiny-llama")
    (llama_file,) = cache_files(user_path)
    qwen_conversation, _ = start_conversation()
    qwen_file = next(p for p in cache_files(user_path) if p != llama_file)
    shutil.copy(llama_file, qwen_file)
    second = qwen_conversation.prompt("And a set?", temperature=0, max_tokens=4)
    second.text()
    stats = second.response_json
    assert stats["prompt_cache"] is None and stats["prompt_tokens_processed"] == stats["prompt_tokens"]
    assert qwen_file.is_file() and qwen_file.read_bytes() != llama_file.read_bytes()  # rebuilt as tiny-qwen's


def test_a_changed_model_does_not_reuse_its_old_caches(models, user_path, fresh_cache, tmp_path, tiny_qwen_tools_path):
    copy = shutil.copytree(tiny_qwen_tools_path, tmp_path / "editable")
    discovery.add(copy, "editable")
    conversation, _ = start_conversation("mlx/editable")
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config["chat_template"] = config["chat_template"].replace("<|im_start|>", "<|im_start|> ")
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    second = conversation.prompt("And a set?", temperature=0, max_tokens=4)
    second.text()
    assert second.response_json["prompt_cache"] is None


def test_a_failed_write_leaves_the_previous_file_whole(models, user_path, fresh_cache, monkeypatch):
    import mlx_lm.models.cache as mlx_lm_cache

    conversation, _ = start_conversation()
    (path,) = cache_files(user_path)
    before = path.read_bytes()

    def write_half_then_fail(file_name, cache, metadata=None):
        with open(file_name, "wb") as handle:
            handle.write(before[: len(before) // 3])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mlx_lm_cache, "save_prompt_cache", write_half_then_fail)
    conversation.prompt("And a set?", temperature=0, max_tokens=4).text()
    assert cache_files(user_path) == [path] and path.read_bytes() == before  # no temporary file left behind


def test_size_cap_evicts_the_least_recently_used(models, user_path, fresh_cache, monkeypatch):
    first, _ = start_conversation(question="First conversation. " * 20)
    (first_file,) = cache_files(user_path)
    size = first_file.stat().st_size
    monkeypatch.setenv("LMSTUDIO_MLX_PROMPT_CACHE", str(int(size * 2.5)))  # room for two such files
    second, _ = start_conversation(question="Second conversation. " * 20)
    # Continuing the first makes it the most recently used, so the second goes when a third arrives.
    first.prompt("more", temperature=0, max_tokens=2).text()
    mlx_runtime.unload_all()
    start_conversation(question="Third conversation. " * 20)
    files = cache_files(user_path)
    assert len(files) == 2 and first_file in files
    assert sum(f.stat().st_size for f in files) <= size * 2.5
    again = second.prompt("more", temperature=0, max_tokens=2)
    again.text()
    assert again.response_json["prompt_cache"] is None  # evicted


def test_off_writes_nothing(models, user_path, fresh_cache, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_MLX_PROMPT_CACHE", "off")
    start_conversation()
    assert cache_files(user_path) == []


@pytest.mark.parametrize("value", ["lots", "-1GB", "12XB"])
def test_a_bad_size_setting_is_one_line(models, monkeypatch, value):
    monkeypatch.setenv("LMSTUDIO_MLX_PROMPT_CACHE", value)
    with pytest.raises(llm.ModelError, match="LMSTUDIO_MLX_PROMPT_CACHE="):
        llm.get_model("mlx/tiny-llama").conversation().prompt("hi", max_tokens=2).text()


def test_prompts_outside_a_conversation_stay_in_memory(models, user_path, fresh_cache):
    response = llm.get_model("mlx/tiny-llama").prompt("no conversation here", max_tokens=2)
    response.text()
    assert cache_files(user_path) == [] and response.response_json["prompt_cache_save_s"] is None


def test_fingerprint_follows_the_files_that_shape_a_cache(tmp_path, tiny_llama_path):
    copy = shutil.copytree(tiny_llama_path, tmp_path / "m")
    before = prompt_cache.model_fingerprint(copy)
    assert prompt_cache.model_fingerprint(copy) == before
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text() + " ")
    assert prompt_cache.model_fingerprint(copy) != before


def test_bounded_cache_continues_from_disk_with_the_same_options_only(models, fresh_cache):
    conversation = llm.get_model("mlx/tiny-llama").conversation()
    conversation.prompt("Some words to remember. " * 8, temperature=0, max_tokens=4, max_kv_size=512).text()
    mlx_runtime.unload_all()
    same = conversation.prompt("more", temperature=0, max_tokens=2, max_kv_size=512)
    same.text()
    assert same.response_json["prompt_cache"] == "disk"
    mlx_runtime.unload_all()
    # A cache shaped by other options (here: unbounded) is not reused, and is replaced by this turn's.
    other = conversation.prompt("more", temperature=0, max_tokens=2)
    other.text()
    assert other.response_json["prompt_cache"] is None
