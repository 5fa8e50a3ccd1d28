"""The guard of stateful turns (stateful_guard.py): against LM Studio as it really behaves (the stand-in's quirks), a
conversation continued server-side is never worse than one that resends its history: the same answers, a failed turn
answered on chat completions, a failed id never continued, a server that re-reads too much (lmstudio-bug-tracker#2074)
or fails stopped for a day with one note, the system prompt seen on every turn whichever way the server treats it."""

import json
import time

import llm
import pytest

from llm_lmstudio.core import settings
from llm_lmstudio.lmstudio import stateful_guard
from tests.lmstudio.test_chat import LLAMA, REASONER, run
from tests.lmstudio.test_continuation import answers, logs, turns

RESPONSES, CHAT = "/v1/responses", "/api/v0/chat/completions"


def chat(*args):
    result = run(*args, "-o", "stateful", "true")
    assert result.exit_code == 0, result.output + result.stderr
    return result


def notes(*results) -> list[str]:
    return [line for result in results for line in result.stderr.splitlines() if line.startswith("llm-lmstudio-mlx:")]


def test_stateful_is_off_unless_asked_for(lmstudio, user_path):
    lmstudio.script("a", "b", "c")
    for args in (("-m", LLAMA, "one"), ("-c", "two"), ("-c", "three")):
        assert run(*args).exit_code == 0
    assert [p for p, *_ in answers(lmstudio)] == [CHAT] * 3


def test_the_2074_re_read_is_detected_and_the_server_resends_histories_with_one_note(lmstudio, user_path):
    lmstudio.configure(responses_growth=True)
    lmstudio.script(*[f"Answer {n}." for n in range(1, 10)])
    results = [chat("-m", LLAMA, "Tell me about tea.")]
    for n in range(2, 9):
        results.append(chat("-c", f"Tell me more, part {n}."))
    assert [r.stdout for r in results] == [f"Answer {n}.\n" for n in range(1, 9)]  # every turn answered
    paths = [p for p, *_ in answers(lmstudio)]
    [note] = notes(*results)  # said once
    assert "re-read of lmstudio-bug-tracker#2074" in note and "`-o stateful false`" in note
    assert "tried again in 24 h" in note and stateful_guard.FILE in note
    detected = next(n for n, r in enumerate(results) if notes(r))
    # Server-side from the second turn until the re-read shows, resent histories from then on, no HTTP 500 met.
    assert paths == [CHAT] + [RESPONSES] * detected + [CHAT] * (len(results) - 1 - detected), paths
    assert 2 <= detected <= 4
    read = [t["input_tokens"] for t in turns(user_path)]
    assert read[detected + 1] < read[detected]  # the next turn reads its real history, less than the re-read did
    # Per server: a new conversation there resends its history too, without another note.
    lmstudio.script("x", "y")
    again = [chat("-m", LLAMA, "New topic."), chat("-c", "More.")]
    assert [p for p, *_ in answers(lmstudio)][-2:] == [CHAT, CHAT] and notes(*again) == []


def test_a_500_on_a_continued_turn_is_answered_on_chat_completions_and_the_server_is_stopped(lmstudio, user_path):
    lmstudio.script("a", "b", "c", "d")
    chat("-m", LLAMA, "one")
    chat("-c", "two")
    lmstudio.set_fault("status", RESPONSES, status=500, body="Internal Server Error", times=1)
    third = chat("-c", "three")
    assert third.stdout == "c\n"
    [note] = notes(third)
    assert "failed a server-side turn" in note and "HTTP 500" in note and "`-o stateful false`" in note
    (_, failed_id, _, _), (path, _, messages, _) = answers(lmstudio)[2:4]
    assert failed_id and path == CHAT and messages == 5  # the full history, on chat completions
    fourth = chat("-c", "four")
    assert fourth.stdout == "d\n" and notes(fourth) == []
    assert [p for p, *_ in answers(lmstudio)][4:] == [CHAT]
    assert [r["response"] for r in logs()] == ["a", "b", "c", "d"]


