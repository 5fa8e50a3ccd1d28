"""LM Studio's native REST API (/api/v0, /api/v1, /lmstudio-greeting) over httpx: JSON in, JSON out, LM Studio's
errors as errors.py's. Never used for the OpenAI-compatible endpoints (openai_client.py); it never prints a token."""

from __future__ import annotations

from typing import Any, Iterator

from llm_lmstudio.core import settings
from llm_lmstudio.lmstudio import errors
from llm_lmstudio.lmstudio.quick_get import auth_headers
from llm_lmstudio.lmstudio.watch import Watch

_CLIENTS: dict[tuple, Any] = {}


class Client:
    """One server's native REST API. The underlying httpx client is shared per process and server, for keep-alive."""

    def __init__(self, server: settings.Server, *, token: str | None = None, connect_timeout: float | None = None,
                 read_timeout: float | None = None):
        limits = settings.timeouts()
        self.server = server
        self.base_url = server.base_url
        self.token = token
        self.connect_timeout = connect_timeout if connect_timeout is not None else limits.connect
        self.read_timeout = read_timeout if read_timeout is not None else limits.read
        self._read_timeout_is_setting = read_timeout is None

    def _http(self):
        key = (self.base_url, self.token, self.connect_timeout, self.read_timeout)
        client = _CLIENTS.get(key)
        if client is None:
            import httpx

            client = httpx.Client(
                base_url=self.base_url,
                headers=auth_headers(self.token),
                timeout=httpx.Timeout(self.read_timeout, connect=self.connect_timeout),
                follow_redirects=False,
                # No TLS is ever used for a plain-http server: skip loading a CA bundle (~80 ms).
                **({"verify": False} if self.base_url.startswith("http://") else {}),
            )
            _CLIENTS[key] = client
        return client

    def _failed(self, exc: Exception) -> errors.LMStudioError:
        return errors.transport_error(exc, base_url=self.base_url, token=self.token, read_timeout=self.read_timeout,
                                      setting=self._read_timeout_is_setting)

    def _decode(self, response, model: str | None = None) -> Any:
        body = errors.parse_body(response.content)
        if response.status_code >= 400:
            raise errors.error_for_status(response.status_code, body, base_url=self.base_url, token=self.token, model=model)
        if isinstance(body, str):
            raise errors.malformed_json(self.base_url, response.request.url.path, body, self.token)
        errors.check_body_error(body, base_url=self.base_url, token=self.token, model=model)
        return body

    def get_json(self, path: str, *, model: str | None = None) -> Any:
        try:
            return self._decode(self._http().get(path), model)
        except Exception as exc:
            raise self._failed(exc) from None

    def post_json(self, path: str, payload: dict) -> Any:
        """POST, watched for a hung server (watch.py): a load can take minutes, a hung server should not."""

        def answer() -> Iterator[Any]:
            response = self._http().post(path, content=errors.json_body(payload), headers={"Content-Type": "application/json"})
            yield self._decode(response, payload.get("model"))

        watch = Watch(self.server, self.token, self.connect_timeout, self.read_timeout)
        try:
            return next(watch.first(answer()))
        except Exception as exc:
            raise self._failed(exc) from None

    def greeting(self) -> bool:
        """True when the server says it is LM Studio; False for any other HTTP server."""
        try:
            body = self.get_json("/lmstudio-greeting")
        except (errors.EndpointMissing, errors.ModelNotFound, errors.RequestFailed, errors.BadResponse):
            return False
        return isinstance(body, dict) and body.get("lmstudio") is True
