"""Native MLX chat through llm: streaming, options, conversations, prompt-cache reuse, reasoning, tools, errors."""

import asyncio
import json
import re
import shutil
import subprocess
import sys

import llm
import pytest
import sqlite_utils
from click.testing import CliRunner
from llm.cli import cli

from llm_lmstudio.core.messages import tool_specs
from llm_lmstudio.mlx import discovery
from llm_lmstudio.mlx import runtime as mlx_runtime
from llm_lmstudio.mlx import loading
from llm_lmstudio.mlx import chat as native_chat
from llm_lmstudio.mlx import turn as mlx_turn
from llm_lmstudio.mlx.prompt_cache import common_prefix
from tests import model_factory
from tests.conftest import llm_command
from tests.helpers import assert_one_line_error as one_line_error, log_rows as turns


@pytest.fixture
def models(user_path, tmp_path, monkeypatch, tiny_llama_path, tiny_qwen_tools_path):
    """mlx/tiny-llama (plain template) and mlx/tiny-qwen (tool-capable template), nothing else on disk."""
    (tmp_path / "no-lmstudio").mkdir()  # an empty LM Studio models folder
    monkeypatch.setenv("LMSTUDIO_MODELS_DIR", str(tmp_path / "no-lmstudio"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hub"))
    monkeypatch.setenv("LMSTUDIO_BASE_URL", "http://127.0.0.1:9")  # nothing listens: no server models
    discovery.add(tiny_llama_path, "tiny-llama")
    discovery.add(tiny_qwen_tools_path, "tiny-qwen")
    return {"llama": tiny_llama_path, "qwen": tiny_qwen_tools_path}


@pytest.fixture
def fresh_cache():
    """Start without loaded models, so no prompt cache from an earlier test can be reused."""
    mlx_runtime.unload_all()
    yield
    mlx_runtime.unload_all()


def render(name, messages, tools=None):
    runtime = mlx_runtime.load_chat(discovery.find(name))
    return runtime.render(messages, tools)


def script_output(monkeypatch, *scripts, model="tiny-qwen"):
    """Make the next generations emit exactly these texts (then end-of-turn) by forcing logits.

    The model, tokenizer, detokenizer, mlx-lm's text state machine and tool parser all still run;
    only the choice of token is scripted, because random weights never write a tool call."""
    import mlx.core as mx
    import mlx_lm.sample_utils as sample_utils

    original = sample_utils.make_logits_processors
    pending = list(scripts)

    def make_logits_processors(*args, **kwargs):
        processors = original(*args, **kwargs)
        if not pending:
            return processors
        tokenizer = mlx_runtime.load_chat(discovery.find(model)).tokenizer
        script = tokenizer.encode(pending.pop(0), add_special_tokens=False) + [tokenizer.eos_token_id]
        step = {"n": 0}

        def force(tokens, logits):
            target = script[min(step["n"], len(script) - 1)]
            step["n"] += 1
            mask = (mx.arange(logits.shape[-1]) == target)[None]
            return mx.where(mask, mx.zeros_like(logits), mx.full(logits.shape, -1e9, logits.dtype))

        return [force] + processors

    monkeypatch.setattr(sample_utils, "make_logits_processors", make_logits_processors)


# ---------------------------------------------------------------- streaming, usage, logging


def test_cli_prompt_streams_and_logs_usage_speed_and_memory(models, user_path):
    result = CliRunner().invoke(cli, ["-m", "mlx/tiny-llama", "hello there", "-o", "max_tokens", "12", "-o", "seed", "3"])
    assert result.exit_code == 0, result.output
    (turn,) = turns(user_path)
    details = json.loads(turn["response_json"])
    expected_prompt = render("tiny-llama", [{"role": "user", "content": "hello there"}])
    assert turn["model"] == "mlx/tiny-llama"
    assert turn["input_tokens"] == len(expected_prompt) == details["prompt_tokens"]
    assert turn["output_tokens"] == details["generation_tokens"] and 1 <= turn["output_tokens"] <= 12
    assert details["generation_tps"] > 0 and details["peak_memory_gb"] > 0 and details["prompt_tps"] > 0
    assert json.loads(turn["options_json"]) == {"max_tokens": 12, "seed": 3}


def test_python_api_streams_token_by_token(models):
    response = llm.get_model("mlx/tiny-llama").prompt("stream please", max_tokens=10, temperature=0)
    chunks = list(response)
    assert len(chunks) > 1
    assert "".join(chunks) == response.text()


def test_model_is_loaded_once_per_process(models, fresh_cache, monkeypatch):
    import mlx_lm

    calls = []
    original = mlx_lm.load
    monkeypatch.setattr(mlx_lm, "load", lambda *a, **k: calls.append(a) or original(*a, **k))
    model = llm.get_model("mlx/tiny-llama")
    for text in ("one", "two", "three"):
        model.prompt(text, max_tokens=3).text()
    assert len(calls) == 1


# ---------------------------------------------------------------- options


def test_seeded_sampling_matches_mlx_lm_and_is_reproducible(models, fresh_cache):
    import mlx.core as mx
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    options = dict(temperature=1.0, top_p=0.9, top_k=50, min_p=0.0, max_tokens=16, seed=1234)
    model = llm.get_model("mlx/tiny-qwen")
    first = model.prompt("tell me something", **options).text()
    second = model.prompt("tell me something", **options).text()  # second run reuses the prompt cache
    other_seed = model.prompt("tell me something", **(options | {"seed": 99})).text()

    runtime = mlx_runtime.load_chat(discovery.find("tiny-qwen"))
    tokens = runtime.render([{"role": "user", "content": "tell me something"}], None)
    mx.random.seed(1234)
    sampler = make_sampler(temp=1.0, top_p=0.9, min_p=0.0, top_k=50)
    direct = "".join(r.text for r in stream_generate(runtime.model, runtime.tokenizer, tokens, max_tokens=16, sampler=sampler))
    assert first == second == direct
    assert other_seed != first


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("temperature", "5", "Input should be less than or equal to 2"),
        ("top_p", "0", "Input should be greater than 0"),
        ("top_k", "-1", "Input should be greater than or equal to 0"),
        ("min_p", "1.5", "Input should be less than or equal to 1"),
        ("max_tokens", "0", "Input should be greater than or equal to 1"),
        ("seed", "-3", "Input should be greater than or equal to 0"),
        ("repeat_penalty", "abc", "valid number"),
        ("nonsense", "1", "Extra inputs are not permitted"),
        ("kv_bits", "7", "kv_bits must be one of 2, 3, 4, 5, 6, 8"),
        ("max_kv_size", "10", "greater than or equal to 64"),
        ("draft_model", "mlx/", "draft_model must name a native model"),
    ],
)
def test_invalid_options_are_rejected_with_a_reason(option, value, message):
    import pydantic

    with pytest.raises(pydantic.ValidationError, match=message):
        native_chat.MLXOptions(**{option: value})


