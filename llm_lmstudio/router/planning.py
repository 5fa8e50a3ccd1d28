"""The router's plan: classify a prompt's task, rank the local models that can do it, order the ones to try.
It never plans a model outside this plugin's local models unless the config lists it under `fallback`; the
registered model that runs a plan (router_model.py) imports this module only when a prompt is routed."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import llm

from llm_lmstudio.core import settings
from llm_lmstudio.router import config as router_config
from llm_lmstudio.router.config import ROUTER_ID, TOOL_CALL_OWNERS

# What a model's key says about the work it is good at (matched on the lower-cased key).
TASK_AFFINITY = {
    "coding": (r"coder|code|devstral|codestral|starcoder|codellama|deepseek-v?\d*-?coder", 30.0),
    "analysis": (r"math|reason|\br1\b|-r1|qwq|think|phi", 15.0),
    "creative": (r"creative|story|writer|roleplay|rp\b|mistral-nemo|gemma", 12.0),
    "research": (r"instruct|chat|qwen|llama|gemma|mistral", 4.0),
    "general": (r"instruct|chat", 4.0),
}
SIZE_WEIGHT = {"coding": 4.0, "analysis": 4.0, "research": 4.0, "creative": 3.0, "general": 1.5}
LOADED_BONUS = 20.0
NATIVE_TOOLS_BONUS = 30.0
PREFERRED_BONUS = 100.0
# a size is a token of its own ("7b", "0.5B", "26B-A4B"), never part of a hash ("4b2798e1e4a0") or word ("A4B")
_SIZE = r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)\s*[bB](?![A-Za-z0-9])"


def params_billions(text: str | None) -> float | None:
    """Parameter count in billions from a key or params string: "qwen2.5-coder-7b" → 7, "26B-A4B" → 26."""
    if not text:
        return None
    sizes = [float(m) for m in re.findall(_SIZE, text)]
    return max(sizes) if sizes else None


@dataclass
class Needs:
    tools: bool = False
    schema: bool = False
    images: tuple = ()
    tokens: int = 0  # a generous estimate of the prompt's size, history included


@dataclass
class Candidate:
    model_id: str
    score: float = 0.0
    reasons: list = field(default_factory=list)
    loaded: bool = False
    kind: str = "lmstudio"  # "lmstudio" | "mlx" | "cloud"
    server: str = "local"  # the LM Studio server's base URL; "local" for native MLX
    key: str = ""  # the model's key: the same key on several servers makes them replicas
    record: object = None  # its recent record (store.reliability.Reliability), for `route --explain`


@dataclass
class Plan:
    task: str
    confidence: float
    classifier: str
    classifier_note: str | None
    scores: dict
    needs: Needs
    candidates: list  # usable local candidates, best first
    excluded: list  # [{"model", "reason"}]
    chain: list  # model ids in the order they will be tried (local, then configured cloud fallbacks)
    problems: list = field(default_factory=list)  # why a configured server offers nothing right now, one line each

    def why_empty(self) -> str:
        """One line for a plan with nothing to try."""
        reasons = "; ".join([*self.problems, *(f"{e['model']}: {e['reason']}" for e in self.excluded)])
        return f"the router has no model for this prompt: {reasons or 'no local models found (`llm models -q lmstudio`)'}"

    def to_json(self, explain: bool = False) -> dict:
        candidates = []
        for c in self.candidates:
            item = {"model": c.model_id, "server": c.server, "score": round(c.score, 2), "loaded": c.loaded, "kind": c.kind, "reasons": c.reasons}
            if explain:
                item["history"] = history_json(c.record)
            candidates.append(item)
        return {
            "task": self.task,
            "confidence": round(self.confidence, 4),
            "classifier": self.classifier,
            "classifier_note": self.classifier_note,
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
            "needs": asdict(self.needs) | {"images": list(self.needs.images)},
            "candidates": candidates,
            "excluded": self.excluded,
            "chosen": self.chain[0] if self.chain else None,
            "chain": self.chain,
            "problems": self.problems,
        }


def history_json(record) -> dict:
    """A candidate's record as `route --explain --json` shows it: what counted against it, what did not, and why."""
    from llm_lmstudio.store import reliability

    record = record or reliability.Reliability()
    return {
        "penalty": round(record.penalty, 2),
        "failures_weight": round(record.failures, 3),
        "successes_weight": round(record.successes, 3),
        "half_life_hours": reliability.HALF_LIFE_S / 3600,
        "counted": [{"kind": kind, "age_seconds": round(age), "source": source} for kind, age, source in record.counted],
        "not_counted": {kind: {"count": n, "why": reliability.WHY_NOT_COUNTED.get(kind, "not a fault of the model")}
                        for kind, n in record.ignored.items()},
    }


