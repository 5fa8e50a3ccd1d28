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


def _seen(exc: errors.LMStudioError) -> str:
    """What a server that is not LM Studio answered, in a few words."""
    return f"HTTP {exc.status}" if exc.status else "an answer that is not LM Studio's JSON"


def _greeting(client: rest.Client) -> str | None:
    """None when the server says it is LM Studio, otherwise what it answered instead (rest.Client.greeting's test).
    Unreachable, hung and token failures propagate."""
    try:
        body = client.get_json("/lmstudio-greeting")
    except (errors.EndpointMissing, errors.ModelNotFound, errors.RequestFailed, errors.BadResponse) as exc:
        return _seen(exc)
    return None if isinstance(body, dict) and body.get("lmstudio") is True else "JSON without LM Studio's greeting"


def server_status(target: settings.Server, token: str | None, token_source: str | None = None) -> ServerStatus:
    status = ServerStatus(base_url=target.base_url, token_configured=bool(token), token_source=token_source)
    # A health check must answer quickly even from a hung server: no inference-sized read timeout here.
    limits = settings.timeouts()
    quick = {"connect_timeout": limits.connect, "read_timeout": limits.connect + 3.0}
    client = rest.Client(target, token=token, **quick)
    started = time.perf_counter()
    try:
        greeting_seen = _greeting(client)
    except errors.LMStudioError as exc:
        status.error = str(exc)
        return status
    status.latency_ms = round((time.perf_counter() - started) * 1000, 1)
    status.reachable = True
    is_lmstudio = greeting_seen is None
    if not is_lmstudio:
        status.error = str(errors.not_lmstudio(target.base_url))
    body, answered, missing, listing_seen = None, None, [], None
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
            listing_seen = listing_seen or _seen(exc)
            missing.append(str(exc))  # an older LM Studio: /api/v1 arrived in 0.4, /api/v0 in 0.3.6
        except errors.LMStudioError as exc:
            listing_seen = listing_seen or _seen(exc)
            status.error = status.error or str(exc)
            if isinstance(exc, (errors.TimedOut, errors.Unreachable)):
                break  # the other listing would wait out the same timeout again
    if body is None and not is_lmstudio and not status.requires_token and listing_seen:
        # Neither LM Studio's greeting nor a model listing: nothing here can answer a prompt (another web app on the port).
        seen = f"{greeting_seen} for /lmstudio-greeting and " + (
            "for its model listings" if listing_seen == greeting_seen else f"{listing_seen} for its model listings")
        status.reachable = False
        status.error = f"{errors.not_lmstudio(target.base_url, seen)}: is LM Studio's server on another port?"
        return status
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