def test_cli_rejects_an_invalid_option_before_generating(models, user_path):
    result = CliRunner().invoke(cli, ["-m", "mlx/tiny-llama", "hi", "-o", "temperature", "5"])
    assert result.exit_code == 1
    assert result.output == "Error: -o temperature 5: Input should be less than or equal to 2\n"
    assert not (user_path / "logs.db").exists() or turns(user_path) == []


def test_an_empty_prompt_with_nothing_else_is_refused_in_one_line_and_not_held_against_the_model(models, user_path):
    import sqlite3

    from llm_lmstudio.store import call_history

    result = CliRunner().invoke(cli, ["-m", "mlx/tiny-llama", ""])
    assert result.exit_code == 1 and result.output == (
        "Error: mlx/tiny-llama: the prompt is empty: write a prompt, or give a system prompt (-s) or an attachment (-a)\n")
    answered = CliRunner().invoke(cli, ["-m", "mlx/tiny-llama", "", "-s", "be terse", "-o", "max_tokens", "3"])
    assert answered.exit_code == 0, answered.output
    # the refusal was the user's input, not a call of the model: only the answered call is recorded
    conn = sqlite3.connect(user_path / "lmstudio" / call_history.STORE_FILE)
    assert conn.execute("select ok, error_kind from lmstudio_calls").fetchall() == [(1, None)]


def test_options_are_described(models):
    result = CliRunner().invoke(cli, ["models", "--options", "-q", "mlx/tiny-llama"])
    assert result.exit_code == 0
    for option in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "max_tokens", "seed"):
        assert f"  {option}:" in result.output
    assert "Random seed" in result.output and "Nucleus sampling" in result.output


def test_repeat_penalty_changes_greedy_output(models):
    model = llm.get_model("mlx/tiny-llama")
    plain = model.prompt("repeat", temperature=0, max_tokens=24).text()
    penalised = model.prompt("repeat", temperature=0, max_tokens=24, repeat_penalty=3.0).text()
    assert plain != penalised


# ---------------------------------------------------------------- conversations and the prompt cache


def test_continue_sends_system_prompt_and_history_through_the_template(models, user_path):
    runner = CliRunner()
    first = runner.invoke(cli, ["-m", "mlx/tiny-llama", "first question", "-s", "be terse", "-o", "max_tokens", "6"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(cli, ["-c", "second question", "-o", "max_tokens", "6"])
    assert second.exit_code == 0, second.output
    turn_one, turn_two = turns(user_path)
    logged = json.loads(runner.invoke(cli, ["logs", "--json", "-n", "2"]).output)
    reply = next(entry["response"] for entry in logged if entry["prompt"] == "first question")
    history = [
        {"role": "system", "content": "be terse"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "second question"},
    ]
    assert turn_two["input_tokens"] == len(render("tiny-llama", history))
    assert turn_two["input_tokens"] > turn_one["input_tokens"]


def test_an_lmstudio_answer_cut_off_earlier_goes_to_the_template_without_the_marker(models):
    # `llm -c -m mlx/...` after an LM Studio answer was cut off: the log keeps the plugin's marker, the model never sees it
    from llm.parts import assistant, user

    from llm_lmstudio.core.messages import CUT_MARKER

    cut = "PARTIAL" + CUT_MARKER.format(reason="the response from LM Studio at http://x was cut off mid-stream")
    prompt = llm.Prompt("go on", model=llm.get_model("mlx/tiny-llama"), messages=[user("hi"), assistant(cut), user("go on")])
    assert mlx_turn.chat_messages(prompt) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "PARTIAL"},
        {"role": "user", "content": "go on"},
    ]


def test_llm_chat_reuses_the_cache_between_turns(models, user_path, fresh_cache):
    result = CliRunner().invoke(
        cli, ["chat", "-m", "mlx/tiny-llama", "-o", "max_tokens", "5"], input="first turn\nsecond turn\nquit\n"
    )
    assert result.exit_code == 0, result.output
    turn_one, turn_two = (json.loads(t["response_json"]) for t in turns(user_path))
    assert turn_one["prompt_tokens_cached"] == 0
    assert turn_two["prompt_tokens_cached"] >= turn_one["prompt_tokens"]
    assert turn_two["prompt_tokens_processed"] == turn_two["prompt_tokens"] - turn_two["prompt_tokens_cached"]


