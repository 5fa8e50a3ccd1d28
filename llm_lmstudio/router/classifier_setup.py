"""How the router decides a prompt's task: which embedding model (configured or one the user has), building
its exemplar vectors without blocking a prompt, and the optional small-model tier. Never runs the routed model."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import time
from typing import Any

import llm

from llm_lmstudio.core import files
from llm_lmstudio.core import settings
from llm_lmstudio.router import config as router_config

BUILD_LOCK = "router-build.lock"
BUILD_LOCK_STALE = 120.0  # seconds without progress before another process may take over a build
BUILD_WORKER = "llm_lmstudio.router.build_worker"  # run with python -m: see build_worker.py
INLINE_EXEMPLARS = 16  # this few new exemplars (a user's `tasks:` edit) are embedded inside the prompt
LLM_CACHE = "router-llm-answers.json"
LLM_CACHE_SIZE = 2000

TASK_DESCRIPTIONS = {
    "coding": "writing, fixing, reviewing or explaining code, scripts, shell commands, configuration",
    "analysis": "maths, logic puzzles, calculations, estimates, extracting or tabulating data from a text",
    "creative": "stories, poems, role-play, blog posts, slogans, letters, speeches: writing that invents",
    "research": "explaining facts, science, history, how things work, comparisons, knowledge questions",
    "general": "chit-chat, personal advice, summarising, rewriting, proofreading or translating a given text",
}

_CLASSIFIERS: dict[tuple, Any] = {}


def _debug(message: str) -> None:
    if settings.debug():
        print(f"llm-lmstudio-mlx: {message}", file=sys.stderr)


# ---------------------------------------------------------------- which embedding model


def _native_is_fast() -> bool:
    """MLX runs on the GPU only on Apple silicon; on other machines it is CPU-only and far too slow
    to embed a thousand exemplars unasked (29 minutes for MiniLM on a Linux CPU)."""
    return sys.platform == "darwin" and platform.machine() == "arm64"


def default_embedding_model() -> tuple[str | None, str]:
    """(model id or None, why): an embedding model the user already has, when the config names none."""
    from llm_lmstudio.router import exemplar_vectors

    local = [m for m in llm.get_embedding_models() if settings.is_local_model_id(m.model_id)]
    served = [m for m in local if not m.model_id.startswith("mlx/")]
    native = [m for m in local if m.model_id.startswith("mlx/")]

    def rank(model):
        entry = getattr(model, "entry", None)
        return (exemplar_vectors.family(model.model_id) is None, not getattr(entry, "loaded", False), "nomic" not in model.model_id, model.model_id)

    for group, where in ((served, "listed by LM Studio"), (native if _native_is_fast() else [], "a native MLX model")):
        if group:
            best = min(group, key=rank)
            extra = "; its exemplar vectors ship with the plugin" if exemplar_vectors.family(best.model_id) else ""
            return best.model_id, f"{best.model_id} chosen automatically ({where}{extra}); set embedding_model in the router config to choose"
    if native:
        return None, (f"no embedding model listed by LM Studio; native {native[0].model_id} is CPU-only on this machine, so it is not "
                      "picked automatically (set embedding_model to use it)")
    return None, "no local embedding model found (LM Studio lists none): keywords only"


def embedding_model_for(config: router_config.RouterConfig) -> tuple[str | None, str | None]:
    """(model id or None, note): the configured embedding model, else the default choice."""
    if config.classifier == "keyword":
        return None, "keyword classifier chosen in the router config"
    if config.embedding_model:
        return config.embedding_model, None
    return default_embedding_model()


def embedding_classifier(model_id: str, config: router_config.RouterConfig):
    """The embedding classifier for this model and config (exemplar vectors possibly still missing)."""
    from llm_lmstudio.router import classification

    key = (model_id, str(settings.plugin_dir()), repr(sorted(config.tasks.items())), repr(sorted(config.keywords.items())))
    if key not in _CLASSIFIERS:
        model = llm.get_embedding_model(model_id)

        def embed(texts: list[str]) -> list[list[float]]:
            return [list(v) for v in model.embed_multi(texts)]

        _CLASSIFIERS[key] = classification.EmbeddingClassifier(
            embed,
            classification.load_exemplars(config.tasks),
            model_id=model_id,
            cache_dir=settings.plugin_dir(),
            keyword=classification.KeywordClassifier(extra_keywords=config.keywords or None),
            build=False,
        )
    return _CLASSIFIERS[key]


# ---------------------------------------------------------------- building exemplar vectors


def _lock_is_fresh() -> bool:
    try:
        return time.time() - (settings.plugin_dir() / BUILD_LOCK).stat().st_mtime < BUILD_LOCK_STALE
    except OSError:
        return False


def _spawn_build(model_id: str) -> bool:
    """Embeds the exemplars in a detached process, so no prompt waits for it; one build at a time."""
    if _lock_is_fresh():
        return False
    try:
        (settings.plugin_dir() / BUILD_LOCK).write_text(model_id)
        subprocess.Popen(
            [sys.executable, "-m", BUILD_WORKER, model_id],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        return True
    except OSError as exc:
        _debug(f"could not start building the router's exemplar vectors: {exc}")
        return False


def background_build(model_id: str) -> None:
    """The detached builder: embeds what is missing, touching the lock as it goes, then removes it."""
    lock = settings.plugin_dir() / BUILD_LOCK
    try:
        warm(router_config.load(), model_id, progress=lambda done, total: lock.touch())
    finally:
        try:
            lock.unlink()
        except OSError:
            pass


def warm(config: router_config.RouterConfig, model_id: str | None = None, progress=None) -> tuple[str | None, str | None]:
    """Builds the embedding classifier's exemplar vectors now (`llm lmstudio route --warm`)."""
    if model_id is None:
        model_id, note = embedding_model_for(config)
        if model_id is None:
            return None, note
    embedding_classifier(model_id, config).build(progress=progress)
    return model_id, None


