"""Stateful chat (`-o stateful true`): a continued conversation goes on server-side (/v1/responses,
previous_response_id) where the server has it, and silently falls back to the full history on chat completions where
it does not. Without the option every turn resends the history. LM Studio's failures of stateful turns (the guard)
are in test_stateful_guard.py."""

import asyncio
import json

import llm
import pytest

from llm_lmstudio.core import settings
from llm_lmstudio.lmstudio import errors, openai_client
from tests.helpers import log_rows as turns
from tests.lmstudio.test_chat import LLAMA, REASONER, TOOLS, VISION, _png, run
from tests.recorded.replay import Reply, ReplayServer


@pytest.fixture(autouse=True)
def stateful_on(user_path):
    """`-o stateful true` as these models' default, as `llm models options set MODEL stateful true` writes it (written
    directly: the command would list the models before a test picks the LM Studio version to act as)."""
    (user_path / "model_options.json").write_text(json.dumps({m: {"stateful": "true"} for m in (LLAMA, TOOLS, VISION, REASONER)}))


def logs():
    """Every logged turn, oldest first, as `llm logs --json` shows it (logs.db stores response_json condensed)."""
    return sorted(json.loads(run("logs", "--json", "-n", "0").stdout), key=lambda r: r["datetime_utc"])


def logged():
    return [row["response_json"] for row in logs()]


def answers(lmstudio):
    """The inference requests since the last reset, in order: (path, previous_response_id, messages, input items)."""
    return [
        (r["path"], r["previous_response_id"], r["messages"], r["input_count"])
        for r in lmstudio.requests()
        if r["path"] in ("/v1/responses", "/api/v0/chat/completions", "/v1/chat/completions")
    ]


def three_turns(lmstudio, *, forget_before_third=False):
    lmstudio.script("Hello Ada.", "Noted, blue.", "Your name is Ada.")
    first = run("-m", LLAMA, "My name is Ada.", "-s", "Be brief.")
    second = run("-c", "My colour is blue.")
    if forget_before_third:
        lmstudio.forget_responses()
    third = run("-c", "What is my name?")
    for result in (first, second, third):
        assert result.exit_code == 0, result.output + result.stderr
    return first, second, third


def test_a_continued_conversation_sends_only_the_new_turn_with_the_previous_response_id(lmstudio, user_path):
    first, second, third = three_turns(lmstudio)
    assert third.stdout == "Your name is Ada.\n" and third.stderr == ""
    (p1, id1, m1, _), (p2, id2, _, n2), (p3, id3, _, n3) = answers(lmstudio)
    # A single prompt stays on chat completions (LM Studio's stats); the second turn hands the server the
    # whole history once; the third sends only itself, by reference to the second answer.
    assert p1 == "/api/v0/chat/completions" and m1 == 2
    assert p2 == "/v1/responses" and id2 is None and n2 == 4  # system, user, assistant, user
    assert p3 == "/v1/responses" and n3 == 1
    # The system prompt starts the chain, which carries it (never `instructions`), and the model saw it each turn.
    assert [r["instructions"] for r in lmstudio.requests() if r["path"] == "/v1/responses"] == [None, None]
    assert [g["messages"][0] for g in lmstudio.generations()] == [{"role": "system", "content": "Be brief."}] * 2
    rows = turns(user_path)
    logged_json = logged()
    assert id3 == logged_json[1]["stateful"]["response_id"] and id3.startswith("resp_")
    assert logged_json[2]["stateful"] == {
        "response_id": logged_json[2]["id"], "previous_response_id": id3, "server": lmstudio.base_url, "model": "test-org/tiny-llama",
    }
    assert "stateful" not in logged_json[0]
    assert logs()[2]["response"] == "Your name is Ada." and rows[2]["resolved_model"] == LLAMA
    assert rows[2]["input_tokens"] > 0 and rows[2]["output_tokens"] > 0
    assert logged_json[2]["client"]["endpoint"] == "/v1/responses" and logged_json[2]["client"]["time_to_first_token_ms"] > 0