# ---------------------------------------------------------------- what the prompt needs


def _text_sent(prompt: llm.Prompt) -> int:
    """Characters of text the model is sent, each once. `prompt.messages` is the whole chain (llm 0.36): the system
    prompt, the history and this turn's prompt; reasoning is not sent back (core/messages.build_messages)."""
    from llm.parts import TextPart, ToolCallPart, ToolResultPart

    chars, systems = 0, set()
    for message in prompt.messages:
        for part in message.parts:
            if isinstance(part, TextPart):
                chars += len(part.text or "")
                if message.role == "system":
                    systems.add(part.text)
            elif isinstance(part, ToolResultPart):
                chars += len(part.output or "")
            elif isinstance(part, ToolCallPart):
                chars += len(part.name or "") + len(str(part.arguments or ""))
    if prompt.system and prompt.system not in systems:  # `llm -c -s NEW`: only in prompt.system
        chars += len(prompt.system)
    return chars


def needs_of(prompt: llm.Prompt) -> Needs:
    images = []
    for attachment in prompt.attachments:
        try:
            images.append(attachment.resolve_type())
        except Exception:  # noqa: BLE001 - an unreadable attachment is the model's error to report
            images.append("application/octet-stream")
    return Needs(
        tools=bool(prompt.tools),
        schema=bool(prompt.schema),
        images=tuple(images),
        tokens=int(_text_sent(prompt) / 3.5) + 1,  # tokenizers average ~4 characters a token: err towards "too big"
    )


# ---------------------------------------------------------------- classifying

def check_task(config: router_config.RouterConfig, task: str | None) -> None:
    if task and task not in config.task_names:
        raise llm.ModelError(f"unknown task {task!r}: choose one of {', '.join(config.task_names)} (or define it under 'tasks' in the router config)")


def check_fallbacks(config: router_config.RouterConfig) -> None:
    """A fallback llm does not know would only fail after every local model had: say so up front."""
    for model_id in config.fallback:
        try:
            llm.get_model(model_id)
        except llm.UnknownModelError:
            raise llm.ModelError(f"{config.path or 'lmstudio-router.yaml'}: 'fallback' names {model_id!r}, which llm does not know "
                                 "(see `llm models`)") from None


def classify(prompt: llm.Prompt, config: router_config.RouterConfig, forced_task: str | None = None):
    from llm_lmstudio.router import classifier_setup as classifier
    from llm_lmstudio.router import classification

    if forced_task:
        check_task(config, forced_task)
        return classification.TaskDecision(forced_task, 1.0, "forced", {forced_task: 1.0}), "task set with -o task"
    embedding, note = classifier.ready_classifier(config)
    keyword = classification.KeywordClassifier(extra_keywords=config.keywords or None)
    text = prompt.prompt or ""
    decision = classification.classify(text, prompt.system, prompt.attachments, embedding=embedding, keyword=keyword)
    if decision.fallback_reason:
        note = decision.fallback_reason
    if config.classifier_model and decision.confidence < config.classifier_threshold:
        unsure = f"the {decision.classifier} classifier was unsure ({decision.confidence:.2f} < {config.classifier_threshold})"
        try:
            task, cached = classifier.ask_model(config.classifier_model, classification.prompt_view(text, prompt.system), config.task_names, config.tasks)
        except Exception as exc:  # noqa: BLE001 - the tier only sharpens the decision; never fail a prompt over it
            note = f"{unsure}; {config.classifier_model} gave no usable answer ({exc}), kept the {decision.classifier} decision"
        else:
            note = f"{unsure}; {config.classifier_model} chose {task}" + (" (cached answer)" if cached else "")
            decision = classification.TaskDecision(task, decision.confidence, "model", decision.scores)
    return decision, note


