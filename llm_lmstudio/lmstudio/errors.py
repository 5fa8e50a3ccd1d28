"""LM Studio's failures as the plugin's own exceptions: every error shape a server sends (tests/recorded/SOURCES.md)
and every transport failure, mapped to one line that says what happened and what to do. Never lets a token through."""

from __future__ import annotations

import json
from typing import Any

START_HINT = "is the server running? Start it with `lms server start` or from the LM Studio app"


class LMStudioError(Exception):
    """A failure talking to LM Studio. `str()` is one line that says what happened and what to do."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class Unreachable(LMStudioError):
    """Nothing answered at the address (refused, no route, unknown host)."""


class TimedOut(LMStudioError):
    """The server accepted the connection but did not answer in time."""


class AuthRequired(LMStudioError):
    """The server wants an API token that we did not send, or rejected the one we sent."""


class ModelNotFound(LMStudioError):
    """The server does not know the model, or cannot load it for this kind of request."""


class NotLoaded(ModelNotFound):
    """The server knows the model but has nothing loaded to answer with, and will not load it itself: LM Studio's
    "No models loaded" answer when JIT loading is off (lmstudio-bug-tracker#1730)."""


class ModelLoadFailed(LMStudioError):
    """The server knows the model but failed to load it."""


class RequestFailed(LMStudioError):
    """Any other 4xx/5xx answer; the message carries LM Studio's own words."""


class ServerError(RequestFailed):
    """A 5xx answer: the server (or the model running in it) failed on a request it accepted."""


class PromptTooLong(RequestFailed):
    """The prompt does not fit the context the model is loaded with (lmstudio-bug-tracker#237, #546, #1251)."""


class BadResponse(LMStudioError):
    """The server answered with something that is not the JSON we expected."""


class StreamCut(LMStudioError):
    """A streamed answer stopped before it was complete."""


class BadPrompt(LMStudioError):
    """The request cannot be sent as it stands (text that is not UTF-8); nothing reached the server."""


class ResponseNotFound(LMStudioError):
    """The server no longer knows the `previous_response_id` of a stateful turn (restarted, or another server):
    OpenAI's `previous_response_not_found` code, which LM Studio also sends (lmstudio-bug-tracker#1188)."""


class EndpointMissing(LMStudioError):
    """The server does not serve this route: a 404/405 without a model error, or LM Studio's
    200 `{"error": "Unexpected endpoint or method. (POST /x)"}` (lmstudio-bug-tracker#618)."""


# LM Studio 0.4 echoes the first ten characters of a malformed token ("Malformed LM Studio API token
# provided: sk-bogus-E**************", see tests/recorded/SOURCES.md); any prefix this long is the token's.
_SHORTEST_ECHO = 6


def redact(text: str, token: str | None) -> str:
    """Remove the token, and any echoed start of it, from text that might be shown or logged."""
    if not token:
        return text
    for length in range(len(token), _SHORTEST_ECHO - 1, -1):
        if token[:length] in text:
            text = text.replace(token[:length], "[redacted]")
    return text


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_message_from_body(body: Any) -> tuple[str | None, str | None]:
    """Return (message, code) from LM Studio's error shapes: {"error": {...}}, {"error": "..."} or text."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, str):
            return error, None
        if isinstance(error, dict):
            message = error.get("message")
            # LM Studio's /api/v1 errors name their kind in `type` and have no `code` ({"type": "model_not_found"},
            # "not_implemented": lmstudio-bug-tracker#1462, #1438); OpenAI-shaped ones carry `code`, null or not.
            code = error.get("code") if "code" in error else error.get("type")
            return (str(message) if message is not None else None), (str(code) if code is not None else None)
        return None, None
    if isinstance(body, str) and body.strip():
        return body.strip(), None
    return None, None


def parse_body(raw: bytes) -> Any:
    """An answer's body as JSON, or as text when it is not JSON."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def auth_error(base_url: str, *, token_sent: bool, status: int | None = None, code: str | None = None,
               malformed: bool = False) -> AuthRequired:
    """The one wording for a refused or missing token. It never quotes the server, which may echo
    the start of the token back."""
    if not token_sent:
        message = f"LM Studio at {base_url} requires an API token: run `llm keys set lmstudio` or set $LM_API_TOKEN"
    else:
        how = "rejected the API token as malformed" if malformed else "rejected the API token"
        message = (
            f"LM Studio at {base_url} {how}: check it with `llm keys set lmstudio` (or $LM_API_TOKEN) "
            "against Developer → Server Settings → Manage Tokens"
        )
    return AuthRequired(message, status=status, code=code)