def test_the_server_side_continuation_is_smaller_and_the_model_saw_the_whole_conversation(lmstudio, user_path):
    three_turns(lmstudio)
    sizes = [r["body_size"] for r in lmstudio.requests() if r["path"] == "/v1/responses"]
    assert sizes[1] < sizes[0]
    rows = turns(user_path)
    # The server rebuilt the conversation from its store: the third turn read more tokens than the second.
    assert rows[2]["input_tokens"] > rows[1]["input_tokens"] + rows[1]["output_tokens"]


def test_a_forgotten_response_id_falls_back_to_the_full_history_silently(lmstudio, user_path):
    first, second, third = three_turns(lmstudio, forget_before_third=True)
    assert third.stdout == "Your name is Ada.\n" and third.stderr == ""
    paths = answers(lmstudio)
    assert paths[2][0] == "/v1/responses" and paths[2][1]  # refused: previous_response_not_found
    assert paths[3][0] == "/api/v0/chat/completions" and paths[3][2] == 6  # system + 5 turns
    assert [r["response"] for r in logs()][2:] == ["Your name is Ada."]
    # From the next turn on, the server is handed the whole history once more and the conversation is stateful again.
    lmstudio.script("Blue.")
    assert run("-c", "And my colour?").exit_code == 0
    assert answers(lmstudio)[4][:2] == ("/v1/responses", None)


@pytest.mark.parametrize(
    "status, body",
    [
        # LM Studio 0.3.31's wording (lmstudio-bug-tracker#1188), in the 404 a server may use for a missing object
        (404, {"error": {"message": "Prediction history node with id 'x' not found while attempting to build chat history chain that includes this node."}}),
        (400, {"error": {"message": "Previous response with id 'resp_x' not found.", "code": "previous_response_not_found"}}),
        (400, {"error": "previous_response_not_found"}),
    ],
)
def test_every_shape_of_unknown_response_falls_back(lmstudio, user_path, status, body):
    lmstudio.script("a", "b", "c")
    assert run("-m", LLAMA, "one").exit_code == 0
    assert run("-c", "two").exit_code == 0
    lmstudio.set_fault("status", "/v1/responses", status=status, body=body, times=1)
    result = run("-c", "three")
    assert result.exit_code == 0 and result.stdout == "c\n" and result.stderr == ""
    assert answers(lmstudio)[-1][0] == "/api/v0/chat/completions"


def test_an_unknown_id_inside_a_stream_is_recognised():
    created = {"type": "response.created", "response": {"id": "resp_1"}}
    for event in (
        {"type": "error", "code": "previous_response_not_found", "message": "Previous response not found"},
        {"type": "response.failed", "response": {"error": {"code": "previous_response_not_found", "message": "gone"}}},
    ):
        with ReplayServer() as server:
            server.route("POST", "/v1/responses", Reply.stream(created, event))
            client = openai_client.Client(settings.Server(base_url=server.url, prefix="lmstudio"))
            stream = client.stream_responses({"model": "m", "input": "hi", "stream": True})
            assert next(stream) == {"type": "response.created", "response": {"id": "resp_1"}}
            with pytest.raises(errors.ResponseNotFound):
                next(stream)


def test_a_stateful_stream_cut_mid_answer_keeps_what_arrived_and_says_so(lmstudio, user_path):
    lmstudio.script("a", "b", "one two three four five six seven eight nine ten")
    run("-m", LLAMA, "one")
    run("-c", "two")
    # response.created, response.in_progress, output_item.added, content_part.added, then text deltas
    lmstudio.set_fault("cut", "/v1/responses", after_chunks=7)
    result = run("-c", "count")
    assert result.exit_code == 1 and "cut off mid-stream" in result.stderr and "kept in the log" in result.stderr
    assert result.stdout.startswith("one") and "[response cut off" in result.stdout
    assert logs()[2]["response_json"]["cut"] is True
    assert [p for p, *_ in answers(lmstudio)][2:] == ["/v1/responses"]  # nothing sent twice


def test_a_cut_answer_is_continued_without_the_cut_off_marker(lmstudio, user_path):
    lmstudio.script("PARTIAL ANSWER HERE AND MORE TEXT TO COME", "NEXT")
    lmstudio.set_fault("cut", "/api/v0/chat", after_chunks=2, times=1)
    cut = run("-m", TOOLS, "hi")
    assert cut.exit_code == 1 and "[response cut off" in cut.stdout
    partial = cut.stdout.split("\n[response cut off")[0]
    assert run("-c", "continue").stdout == "NEXT\n"
    assert lmstudio.generations()[-1]["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": partial},  # only what the model produced
        {"role": "user", "content": "continue"},
    ]