# ---------------------------------------------------------------- candidates


def _capability(model, needs: Needs) -> str | None:
    """Why this model cannot take the prompt, or None."""
    if needs.tools and not model.supports_tools:
        return "cannot use tools"
    if needs.schema and not model.supports_schema:
        return "cannot follow a JSON schema"
    for mime in needs.images:
        if mime not in (model.attachment_types or ()):
            return f"cannot read {mime} attachments"
    entry = getattr(model, "entry", None)
    limit = getattr(entry, "loaded_context_length", None) or getattr(entry, "max_context_length", None)
    if limit and needs.tokens > limit:
        return f"prompt (~{needs.tokens} tokens) exceeds its context of {limit}"
    return None


def _matches(preference: str, model) -> bool:
    key = getattr(getattr(model, "entry", None), "key", None) or model.model_id.split("/", 1)[-1]
    preference = preference.lower()
    return preference in (model.model_id.lower(), key.lower()) or (
        "/" not in preference and preference in key.lower().split("/")[-1]
    )


def _is_loaded(model) -> bool:
    entry = getattr(model, "entry", None)
    if entry is not None:
        return bool(entry.loaded)
    is_loaded = getattr(model, "is_loaded", None)
    if callable(is_loaded):
        try:
            return bool(is_loaded())
        except Exception:  # noqa: BLE001
            return False
    return False


def server_of(model) -> str:
    server = getattr(model, "server", None)
    return getattr(server, "base_url", None) or "local"


def score(model, task: str, config: router_config.RouterConfig, history) -> Candidate:
    entry = getattr(model, "entry", None)
    key = (getattr(entry, "key", None) or model.model_id.split("/", 1)[-1]).lower()
    candidate = Candidate(model.model_id, kind="mlx" if model.model_id.startswith("mlx/") else "lmstudio", server=server_of(model), key=key)

    def add(points: float, reason: str):
        points = round(points, 1) + 0.0  # + 0.0: never "-0.0"
        candidate.score += points
        candidate.reasons.append(f"{reason} ({points:+.1f})")

    for position, preference in enumerate(config.prefer.get(task, [])):
        if _matches(preference, model):
            add(PREFERRED_BONUS - 10 * position, f"preferred for {task} (#{position + 1})")
            break
    affinity = TASK_AFFINITY.get(task)
    if affinity and re.search(affinity[0], key):  # re caches compiled patterns; no cost at import
        add(affinity[1], f"name suits {task}")
    if task == "analysis" and getattr(entry, "reasoning", False):
        add(10.0, "reasoning model")
    size = params_billions(getattr(entry, "params_string", None)) or params_billions(key)
    if size:
        add(SIZE_WEIGHT.get(task, 2.0) * math.sqrt(min(size, 70.0)), f"{size:g}B parameters")
    if getattr(entry, "vision", False):
        add(-3.0, "vision model (heavier)")
    candidate.loaded = _is_loaded(model)
    if candidate.loaded:
        add(LOADED_BONUS, "already loaded")
    stats = history.get(model.model_id) if history else None
    if stats is not None:
        candidate.record = stats.record
        if stats.record.penalty >= 0.05:
            add(-stats.record.penalty, stats.record.summary())
        if stats.output_tokens_per_second:
            add(min(stats.output_tokens_per_second, 100.0) / 10.0, f"{stats.output_tokens_per_second:.0f} tokens/s")
    return candidate


