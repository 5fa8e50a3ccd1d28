"""Per-model performance figures for `llm lmstudio stats`: answers, failures by kind, time to first token, throughput,
tokens, and latency over time, read from stats.py's copy of llm's log and its attempts; never writes llm's logs.db."""

from __future__ import annotations

import math
import sqlite3
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from llm_lmstudio.store import call_history, log_mirror

TIMELINE_BUCKETS = 24


@dataclass
class ModelMetrics:
    model: str
    answers: int = 0  # whole answers logged by llm (cut-off ones are failures instead)
    cached: int = 0  # of those, served from the response cache (no latency, no tokens spent)
    routed: int = 0  # of those, chosen by the router
    failures: dict = field(default_factory=dict)  # error kind -> count, from recorded attempts and cut-off answers
    ttft_ms_p50: float | None = None
    ttft_ms_p95: float | None = None
    duration_ms_p50: float | None = None
    duration_ms_p95: float | None = None
    tokens_per_second_p50: float | None = None  # output tokens / whole duration, per answer
    input_tokens: int = 0
    output_tokens: int = 0
    ttft_ms_sum: float = 0.0
    ttft_count: int = 0
    timeline: list = field(default_factory=list)  # median answer duration (ms) per slice of the period; None: no answer

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    since: str | None
    until: str
    models: list  # [ModelMetrics], busiest first

    def to_json(self) -> dict:
        return {"since": self.since, "until": self.until, "models": [m.to_json() for m in self.models]}


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default): percentile([1, 2, 3, 4], 0.5) == 2.5."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def _parse_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def report(
    db_path: str | Path,
    *,
    since_seconds: float | None = None,
    model: str | None = None,
    store_path: str | Path | None = None,
    now: datetime | None = None,
    buckets: int = TIMELINE_BUCKETS,
    timeout: float = 2.0,
) -> Report:
    """Figures per model that answered through this plugin (LM Studio, native MLX, or chosen by the router) over
    the last `since_seconds` (everything the copy holds when None). Brings the copy of llm's log up to date first."""
    now = now or datetime.now(timezone.utc)
    since = datetime.fromtimestamp(now.timestamp() - since_seconds, timezone.utc) if since_seconds is not None else None
    store = call_history._open_store(Path(store_path) if store_path else call_history.default_store_path(), timeout, check=True)
    try:
        log_known = log_mirror.refresh(store, Path(db_path), timeout, log_mirror.HORIZON)
        where, params = _where(store, since, model)
        local = " or ".join(f"model like '{pattern}'" for pattern in log_mirror.LOCAL_PATTERNS)
        ours = f"{where} and ({local} or flags & {log_mirror.ROUTED})"
        start = since
        if start is None and log_known:
            first = store.execute(f"select min(datetime_utc) from lmstudio_turns where {ours}", params).fetchone()[0]
            start = _parse_time(first) if first else None
        start = start or now
        span_days = max((now - start).total_seconds(), 1.0) / 86400
        rows = store.execute(
            "select model, flags, duration_ms, output_tokens, input_tokens, ttft_ms,"
            f" cast((julianday(datetime_utc) - julianday(?)) / ? * {buckets} as integer) from lmstudio_turns where {ours}",
            (start.isoformat(), span_days, *params),
        ).fetchall() if log_known else []
        failures = _failures(store, since, model)
    finally:
        store.close()

    found: dict[str, ModelMetrics] = {}
    produced: dict[str, list[tuple]] = {}
    for row in rows:
        name, flags = row[0], row[1]
        metrics = found.get(name)
        if metrics is None:
            metrics = found[name] = ModelMetrics(name)
        if flags & log_mirror.CUT:
            continue  # not an answer; its failure was recorded as an attempt (StreamCut), counted below
        metrics.answers += 1
        metrics.routed += bool(flags & log_mirror.ROUTED)
        if flags & log_mirror.CACHED:
            metrics.cached += 1
        else:  # only answers a model actually produced say how fast it is
            produced.setdefault(name, []).append(row[2:])
    for name, kind, count in failures:
        metrics = found.setdefault(name, ModelMetrics(name))
        metrics.failures[kind or "unknown"] = metrics.failures.get(kind or "unknown", 0) + count
    for name, rows in produced.items():
        metrics = found[name]
        durations = [float(r[0]) for r in rows if r[0] is not None and r[0] > 0]
        ttfts = [float(r[3]) for r in rows if r[3] is not None and r[3] >= 0]
        rates = [r[1] / (r[0] / 1000.0) for r in rows if r[0] and r[0] > 0 and r[1]]
        metrics.duration_ms_p50, metrics.duration_ms_p95 = percentile(durations, 0.5), percentile(durations, 0.95)
        metrics.ttft_ms_p50, metrics.ttft_ms_p95 = percentile(ttfts, 0.5), percentile(ttfts, 0.95)
        metrics.ttft_ms_sum, metrics.ttft_count = sum(ttfts), len(ttfts)
        metrics.tokens_per_second_p50 = percentile(rates, 0.5)
        metrics.input_tokens = sum(r[2] or 0 for r in rows)
        metrics.output_tokens = sum(r[1] or 0 for r in rows)
        slices: list[list[float]] = [[] for _ in range(buckets)]
        for r in rows:
            if r[4] is not None and r[0] is not None and r[0] > 0:
                slices[min(max(r[4], 0), buckets - 1)].append(float(r[0]))
        metrics.timeline = [statistics.median(s) if s else None for s in slices]
    for metrics in found.values():
        metrics.failures = dict(sorted(metrics.failures.items()))
    models = sorted(found.values(), key=lambda m: (-m.answers, -sum(m.failures.values()), m.model))
    return Report(since=since.isoformat() if since else None, until=now.isoformat(), models=models)