def ready_classifier(config: router_config.RouterConfig):
    """(embedding classifier or None, note). A classifier missing more than a few exemplar vectors is
    built in a detached process while this prompt is routed by keywords; a few are embedded right here."""
    model_id, note = embedding_model_for(config)
    if model_id is None:
        return None, note
    try:
        classifier = embedding_classifier(model_id, config)
        if not classifier.ready:
            classifier.store.reload()  # a background build (another process) may have stored more since
            pending = classifier.pending()
            if len(pending) > INLINE_EXEMPLARS:
                started = _spawn_build(model_id)
                done = len(classifier.pairs) - len(pending)
                return None, (f"embedding the exemplars with {model_id} in the background ({done}/{len(classifier.pairs)} done"
                              f"{'' if started else ', already under way'}); keywords meanwhile — `llm lmstudio route --warm` shows progress")
            classifier.build()
    except Exception as exc:  # noqa: BLE001 - a broken embedding model must not stop routing
        return None, f"embedding model {model_id} failed: {exc}"
    return classifier, note


# ---------------------------------------------------------------- the optional small-model tier


def _cache_path():
    return settings.plugin_dir() / LLM_CACHE


def _read_answers() -> dict:
    try:  # a damaged file is moved aside with a warning; answers are asked for again
        return files.read_json(_cache_path(), then="the small model is asked again") or {}
    except OSError:
        return {}


def ask_model(model_id: str, view: str, task_names: list[str], exemplars: dict) -> tuple[str, bool]:
    """(task, cached): the task a small local chat model picks for this prompt, answering with JSON that a
    schema constrains to the task names. The answer is cached per (model, prompt, tasks)."""
    key = hashlib.sha256(json.dumps([model_id, view, task_names]).encode()).hexdigest()
    answers = _read_answers()
    if key in answers and answers[key] in task_names:
        return answers[key], True
    lines = []
    for name in task_names:
        described = TASK_DESCRIPTIONS.get(name) or "; ".join(p[:80] for p in exemplars.get(name, [])[:3])
        lines.append(f"- {name}: {described}")
    system = ("Classify the user's request into exactly one task. Answer with JSON only.\nTasks:\n" + "\n".join(lines))
    model = llm.get_model(model_id)
    fields = getattr(model.Options, "model_fields", {})
    options = {k: v for k, v in (("temperature", 0.0), ("max_tokens", 40)) if k in fields}
    schema = {"type": "object", "properties": {"task": {"type": "string", "enum": task_names}}, "required": ["task"]}
    text = model.prompt(view, system=system, schema=schema, stream=False, **options).text()
    try:
        task = json.loads(text)["task"]
    except (ValueError, TypeError, KeyError):
        raise ValueError(f"{model_id} did not answer with the JSON asked for") from None
    if task not in task_names:
        raise ValueError(f"{model_id} answered with an unknown task {task!r}")
    answers[key] = task
    if len(answers) > LLM_CACHE_SIZE:
        answers = dict(list(answers.items())[-LLM_CACHE_SIZE:])
    try:
        files.write_text(_cache_path(), json.dumps(answers))
    except OSError:
        pass  # no cache costs a model call next time, nothing else
    return task, False
