"""answer_audit.py: what an LM Studio answer says about itself is logged truthfully: the model that really answered
(LM Studio substitutes its one loaded model for one it cannot serve, lmstudio-bug-tracker#619) with a one-line note,
and a reported 0 input tokens (lms#553) as unknown rather than measured."""

from llm_lmstudio.lmstudio import answer_audit
from tests.lmstudio.test_chat import LLAMA, run, turns

TOOLS_KEY = "test-org/tiny-qwen-tools"


def test_a_substituted_model_is_logged_as_the_one_that_answered_with_one_note(lmstudio, user_path):
    lmstudio.configure(single_model_fallback=True, jit=False)
    lmstudio.load(TOOLS_KEY)
    lmstudio.script("From the loaded model.")
    result = run("-m", LLAMA, "hi")
    assert result.exit_code == 0 and result.stdout == "From the loaded model.\n"
    [turn] = turns(user_path)
    assert (turn["model"], turn["resolved_model"]) == (LLAMA, f"lmstudio/{TOOLS_KEY}")
    assert result.stderr.splitlines() == [
        f"llm-lmstudio-mlx: LM Studio answered with {TOOLS_KEY}, not test-org/tiny-llama: it substitutes the one model it "
        "has loaded for one it cannot serve (lmstudio-bug-tracker#619); logged as the model that answered"
    ]


def test_an_instance_of_the_model_asked_for_is_no_substitution(lmstudio, user_path):
    lmstudio.load("test-org/tiny-llama", identifier="my-llama")  # `lms load --identifier my-llama`
    lmstudio.script("Hello.")
    result = run("-m", LLAMA, "hi")
    assert result.exit_code == 0 and result.stderr == ""
    assert turns(user_path)[0]["resolved_model"] == "lmstudio/my-llama"
    # A second instance (`key:2`) or a variant of the model asked for is that model too; no listing is read for them.
    for answered in ("test-org/tiny-llama:2", "test-org/tiny-llama@q8_0", "Test-Org/Tiny-Llama"):
        assert answer_audit.substituted("test-org/tiny-llama", answered, server=None) is False


def test_only_a_positive_input_count_is_a_measurement():
    assert answer_audit.measured_input({"prompt_tokens": 0, "completion_tokens": 5}) is None
    assert answer_audit.measured_input({"completion_tokens": 5}) is None
    assert answer_audit.measured_input({"prompt_tokens": 31}) == 31