def _history(model_ids: list[str]):
    from llm_lmstudio.store import call_history as stats

    try:
        return stats.history(llm.user_dir() / "logs.db", model_ids, window=100)
    except Exception as exc:  # noqa: BLE001 - history only sharpens the ranking; never fail a prompt over it
        if settings.debug():
            import sys

            print(f"llm-lmstudio-mlx: router history unavailable: {exc}", file=sys.stderr)
        return {}


def local_chat_models() -> list:
    return [
        m for m in llm.get_models() if settings.is_local_model_id(m.model_id) and m.model_id != ROUTER_ID
    ]


def server_problems() -> list[str]:
    """One line per configured LM Studio server whose last model listing failed (unreachable, token refused...)."""
    from llm_lmstudio.lmstudio import catalog

    try:
        settings.check()
        servers = settings.servers()
    except settings.SettingsError as exc:
        return [str(exc)]
    found = []
    for server in servers:
        status = catalog.server_status(server.base_url) or {}
        if status.get("status") not in (None, "ok") and status.get("error"):
            found.append(str(status["error"]))
    return found


def make_plan(prompt: llm.Prompt, config: router_config.RouterConfig, forced_task: str | None = None) -> Plan:
    from llm_lmstudio.router import classifier_setup

    check_fallbacks(config)
    classifier_setup.check_model_kinds(config)
    decision, note = classify(prompt, config, forced_task)
    needs = needs_of(prompt)
    models = local_chat_models()
    history = _history([m.model_id for m in models])
    candidates, excluded = [], []
    for model in models:
        if any(_matches(pattern, model) for pattern in config.exclude):
            excluded.append({"model": model.model_id, "reason": "excluded in the router config"})
            continue
        reason = _capability(model, needs)
        if reason:
            excluded.append({"model": model.model_id, "reason": reason})
            continue
        candidate = score(model, decision.task, config, history)
        if needs.tools and getattr(getattr(model, "entry", None), "tool_use_kind", None) == "native":
            # Every LM Studio model takes tools; those LM Studio parses natively call them more reliably.
            candidate.score += NATIVE_TOOLS_BONUS
            candidate.reasons.append(f"native tool use (+{NATIVE_TOOLS_BONUS:.1f})")
        candidates.append(candidate)
    owner = next((TOOL_CALL_OWNERS[r.tool_call_id] for r in prompt.tool_results if r.tool_call_id in TOOL_CALL_OWNERS), None)
    for candidate in candidates:
        if candidate.model_id == owner:
            candidate.score += 1000.0
            candidate.reasons.append("made the tool call this turn answers (+1000.0)")
    candidates.sort(key=lambda c: (-c.score, c.model_id))
    chain = replica_chain(candidates, config.max_attempts)
    for cloud in config.fallback:
        if cloud not in chain:
            chain.append(cloud)
    return Plan(
        task=decision.task,
        confidence=decision.confidence,
        classifier=decision.classifier,
        classifier_note=note,
        scores=dict(decision.scores),
        needs=needs,
        candidates=candidates,
        excluded=excluded,
        chain=chain,
        problems=server_problems(),
    )


def replica_chain(candidates: list, max_models: int) -> list[str]:
    """The order to try models in: best model first, each followed by its replicas (the same key on
    other servers, loaded ones first as ranked), so a server that fails hands over to another server
    running the same model. `max_models` counts distinct models, not replicas."""
    groups: dict[str, list] = {}
    for candidate in candidates:  # already best first
        groups.setdefault(candidate.key if candidate.kind == "lmstudio" else candidate.model_id, []).append(candidate)
    return [c.model_id for group in list(groups.values())[:max_models] for c in group]