def test_turn_two_processes_only_the_new_tokens_and_matches_an_uncached_run(models, fresh_cache, monkeypatch):
    from mlx_lm import stream_generate

    reply = "A list is mutable, a tuple is not."
    script_output(monkeypatch, reply, model="tiny-llama")  # turn 1's answer, then its end-of-turn token; turn 2 is generated freely
    model = llm.get_model("mlx/tiny-llama")
    conversation = model.conversation()
    long_question = "Explain the difference between a list and a tuple in Python. " * 12
    one = conversation.prompt(long_question, temperature=0, max_tokens=32)
    assert one.text() == reply
    two = conversation.prompt("And a set?", temperature=0, max_tokens=8)
    text_two = two.text()

    runtime = mlx_runtime.load_chat(discovery.find("tiny-llama"))
    prompt_one = runtime.render([{"role": "user", "content": long_question}], None)
    prompt_two = runtime.render(
        [
            {"role": "user", "content": long_question},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "And a set?"},
        ],
        None,
    )
    reply_tokens = runtime.tokenizer.encode(reply, add_special_tokens=False)
    turn_one = prompt_one + reply_tokens + [runtime.tokenizer.eos_token_id]  # what went through the model in turn 1
    assert prompt_two[: len(turn_one)] == turn_one and len(prompt_one) > 100  # the template renders turn 1 back as it ran
    stats = two.response_json
    assert stats["prompt_tokens"] == len(prompt_two) == two.usage().input
    assert two.usage().details == {"cached_tokens": stats["prompt_tokens_cached"]}
    # All of turn 1 (prompt, reply, end of turn) comes from the cache; only turn 2's own tokens are processed.
    assert stats["prompt_tokens_cached"] == len(turn_one)
    assert stats["prompt_tokens_processed"] == len(prompt_two) - len(turn_one)

    direct = "".join(r.text for r in stream_generate(runtime.model, runtime.tokenizer, prompt_two, max_tokens=8))
    assert text_two == direct


def test_diverging_history_trims_the_cache_to_the_shared_prefix(models, fresh_cache):
    model = llm.get_model("mlx/tiny-qwen")
    model.prompt("The capital of France is Paris. " * 8, temperature=0, max_tokens=4).text()
    other = model.prompt("Completely different words here", temperature=0, max_tokens=4)
    other.text()
    runtime = mlx_runtime.load_chat(discovery.find("tiny-qwen"))
    new_prompt = runtime.render([{"role": "user", "content": "Completely different words here"}], None)
    old_prompt = runtime.render([{"role": "user", "content": "The capital of France is Paris. " * 8}], None)
    shared = common_prefix(new_prompt, old_prompt)
    assert 0 < shared < 10
    assert other.response_json["prompt_tokens_cached"] == shared
    assert other.response_json["prompt_tokens_processed"] == len(new_prompt) - shared


def test_alternating_conversations_keep_their_own_caches(models, fresh_cache):
    model = llm.get_model("mlx/tiny-qwen")
    first, second = model.conversation(), model.conversation()
    opening = {}
    for conversation, topic in ((first, "lists and tuples in Python. "), (second, "the capital of France. ")):
        response = conversation.prompt("Tell me about " + topic * 10, temperature=0, max_tokens=4)
        response.text()
        opening[conversation.id] = response.response_json["prompt_tokens"]
    for conversation in (first, second):
        follow_up = conversation.prompt("And then?", temperature=0, max_tokens=4)
        follow_up.text()
        stats = follow_up.response_json
        # Each conversation reuses its own history: its whole first prompt is skipped.
        assert stats["prompt_tokens_cached"] >= opening[conversation.id] > 40
        assert stats["prompt_tokens_processed"] == stats["prompt_tokens"] - stats["prompt_tokens_cached"]


def test_caches_beyond_the_capacity_go_least_recent_first(models, fresh_cache, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_MLX_PROMPT_CACHE", "off")  # memory only: the disk would bring it back
    model = llm.get_model("mlx/tiny-llama")
    capacity = mlx_runtime.load_chat(discovery.find("tiny-llama")).caches.capacity
    conversations = [model.conversation() for _ in range(capacity + 1)]
    for number, conversation in enumerate(conversations):
        conversation.prompt(f"Conversation number {number}: " + "words " * 30, temperature=0, max_tokens=2).text()
    oldest = conversations[0].prompt("again", temperature=0, max_tokens=2)
    oldest.text()
    newest = conversations[-1].prompt("again", temperature=0, max_tokens=2)
    newest.text()
    assert oldest.response_json["prompt_tokens_cached"] == 0
    assert newest.response_json["prompt_tokens_cached"] > 30


def test_async_model_streams_and_records_usage(models):
    async def run():
        model = llm.get_async_model("mlx/tiny-llama")
        conversation = model.conversation()
        chunks = [c async for c in conversation.prompt("hello async", max_tokens=6, temperature=0)]
        second = conversation.prompt("again", max_tokens=6, temperature=0)
        await second.text()
        return chunks, await second.usage(), second.response_json

    chunks, usage, stats = asyncio.run(run())
    assert chunks and usage.output >= 1
    assert stats["prompt_tokens_cached"] > 0


def test_cli_async_flag(models, user_path):
    result = CliRunner().invoke(cli, ["-m", "mlx/tiny-llama", "--async", "hi", "-o", "max_tokens", "4"])
    assert result.exit_code == 0, result.output
    assert turns(user_path)[0]["output_tokens"] >= 1


# ---------------------------------------------------------------- reasoning, tools, schemas


def test_thinking_is_separated_from_the_answer(models, monkeypatch):
    script_output(monkeypatch, "<think>Let me think about this carefully.</think>The answer is 42.")
    response = llm.get_model("mlx/tiny-qwen").prompt("question", max_tokens=64)
    events = list(response.stream_events())
    reasoning = "".join(e.chunk for e in events if e.type == "reasoning")
    assert reasoning == "Let me think about this carefully."
    assert response.text() == "The answer is 42."


def test_tool_call_round_trips_through_llm_chain(models, monkeypatch):
    calls = []

    def get_weather(city: str) -> str:
        "Current weather for a city."
        calls.append(city)
        return f"Sunny in {city}"

    script_output(monkeypatch, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    model = llm.get_model("mlx/tiny-qwen")
    assert model.supports_tools
    chain = model.chain("What is the weather in Paris?", tools=[get_weather], options={"max_tokens": 40})
    responses = list(chain.responses())  # runs the chain: model, tool, model
    assert calls == ["Paris"]
    assert len(responses) == 2
    (call,) = responses[0].tool_calls()
    assert (call.name, call.arguments) == ("get_weather", {"city": "Paris"})
    assert responses[0].text() == ""

    # The second turn rendered the call and its result with the model's own template.
    tools = tool_specs(responses[1].prompt.tools)
    expected = render(
        "tiny-qwen",
        [
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": call.tool_call_id, "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                ],
            },
            {"role": "tool", "content": "Sunny in Paris", "tool_call_id": call.tool_call_id, "name": "get_weather"},
        ],
        tools,
    )
    assert responses[1].usage().input == len(expected)
    tokenizer = mlx_runtime.load_chat(discovery.find("tiny-qwen")).tokenizer
    assert "<tool_response>\nSunny in Paris\n</tool_response>" in tokenizer.decode(expected)


