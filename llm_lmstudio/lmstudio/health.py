"""`llm lmstudio status`: is each server up, does it want a token, does ours work, how many models.
HTTP only (through rest.Client), with short timeouts; it never opens an SDK session and never shows a token."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from llm_lmstudio.lmstudio import errors, rest
from llm_lmstudio.core import settings


@dataclass(kw_only=True)
class ServerStatus:
    base_url: str
    reachable: bool = False
    latency_ms: float | None = None
    requires_token: bool | None = None  # None: could not tell
    token_configured: bool = False
    token_source: str | None = None  # "llm keys set lmstudio", "$LM_API_TOKEN" or "$LMSTUDIO_API_TOKEN"
    token_accepted: bool | None = None  # None: no token configured, or could not tell
    downloaded: int | None = None
    loaded: int | None = None
    error: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


# LM Studio's own listings, newest first (/api/v1: 0.4; /api/v0: 0.3.6), then the OpenAI-compatible one every release has.
NATIVE_LISTINGS = ("/api/v1/models", "/api/v0/models")
OPENAI_LISTING = "/v1/models"


def count_models(body: Any) -> tuple[int | None, int | None]:
    if isinstance(body, dict) and isinstance(body.get("models"), list):  # /api/v1/models
        models = [m for m in body["models"] if isinstance(m, dict)]
        return len(models), sum(len(m["loaded_instances"]) for m in models if isinstance(m.get("loaded_instances"), list))
    if isinstance(body, dict) and isinstance(body.get("data"), list):  # /api/v0/models
        models = [m for m in body["data"] if isinstance(m, dict)]
        return len(models), sum(1 for m in models if m.get("state") == "loaded")
    return None, None


def server_status(target: settings.Server, token: str | None, token_source: str | None = None) -> ServerStatus:
    status = ServerStatus(base_url=target.base_url, token_configured=bool(token), token_source=token_source)
    # A health check must answer quickly even from a hung server: no inference-sized read timeout here.
    limits = settings.timeouts()
    quick = {"connect_timeout": limits.connect, "read_timeout": limits.connect + 3.0}
    client = rest.Client(target, token=token, **quick)
    started = time.perf_counter()
    try:
        is_lmstudio = client.greeting()
    except errors.LMStudioError as exc:
        status.error = str(exc)
        return status
    status.latency_ms = round((time.perf_counter() - started) * 1000, 1)
    status.reachable = True
    if not is_lmstudio:
        status.error = str(errors.not_lmstudio(target.base_url))
    body, answered, missing = None, None, []
    for path in NATIVE_LISTINGS + (OPENAI_LISTING,):
        if path == OPENAI_LISTING and len(missing) < len(NATIVE_LISTINGS):
            break  # a native listing failed for another reason: that failure is the news
        try:
            body, answered = client.get_json(path), path
            break
        except errors.AuthRequired as exc:
            status.requires_token = True
            status.token_accepted = False if token else None
            status.error = str(exc)
            break
        except errors.EndpointMissing as exc:
            missing.append(str(exc))  # an older LM Studio: /api/v1 arrived in 0.4, /api/v0 in 0.3.6
        except errors.LMStudioError as exc:
            status.error = status.error or str(exc)
            if isinstance(exc, (errors.TimedOut, errors.Unreachable)):
                break  # the other listing would wait out the same timeout again
    if body is None and missing and not status.error:
        status.error = missing[0]
    if body is not None:
        status.error = None if is_lmstudio else status.error
        if answered != OPENAI_LISTING:  # /v1/models lists loaded or downloaded models, depending on JIT: no counts
            status.downloaded, status.loaded = count_models(body)
        if token:
            status.token_accepted = True
            # Our token worked; ask once without it (the same listing) to learn whether the server insists on one.
            try:
                rest.Client(target, token=None, **quick).get_json(answered)
                status.requires_token = False
            except errors.AuthRequired:
                status.requires_token = True
            except errors.LMStudioError:
                status.requires_token = None
        else:
            status.requires_token = False
    return status
