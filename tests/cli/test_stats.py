"""`llm lmstudio stats` as a person reads it (a bounded FAILURES cell, --reset), and `route --help` as printed."""

import json

from click.testing import CliRunner
from llm.cli import cli

from llm_lmstudio.cli.stats import failures_cell
from llm_lmstudio.store import call_history

LLAMA = "lmstudio/test-org/tiny-llama"
TOOLS = "lmstudio/test-org/tiny-qwen-tools"


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_the_failures_cell_stays_short_however_many_kinds():
    assert failures_cell({}) == "0"
    assert failures_cell({"StreamCut": 2}) == "2 StreamCut"
    many = {"AuthRequired": 1, "ServerError": 4, "StreamCut": 2, "TimedOut": 3, "Unreachable": 1, "PromptTooLong": 1}
    assert failures_cell(many) == "12 (4 ServerError, 8 other)"


def test_reset_forgets_one_models_record_and_the_router_ranks_it_afresh(lmstudio, user_path):
    (user_path / "lmstudio-router.yaml").write_text("classifier: keyword\n")
    run("models")
    for model in (LLAMA, LLAMA, TOOLS):
        call_history.record_attempt(model, False, error_kind="TimedOut")
    lmstudio.set_fault("status", "/api/v0/chat", status=500, times=1)
    assert run("-m", LLAMA, "hi").exit_code == 1  # a direct prompt's failure is recorded too
    table = run("lmstudio", "stats").output
    assert "3 (2 TimedOut, 1 other)" in table
    result = run("lmstudio", "stats", "--reset", "-m", LLAMA)
    assert result.exit_code == 0
    assert result.output.strip() == (f"Forgot 3 recorded outcomes of {LLAMA} (2 routed, 1 direct): the router ranks it afresh. "
                                     "Answers in llm's own log stay.")
    plan = json.loads(run("lmstudio", "route", "--json", "--explain", "--task", "general", "hello").output)
    histories = {c["model"]: c["history"] for c in plan["candidates"]}
    assert histories[LLAMA]["penalty"] == 0 and histories[LLAMA]["counted"] == []
    assert [c["kind"] for c in histories[TOOLS]["counted"]] == ["TimedOut"]  # other models keep theirs
    everything = json.loads(run("lmstudio", "stats", "--reset", "--json").output)
    assert everything == {"model": None, "removed": {"attempts": 1, "calls": 0}}


def test_route_help_prints_each_example_on_its_own_line():
    text = run("lmstudio", "route", "--help").output
    lines = [line.strip() for line in text.splitlines()]
    assert 'llm lmstudio route "Write a Python function that parses ISO dates"' in lines
    assert "cat error.log | llm lmstudio route --json" in lines
    assert "llm lmstudio route --warm" in lines


def test_an_answer_the_user_interrupts_counts_nowhere(lmstudio, user_path):
    # docs/router.md: cut off by the server is a failure, stopped at max_tokens an answer, interrupted (Ctrl-C) neither
    import gc

    import llm

    run("models")
    for model_id in (LLAMA, "lmstudio-router"):
        lmstudio.script("one two three four five six seven eight nine ten")
        chunks = iter(llm.get_model(model_id).prompt("Write a haiku about rain", stream=True))
        next(chunks)
        chunks.close()  # what Ctrl-C does: the model's generator is abandoned mid-answer, llm logs nothing
        gc.collect()
    assert run("lmstudio", "stats").output.startswith("No answers or failures recorded")
    assert json.loads(run("lmstudio", "stats", "--json").output)["models"] == []


# ---------------------------------------------------------------- -m NAME as users type it


def _record_failures(*model_ids):
    for model_id in model_ids:
        assert call_history.record_attempt(model_id, False, error_kind="TimedOut")


def _removed(*args):
    result = run("lmstudio", "stats", "--reset", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_reset_takes_the_key_and_short_name_that_load_takes(user_path):
    _record_failures(LLAMA, LLAMA, TOOLS)
    assert _removed("-m", "test-org/tiny-llama") == {"model": LLAMA, "removed": {"attempts": 2, "calls": 0}}
    _record_failures(LLAMA)
    result = run("lmstudio", "stats", "--reset", "-m", "Tiny-Llama")
    assert result.exit_code == 0, result.output
    assert result.output == (f"Forgot 1 recorded outcome of {LLAMA} (1 routed, 0 direct): the router ranks it afresh. "
                             "Answers in llm's own log stay.\n")
    assert [m["model"] for m in json.loads(run("lmstudio", "stats", "--json").output)["models"]] == [TOOLS]


def test_stats_of_one_model_by_its_short_name(user_path):
    _record_failures(LLAMA, TOOLS)
    data = json.loads(run("lmstudio", "stats", "-m", "tiny-llama", "--json").output)
    assert [(m["model"], m["failures"]) for m in data["models"]] == [(LLAMA, {"TimedOut": 1})]
    table = run("lmstudio", "stats", "-m", "tiny-llama").output
    assert LLAMA in table and TOOLS not in table


def test_a_name_with_no_record_is_an_error_that_names_the_known_models(user_path):
    from tests.helpers import assert_one_line_error

    _record_failures(LLAMA, TOOLS)
    typo = run("lmstudio", "stats", "--reset", "-m", "tiny-lama")
    assert assert_one_line_error(typo) == (
        f"Error: -m tiny-lama: no model of that name has recorded outcomes; did you mean: {LLAMA}, {TOOLS}"
    )
    unknown = run("lmstudio", "stats", "-m", "does-not-exist")
    assert assert_one_line_error(unknown) == (
        f"Error: -m does-not-exist: no model of that name has recorded outcomes; recorded: {LLAMA}, {TOOLS}"
    )
    assert _removed() == {"model": None, "removed": {"attempts": 2, "calls": 0}}  # nothing was reset on the way
    nothing = run("lmstudio", "stats", "--reset", "-m", "tiny-llama")
    assert assert_one_line_error(nothing) == (
        "Error: -m tiny-llama: nothing is recorded for any LM Studio, native MLX or router model yet"
    )


def test_a_short_name_two_servers_share_is_not_guessed(user_path):
    from tests.helpers import assert_one_line_error

    other = "lmstudio@10.0.0.2:1234/test-org/tiny-llama"
    _record_failures(LLAMA, other)
    result = run("lmstudio", "stats", "--reset", "-m", "tiny-llama")
    assert assert_one_line_error(result) == (
        f"Error: -m tiny-llama matches several models with recorded outcomes: {LLAMA}, {other}; give the full id"
    )
    assert _removed("-m", other) == {"model": other, "removed": {"attempts": 1, "calls": 0}}


def test_json_and_prometheus_together_are_refused():
    result = CliRunner().invoke(cli, ["lmstudio", "stats", "--json", "--prometheus"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == "Error: Give --json or --prometheus, not both"