def test_cli_tool_call_is_logged_as_parts(models, user_path, monkeypatch):
    script_output(monkeypatch, '<tool_call>\n{"name": "shout", "arguments": {"text": "hi"}}\n</tool_call>')
    result = CliRunner().invoke(
        cli,
        ["-m", "mlx/tiny-qwen", "call shout", "--functions", "def shout(text: str) -> str:\n    return text.upper()", "-o", "max_tokens", "60"],
    )
    assert result.exit_code == 0, result.output
    db = sqlite_utils.Database(str(user_path / "logs.db"))
    assert db["turns"].count == 2
    parts = {row["type"]: row for row in db.query("select type, tool_name, payload from parts where type like 'tool%'")}
    assert parts["tool_call"]["tool_name"] == "shout"
    assert json.loads(parts["tool_result"]["payload"])["output"] == "HI"


def test_tool_support_follows_the_template(models, fresh_cache):
    # Asked before any model is loaded: mlx-lm's tokenizer loader decides, from the template.
    assert llm.get_model("mlx/tiny-qwen").supports_tools is True
    assert llm.get_model("mlx/tiny-llama").supports_tools is False
    result = CliRunner().invoke(cli, ["-m", "mlx/tiny-llama", "hi", "--functions", "def f() -> str:\n    return 'x'"])
    assert result.exit_code == 1 and "does not support tools" in result.output


def tokenizer_folder(tmp_path, source, name, config=None, jinja=None, added_tokens=()):
    """A model folder with `source`'s small files (tool support never reads weights), changed as asked."""
    from tokenizers import AddedToken, Tokenizer

    target = tmp_path / name
    target.mkdir()
    for file in source.iterdir():
        if file.suffix != ".safetensors":
            shutil.copy(file, target)
    if config:
        data = json.loads((target / "tokenizer_config.json").read_text())
        (target / "tokenizer_config.json").write_text(json.dumps({**data, **config}))
    if jinja is not None:
        (target / "chat_template.jinja").write_text(jinja)
    if added_tokens:
        tokenizer = Tokenizer.from_file(str(target / "tokenizer.json"))
        tokenizer.add_special_tokens([AddedToken(token, special=True) for token in added_tokens])
        tokenizer.save(str(target / "tokenizer.json"))
    arch = json.loads((target / "config.json").read_text())["model_type"]
    return discovery.LocalModel(name=name, path=target, kind="chat", arch=arch, size_bytes=0, source="user")


@pytest.mark.parametrize(
    "name, source, changes, from_files",
    [
        ("plain", "llama", {}, False),
        ("tools", "qwen", {}, True),
        ("tools-in-jinja", "llama", {"jinja": model_factory.TOOLS_TEMPLATE}, True),  # transformers prefers the .jinja
        ("plain-jinja-over-tools", "qwen", {"jinja": model_factory.PLAIN_TEMPLATE}, False),
        # left to mlx-lm: a parser chosen by name, and tool-call tokens in the vocabulary only (pythonic)
        ("chosen-parser", "llama", {"config": {"tool_parser_type": "json_tools"}}, None),
        ("vocab-tokens", "llama", {"added_tokens": ("<|tool_call_start|>", "<|tool_call_end|>")}, None),
    ],
)
def test_tool_support_from_the_files_is_mlx_lms_answer(tmp_path, tiny_llama_path, tiny_qwen_tools_path, name, source,
                                                       changes, from_files):
    from mlx_lm.utils import load_tokenizer

    local = tokenizer_folder(tmp_path, {"llama": tiny_llama_path, "qwen": tiny_qwen_tools_path}[source], name, **changes)
    exact = load_tokenizer(local.path).has_tool_calling
    assert native_chat._tools_from_files(local) is from_files  # None: the files leave it open
    assert from_files is None or from_files == exact
    assert native_chat._supports_tools(local) == exact


