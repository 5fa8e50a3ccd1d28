"""How much a model's recorded failures count against it now: only failures the model caused, each weighed by its
age (a half-life) against the model's successes, direct prompts included. Arithmetic over outcome rows; no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

# A failure counts half after six hours and a sixteenth after a day: a model that crashed this morning is tried
# again this afternoon if nothing better is at hand, and last week's failures say nothing about it today.
HALF_LIFE_S = 6 * 3600.0
HORIZON_S = 10 * HALF_LIFE_S  # older outcomes weigh under 1/1000 and are not read at all
MAX_PENALTY = 50.0  # ranking points for a model whose every recent attempt failed
PRIOR_SUCCESSES = 2.0  # one fresh failure alone costs a third of the maximum, not all of it

# Failures that say something about the model, as the plugin's errors name them: the answer cut off mid-way, a 5xx,
# a load that failed (or that LM Studio's guardrails refused), a timeout, a malformed answer, a native MLX failure.
MODEL_FAULTS = frozenset({"StreamCut", "ServerError", "ModelLoadFailed", "LoadRefused", "TimedOut", "BadResponse",
                          "NativeModelError"})
# Everything else says something about the set-up, the prompt or the server, never counted against the model.
WHY_NOT_COUNTED = {
    "AuthRequired": "the API token",
    "NotLoaded": "not loaded with JIT loading off",
    "PromptTooLong": "the prompt did not fit the loaded context",
    "Unreachable": "the server was down",
    "ModelNotFound": "not on the server",
    "UnknownModel": "not on the server",
    "RequestFailed": "the request was refused",
    "EndpointMissing": "the server lacks the endpoint",
}


def counts_against_model(kind: str | None) -> bool:
    return kind in MODEL_FAULTS


@dataclass(frozen=True)
class Reliability:
    """A model's recent record: weighted failures and successes, and what was left out and why."""

    failures: float = 0.0  # failures the model caused, each weighing 0.5 ** (age / HALF_LIFE_S)
    successes: float = 0.0  # answers, weighed the same way
    counted: tuple = ()  # (kind, age in seconds, "router" | "direct") of each counted failure, newest first
    ignored: dict = field(default_factory=dict)  # kind -> how many failures were not counted

    @property
    def penalty(self) -> float:
        """Ranking points taken off: MAX_PENALTY times the weighted share of failures (0.0 when there are none)."""
        if self.failures < 0.005:
            return 0.0
        return MAX_PENALTY * self.failures / (self.failures + self.successes + PRIOR_SUCCESSES)

    def summary(self) -> str:
        """One phrase for the ranking's reasons: '2 recent failures (TimedOut 1h ago, ...) vs 3.0 successes'."""
        shown = ", ".join(f"{kind} {age_text(age)} ago" for kind, age, _ in self.counted[:2])
        more = f", +{len(self.counted) - 2}" if len(self.counted) > 2 else ""
        noun = "failure" if len(self.counted) == 1 else "failures"
        return f"{len(self.counted)} recent {noun} ({shown}{more}) weighing {self.failures:.1f} vs {self.successes:.1f} successes"


def age_text(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 0):.0f}s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f}m"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def weigh(outcomes: Iterable[tuple]) -> Reliability:
    """outcomes: (ok, error kind, age in seconds, source) rows, any order."""
    failures = successes = 0.0
    counted, ignored = [], {}
    for ok, kind, age, source in outcomes:
        age = max(float(age or 0.0), 0.0)
        if age > HORIZON_S:
            continue
        weight = 0.5 ** (age / HALF_LIFE_S)
        if ok:
            successes += weight
        elif counts_against_model(kind):
            failures += weight
            counted.append((kind, age, source))
        else:
            ignored[kind or "unknown"] = ignored.get(kind or "unknown", 0) + 1
    counted.sort(key=lambda item: item[1])
    return Reliability(failures, successes, tuple(counted), dict(sorted(ignored.items())))