@pytest.mark.parametrize("version", ["0.3.15", "0.3.5"])
def test_a_server_without_responses_gets_chat_completions_and_is_asked_once(lmstudio, user_path, version):
    lmstudio.configure(version=version)
    lmstudio.script("a", "b", "c", "d")
    for args in (("-m", LLAMA, "one"), ("-c", "two"), ("-c", "three")):
        result = run(*args)
        assert result.exit_code == 0 and result.stderr == "", result.output + result.stderr
    paths = [p for p, *_ in answers(lmstudio)]
    if version == "0.3.15":  # LM Studio's 200 "Unexpected endpoint" once, then remembered (across processes: a file)
        assert paths == ["/api/v0/chat/completions", "/v1/responses", "/api/v0/chat/completions", "/api/v0/chat/completions"]
    else:  # not LM Studio's native API: never asked
        assert paths == ["/v1/chat/completions"] * 3
    assert [r["response"] for r in logs()] == ["a", "b", "c"]


def test_stateful_false_always_sends_the_full_history(lmstudio, user_path):
    lmstudio.script("a", "b", "c")
    run("-m", LLAMA, "one")
    run("-c", "two", "-o", "stateful", "false")
    run("-c", "three", "-o", "stateful", "false")
    assert [p for p, *_ in answers(lmstudio)] == ["/api/v0/chat/completions"] * 3


def test_options_responses_lacks_keep_the_turn_on_chat_completions(lmstudio):
    lmstudio.script("a", "b")
    run("-m", LLAMA, "one")
    run("-c", "two", "-o", "seed", "3")
    assert [p for p, *_ in answers(lmstudio)][-1] == "/api/v0/chat/completions"


def test_non_streamed_and_options_that_responses_takes(lmstudio, user_path):
    lmstudio.script("a", "b", "c")
    run("-m", LLAMA, "one", "--no-stream")
    run("-c", "two", "--no-stream", "-o", "max_tokens", "5", "-o", "temperature", "0")
    result = run("-c", "three", "--no-stream")
    assert result.stdout == "c\n"
    requests = [r for r in lmstudio.requests() if r["path"] == "/v1/responses"]
    assert [r["stream"] for r in requests] == [False, False] and requests[1]["previous_response_id"]
    assert turns(user_path)[2]["output_tokens"] > 0


def test_a_tool_call_and_its_result_continue_server_side(lmstudio, user_path):
    lmstudio.script("Hi.", '<tool_call>\n{"name": "llm_version", "arguments": {}}\n</tool_call>', "Told you.")
    assert run("-m", TOOLS, "hello").exit_code == 0
    result = run("-c", "-T", "llm_version", "Which llm version?", "--td")
    assert result.exit_code == 0, result.output + result.stderr
    assert "Told you." in result.stdout
    (_, _, _, _), (p2, id2, _, n2), (p3, id3, _, n3) = answers(lmstudio)
    assert p2 == p3 == "/v1/responses" and id2 is None and id3 and n3 == 1  # just the function_call_output
    logged = json.loads(run("logs", "-n", "2", "--json").stdout)
    assert [c["name"] for row in logged for c in row["tool_calls"]] == ["llm_version"]


def test_an_image_attachment_goes_with_a_server_side_turn(lmstudio, user_path, tmp_path):
    image = tmp_path / "blue.png"
    image.write_bytes(_png())
    lmstudio.script("a", "b", "c")
    run("-m", VISION, "hello")
    run("-c", "again")
    result = run("-c", "Describe", "-a", str(image))
    assert result.exit_code == 0 and result.stdout == "c\n", result.output
    assert answers(lmstudio)[-1][:2] == ("/v1/responses", logged()[1]["id"])
    # The stand-in renders the image as a marker in the prompt: it reached the model.
    assert turns(user_path)[2]["input_tokens"] > turns(user_path)[1]["input_tokens"]


