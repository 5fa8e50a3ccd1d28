"""The registered `lmstudio-router` model: cheap to register, its options checked when a prompt uses them.
Routing itself (planning, falling back, logging) is specified in test_router.py."""

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from llm_lmstudio.router import model


def test_registering_the_router_loads_neither_its_planning_nor_option_validators(refused_url):
    # Every `llm` command that looks up a model registers the router: what only routing needs waits for a prompt.
    code = (
        "import sys, llm\n"
        "model = llm.get_model('router')\n"
        "from llm_lmstudio.lmstudio import chat\nfrom llm_lmstudio.router import config as router_config\n"
        "print(model.model_id, 'llm_lmstudio.router.planning' in sys.modules,\n"
        "      [c.__name__ for c in (type(model).Options, chat.LMStudioOptions, router_config.RouterConfig) if c.__pydantic_complete__])"
    )
    env = dict(os.environ, LMSTUDIO_BASE_URL=refused_url)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "lmstudio-router False []"


def test_deferred_options_still_refuse_bad_values_with_the_field_named():
    options = model.Router().Options(task="coding", temperature=1.5)
    assert (options.task, options.temperature) == ("coding", 1.5)
    with pytest.raises(ValidationError, match="temperature"):
        model.Router().Options(temperature=5)
    with pytest.raises(ValidationError, match="cache"):
        model.Router().Options(cache="soon")
    assert {"task", "cache", "temperature"} <= set(model.Router().Options.model_json_schema()["properties"])