def test_the_file_rules_are_mlx_lms_rules():
    # The template groups and vocabulary tokens mlx_native reads, taken from mlx-lm's own _infer_tool_parser.
    import ast
    import importlib
    import inspect
    from pathlib import Path

    from mlx_lm import tokenizer_utils, utils

    def groups(test, name):
        if isinstance(test, ast.BoolOp):
            parts = [groups(value, name) for value in test.values]
            if isinstance(test.op, ast.Or):
                return [group for part in parts for group in part]
            together = frozenset(marker for part in parts for group in part for marker in group)
            return [together] if together else []
        if isinstance(test, ast.Compare) and isinstance(test.left, ast.Constant) and getattr(test.comparators[0], "id", None) == name:
            return [frozenset({test.left.value})]
        return []

    tree = ast.parse(inspect.getsource(tokenizer_utils._infer_tool_parser))
    tests = [node.test for node in ast.walk(tree) if isinstance(node, ast.If)]
    template = {group for test in tests for group in groups(test, "chat_template")}
    assert template == {frozenset(group) for group in native_chat.TEMPLATE_MARKERS}
    vocab = [group for test in tests for group in groups(test, "vocab")]
    xtml = {node.value for node in ast.walk(ast.parse(inspect.getsource(tokenizer_utils._is_xtml_vocab)))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert vocab and all(group & set(native_chat.VOCAB_MARKERS) for group in [*vocab, frozenset(xtml)])

    folder = Path(utils.__file__).parent / "models"
    declared = [file.stem for file in folder.glob("*.py") if "TOKENIZER_DEFAULTS" in file.read_text()]
    with_parser = {name for name in declared
                   if "tool_parser_type" in getattr(importlib.import_module(f"mlx_lm.models.{name}"), "TOKENIZER_DEFAULTS", {})}
    reaching = (with_parser | {alias for alias, target in utils.MODEL_REMAPPING.items() if target in with_parser}
                | {key[0] for key, target in utils.MODEL_ARCHITECTURE_REMAPPING.items() if target in with_parser})
    assert with_parser and reaching <= native_chat.DEFAULT_PARSER_TYPES


def test_listing_models_with_tools_never_imports_transformers(models):
    # `llm models` shows every model's features; asking mlx-lm would import transformers (about 2 s) per command.
    code = ("import sys, llm; print(sorted(m.model_id for m in llm.get_models() if m.supports_tools and m.model_id.startswith('mlx/')),"
            " 'transformers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["['mlx/tiny-qwen']", "False"]


def test_truncated_tool_call_stays_visible_as_text(models, monkeypatch):
    script_output(monkeypatch, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    response = llm.get_model("mlx/tiny-qwen").prompt("weather?", tools=[llm.Tool.function(str.upper, name="get_weather")], max_tokens=8)
    text = response.text()
    assert response.tool_calls() == []
    assert text.startswith('<tool_call>\n{"name"') and '</tool_call>' not in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'.startswith(text)


def test_tool_call_without_tools_offered_stays_text(models, monkeypatch):
    script_output(monkeypatch, '<tool_call>\n{"name": "x", "arguments": {}}\n</tool_call>')
    response = llm.get_model("mlx/tiny-qwen").prompt("no tools here", max_tokens=40)
    assert response.tool_calls() == []
    assert response.text() == '<tool_call>\n{"name": "x", "arguments": {}}\n</tool_call>'


# ---------------------------------------------------------------- speculative decoding, KV cache options


@pytest.fixture
def other_vocab_path():
    """A model whose tokenizer was trained to another vocabulary size: useless as anyone's draft model."""
    return model_factory.cached_tiny_model("tiny-other-vocab", model_factory.TinyModelSpec(arch="llama", vocab_size=300, seed=2))


def test_draft_model_gives_the_greedy_output_of_the_model_alone(models, fresh_cache):
    model = llm.get_model("mlx/tiny-qwen")
    alone = model.prompt("Tell me a story", temperature=0, max_tokens=24).text()
    drafted = model.prompt("Tell me a story", temperature=0, max_tokens=24, draft_model="mlx/tiny-llama")
    assert drafted.text() == alone
    stats = drafted.response_json
    assert stats["draft_model"] == "mlx/tiny-llama" and 0 <= stats["draft_tokens_accepted"] <= stats["generation_tokens"]


def test_draft_model_conversation_reuses_both_caches(models, fresh_cache):
    conversation = llm.get_model("mlx/tiny-qwen").conversation()
    conversation.prompt("The capital of France is Paris. " * 6, temperature=0, max_tokens=6, draft_model="tiny-llama").text()
    second = conversation.prompt("And Japan?", temperature=0, max_tokens=6, draft_model="tiny-llama")
    second.text()
    assert second.response_json["prompt_tokens_cached"] > 40


def test_draft_model_with_another_tokenizer_is_one_line(models, other_vocab_path):
    discovery.add(other_vocab_path, "other-vocab")
    result = CliRunner().invoke(cli, ["-m", "mlx/tiny-qwen", "hi", "-o", "draft_model", "mlx/other-vocab"])
    output = one_line_error(result)
    assert "draft model mlx/other-vocab has a different tokenizer" in output
    assert "pick a smaller model of the same family" in output


def test_unknown_draft_model_is_one_line(models):
    output = one_line_error(CliRunner().invoke(cli, ["-m", "mlx/tiny-qwen", "hi", "-o", "draft_model", "mlx/nope"]))
    assert "draft model mlx/nope is not a native chat model here" in output and "llm lmstudio mlx list" in output


@pytest.mark.parametrize(
    "options,reason",
    [(["draft_model", "tiny-llama", "max_kv_size", "128"], "drop one of them"), (["kv_bits", "4", "max_kv_size", "128"], "not both")],
)
def test_options_mlx_lm_cannot_combine_are_one_line(models, options, reason):
    arguments = [part for pair in zip(["-o"] * 2, options[0::2], options[1::2]) for part in pair]
    assert reason in one_line_error(CliRunner().invoke(cli, ["-m", "mlx/tiny-qwen", "hi", *arguments]))


def test_max_kv_size_bounds_the_cache(models, fresh_cache):
    from mlx_lm.models.cache import RotatingKVCache

    conversation = llm.get_model("mlx/tiny-llama").conversation()
    response = conversation.prompt("many words " * 60, max_tokens=4, max_kv_size=64)
    response.text()
    assert response.response_json["prompt_tokens"] > 64
    entry = mlx_runtime.load_chat(discovery.find("tiny-llama")).caches.take(conversation.id)
    assert all(isinstance(layer, RotatingKVCache) and layer.max_size == 64 for layer in entry.cache)
    assert all(layer.keys.shape[2] <= 64 for layer in entry.cache)


def test_kv_bits_quantizes_the_whole_cache(models, fresh_cache):
    from mlx_lm.models.cache import QuantizedKVCache

    # mlx quantizes in groups of 64 values, so the heads must be at least that wide.
    path = model_factory.cached_tiny_model(
        "tiny-wide-heads", model_factory.TinyModelSpec(arch="llama", hidden_size=128, num_attention_heads=2, num_key_value_heads=1, seed=3)
    )
    discovery.add(path, "wide-heads")
    conversation = llm.get_model("mlx/wide-heads").conversation()
    plain = conversation.prompt("some words " * 20, temperature=0, max_tokens=8)
    plain.text()
    quantized = llm.get_model("mlx/wide-heads").conversation().prompt("some words " * 20, temperature=0, max_tokens=8, kv_bits=4)
    quantized.text()
    entry = mlx_runtime.load_chat(discovery.find("wide-heads")).caches.take(quantized.conversation.id)
    assert all(isinstance(layer, QuantizedKVCache) and layer.bits == 4 for layer in entry.cache)
    assert quantized.usage().output >= 1


# ---------------------------------------------------------------- budgets and bad input


def test_prompt_longer_than_the_context_window_is_refused_before_generating(models, user_path, monkeypatch):
    import mlx_lm

    calls = []
    monkeypatch.setattr(mlx_lm, "stream_generate", lambda *a, **k: calls.append(1) or iter(()))
    output = one_line_error(CliRunner().invoke(cli, ["-m", "mlx/tiny-llama", "word " * 5000]))
    assert "the prompt is" in output and "but the model's context window is 4096" in output
    assert calls == [] and "word word" not in output


def test_binary_stdin_is_one_line_without_the_prompt(models, user_path):
    secret = b"SECRET-PROMPT-TEXT "
    result = subprocess.run(
        [llm_command(), "-m", "mlx/tiny-llama", "-o", "max_tokens", "3"],
        input=secret + bytes(range(128, 256)) * 50, capture_output=True, timeout=120,
    )
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "mlx/tiny-llama: the prompt is not valid UTF-8 text (it contains the byte 0x80 at character 19)" in stderr
    assert b"SECRET" not in result.stderr + result.stdout


def test_ctrl_c_acts_between_prompt_chunks(models, fresh_cache, monkeypatch):
    """A real SIGINT, sent while the prompt is being processed, stops it at the end of the current chunk."""
    import signal
    import threading

    monkeypatch.setattr(mlx_turn, "PREFILL_STEP", 32)
    # Python's own Ctrl-C handler, as in a terminal: a runner that started this suite in the background (a
    # non-interactive shell's `&`) leaves SIGINT ignored, and Python then installs no handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupt_a_prefill(signal, threading, monkeypatch)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt_a_prefill(signal, threading, monkeypatch):
    progress = []
    original = mlx_turn.Turn._prefill_progress

    def record(self, processed, total):
        progress.append((processed, total))
        if processed == 32:  # the first chunk is done: press Ctrl-C from another thread, as a terminal would
            threading.Thread(target=signal.pthread_kill, args=(threading.main_thread().ident, signal.SIGINT)).start()
        original(self, processed, total)

    monkeypatch.setattr(mlx_turn.Turn, "_prefill_progress", record)
    conversation = llm.get_model("mlx/tiny-llama").conversation()
    with pytest.raises(KeyboardInterrupt):
        conversation.prompt("many words " * 300, max_tokens=4).text()
    total = progress[0][1]
    assert total > 32 * 10 and progress[-1][0] <= 32 * 3  # stopped after a chunk or two, not after all of them
    # The half-processed cache is not kept: the next turn starts clean.
    retry = conversation.prompt("short", max_tokens=2)
    retry.text()
    assert retry.response_json["prompt_cache"] is None


def test_async_consumer_that_goes_away_stops_the_work_between_chunks(models, fresh_cache, monkeypatch):
    monkeypatch.setattr(mlx_turn, "PREFILL_STEP", 32)
    progress = []
    original = mlx_turn.Turn._prefill_progress

    async def run():
        loop = asyncio.get_running_loop()
        task = None

        def record(self, processed, total):
            progress.append(processed)
            if processed == 32:  # first chunk done (in the worker thread): the consumer gives up
                loop.call_soon_threadsafe(task.cancel)
            original(self, processed, total)

        monkeypatch.setattr(mlx_turn.Turn, "_prefill_progress", record)
        model = llm.get_async_model("mlx/tiny-llama")
        task = asyncio.ensure_future(model.prompt("many words " * 300, max_tokens=4).text())
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    # execute() waited for its worker, which stopped a chunk or two later instead of processing ~600 tokens.
    assert 32 <= progress[-1] <= 32 * 3


def test_model_too_large_for_memory_is_refused_before_loading(models, tmp_path, tiny_llama_path, monkeypatch):
    import mlx_lm

    copy = shutil.copytree(tiny_llama_path, tmp_path / "huge")
    with open(copy / "model-00002-of-00002.safetensors", "wb") as handle:
        handle.truncate(2**40)  # a sparse file: a terabyte of "weights" that uses no disk
    discovery.add(copy, "huge")
    loads = []
    monkeypatch.setattr(mlx_lm, "load", lambda *a, **k: loads.append(a))
    output = one_line_error(CliRunner().invoke(cli, ["-m", "mlx/huge", "hi"]))
    assert "mlx/huge needs 1099.5 GB for its weights but only" in output
    assert "GB of memory available" in output and "use a smaller quantization" in output
    assert "LMSTUDIO_MLX_MEMORY_CHECK=off" in output and loads == []


def test_resolved_model_is_the_full_model_id(models, user_path):
    result = CliRunner().invoke(cli, ["-m", "mlx/tiny-llama", "hi", "-o", "max_tokens", "2"])
    assert result.exit_code == 0, result.output
    (turn,) = turns(user_path)
    assert turn["resolved_model"] == "mlx/tiny-llama"


# ---------------------------------------------------------------- errors


def test_missing_folder_is_one_clear_line(models, tmp_path, tiny_llama_path):
    copy = shutil.copytree(tiny_llama_path, tmp_path / "gone")
    discovery.add(copy, "gone")
    shutil.rmtree(copy)
    output = one_line_error(CliRunner().invoke(cli, ["-m", "mlx/gone", "hi"]))
    assert "is not a folder" in output and "llm lmstudio mlx remove gone" in output


def test_corrupt_weights_are_one_clear_line(models, tmp_path, tiny_llama_path):
    copy = shutil.copytree(tiny_llama_path, tmp_path / "corrupt")
    (copy / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    discovery.add(copy, "corrupt")
    output = one_line_error(CliRunner().invoke(cli, ["-m", "mlx/corrupt", "hi"]))
    assert "mlx/corrupt failed while loading" in output and str(copy) in output


def test_unsupported_architecture_is_one_clear_line(models, tmp_path, tiny_llama_path):
    copy = shutil.copytree(tiny_llama_path, tmp_path / "future")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config | {"model_type": "llama9000"}))
    discovery.add(copy, "future")
    output = one_line_error(CliRunner().invoke(cli, ["-m", "mlx/future", "hi"]))
    assert "'llama9000' architecture" in output and "llm install -U mlx-lm" in output


@pytest.mark.parametrize(
    "exc",
    [MemoryError(), RuntimeError("[metal::malloc] Resource limit (499000) exceeded."), RuntimeError("std::bad_alloc")],
)
def test_out_of_memory_is_one_clear_line(exc):
    local = discovery.LocalModel("big", discovery.Path("/m/big"), "chat", "llama", 7_400_000_000, "user")
    message = str(loading.model_error(local, exc, "loading"))
    assert message == "Out of memory loading mlx/big (7.4 GB of weights): close other models or use a smaller quantization"


def test_unsupported_embedding_architecture_is_one_clear_line(models, tmp_path):
    folder = tmp_path / "odd-embedder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert9000", "architectures": ["Bert9000Model"]}))
    (folder / "model.safetensors").write_bytes(b"never read")
    (folder / "vocab.txt").write_text("[PAD]\n")
    discovery.add(folder, "odd-embedder")
    output = one_line_error(CliRunner().invoke(cli, ["embed", "-m", "mlx/odd-embedder", "-c", "hello"]))
    assert "'bert9000' architecture" in output and "llm install -U mlx-embeddings" in output


