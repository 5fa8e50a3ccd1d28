"""`--schema` for native MLX models: constrained decoding makes every answer parse and validate, nested models
included, with or without a draft model; an answer cut off at max_tokens is flagged; a bad schema is one line."""

import json
from typing import Literal

import llm
import pytest
from click.testing import CliRunner
from llm.cli import cli
from pydantic import BaseModel, ConfigDict, Field

from tests.mlx.test_chat import models  # noqa: F401 - the native-model fixture


class Strict(BaseModel):
    # No extra keys: a random-weight model would otherwise invent properties until max_tokens.
    model_config = ConfigDict(extra="forbid")


class Address(Strict):
    city: str = Field(max_length=12)
    tags: list[Literal["home", "work", "other"]] = Field(max_length=3)


class Person(Strict):
    name: str = Field(max_length=10)
    age: int = Field(ge=0, le=120)
    retired: bool
    address: Address  # nested: pydantic writes it as a $ref into $defs
    previous: list[Address] = Field(max_length=2)


SCHEMA = Person.model_json_schema()


def test_schemas_are_claimed(models):
    assert llm.get_model("mlx/tiny-qwen").supports_schema is True


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_output_parses_and_validates_against_a_nested_schema(models, seed):
    # Random weights would write almost anything; only the constraint can make this valid every time.
    response = llm.get_model("mlx/tiny-qwen").prompt("Describe a person", schema=SCHEMA, seed=seed, max_tokens=400)
    Person.model_validate_json(response.text())
    assert response.response_json["finish_reason"] == "stop"


def test_the_same_prompt_without_a_schema_is_not_json(models):
    text = llm.get_model("mlx/tiny-qwen").prompt("Describe a person", seed=0, max_tokens=60).text()
    with pytest.raises(ValueError):
        json.loads(text)


def test_cli_schema_answer_is_valid_and_logged(models, user_path):
    result = CliRunner().invoke(cli, ["-m", "mlx/tiny-llama", "a person", "--schema", json.dumps(SCHEMA), "-o", "seed", "5"])
    assert result.exit_code == 0, result.output
    Person.model_validate_json(result.output)
    (logged,) = json.loads(CliRunner().invoke(cli, ["logs", "--json", "-n", "1"]).output)
    Person.model_validate_json(logged["response"])
    assert logged["schema_json"] == SCHEMA


def test_schema_with_a_draft_model_is_still_valid(models):
    response = llm.get_model("mlx/tiny-qwen").prompt(
        "Describe a person", schema=SCHEMA, seed=2, max_tokens=400, draft_model="mlx/tiny-llama"
    )
    Person.model_validate_json(response.text())
    assert response.response_json["draft_model"] == "mlx/tiny-llama"


def test_answer_cut_off_at_max_tokens_is_flagged(models):
    result = CliRunner().invoke(cli, ["-m", "mlx/tiny-qwen", "a person", "--schema", json.dumps(SCHEMA), "-o", "max_tokens", "5"])
    assert result.exit_code == 0
    assert "the answer stopped at the token limit (5 tokens) and is not valid JSON" in result.stderr
    with pytest.raises(ValueError):
        json.loads(result.stdout)


@pytest.mark.parametrize(
    "schema,reason",
    [({"type": "objekt"}, "Invalid type: objekt"), ({"type": "string", "pattern": "(("}, "unclosed group")],
)
def test_a_schema_that_cannot_be_enforced_is_one_line(models, schema, reason):
    result = CliRunner().invoke(cli, ["-m", "mlx/tiny-qwen", "hi", "--schema", json.dumps(schema)])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith("Error: mlx/tiny-qwen: the schema cannot be enforced:") and reason in result.output