def _template_error(message: str, model: str | None) -> str:
    # LM Studio's jinja failures run to several paragraphs of advice; keep the cause and one instruction.
    cause = message.split("This is usually an issue", 1)[0].strip().rstrip(".")
    return (
        f"LM Studio could not apply the prompt template of {model or 'the model'} ({one_line(cause, 200)}): "
        "use an lmstudio-community build of the model, or fix the template in LM Studio "
        "(My Models > model settings > Prompt Template)"
    )


def error_for_status(
    status: int | None, body: Any, *, base_url: str, token: str | None, model: str | None = None
) -> LMStudioError:
    """Map an error answer to the exception (and one-line message) a user should see.

    `status` is None for an error that arrived inside a 200 stream. Shapes are LM Studio's: 400 for an
    unknown model, "no models loaded" and a failed JIT load (404 before 0.3.6), 200 for an unknown route,
    401 for tokens; see tests/recorded/SOURCES.md."""
    message, code = error_message_from_body(body)
    raw = redact(message or "", token)
    message = one_line(raw)
    lowered = message.lower()
    if status == 401 or code == "invalid_api_key":
        return auth_error(base_url, token_sent=bool(token), status=status, code=code, malformed="malformed" in lowered)
    if code == "previous_response_not_found" or "previous_response_not_found" in lowered or (
        "not found" in lowered and ("previous response" in lowered or "prediction history node" in lowered)
    ):
        # The code is OpenAI's; LM Studio 0.3.31 words it "Prediction history node with id '…' not found while
        # attempting to build chat history chain" (lmstudio-bug-tracker#1188). Checked before the 404 rule below.
        return ResponseNotFound(f"LM Studio at {base_url} no longer knows the previous response", status=status, code=code)
    if "unexpected endpoint or method" in lowered:
        return EndpointMissing(f"LM Studio at {base_url}: {message}", status=status, code=code)
    if "jinja template" in lowered:
        return RequestFailed(_template_error(raw, model), status=status, code=code)
    if "failed to load" in lowered or "error loading" in lowered:
        if "not embedding" in lowered or "not an llm" in lowered:
            return ModelNotFound(f"LM Studio at {base_url}: {message}", status=status, code=code)
        return ModelLoadFailed(f"LM Studio could not load {model or 'the model'}: {message}", status=status, code=code)
    overflow = _context_overflow(message, model)
    if overflow:
        return PromptTooLong(overflow, status=status, code=code)
    if "no models loaded" in lowered:
        what = f"{model!r} is not loaded" if model else "nothing is loaded"
        return NotLoaded(f"LM Studio at {base_url}: No models loaded ({what} and JIT loading is off): load it with "
                         f"`llm lmstudio load {model or 'MODEL'}`", status=status, code=code)
    if code == "model_not_found" or "invalid model identifier" in lowered:
        detail = message or f"model {model!r} not found"
        return ModelNotFound(f"LM Studio at {base_url}: {detail}", status=status, code=code)
    if status in (404, 405):
        # Not LM Studio's model errors (those say so above): this server has no such route.
        return EndpointMissing(f"{base_url} does not serve this endpoint (HTTP {status})", status=status, code=code)
    if status is None:
        return RequestFailed(f"LM Studio at {base_url} stopped the answer: {message or 'unknown error'}", code=code)
    kind = "server error" if status >= 500 else "request rejected"
    detail = message or f"HTTP {status}"
    return (ServerError if status >= 500 else RequestFailed)(f"LM Studio at {base_url}: {kind} (HTTP {status}): {detail}", status=status, code=code)


# LM Studio's words for a prompt longer than the loaded context: llama.cpp's "Trying to keep the first 15857 tokens
# when context the overflows. However, the model is loaded with context length of only 4096 tokens, which is not
# enough..." (lmstudio-bug-tracker#237, #546), MLX's "Reached context length of 4096 tokens with model ... that does
# not currently support mid-generation context overflow" (#1251), "Cannot truncate prompt with n_keep (15028) >= n_ctx
# (7424)" (anomalyco/opencode#11141), and mlx-engine's "The number of tokens to keep from the initial prompt (N) is
# greater than the context length (M)".
_OVERFLOW = (
    (r"keep the first (\d+) tokens when context the overflows.*context length of only (\d+)", True),
    (r"number of tokens to keep from the initial prompt \((\d+)\) is greater than the context length \((\d+)\)", True),
    (r"n_keep \((\d+)\) >= n_ctx \((\d+)\)", True),
    (r"reached context length of (\d+) tokens", False),
)