# ---------------------------------------------------------------- the same one-line words as LM Studio models


def test_a_native_model_of_the_wrong_kind_or_unknown_is_one_line_in_lm_studios_words(models, tmp_path):
    folder = tmp_path / "embedder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    (folder / "model.safetensors").write_bytes(b"")  # discovered, never loaded
    (folder / "vocab.txt").write_text("[PAD]\n")
    discovery.add(folder, "embedder")
    assert one_line_error(CliRunner().invoke(cli, ["-m", "mlx/embedder", "hi"])) == (
        "Error: mlx/embedder is an embedding model: use it with `llm embed -m mlx/embedder`"
    )
    assert one_line_error(CliRunner().invoke(cli, ["embed", "-m", "mlx/tiny-llama", "-c", "hi"])) == (
        "Error: mlx/tiny-llama is a chat model, not an embedding model: `llm embed-models` lists the embedding models"
    )
    for args in (["-m", "mlx/nope", "hi"], ["embed", "-m", "mlx/nope", "-c", "hi"]):
        assert one_line_error(CliRunner().invoke(cli, args)) == (
            "Error: mlx/nope is not available: no native MLX model is called nope (`llm lmstudio mlx list` shows the "
            "models found on disk; `llm lmstudio mlx add PATH` adds a folder)"
        )
    assert "mlx/nope" not in CliRunner().invoke(cli, ["models"]).output  # a stand-in only for the command asking