def _where(store: sqlite3.Connection, since: datetime | None, model: str | None) -> tuple[str, list]:
    """Filter on lmstudio_turns. The copy is in llm's logging order, which is time order unless the clock went
    back, so a period is a range of rowids read in sequence (far quicker than an index probe per row)."""
    clauses, params = [], []
    if since is not None:
        first = store.execute(
            "select turn_rowid from lmstudio_turns where datetime_utc >= ? order by datetime_utc limit 1", (since.isoformat(),)
        ).fetchone()
        clauses.append("turn_rowid >= ? and +datetime_utc >= ?")  # +: test the time on the rows, not via its index
        params += [first[0] if first else -1, since.isoformat()]
    if model is not None:
        clauses.append("model = ?")
        params.append(model)
    return (" and ".join(clauses) or "1"), params


def _failures(store: sqlite3.Connection, since: datetime | None, model: str | None) -> list[tuple]:
    """Failed attempts by model and kind: the router's attempts and prompts sent straight to a model."""
    clauses, params = ["ok = 0"], []
    if since is not None:
        clauses.append("datetime_utc >= ?")
        params.append(since.isoformat())
    if model is not None:
        clauses.append("model = ?")
        params.append(model)
    where = " and ".join(clauses)
    return store.execute(
        f"select model, error_kind, count(*) from (select model, error_kind from lmstudio_attempts where {where}"
        f" union all select model, error_kind from lmstudio_calls where {where}) group by model, error_kind",
        params * 2,
    ).fetchall()


# ---------------------------------------------------------------- Prometheus text exposition format

PREFIX = "llm_lmstudio"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def prometheus(data: Report) -> str:
    """The report as Prometheus text exposition (version 0.0.4), for node_exporter's textfile collector."""
    families: list[tuple[str, str, str, list[tuple[dict, float]]]] = []

    def family(name, kind, help_text, samples):
        families.append((f"{PREFIX}_{name}", kind, help_text, samples))

    models = data.models
    family("answers_total", "counter", "Whole answers logged by llm, per model that answered", [({"model": m.model}, m.answers) for m in models])
    family("cached_answers_total", "counter", "Answers served from the response cache", [({"model": m.model}, m.cached) for m in models])
    family("routed_answers_total", "counter", "Answers whose model the router chose", [({"model": m.model}, m.routed) for m in models])
    failures = [({"model": m.model, "kind": k}, n) for m in models for k, n in m.failures.items()]
    family("failures_total", "counter", "Failed attempts by kind (Unreachable, TimedOut, StreamCut, ...)", failures)
    tokens = [({"model": m.model, "direction": d}, n) for m in models for d, n in (("input", m.input_tokens), ("output", m.output_tokens))]
    family("tokens_total", "counter", "Tokens of answers a model produced (cached answers excluded)", tokens)
    ttft = []
    for m in models:
        if m.ttft_count:
            ttft += [({"model": m.model, "quantile": "0.5"}, m.ttft_ms_p50 / 1000), ({"model": m.model, "quantile": "0.95"}, m.ttft_ms_p95 / 1000)]
            ttft += [({"model": m.model, "__suffix": "_sum"}, m.ttft_ms_sum / 1000), ({"model": m.model, "__suffix": "_count"}, m.ttft_count)]
    family("time_to_first_token_seconds", "summary", "Time from the request to the first token", ttft)
    durations = [
        ({"model": m.model, "quantile": q}, v / 1000)
        for m in models
        for q, v in (("0.5", m.duration_ms_p50), ("0.95", m.duration_ms_p95))
        if v is not None
    ]
    family("answer_duration_seconds", "gauge", "Whole-answer duration at a quantile", durations)
    rates = [({"model": m.model}, m.tokens_per_second_p50) for m in models if m.tokens_per_second_p50 is not None]
    family("output_tokens_per_second", "gauge", "Median output tokens per second of whole answers", rates)

    lines = []
    for name, kind, help_text, samples in families:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            labels = dict(labels)
            sample_name = name + labels.pop("__suffix", "")
            rendered = ",".join(f'{key}="{_label(str(val))}"' for key, val in labels.items())
            lines.append(f"{sample_name}{{{rendered}}} {_number(value)}")
    return "\n".join(lines) + "\n"
