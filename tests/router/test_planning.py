import json

import llm
import pytest
from click.testing import CliRunner
from llm.cli import cli
from llm.plugins import pm

from llm_lmstudio.lmstudio import catalog
from llm_lmstudio.router import planning
from llm_lmstudio.core import settings
from tests.helpers import assert_one_line_error, cache_list_for, llm_cli as run, log_rows, model_list_cache

LLAMA = "lmstudio/test-org/tiny-llama"
TOOLS = "lmstudio/test-org/tiny-qwen-tools"
VISION = "lmstudio/test-org/tiny-vision"
REASONER = "lmstudio/test-org/tiny-reasoner"


def write_config(user_path, text):
    (user_path / "lmstudio-router.yaml").write_text(text)


def last_turn(user_path):
    return log_rows(user_path)[-1]


@pytest.fixture
def cloud(monkeypatch):
    """A registered non-local model that records every prompt it receives (stands in for gpt-4o-mini)."""
    received = []

    class FakeCloud(llm.Model):
        model_id = "fake-cloud"
        can_stream = True
        supports_tools = True
        supports_schema = True

        def execute(self, prompt, stream, response, conversation=None):
            received.append(prompt.prompt)
            yield "cloud answer"

    class Plugin:
        __name__ = "FakeCloudPlugin"

        @llm.hookimpl
        def register_models(self, register):
            register(FakeCloud())

    pm.register(Plugin(), name="fake-cloud-plugin")
    try:
        yield received
    finally:
        pm.unregister(name="fake-cloud-plugin")


# Keywords keep these tests about ranking and fallback off the embedding path (tested on its own below).
PREFS = """
classifier: keyword
prefer:
  coding: [test-org/tiny-qwen-tools]
  creative: [tiny-llama]
  general: [tiny-llama]
ttl: 300
"""


def test_routes_by_task_and_logs_the_truth(lmstudio, user_path):
    write_config(user_path, PREFS)
    result = run("-m", "router", "Write a Python function that reverses a linked list", "-o", "max_tokens", "4")
    assert result.exit_code == 0, result.output
    turn = last_turn(user_path)
    assert turn["model"] == "lmstudio-router"
    assert turn["resolved_model"] == TOOLS
    data = json.loads(turn["response_json"])
    assert data["router"]["task"] == "coding"
    assert data["router"]["classifier"] == "keyword"
    assert data["router"]["candidates"][0]["model"] == TOOLS
    assert data["attempts"] == [dict(data["attempts"][0], model=TOOLS, ok=True)]
    assert turn["output_tokens"] and turn["input_tokens"]

    result = run("-m", "router", "Write a short poem about the sea", "-o", "max_tokens", "4")
    assert result.exit_code == 0, result.output
    assert last_turn(user_path)["resolved_model"] == LLAMA
    assert json.loads(last_turn(user_path)["response_json"])["router"]["task"] == "creative"


def test_capabilities_filter_candidates(lmstudio, user_path, tmp_path):
    write_config(user_path, PREFS)
    lmstudio.script("plain answer")
    assert run("-m", "router", "-T", "llm_version", "hello there", "--td").exit_code == 0
    # Every LM Studio model takes tools (none is excluded); the one LM Studio parses natively scores higher,
    # though not above the model the config prefers for the task.
    plan = json.loads(last_turn(user_path)["response_json"])["router"]
    reasons = {c["model"]: c["reasons"] for c in plan["candidates"]}
    assert {LLAMA, TOOLS} <= set(reasons)
    assert any("native tool use" in r for r in reasons[TOOLS]) and not any("native" in r for r in reasons[LLAMA])

    from tests.lmstudio.test_chat import _png

    image = tmp_path / "red.png"
    image.write_bytes(_png())
    result = run("-m", "router", "What is in this picture?", "-a", str(image), "-o", "max_tokens", "2")
    assert result.exit_code == 0, result.output
    assert last_turn(user_path)["resolved_model"] == VISION
    excluded = json.loads(last_turn(user_path)["response_json"])["router"]["excluded"]
    assert {"model": LLAMA, "reason": "cannot read image/png attachments"} in excluded


