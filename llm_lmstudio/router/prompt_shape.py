"""What a prompt's structure says about its task, beside its words: a long pasted passage with a short question or
instruction about it (`cat file | llm -m router "..."`), a request to write code whatever the code computes, a request
for a list. Pure text rules over the prompt; no model, no network."""

from __future__ import annotations

import re
from dataclasses import dataclass

MATERIAL_MIN = 280  # characters: shorter pasted text is part of the request, not material it is about
INSTRUCTION_MAX = 320  # characters: a longer "instruction" is a request in its own right
MATERIAL_WEIGHT = 0.3  # what the pasted material's own words count, beside the instruction's

_QUESTION_START = re.compile(
    r"^\W*(what|who|whom|whose|which|when|where|why|how|is|are|was|were|does|do|did|can|could|should|would|will|has|have|"
    r"had|according|based|given|from|in the|list|name|extract|identify|find|summari[sz]e|explain|describe|tell|give|"
    r"write|rewrite|translate|make|turn|convert|classify|categori[sz]e|please)\b", re.IGNORECASE)
# The reading-comprehension cue: the request points at a text it is given.
_ABOUT_TEXT = re.compile(
    r"\b(given|based on|according to|using|from|in|with|per|read) (this|the|these|that|a|an|following|above|below|provided|"
    r"reference|attached)( \w+){0,2} (paragraph|passage|text|article|excerpt|document|reference|context|story|report|"
    r"email|transcript|essay|review|description|information|content|snippet|quote|section|statement|bio|biography)s?\b"
    r"|\b(the|this) (paragraph|passage|text|article|excerpt|document) (above|below)\b|\b(context|passage|text|question):",
    re.IGNORECASE)
_SUMMARY = re.compile(r"\b(summar\w*|tl;?dr|gist|main (points?|ideas?)|key (points?|takeaways?|ideas?)|in a nutshell|"
                      r"in (one|two|three|a few|\d+) (sentences?|words|bullet)|brief(ly)? overview|overview of (this|the))\b", re.IGNORECASE)
_REWRITE = re.compile(r"\b(rewrite|re-write|rephrase|paraphrase|proofread|reword|shorten|simplify|polish|translate|"
                      r"fix (the |any )?(grammar|spelling|typos)|make (it|this) (more|less|shorter|longer|formal|casual))\b",
                      re.IGNORECASE)
_EXTRACT = re.compile(r"\b(extract|pull out|find all|list (all|every|each|the)|in a table|as a table|as json|as a list|"
                      r"bullet(ed)? list of the|which (of|are)|how many|classify|categori[sz]e)\b", re.IGNORECASE)
_INVENT = re.compile(r"\b(write|compose|create) (a|an|me a)( \w+){0,2} (poem|story|song|haiku|limerick|tweet|slogan|"
                     r"headline|title|joke)\b", re.IGNORECASE)
# "write a function that computes the volume of a cone" asks for code, whatever the code computes.
_WRITE_CODE = re.compile(
    r"\b(write|create|implement|code|generate|make|give me|build|develop|show me|provide)\b( (me|us))?( (a|an|the|some|one|"
    r"two|small|short|simple|quick|tiny|basic|recursive|efficient|single|reusable|generic|async|pure|[a-z+#]+ ?\w*)){0,3} "
    r"(function|functions|program|programs|script|scripts|method|class|subroutine|procedure|module|snippet|code|regex|"
    r"regular expression|sql query|query|one-liner|oneliner|shell command|bash command|cli|algorithm|unit tests?|"
    r"lambda|decorator|component|endpoint|macro)\b(?! ?f ?\()", re.IGNORECASE)
_LIST = re.compile(r"^\W*(please )?(list|name|give me|suggest|brainstorm|recommend|what are (some|the)|"
                   r"can you (list|name|give|suggest)|come up with|enumerate)\b|\b(a list of|\d+ (ideas|ways|names|examples|"
                   r"reasons|tips|things|suggestions|places|books|movies|songs|facts))\b", re.IGNORECASE)
_IDEAS = re.compile(r"\b(ideas?|names? for|ways to|suggestions?|tips|things to (do|see|bring|try)|activities|gifts?|"
                    r"slogans?|titles?|taglines?|themes?|recipes?|games?|costumes?|plans? for|what (should|could|can) i)\b",
                    re.IGNORECASE)
_CODE_MATERIAL = re.compile(r"```|^\s*(def|class|import|from \S+ import|function|const|let|var|public|#include|SELECT|"
                            r"package|fn|func)\b|[;{}]\s*$|Traceback \(most recent call last\)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Shape:
    instruction: str  # the part that asks: the whole prompt when nothing was pasted
    material: str = ""  # the pasted passage it asks about, if any
    material_is_code: bool = False


def _is_request(text: str) -> bool:
    text = text.strip()
    return bool(text) and len(text) <= INSTRUCTION_MAX and (text.endswith("?") or text.endswith(":") or bool(_QUESTION_START.match(text)))


def split(text: str) -> Shape:
    """The request and the material it is about. The request is a short question or instruction at the end
    (`cat file | llm "..."` puts it there) or at the start ("Summarise this:\\n\\n..."), or one set off by a
    `Question:`-style label; without one, the whole prompt is the request."""
    text = (text or "").strip()
    if len(text) < MATERIAL_MIN + 20:
        return Shape(text)
    blocks = [b for b in re.split(r"\n\s*\n", text) if b.strip()]
    if len(blocks) < 2:
        blocks = [b for b in text.split("\n") if b.strip()]
    if len(blocks) < 2:
        # one paragraph: a passage whose last sentence is the question ("... in 1887. Who founded the firm?")
        sentences = re.split(r"(?<=[.!?])\s+", text)
        if len(sentences) > 2 and sentences[-1].endswith("?"):
            blocks = [" ".join(sentences[:-1]), sentences[-1]]
        else:
            head, sep, rest = text.partition(":")
            blocks = [head + sep, rest] if sep and len(head) < INSTRUCTION_MAX and _QUESTION_START.match(head) else [text]
    for instruction, material in ((blocks[-1], "\n\n".join(blocks[:-1])), (blocks[0], "\n\n".join(blocks[1:]))):
        if len(material) >= max(MATERIAL_MIN, 2 * len(instruction)) and _is_request(instruction):
            return Shape(instruction.strip(), material.strip(), bool(_CODE_MATERIAL.search(material)))
    return Shape(text)


def evidence(shape: Shape) -> dict[str, float]:
    """Points per task that the prompt's structure adds to what its words say."""
    found: dict[str, float] = {}

    def add(task: str, points: float) -> None:
        found[task] = found.get(task, 0.0) + points

    ask = shape.instruction
    if _WRITE_CODE.search(ask):
        add("coding", 4.0)
    if shape.material:
        if shape.material_is_code:
            add("coding", 2.0)
        elif _SUMMARY.search(ask) or _REWRITE.search(ask):
            add("general", 4.0)  # a chore on a given text: summarising, rewriting, translating
        elif _INVENT.search(ask):
            add("creative", 3.0)
        else:
            # a question about the text, or data drawn from it: reading comprehension and extraction
            add("analysis", 4.0 if (_EXTRACT.search(ask) or _ABOUT_TEXT.search(ask) or ask.endswith("?")) else 2.5)
        return found
    if _ABOUT_TEXT.search(ask) and not _WRITE_CODE.search(ask):
        add("analysis", 2.0)  # a short text of its own, asked about ("Given this paragraph about ..., what ...")
    if _LIST.search(ask) and not _WRITE_CODE.search(ask):
        add("creative" if _IDEAS.search(ask) else "research", 1.5)
    return found