def _context_overflow(message: str, model: str | None) -> str | None:
    """The one line for a prompt that does not fit the loaded context, or None when `message` is not that."""
    import re

    for pattern, both in _OVERFLOW:
        found = re.search(pattern, message, re.IGNORECASE | re.DOTALL)
        if found:
            size = f"~{found.group(1)} tokens, " if both else ""
            context = found.group(2) if both else found.group(1)
            name = model or "the model"
            return (f"the prompt ({size}history included) does not fit the context {name} is loaded with ({context} tokens): "
                    f"shorten it, or load the model with a larger context (`llm lmstudio load {name} --context-length N`)")
    return None


def unreachable(base_url: str) -> Unreachable:
    return Unreachable(f"LM Studio is not reachable at {base_url} — {START_HINT}")


def not_lmstudio(base_url: str, detail: str = "no /lmstudio-greeting") -> BadResponse:
    """The one verdict (status, ps, the model list) for an HTTP server that answers but is not LM Studio."""
    return BadResponse(f"{base_url} answered, but it is not LM Studio ({detail})")


def timed_out(base_url: str, seconds: float, *, setting: bool = True) -> TimedOut:
    """`setting`: the wait was LMSTUDIO_TIMEOUT's, so raising it can help (not for fixed, short waits)."""
    hint = " (raise LMSTUDIO_TIMEOUT if the model is slow to load)" if setting else ""
    return TimedOut(f"LM Studio at {base_url} accepted the connection but did not answer within {round(seconds, 2):g} s{hint}")


def hung(base_url: str, waited: float) -> TimedOut:
    """A request and the model listing probed beside it both went unanswered (see openai_client.PROBE_AFTER)."""
    return TimedOut(
        f"LM Studio at {base_url} accepted the connection but did not answer within {waited:.0f} s, "
        "nor did its model listing: it looks hung (restart it: `lms server stop`, then `lms server start`)"
    )


def malformed_json(base_url: str, path: str, text: str, token: str | None) -> BadResponse:
    return BadResponse(f"LM Studio at {base_url} answered {path} with malformed JSON: {one_line(redact(text, token), 120)}")


def check_body_error(data: Any, *, base_url: str, token: str | None, model: str | None) -> None:
    # LM Studio sometimes answers 200 with an error body ("Returning 200 anyway"): always look.
    # A /v1/responses answer always carries `"error": null` beside its `output`.
    if isinstance(data, dict) and data.get("error") is not None and not any(k in data for k in ("choices", "data", "models", "output")):
        raise error_for_status(200, data, base_url=base_url, token=token, model=model)


def _kinds(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def transport_error(exc: BaseException, *, base_url: str, token: str | None, read_timeout: float,
                    setting: bool = True) -> LMStudioError:
    """A failure below HTTP, from httpx (the native REST) or httpx2 (under the openai client), which name their
    exceptions alike: nothing at the address, no answer in time, or a connection closed mid-answer."""
    if isinstance(exc, LMStudioError):
        return exc
    kinds = _kinds(exc)
    if kinds & {"ConnectTimeout", "ConnectError"}:
        return unreachable(base_url)
    if kinds & {"ReadTimeout", "WriteTimeout", "PoolTimeout"}:
        return timed_out(base_url, read_timeout, setting=setting)
    if kinds & {"RemoteProtocolError", "ReadError"}:
        return StreamCut(f"LM Studio at {base_url} closed the connection before the answer was complete")
    detail = str(exc) if "HTTPError" in kinds else repr(exc)
    return RequestFailed(f"LM Studio at {base_url}: {one_line(redact(detail, token))}")


def json_body(payload: dict) -> bytes:
    """The request body as UTF-8 JSON (compact, as httpx and openai encode it), refusing text that is not UTF-8 in one
    line: the encoder's own error message holds the whole body, and with it the prompt."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        # Bytes that were not UTF-8 on stdin arrive as lone surrogates U+DC80..U+DCFF (Python's surrogateescape).
        what = f"the byte 0x{code - 0xDC00:02X}" if 0xDC80 <= code <= 0xDCFF else f"the lone surrogate U+{code:04X}"
        raise BadPrompt(
            f"the prompt is not valid UTF-8 text (it contains {what}): convert it first (e.g. `iconv -t UTF-8`), "
            "or attach a binary file with -a"
        ) from None