def test_prompt_too_long_for_a_models_context_excludes_it(lmstudio, user_path):
    run("models")
    with model_list_cache() as servers:
        for model in servers[lmstudio.base_url]["models"]:
            if model["key"] == "test-org/tiny-llama":
                model["max_context_length"] = 64
    plan = json.loads(run("lmstudio", "route", "--json", "word " * 400).output)
    assert any(e["model"] == LLAMA and "exceeds its context of 64" in e["reason"] for e in plan["excluded"])


def test_the_prompt_is_counted_once_in_its_size(lmstudio, user_path):
    # 350 characters at the planner's 3.5 characters a token: 100, plus one for rounding up
    plan = json.loads(run("lmstudio", "route", "--json", "a" * 350).output)
    assert plan["needs"]["tokens"] == 101


def test_history_and_system_prompt_count_once_each():
    from llm.parts import Message, TextPart

    router = llm.get_model("router")
    history = [
        Message(role="system", parts=[TextPart(text="s" * 70)]),
        Message(role="user", parts=[TextPart(text="u" * 70)]),
        Message(role="assistant", parts=[TextPart(text="a" * 70)]),
        Message(role="user", parts=[TextPart(text="p" * 70)]),  # this turn: llm puts it in .messages too
    ]
    prompt = llm.Prompt("p" * 70, router, system="s" * 70, messages=history)
    assert planning.needs_of(prompt).tokens == 81  # 4 × 70 characters / 3.5 + 1


def test_a_prompt_that_fits_a_models_context_is_routed_to_it(lmstudio, user_path):
    write_config(user_path, PREFS)
    run("models")
    with model_list_cache() as servers:
        for model in servers[lmstudio.base_url]["models"]:
            if model["key"] == "test-org/tiny-llama":
                model["max_context_length"] = 800
    prompt = "Write a short poem about the sea. " + "word " * 400  # ~583 tokens: fits 800 once, not counted twice
    result = run("-m", "router", prompt, "--no-stream", "-o", "max_tokens", "2")
    assert result.exit_code == 0, result.output
    assert last_turn(user_path)["resolved_model"] == LLAMA


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "status", "status": 500, "body": {"error": {"message": "engine crashed"}}},
        {"kind": "status", "status": 429, "body": {"error": {"message": "busy"}}},
        {"kind": "status", "status": 404, "body": {"error": {"message": "model vanished", "code": "model_not_found"}}},
        {"kind": "load_fail", "message": "Not enough memory (guardrails)"},
        {"kind": "malformed"},
        {"kind": "template"},  # a 400, but about this model's prompt template: another model has its own
    ],
    ids=["5xx", "429", "vanished", "load-failure", "malformed", "template"],
)
def test_falls_back_to_the_next_local_model_on_each_failure_kind(lmstudio, user_path, fault):
    write_config(user_path, PREFS)
    run("models")
    kind = fault.pop("kind")
    path = "/api/v0/chat" if kind != "load_fail" else "/"
    lmstudio.set_fault(kind, path, times=1, **fault)
    result = run("-m", "router", "Write a Python function that adds two numbers", "--no-stream", "-o", "max_tokens", "3")
    assert result.exit_code == 0, result.output
    data = json.loads(last_turn(user_path)["response_json"])
    first, second = data["attempts"][:2]
    assert first["model"] == TOOLS and not first["ok"] and first["error"]
    assert second["ok"] and last_turn(user_path)["resolved_model"] == second["model"] != TOOLS


