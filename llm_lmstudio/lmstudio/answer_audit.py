"""What an LM Studio answer says about itself, checked before llm logs it: which model really answered, and usage
figures that are measurements. It never changes the answer; it reads only the plugin's cached model list."""

from __future__ import annotations

import re
from typing import Any

from llm_lmstudio.core.errors import note

_INSTANCE = re.compile(r":\d+$")  # LM Studio names a model's second instance `key:2`


def measured_input(usage: dict) -> int | None:
    """The input token count llm should log: a prompt always has tokens, so a reported 0 is not a measurement
    (LM Studio's /v1/responses reports `input_tokens: 0` for a repeated input, lms#553) and is logged as unknown."""
    tokens = usage.get("prompt_tokens")
    return tokens if isinstance(tokens, int) and tokens > 0 else None


def _model_of(name: str) -> str:
    return _INSTANCE.sub("", name).partition("@")[0].lower()


def substituted(requested: str, answered_by: str, server: Any) -> bool:
    """Did LM Studio answer with another model than the one asked for? It does, with 200, when one model is loaded
    and the one asked for is not available (lmstudio-bug-tracker#619, #366). Only a model LM Studio lists counts:
    an instance loaded under an identifier of the user's own (`lms load --identifier`) is the model asked for."""
    if _model_of(answered_by) == _model_of(requested):
        return False
    from llm_lmstudio.lmstudio import catalog

    listed = {m.key.lower() for m in catalog.models_for_registration() if m.base_url == server.base_url}
    return _model_of(answered_by) in listed


def check_model(response, requested: str, answered_by: str) -> None:
    """Say on stderr, once, that LM Studio substituted the model (resolved_model records the one that answered)."""
    if substituted(requested, answered_by, response.model.server):
        note(
            f"LM Studio answered with {answered_by}, not {requested}: it substitutes the one model it has loaded "
            "for one it cannot serve (lmstudio-bug-tracker#619); logged as the model that answered"
        )