@pytest.mark.parametrize("fault", [{"kind": "cut", "after_chunks": 1}, {"kind": "status", "status": 503}])
def test_a_failure_before_any_output_falls_back_silently_in_what_is_shown(lmstudio, user_path, fault):
    lmstudio.script("a", "b", "c", "c")  # a cut stream has used its answer: the fallback gets the second
    chat("-m", LLAMA, "one")
    chat("-c", "two")
    lmstudio.set_fault(path=RESPONSES, times=1, **fault)
    third = chat("-c", "three")
    assert third.stdout == "c\n" and len(notes(third)) == 1
    assert [p for p, *_ in answers(lmstudio)][2:] == [RESPONSES, CHAT]


def test_a_failed_id_is_not_sent_again_even_when_its_fallback_failed(lmstudio, user_path):
    lmstudio.script("a", "b", "c")
    chat("-m", LLAMA, "one")
    chat("-c", "two")
    lmstudio.forget_responses()  # LM Studio no longer knows the id (not a server failure: no stop)
    lmstudio.set_fault("status", CHAT, status=503, times=1)
    failed = run("-c", "three", "-o", "stateful", "true")
    assert failed.exit_code == 1 and "HTTP 503" in failed.stderr
    forgotten = answers(lmstudio)[2][1]
    retried = chat("-c", "three")
    assert retried.stdout == "c\n" and notes(retried) == []
    *_, (path, previous, _, items) = answers(lmstudio)
    assert (path, previous, items) == (RESPONSES, None, 5)  # a new chain from the whole history
    assert forgotten not in [r["previous_response_id"] for r in lmstudio.requests()[4:]]


def test_an_answer_cut_mid_stream_is_not_continued_server_side(lmstudio, user_path):
    lmstudio.script("a", "b", "one two three four five six seven eight nine ten", "d")
    chat("-m", LLAMA, "one")
    chat("-c", "two")
    lmstudio.set_fault("cut", RESPONSES, after_chunks=7, times=1)
    assert run("-c", "count", "-o", "stateful", "true").exit_code == 1
    chat("-c", "four")
    *_, (path, previous, _, _) = answers(lmstudio)
    assert (path, previous) == (RESPONSES, None)


@pytest.mark.parametrize("behaviour", [None, "reject_on_stored", "ignore_instructions"])
def test_the_system_prompt_reaches_the_model_on_every_turn_whichever_way_the_server_treats_it(lmstudio, user_path, behaviour):
    # None: instructions last one turn (OpenAI's semantics, a server that needs the system prompt each turn);
    # reject_on_stored: a system prompt on a stored turn is a 500 (#2219); ignore_instructions: #1154.
    lmstudio.configure(responses_system=behaviour)
    lmstudio.script("a", "b", "c", "d")
    results = [chat("-m", LLAMA, "one", "-s", "Be brief."), chat("-c", "two"), chat("-c", "three")]
    assert [r.stdout for r in results] == ["a\n", "b\n", "c\n"] and notes(*results) == []
    assert [p for p, *_ in answers(lmstudio)] == [CHAT, RESPONSES, RESPONSES]
    seen = [g["messages"] for g in lmstudio.generations()]
    assert [m[0] for m in seen] == [{"role": "system", "content": "Be brief."}] * 2
    assert [sum(x["role"] == "system" for x in m) for m in seen] == [1, 1]
    # A new system prompt on a continued turn starts a new chain that carries it.
    assert chat("-c", "four", "-s", "Be verbose.").stdout == "d\n"
    *_, (path, previous, _, _) = answers(lmstudio)
    assert (path, previous) == (RESPONSES, None)
    assert lmstudio.generations()[-1]["messages"][0] == {"role": "system", "content": "Be verbose."}