def test_falls_back_across_servers_when_one_is_down(lmstudio, refused_url, user_path, monkeypatch):
    run("models")
    cache_list_for(refused_url, like=lmstudio.base_url)
    monkeypatch.setenv("LMSTUDIO_BASE_URL", f"{refused_url},{lmstudio.base_url}")
    write_config(user_path, "classifier: keyword\nprefer:\n  coding: [lmstudio/test-org/tiny-qwen-tools]\n")
    result = run("-m", "router", "Fix this Python bug: def f(: pass", "-o", "max_tokens", "2")
    assert result.exit_code == 0, result.output
    data = json.loads(last_turn(user_path)["response_json"])
    assert data["attempts"][0]["model"] == TOOLS and data["attempts"][0]["error_kind"] == "Unreachable"
    assert data["attempts"][-1]["ok"]


def test_failure_after_text_streamed_is_reported_not_retried(lmstudio, user_path):
    write_config(user_path, PREFS)
    run("models")
    lmstudio.script("def add(a, b): return a + b and more words here")
    lmstudio.set_fault("cut", "/api/v0/chat", after_chunks=3, times=1)
    result = run("-m", "router", "Write a Python function that adds two numbers")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    turn = last_turn(user_path)
    data = json.loads(turn["response_json"])
    assert len(data["attempts"]) == 1 and data["attempts"][0]["error_kind"] == "StreamCut"


def test_no_prompt_leaves_the_machine_without_a_configured_fallback(lmstudio, user_path, cloud):
    # The config names the cloud model as a preference, but not as a fallback: it must never be used.
    write_config(user_path, "classifier: keyword\nprefer:\n  coding: [fake-cloud]\n")
    run("models")
    lmstudio.set_fault("status", "/api/v0/chat", status=500, body={"error": {"message": "down"}})
    result = run("-m", "router", "Write a Python function", "--no-stream")
    assert result.exit_code == 1
    assert "every model the router tried failed" in result.output
    assert cloud == []
    plan = json.loads(run("lmstudio", "route", "--json", "Write a Python function").output)
    assert "fake-cloud" not in plan["chain"]


def test_cloud_fallback_only_when_configured(lmstudio, user_path, cloud):
    write_config(user_path, "classifier: keyword\nfallback: [fake-cloud]\n")
    run("models")
    lmstudio.set_fault("status", "/api/v0/chat", status=503, body={"error": {"message": "overloaded"}})
    result = run("-m", "router", "Write a Python function", "--no-stream")
    assert result.exit_code == 0, result.output
    assert "cloud answer" in result.output
    assert cloud == ["Write a Python function"]
    turn = last_turn(user_path)
    assert turn["resolved_model"] == "fake-cloud"
    data = json.loads(turn["response_json"])
    assert [a["ok"] for a in data["attempts"]][-1] is True
    assert all(not a["ok"] for a in data["attempts"][:-1]) and len(data["attempts"]) >= 2


def test_route_json_is_stable(lmstudio, user_path):
    write_config(user_path, PREFS)
    result = run("lmstudio", "route", "--json", "Explain how vaccines train the immune system")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"task", "confidence", "classifier", "classifier_note", "scores", "needs", "candidates", "excluded", "chosen", "chain",
                         "problems"}
    assert data["problems"] == []
    assert data["task"] == "research"
    assert set(data["candidates"][0]) == {"model", "server", "score", "loaded", "kind", "reasons"}
    assert data["candidates"][0]["server"] == lmstudio.base_url
    assert data["chain"][0] == data["chosen"]
    people = run("lmstudio", "route", "Explain how vaccines train the immune system")
    assert "Task: research" in people.output and "Chain:" in people.output


def test_forced_task_and_piped_prompt(lmstudio, user_path):
    data = json.loads(run("lmstudio", "route", "--json", "--task", "coding", input="anything at all").output)
    assert data["task"] == "coding" and data["classifier"] == "forced"


