"""A prompt's structure as evidence: a pasted passage with a short question, "write a function ..." whatever it
computes, list requests. Checked on the split itself and on the keyword classifier's decision."""

from llm_lmstudio.router import prompt_shape
from llm_lmstudio.router.classification import KeywordClassifier

PASSAGE = (
    "The Byzantine Empire, also called the Eastern Roman Empire, was the continuation of the Roman Empire in its "
    "eastern provinces during Late Antiquity and the Middle Ages, when its capital city was Constantinople. It survived "
    "the fragmentation and fall of the Western Roman Empire in the 5th century AD and continued to exist for an "
    "additional thousand years until the fall of Constantinople to the Ottoman Empire in 1453. During most of its "
    "existence, the empire remained the most powerful economic, cultural, and military force in the Mediterranean."
)


def task(text: str) -> str:
    return KeywordClassifier().classify(text).task


def test_a_question_after_a_pasted_passage_is_split_from_it():
    shape = prompt_shape.split(PASSAGE + "\n\nIn which year did Constantinople fall?")
    assert shape.instruction == "In which year did Constantinople fall?"
    assert shape.material == PASSAGE and not shape.material_is_code
    # the instruction first, as in "Summarise this:\n\n<text>"
    assert prompt_shape.split("Summarise the text below in two sentences:\n\n" + PASSAGE).material == PASSAGE
    # one paragraph whose last sentence asks
    assert prompt_shape.split(PASSAGE + " Which city was its capital?").instruction == "Which city was its capital?"
    # a long request without material stays whole
    assert prompt_shape.split("Explain " + "why the empire lasted so long and " * 10 + "why it fell.").material == ""


def test_a_question_about_a_pasted_passage_is_reading_comprehension_not_research():
    assert task(PASSAGE + "\n\nIn which year did Constantinople fall?") == "analysis"
    assert task("Based on the passage below, what was the capital of the empire?\n\n" + PASSAGE) == "analysis"
    assert task(PASSAGE + "\n\nExtract every date mentioned, as a list.") == "analysis"
    # the same text without the passage is a knowledge question
    assert task("When did the Byzantine Empire fall?") == "research"


def test_summarising_or_rewriting_a_pasted_passage_is_a_text_chore():
    assert task(PASSAGE + "\n\nSummarize this in two sentences.") == "general"
    assert task("Rewrite the following paragraph for a ten-year-old:\n\n" + PASSAGE) == "general"


def test_writing_a_function_is_coding_whatever_it_computes():
    for text in ("write a function that computes the volume of a cone",
                 "Write a Python program to find the probability of rolling two sixes",
                 "Create a script that calculates compound interest over 10 years",
                 "implement a method that returns the median of a list of numbers"):
        assert task(text) == "coding", text
    assert not prompt_shape.evidence(prompt_shape.split("Write the function f(x) = 3x^2 + 2 in vertex form"))


def test_pasted_code_with_a_question_is_coding():
    code = "def area(r):\n    return 3.14159 * r * r\n\n" * 8
    assert prompt_shape.split(code + "\n\nWhy does this return the wrong value?").material_is_code
    assert task(code + "\n\nWhy does this return the wrong value?") == "coding"


def test_list_requests_are_ideas_or_facts():
    assert task("Give me a list of ideas for a ten-year-old's birthday party") == "creative"
    assert task("List some names for a golden retriever puppy") == "creative"
    assert task("List the planets of the solar system in order from the sun") == "research"


import json  # noqa: E402

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from llm.cli import cli  # noqa: E402


@pytest.mark.minilm
def test_the_embedding_classifier_reads_prompt_structure_too(lmstudio, user_path):
    # the stand-in lists all-MiniLM-L6-v2, whose exemplar vectors ship: the router classifies by embeddings + keywords
    cases = [
        (PASSAGE + "\n\nIn which year did Constantinople fall?", "analysis"),
        ("summarize this in two sentences:\n\n" + PASSAGE, "general"),
        ("write a function that computes the volume of a cone", "coding"),
        ("give me a list of ideas for a ten-year-old's birthday party", "creative"),
    ]
    for text, expected in cases:
        result = CliRunner().invoke(cli, ["lmstudio", "route", "--json"], input=text, catch_exceptions=False)
        plan = json.loads(result.output)
        assert plan["classifier"] == "embedding", plan["classifier_note"]
        assert plan["task"] == expected, (text[-60:], plan["scores"])