@pytest.mark.parametrize("stream", [True, False])
def test_reasoning_stays_apart_from_the_answer_on_a_server_side_turn(lmstudio, stream):
    lmstudio.script("a", "b", "<think>Weighing the options.</think>The answer is 42.")
    flags = [] if stream else ["--no-stream"]
    run("-m", "lmstudio/test-org/tiny-reasoner", "one", *flags)
    run("-c", "two", *flags)
    result = run("-c", "Why?", *flags)
    assert result.stdout == "The answer is 42.\n"
    assert answers(lmstudio)[-1][0] == "/v1/responses" and answers(lmstudio)[-1][1]
    third = logs()[2]
    assert third["reasoning"] == "Weighing the options." and third["response"] == "The answer is 42."


def test_async_model_continues_server_side(lmstudio):
    lmstudio.script("a", "b", "c")

    async def go():
        conversation = llm.get_async_model(LLAMA).conversation()
        texts = []
        for prompt in ("one", "two", "three"):
            texts.append(await conversation.prompt(prompt, stateful=True).text())
        return texts

    assert asyncio.run(go()) == ["a", "b", "c"]
    assert [(p, bool(i)) for p, i, *_ in answers(lmstudio)] == [
        ("/api/v0/chat/completions", False), ("/v1/responses", False), ("/v1/responses", True),
    ]


def test_llm_chat_continues_server_side(lmstudio, user_path):
    lmstudio.script("a", "b", "c")
    result = run("chat", "-m", LLAMA, input="one\ntwo\nthree\nquit\n")
    assert result.exit_code == 0, result.output
    assert [bool(i) for _, i, *_ in answers(lmstudio)] == [False, False, True]


def test_an_id_from_another_server_or_model_is_never_sent(lmstudio, user_path):
    lmstudio.script("a", "b", "c")
    run("-m", LLAMA, "one")
    run("-c", "two")
    run("-c", "three", "-m", "lmstudio/test-org/tiny-reasoner")
    *_, (path, previous, _, items) = answers(lmstudio)
    assert path == "/v1/responses" and previous is None and items == 5


def test_the_response_cache_still_answers_repeats(lmstudio, user_path, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_RESPONSE_CACHE", "1h")
    lmstudio.script("a", "b", "c")
    assert run("-m", LLAMA, "one").stdout == "a\n"
    assert run("-c", "two").stdout == "b\n"
    stored = logged()[1]
    assert stored["cache"]["stored"] is True and stored["stateful"]["response_id"]
    sent = len(answers(lmstudio))
    # The same conversation again, in a new thread: both turns come from the cache, nothing is sent.
    assert run("-m", LLAMA, "one").stdout == "a\n"
    assert run("-c", "two").stdout == "b\n"
    assert len(answers(lmstudio)) == sent
    assert [row["response_json"]["cache"].get("hit") for row in logs()[2:]] == [True, True]
    # A replayed answer has no server-side response: the next turn starts a chain with the whole history.
    assert run("-c", "three").stdout == "c\n"
    assert answers(lmstudio)[-1][:2] == ("/v1/responses", None) and answers(lmstudio)[-1][3] == 5


def test_the_openai_client_speaks_to_the_stand_in(lmstudio):
    """An unmodified OpenAI client against the stand-in's /v1/responses: the wire format is OpenAI's."""
    import openai

    client = openai.OpenAI(base_url=lmstudio.base_url + "/v1", api_key="unused")
    lmstudio.script("Hello Ada.", "Ada.", "Still Ada.")
    first = client.responses.create(model="test-org/tiny-llama", input="My name is Ada.", instructions="Be brief.")
    assert first.id.startswith("resp_") and first.output_text == "Hello Ada." and first.usage.output_tokens > 0
    second = client.responses.create(model="test-org/tiny-llama", input="Name?", previous_response_id=first.id)
    assert second.output_text == "Ada." and second.usage.input_tokens > first.usage.input_tokens
    events = list(client.responses.create(model="test-org/tiny-llama", input="Again?", previous_response_id=second.id, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Still Ada."
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="test-org/tiny-llama", input="x", previous_response_id="resp_unknown")
    assert refused.value.code == "previous_response_not_found"