def test_unknown_tasks_and_fallbacks_are_refused_up_front(lmstudio, user_path, cloud):
    for args in (["lmstudio", "route", "--task", "bogus", "hello"], ["-m", "router", "-o", "task", "bogus", "hello"]):
        result = run(*args)
        assert result.exit_code == 1 and "unknown task 'bogus'" in result.output and "coding" in result.output
    assert lmstudio.requests() == [] or all("chat" not in r["path"] for r in lmstudio.requests())
    write_config(user_path, "tasks:\n  legal: [is this clause enforceable]\nprefer:\n  legal: [tiny-llama]\n  lgeal: [tiny-llama]\n")
    result = run("lmstudio", "route", "hello")
    assert result.exit_code == 1 and "'prefer' names the task 'lgeal'" in result.output and "legal" in result.output
    write_config(user_path, "classifier: keyword\nfallback: [fake-cloud, gpt-7-imaginary]\n")
    for args in (["lmstudio", "route", "hello"], ["-m", "router", "hello"]):
        result = run(*args)
        assert result.exit_code == 1 and "'fallback' names 'gpt-7-imaginary', which llm does not know" in result.output
    assert cloud == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("prefer: [a, b]", "'prefer' must be a mapping"),
        ("prefer:\n  coding: 3", "'prefer.coding' must be a list"),
        ("ttl: -5", "'ttl' must be a whole number"),
        ("colour: blue", "unknown key 'colour'"),
        ("embedding_model: 3-small", "'embedding_model' must be a local model"),
        ("prefer: {coding: [a", "not valid YAML"),
    ],
)
def test_bad_config_is_one_clear_line_naming_file_and_key(lmstudio, user_path, text, message):
    write_config(user_path, text)
    result = run("lmstudio", "route", "hello")
    assert result.exit_code == 1 and message in result.output and "lmstudio-router.yaml" in result.output
    prompt = run("-m", "router", "hello")
    assert prompt.exit_code == 1 and message in prompt.output and "Traceback" not in prompt.output


def test_history_from_the_log_shapes_the_ranking(lmstudio, user_path):
    from llm_lmstudio.store import call_history

    write_config(user_path, "classifier: keyword\n")
    for _ in range(6):
        call_history.record_attempt(LLAMA, False, error_kind="TimedOut")
    plan = json.loads(run("lmstudio", "route", "--json", "--task", "general", "hello").output)
    scores = {c["model"]: c for c in plan["candidates"]}
    assert any(r.startswith("6 recent failures (TimedOut 0s ago, TimedOut 0s ago, +4) weighing 6.0 vs 0.0 successes (-37.5)")
               for r in scores[LLAMA]["reasons"]), scores[LLAMA]["reasons"]
    assert plan["chosen"] != LLAMA


def test_params_parsing():
    assert planning.params_billions("qwen2.5-coder-7b-instruct") == 7
    assert planning.params_billions("26B-A4B") == 26
    assert planning.params_billions("qwen2.5-0.5b") == 0.5
    assert planning.params_billions("llama-3.2-1b") == 1
    assert planning.params_billions("mistral-nemo") is None
    # sizes only from tokens that are sizes: not from a hash in a folder name, nor the active part of "A4B"
    assert planning.params_billions("test-org/tiny-qwen-tools-4b2798e1e4a0") is None
    assert planning.params_billions("qwen3-30b-a3b") == 30


@pytest.mark.minilm
def test_embedding_classifier_with_a_native_minilm(lmstudio, user_path, minilm_path):
    assert run("lmstudio", "mlx", "add", str(minilm_path), "--name", "minilm").exit_code == 0
    write_config(user_path, "embedding_model: mlx/minilm\n")
    data = json.loads(run("lmstudio", "route", "--json", "Write a Python function that merges two sorted lists").output)
    assert data["classifier"] == "embedding", data["classifier_note"]
    assert data["task"] == "coding"
    data = json.loads(run("lmstudio", "route", "--json", "what caused the fall of the Byzantine empire").output)
    assert (data["classifier"], data["task"]) == ("embedding", "research")
    result = run("-m", "router", "write a bedtime story about a sleepy owl", "-o", "max_tokens", "3")
    assert result.exit_code == 0, result.output
    routed = json.loads(last_turn(user_path)["response_json"])["router"]
    assert (routed["classifier"], routed["task"]) == ("embedding", "creative")