def test_kv_bits_on_heads_narrower_than_mlxs_groups_is_one_line(models):
    output = one_line_error(CliRunner().invoke(cli, ["-m", "mlx/tiny-llama", "hi", "-o", "kv_bits", "4"]))
    assert output == ("Error: mlx/tiny-llama cannot quantize its KV cache: mlx-lm quantizes in groups of 64 values and "
                      "this model's attention heads hold 16: run it without -o kv_bits")


def test_an_lm_studio_draft_model_is_named_as_given(models):
    output = one_line_error(CliRunner().invoke(cli, ["-m", "mlx/tiny-llama", "hi", "-o", "draft_model", "lmstudio/x/y"]))
    assert output == ("Error: -o draft_model lmstudio/x/y: lmstudio/x/y is not a native MLX model: the draft model runs "
                      "in this process too, so name one from `llm lmstudio mlx list` (mlx/<name>)")


def test_option_errors_are_one_line_in_the_cli_and_a_validation_error_in_python(models):
    import pydantic

    result = CliRunner().invoke(cli, ["-m", "mlx/tiny-llama", "hi", "-o", "temperature", "7", "-o", "top_p", "0"])
    assert one_line_error(result) == ("Error: -o temperature 7: Input should be less than or equal to 2; "
                                      "-o top_p 0: Input should be greater than 0")
    with pytest.raises(pydantic.ValidationError):
        llm.get_model("mlx/tiny-llama").prompt("hi", temperature=7)