@pytest.mark.parametrize("stream", [True, False])
def test_reasoning_that_arrives_whole_is_kept(lmstudio, user_path, stream):
    lmstudio.configure(reasoning_whole=True)
    lmstudio.script("a", "b", "<think>Weighing it.</think>The answer is 42.")
    flags = [] if stream else ["--no-stream"]
    chat("-m", REASONER, "one", *flags)
    chat("-c", "two", *flags)
    third = chat("-c", "Why?", *flags)
    assert third.stdout == "The answer is 42.\n" and answers(lmstudio)[-1][0] == RESPONSES
    assert (logs()[2]["reasoning"], logs()[2]["response"]) == ("Weighing it.", "The answer is 42.")


def test_zero_input_tokens_for_a_real_prompt_are_not_logged_as_measured(lmstudio, user_path):
    lmstudio.configure(zero_input_on_repeat=True)
    lmstudio.script("a", "b", "c", "d")
    results = [chat("-m", LLAMA, "one"), chat("-c", "again"), chat("-c", "again"), chat("-c", "again")]
    assert notes(*results) == []
    logged = turns(user_path)
    assert [p for p, *_ in answers(lmstudio)] == [CHAT, RESPONSES, RESPONSES, RESPONSES]
    assert logged[3]["input_tokens"] is None and logged[3]["output_tokens"] > 0  # lms#553: 0 is not a count
    assert logs()[3]["response_json"]["usage"]["prompt_tokens"] == 0  # what LM Studio said stays in the log
    assert all(t["input_tokens"] > 0 for t in logged[:3])


def test_tools_go_to_responses_in_the_shape_it_takes(lmstudio, user_path):
    ping = llm.Tool(name="ping", description="Answer pong", input_schema={"type": "object"},
                    implementation=lambda: "pong")
    lmstudio.script("a", "b")
    conversation = llm.get_model(LLAMA).conversation()
    assert conversation.prompt("one", stateful=True).text() == "a"
    assert conversation.prompt("two", tools=[ping], stateful=True).text() == "b"
    assert [p for p, *_ in answers(lmstudio)] == [CHAT, RESPONSES]  # not refused (#2254), so no fallback
    assert stateful_guard.responses_tools([
        {"type": "function", "function": {"name": "a", "parameters": {}}},
        {"type": "function", "function": {"name": "b", "description": "B", "parameters": {"type": "object"}}},
    ]) == [
        {"type": "function", "name": "a", "description": "", "parameters": {"type": "object", "properties": {}}},
        {"type": "function", "name": "b", "description": "B", "parameters": {"type": "object", "properties": {}}},
    ]


def test_a_stopped_server_is_tried_again_after_a_day(lmstudio, user_path):
    path = settings.plugin_dir() / stateful_guard.FILE
    base = lmstudio.base_url
    for age, stopped in ((stateful_guard.STOP_FOR - 60, True), (stateful_guard.STOP_FOR + 60, False)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"stopped": {base: {"at": time.time() - age, "why": "failed"}}}))
        assert stateful_guard.stopped(base) is stopped
    lmstudio.script("a", "b")
    chat("-m", LLAMA, "one")
    chat("-c", "two")
    assert [p for p, *_ in answers(lmstudio)] == [CHAT, RESPONSES]


@pytest.mark.parametrize("damaged", ["{not json", '{"stopped": [1], "costs": {"resp_x": "many"}, "broken": {"resp_y": {}}}',
                                     '{"stopped": {"%s": {"at": "yesterday"}}}'])
def test_a_damaged_guard_file_is_no_verdict(lmstudio, user_path, damaged):
    path = settings.plugin_dir() / stateful_guard.FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(damaged.replace("%s", lmstudio.base_url))
    lmstudio.script("a", "b", "c")
    chat("-m", LLAMA, "one")
    chat("-c", "two")
    chat("-c", "three")
    assert [p for p, *_ in answers(lmstudio)] == [CHAT, RESPONSES, RESPONSES]