# ---------------------------------------------------------------- the embedding model a user already has


def embedding_requests(lmstudio):
    return [r for r in lmstudio.requests() if r["path"].endswith("/embeddings")]


@pytest.mark.minilm
def test_without_config_the_router_uses_the_embedding_model_lm_studio_lists(lmstudio, user_path):
    # The stand-in lists all-MiniLM-L6-v2, whose exemplar vectors ship with the plugin: only the prompt is embedded.
    data = json.loads(run("lmstudio", "route", "--json", "Write a limerick about a cat who learns to code").output)
    assert data["classifier"] == "embedding", data["classifier_note"]
    assert "chosen automatically" in data["classifier_note"] and "text-embedding-all-minilm-l6-v2" in data["classifier_note"]
    assert [r["input_count"] for r in embedding_requests(lmstudio)] == [1]
    assert data["task"] == "creative"


def test_keywords_when_nothing_local_embeds(lmstudio, user_path, monkeypatch):
    from llm_lmstudio.router import classifier_setup

    monkeypatch.setattr(llm, "get_embedding_models", lambda: [])
    data = json.loads(run("lmstudio", "route", "--json", "Explain how vaccines work").output)
    assert data["classifier"] == "keyword" and "no local embedding model" in data["classifier_note"]
    # a native MLX embedding model is never picked automatically where MLX is CPU-only
    native = type("Native", (), {"model_id": "mlx/minilm"})()
    monkeypatch.setattr(llm, "get_embedding_models", lambda: [native])
    monkeypatch.setattr(classifier_setup, "_native_is_fast", lambda: False)
    model_id, why = classifier_setup.default_embedding_model()
    assert model_id is None and "CPU-only" in why
    monkeypatch.setattr(classifier_setup, "_native_is_fast", lambda: True)
    assert classifier_setup.default_embedding_model()[0] == "mlx/minilm"


NEW_EXEMPLARS = "tasks:\n  legal:\n" + "".join(f"    - is clause {i} of my tenancy agreement enforceable\n" for i in range(20))


@pytest.mark.minilm
def test_new_exemplars_are_embedded_in_the_background_while_keywords_route(lmstudio, user_path, spawned):
    from llm_lmstudio.router import classifier_setup

    write_config(user_path, NEW_EXEMPLARS)
    data = json.loads(run("lmstudio", "route", "--json", "is clause 3 of my lease enforceable").output)
    # The prompt went to keywords: the 20 new exemplars are embedded by a detached process, not inside the prompt.
    assert data["classifier"] == "keyword" and "in the background" in data["classifier_note"], data["classifier_note"]
    [(builder, command)] = spawned.alive().items()
    assert f"-m {classifier_setup.BUILD_WORKER} " in command
    assert spawned.wait(builder, timeout=120), "the background build did not finish"
    assert not (settings.plugin_dir() / classifier_setup.BUILD_LOCK).exists()
    # the detached process embedded exactly the new exemplars, never the shipped ones (the prompt went to keywords)
    assert sum(r["input_count"] for r in embedding_requests(lmstudio)) == 20
    data = json.loads(run("lmstudio", "route", "--json", "is clause 3 of my lease enforceable").output)
    assert data["classifier"] == "embedding" and data["task"] == "legal", data