def test_a_prompt_too_long_is_one_stderr_line_without_the_tokenizers_warning(models, user_path):
    result = subprocess.run([llm_command(), "-m", "mlx/tiny-llama", "-o", "max_tokens", "2"], input="word " * 5000,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()  # transformers' "Token indices sequence length is longer..." came first
    assert re.fullmatch(r"Error: mlx/tiny-llama: the prompt is \d{5} tokens but the model's context window is 4096: "
                        r"shorten it \(or start a new conversation instead of -c\)", line), line


# ---------------------------------------------------------------- settings: refused, never read as something else


def test_a_memory_check_that_is_neither_on_nor_off_is_refused_before_loading(models, fresh_cache, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_MLX_MEMORY_CHECK", "maybe")
    assert one_line_error(CliRunner().invoke(cli, ["-m", "mlx/tiny-llama", "hi"])) == (
        "Error: mlx/tiny-llama is not available: LMSTUDIO_MLX_MEMORY_CHECK='maybe' is neither on nor off: set it to on "
        "or off (1 or 0), or unset it (default on)"
    )
    assert mlx_runtime.loaded(discovery.find("tiny-llama")) is None


def test_a_models_folder_that_does_not_exist_is_refused_not_ignored(models, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_MODELS_DIR", "/nonexistent")
    problem = ("LMSTUDIO_MODELS_DIR='/nonexistent' is not a folder: set it to the folder LM Studio downloads models "
               "into, or unset it")
    assert one_line_error(CliRunner().invoke(cli, ["-m", "mlx/tiny-llama", "hi"])) == (
        f"Error: mlx/tiny-llama is not available: {problem}")
    for command in (["lmstudio", "mlx", "list"], ["lmstudio", "mlx", "remove", "nope"]):
        assert one_line_error(CliRunner().invoke(cli, command)) == f"Error: {problem}"
    listed = CliRunner().invoke(cli, ["models"])
    assert listed.exit_code == 0 and "mlx/" not in listed.stdout  # other models stay; ours say why, once
    assert listed.stderr.splitlines() == [f"llm-lmstudio-mlx: {problem} (native MLX models are off until then)"]


# ---------------------------------------------------------------- what the router's history holds against a model


@pytest.mark.parametrize("args,env,kind,said", [
    (["word " * 5000], {}, "PromptTooLong", "but the model's context window is 4096"),
    (["hi"], {"LMSTUDIO_MLX_PROMPT_CACHE": "banana"}, "RequestFailed", "LMSTUDIO_MLX_PROMPT_CACHE"),
    (["hi", "-o", "kv_bits", "4"], {}, "RequestFailed", "run it without -o kv_bits"),
    (["hi", "-o", "kv_bits", "4", "-o", "max_kv_size", "64"], {}, "RequestFailed", "not both"),
])
def test_failures_of_the_prompt_or_the_set_up_are_recorded_but_not_held_against_the_model(
        models, user_path, monkeypatch, args, env, kind, said):
    import sqlite3

    from llm_lmstudio.store import call_history

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert said in one_line_error(CliRunner().invoke(cli, ["-m", "mlx/tiny-llama", *args]))
    conn = sqlite3.connect(user_path / "lmstudio" / call_history.STORE_FILE)
    assert conn.execute("select model, ok, error_kind from lmstudio_calls").fetchall() == [("mlx/tiny-llama", 0, kind)]
    record = call_history.history(user_path / "logs.db", ["mlx/tiny-llama"])["mlx/tiny-llama"].record
    assert record.penalty == 0.0 and record.counted == () and record.ignored == {kind: 1}


def test_a_model_folder_deleted_since_it_was_added_is_not_held_against_the_model(models, user_path, tmp_path,
                                                                                   tiny_llama_path):
    from llm_lmstudio.store import call_history

    copy = shutil.copytree(tiny_llama_path, tmp_path / "gone")
    discovery.add(copy, "gone")
    shutil.rmtree(copy)
    assert "is not a folder" in one_line_error(CliRunner().invoke(cli, ["-m", "mlx/gone", "hi"]))
    record = call_history.history(user_path / "logs.db", ["mlx/gone"])["mlx/gone"].record
    assert record.penalty == 0.0 and record.ignored == {"ModelNotFound": 1}


def test_a_prompt_that_is_not_utf8_is_not_recorded_as_a_call_of_the_model(models, user_path):
    from llm_lmstudio.store import call_history

    result = CliRunner().invoke(cli, ["-m", "mlx/tiny-llama", "bad \udc80 byte"])
    assert "the prompt is not valid UTF-8 text" in one_line_error(result)
    record = call_history.history(user_path / "logs.db", ["mlx/tiny-llama"])["mlx/tiny-llama"].record
    assert record.counted == () and record.ignored == {}


def test_a_name_in_other_letter_case_is_the_same_model(models, user_path):
    result = CliRunner().invoke(cli, ["-m", "mlx/TINY-Llama", "hi", "-o", "max_tokens", "2"])
    assert result.exit_code == 0, result.output
    (turn,) = turns(user_path)
    assert turn["model"] == "mlx/tiny-llama"


def test_tokenizer_files_deleted_after_add_are_named_in_one_whole_line(models, user_path, tmp_path, tiny_llama_path):
    copy = shutil.copytree(tiny_llama_path, tmp_path / "notok")
    discovery.add(copy, "notok")
    for file in copy.glob("tokenizer*"):
        file.unlink()
    assert one_line_error(CliRunner().invoke(cli, ["-m", "mlx/notok", "hi"])) == (
        f"Error: mlx/notok: {copy} has no tokenizer: none of tokenizer.json, tokenizer.model, vocab.json or vocab.txt "
        "is there; copy the tokenizer files (with tokenizer_config.json) from the model's repository")


def test_an_error_whose_first_line_announces_a_list_keeps_the_list_on_its_line():
    local = discovery.LocalModel("m", discovery.Path("/m/m"), "chat", "llama", 1, "user")
    exc = ValueError("Couldn't instantiate the backend tokenizer from one of: \n(1) a `tokenizers` library serialization "
                     "file, \n(2) a slow tokenizer instance to convert or \n(3) an equivalent slow tokenizer class.\n")
    assert str(loading.model_error(local, exc, "loading")) == (
        "mlx/m failed while loading (/m/m): Couldn't instantiate the backend tokenizer from one of: (1) a `tokenizers` "
        "library serialization file, (2) a slow tokenizer instance to convert or (3) an equivalent slow tokenizer class.")
