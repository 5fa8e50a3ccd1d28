"""`llm lmstudio route` as a person reads it: the classifier's note."""

import pytest
from click.testing import CliRunner
from llm.cli import cli

TOKEN = "sk-lm-routenote:secretpasskey1"
EMBEDDER = "lmstudio/test-org/text-embedding-all-minilm-l6-v2"


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.minilm
def test_a_failed_embedding_call_is_noted_in_words_not_as_a_class_name(lmstudio, user_path):
    assert run("models").exit_code == 0  # listed while no token was needed
    lmstudio.configure(version="0.4", auth_token=TOKEN)
    result = run("lmstudio", "route", "Write a limerick about a cat who learns to code")
    assert result.exit_code == 0, result.output
    [note] = [line for line in result.output.splitlines() if line.startswith("  note: ")]
    assert note == (f"  note: embedding model {EMBEDDER} failed: LM Studio at {lmstudio.base_url} requires an API token: "
                    "run `llm keys set lmstudio` or set $LM_API_TOKEN")


def test_an_empty_prompt_is_refused_as_llm_m_router_refuses_it(lmstudio, user_path):
    from llm_lmstudio.core.messages import EMPTY_PROMPT

    (user_path / "lmstudio-router.yaml").write_text("classifier: keyword\n")
    result = CliRunner().invoke(cli, ["lmstudio", "route", ""])
    assert result.exit_code == 1
    assert result.output == f"Error: lmstudio-router: {EMPTY_PROMPT}\n"
    # a system prompt alone is something to route
    assert CliRunner().invoke(cli, ["lmstudio", "route", "", "-s", "Say hello"]).exit_code == 0