@pytest.mark.minilm
def test_route_warm_embeds_with_progress_on_stderr(lmstudio, user_path):
    write_config(user_path, NEW_EXEMPLARS)
    result = CliRunner().invoke(cli, ["lmstudio", "route", "--warm"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "embedded 20/20 new exemplars" in result.stderr and "ready for lmstudio/test-org/text-embedding-all-minilm-l6-v2" in result.stderr
    assert result.stdout == ""
    again = CliRunner().invoke(cli, ["lmstudio", "route", "--warm"])
    assert "embedded" not in again.stderr and "ready" in again.stderr  # nothing left to embed


# ---------------------------------------------------------------- the optional small-model tier

TIER = "classifier: keyword\nclassifier_model: lmstudio/test-org/tiny-llama\nclassifier_threshold: 0.99\n"


def test_a_small_model_decides_when_the_classifier_is_unsure_and_its_answer_is_cached(lmstudio, user_path):
    write_config(user_path, TIER)
    lmstudio.script('{"task": "research"}')
    data = json.loads(run("lmstudio", "route", "--json", "can you look at this for me").output)
    assert (data["task"], data["classifier"]) == ("research", "model"), data["classifier_note"]
    [asked] = [r for r in lmstudio.requests() if "chat" in r["path"]]
    assert asked["model"] == "test-org/tiny-llama"
    # the same prompt again: the cached answer, no second request
    data = json.loads(run("lmstudio", "route", "--json", "can you look at this for me").output)
    assert data["task"] == "research" and "cached" in data["classifier_note"]
    assert len([r for r in lmstudio.requests() if "chat" in r["path"]]) == 1


@pytest.mark.parametrize("answer", ['{"task": "astrology"}', "I think it is research", '{"kind": "research"}'])
def test_a_bad_answer_from_the_small_model_keeps_the_classifier_decision(lmstudio, user_path, answer):
    write_config(user_path, TIER)
    lmstudio.script(answer)
    keyword = json.loads(run("lmstudio", "route", "--json", "--task", "general", "x").output)  # warm the catalog
    assert keyword["task"] == "general"
    data = json.loads(run("lmstudio", "route", "--json", "can you look at this for me").output)
    assert data["classifier"] == "keyword" and "no usable answer" in data["classifier_note"]


def test_a_confident_classifier_never_asks_the_small_model(lmstudio, user_path):
    write_config(user_path, TIER.replace("0.99", "0.1"))
    data = json.loads(run("lmstudio", "route", "--json", "Write a Python function that parses ISO dates").output)
    assert data["classifier"] == "keyword" and not [r for r in lmstudio.requests() if "chat" in r["path"]]


# ---------------------------------------------------------------- several servers


def test_after_a_server_fails_to_answer_its_other_models_are_skipped(lmstudio, refused_url, user_path, monkeypatch):
    run("models")
    cache_list_for(refused_url, like=lmstudio.base_url)
    monkeypatch.setenv("LMSTUDIO_BASE_URL", f"{refused_url},{lmstudio.base_url}")
    dead = "lmstudio/"  # the refused server is first, so it owns the plain prefix
    write_config(user_path, "classifier: keyword\nprefer:\n  coding: [lmstudio/test-org/tiny-qwen-tools, lmstudio/test-org/tiny-llama]\n")
    result = run("-m", "router", "Fix this Python bug: def f(: pass", "-o", "max_tokens", "2")
    assert result.exit_code == 0, result.output
    attempts = json.loads(last_turn(user_path)["response_json"])["attempts"]
    assert attempts[0]["model"] == dead + "test-org/tiny-qwen-tools" and attempts[0]["error_kind"] == "Unreachable"
    # the same model on the live server is next (a replica), and it answers
    assert attempts[1]["model"] == f"lmstudio@{lmstudio.host_port}/test-org/tiny-qwen-tools" and attempts[1]["ok"]


def test_a_hung_server_costs_one_attempt_and_the_error_is_one_line_naming_each(
    lmstudio, hung_url, user_path, monkeypatch, quick_hang_probe
):
    run("models")
    cache_list_for(hung_url, like=lmstudio.base_url)
    # long enough for lmstudio/watch.py to probe the listing while the request waits, and call the server hung
    monkeypatch.setenv("LMSTUDIO_TIMEOUT", "10")
    monkeypatch.setenv("LMSTUDIO_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("LMSTUDIO_BASE_URL", hung_url)
    write_config(user_path, "classifier: keyword\n")
    line = assert_one_line_error(run("-m", "router", "Write a haiku about autumn", "--no-stream"))
    assert "every model the router tried failed: " in line and "(timed out)" in line and "looks hung" in line
    # one probe-bounded wait, not one per model: the server's other models are skipped
    assert line.count("(timed out)") == 1 and line.count("skipped: its server timed out") >= 2


def test_a_timeout_skips_the_servers_other_models_and_counts_against_none_of_them(lmstudio, user_path, monkeypatch):
    # Only the chat requests hang (the listing answers): one timeout, not one per model (docs/router.md, step 3).
    monkeypatch.setenv("LMSTUDIO_TIMEOUT", "2")
    write_config(user_path, PREFS)
    for key in ("test-org/tiny-qwen-tools", "test-org/tiny-llama", "test-org/tiny-reasoner", "test-org/tiny-vision"):
        lmstudio.load(key)  # loaded already: the timeout is for the answer, not a JIT load on a busy machine
    run("models")
    lmstudio.set_fault("hang", "/api/v0/chat")
    line = assert_one_line_error(run("-m", "router", "Write a Python function that adds two numbers", "--no-stream"))
    assert line.startswith(f"Error: every model the router tried failed: {TOOLS} (timed out), ")
    assert line.count("(skipped: its server timed out)") == 3
    assert line.endswith(f"Last error: LM Studio at {lmstudio.base_url} accepted the connection but did not answer within 2 s "
                         "(raise LMSTUDIO_TIMEOUT if the model is slow to load)")
    assert len([r for r in lmstudio.requests() if "chat" in r["path"]]) == 1
    lmstudio.reset(unload=False)
    plan = json.loads(run("lmstudio", "route", "--json", "--explain", "--task", "coding", "x").output)
    history = {c["model"]: c["history"] for c in plan["candidates"]}
    assert [c["kind"] for c in history[TOOLS]["counted"]] == ["TimedOut"]
    assert all(not h["counted"] and not h["not_counted"] for model, h in history.items() if model != TOOLS)


@pytest.fixture
def second_lmstudio(lmstudio_models_dir):
    from tests.fake_lmstudio import FakeLMStudio

    server = FakeLMStudio(lmstudio_models_dir).start()
    yield server
    server.stop()


@pytest.mark.slow  # starts a second stand-in
def test_replicas_prefer_the_loaded_server_and_survive_one_server_dying(lmstudio, second_lmstudio, user_path, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", f"{lmstudio.base_url},{second_lmstudio.base_url}")
    write_config(user_path, "classifier: keyword\nprefer:\n  creative: [tiny-llama]\n")
    second_lmstudio.load("test-org/tiny-llama")
    catalog.refresh()  # as `llm lmstudio ps` would: both listings, with what each server has loaded
    replica = f"lmstudio@{second_lmstudio.host_port}/test-org/tiny-llama"
    plan = json.loads(run("lmstudio", "route", "--json", "Write a poem about the sea").output)
    assert plan["chain"][:2] == [replica, LLAMA]  # the same model, loaded on the second server first
    servers = {c["model"]: c["server"] for c in plan["candidates"]}
    assert servers[replica] == second_lmstudio.base_url and servers[LLAMA] == lmstudio.base_url
    result = run("-m", "router", "Write a poem about the sea", "-o", "max_tokens", "2")
    assert result.exit_code == 0 and last_turn(user_path)["resolved_model"] == replica
    second_lmstudio.stop()  # killed mid-run: the replica on the first server takes over
    result = run("-m", "router", "Write a poem about the sea", "-o", "max_tokens", "2")
    assert result.exit_code == 0, result.output
    attempts = json.loads(last_turn(user_path)["response_json"])["attempts"]
    assert attempts[0]["model"] == replica and attempts[0]["error_kind"] == "Unreachable"
    assert attempts[1]["model"] == LLAMA and attempts[1]["ok"]
    assert last_turn(user_path)["resolved_model"] == LLAMA
