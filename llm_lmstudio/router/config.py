"""The router's settings file (lmstudio-router.yaml or .json in llm's user dir), validated into RouterConfig, and
the router's fixed names. Every error is one line naming the file and the key; reads one small file, never the network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, Optional

import llm
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from llm_lmstudio.core.settings import SettingsError, is_local_model_id
from llm_lmstudio.core.unavailable import ROUTER_ALIASES, ROUTER_ID  # noqa: F401 - the router's names live in core


# tool_call_id -> the model that made the call, so the follow-up turn with its result goes back to it (planning.py).
TOOL_CALL_OWNERS: dict[str, str] = {}

ROUTER_CONFIG_NAMES = ("lmstudio-router.yaml", "lmstudio-router.yml", "lmstudio-router.json")


def router_config_path() -> Path | None:
    """The router's settings file, or None; two of them (say .yaml and .json) is an error, never a silent pick."""
    found = [llm.user_dir() / name for name in ROUTER_CONFIG_NAMES if (llm.user_dir() / name).is_file()]
    if len(found) > 1:
        names = " and ".join(path.name for path in found)
        raise SettingsError(f"{found[0].parent}: both {names} exist and the router reads only one: merge them into one file, "
                            "delete the other")
    return found[0] if found else None


class _Problem(ValueError):
    """A validation problem that knows the key (or nested key) it belongs to."""

    def __init__(self, message: str, key: str = ""):
        super().__init__(message)
        self.key = key


def _strings(value):
    """A single string counts as a list of one; every entry stripped and non-empty."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
        return tuple(v.strip() for v in value)
    raise _Problem("must be a list of non-empty strings")


def _task_lists(value):
    if not isinstance(value, dict):
        raise _Problem("must be a mapping of task name to a list of strings")
    result = {}
    for task, items in value.items():
        if not isinstance(task, str) or not task.strip():
            raise _Problem("has a task name that is not a string")
        try:
            result[task.strip()] = list(_strings(items))
        except _Problem as exc:
            raise _Problem(str(exc), key=task.strip()) from None
    return result


def _local_model(value):
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _Problem("must be a model id")
    if not is_local_model_id(value.strip()):
        # classifying sends the prompt to that model: only local ones are allowed
        raise _Problem(f"must be a local model (lmstudio/... or mlx/...), not {value.strip()!r}")
    return value.strip()


def _whole(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Problem("must be a whole number of at least 1")
    return value


_Strings = Annotated[tuple, BeforeValidator(_strings)]
_TaskLists = Annotated[dict, BeforeValidator(_task_lists)]
_LocalModel = Annotated[Optional[str], BeforeValidator(_local_model)]
_Whole = Annotated[int, BeforeValidator(_whole)]


class RouterConfig(BaseModel):
    """The router's settings file, validated. Every field has a safe default: no file means local only."""

    # defer_build: validators are built when a config is read (a routed prompt), not when models register.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    classifier: Literal["auto", "keyword", "embedding"] = "auto"
    embedding_model: _LocalModel = None
    # a small local chat model asked when the embedding classifier is unsure (the optional third tier)
    classifier_model: _LocalModel = None
    classifier_threshold: float = Field(0.5, ge=0.0, le=1.0)  # below this confidence, ask classifier_model
    prefer: _TaskLists = {}  # task -> [model id or LM Studio key, ...] in order
    exclude: _Strings = ()
    fallback: _Strings = ()  # cloud models, used only after every local candidate failed
    tasks: _TaskLists = {}  # task -> extra exemplar prompts (new tasks allowed)
    keywords: _TaskLists = {}  # task -> extra keywords for the keyword classifier
    ttl: _Whole = 600  # idle seconds before LM Studio unloads a model the router JIT-loaded
    max_attempts: _Whole = 4
    path: Optional[Path] = None  # where it was read from; not a setting (parse_router_config refuses the key)

    @property
    def task_names(self) -> list[str]:
        from llm_lmstudio.router.classification import DEFAULT_TASKS

        return list(dict.fromkeys([*DEFAULT_TASKS, *self.tasks, *self.keywords]))

    @model_validator(mode="after")
    def _prefer_names_known_tasks(self):
        for task in self.prefer:
            if task not in self.task_names:
                raise _Problem(f"names the task {task!r}, which is neither built in nor under 'tasks' or 'keywords' "
                               f"(tasks: {', '.join(self.task_names)})", key="prefer")
        return self


_PROBLEMS = {"classifier": "must be one of auto, keyword, embedding", "classifier_threshold": "must be a number from 0 to 1"}


def parse_router_config(data, name: str = "lmstudio-router.yaml", path: Path | None = None) -> RouterConfig:
    """Validate the router settings; every error is one line naming the file and the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(f"{name}: the top level must be a mapping of settings")
    known = sorted(key for key in RouterConfig.model_fields if key != "path")
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise SettingsError(f"{name}: unknown key {unknown[0]!r} (known keys: {', '.join(known)})")
    try:
        return RouterConfig(**data, path=path)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        problem = error.get("ctx", {}).get("error")
        if isinstance(problem, _Problem):
            key = ".".join(k for k in (key, problem.key) if k)
            message = str(problem)
        else:
            message = _PROBLEMS.get(key, error["msg"])
        raise SettingsError(f"{name}: '{key}' {message}") from None


def load() -> RouterConfig:
    """The user's router settings, or the defaults when there is no file."""
    path = router_config_path()
    if path is None:
        return RouterConfig()
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"{path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: is not UTF-8 text") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError as exc:
            raise SettingsError(f"{path}: not valid JSON ({exc})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise SettingsError(f"{path}: not valid YAML{where}") from None
    return parse_router_config(data, name=str(path), path=path)
