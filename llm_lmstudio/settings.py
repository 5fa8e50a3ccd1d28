"""Every setting the plugin reads: server addresses, the API token, timeouts, file locations.
Reads environment, llm's key store and small files only; never touches the network."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import llm

DEFAULT_BASE_URL = "http://localhost:1234"
KEY_ALIAS = "lmstudio"
TOKEN_ENV = "LM_API_TOKEN"


class SettingsError(ValueError):
    """A setting is present but unusable; the message names it and says how to fix it."""


@dataclass(frozen=True)
class Server:
    """One configured LM Studio (or OpenAI-compatible) server."""

    base_url: str  # scheme://host:port, no trailing slash, no /v1
    prefix: str  # model-id prefix: "lmstudio" for the first server, "lmstudio@host:port" for others

    @property
    def host_port(self) -> str:
        parts = urlsplit(self.base_url)
        return parts.netloc

    def model_id(self, key: str) -> str:
        return f"{self.prefix}/{key}"


def normalize_base_url(value: str) -> str:
    """Accept `host:port`, `host`, or an http(s) URL (with or without /v1); return scheme://host:port."""
    raw = value.strip()
    if not raw:
        raise SettingsError("LMSTUDIO_BASE_URL is empty: set it to host:port or http://host:port")
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https"):
        raise SettingsError(
            f"LMSTUDIO_BASE_URL {value.strip()!r} uses the scheme {parts.scheme!r}: only http and https are allowed"
        )
    if not parts.hostname:
        raise SettingsError(f"LMSTUDIO_BASE_URL {value.strip()!r} has no host name")
    try:
        port = parts.port
    except ValueError:
        raise SettingsError(f"LMSTUDIO_BASE_URL {value.strip()!r} has an invalid port") from None
    if port is None:
        port = 1234 if parts.scheme == "http" else 443
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


def servers() -> list[Server]:
    """The configured servers, in order. The first one owns the plain `lmstudio/` prefix."""
    raw = os.environ.get("LMSTUDIO_BASE_URL") or DEFAULT_BASE_URL
    urls: list[str] = []
    for item in raw.split(","):
        if item.strip():
            url = normalize_base_url(item)
            if url not in urls:
                urls.append(url)
    if not urls:
        urls = [DEFAULT_BASE_URL]
    result = []
    for index, url in enumerate(urls):
        prefix = "lmstudio" if index == 0 else f"lmstudio@{urlsplit(url).netloc}"
        result.append(Server(base_url=url, prefix=prefix))
    return result


def api_token() -> str | None:
    """The LM Studio API token: `llm keys set lmstudio` wins over $LM_API_TOKEN."""
    token = llm.get_key(alias=KEY_ALIAS, env=TOKEN_ENV)
    return token or None


def _float_env(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        result = float(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not a number of seconds") from None
    if result <= 0:
        raise SettingsError(f"{name}={value!r} must be greater than zero")
    return result


@dataclass(frozen=True)
class Timeouts:
    connect: float  # establishing a TCP connection
    read: float  # waiting between bytes of a response (inference can be slow to start)
    discovery_budget: float  # total wall-clock for refreshing the model list during start-up


def timeouts() -> Timeouts:
    return Timeouts(
        connect=_float_env("LMSTUDIO_CONNECT_TIMEOUT", 2.0),
        read=_float_env("LMSTUDIO_TIMEOUT", 300.0),
        discovery_budget=_float_env("LMSTUDIO_DISCOVERY_BUDGET", 0.25),
    )


def cache_ttl() -> float:
    """How long the on-disk model list counts as fresh, in seconds."""
    return _float_env("LMSTUDIO_CACHE_TTL", 30.0)


def plugin_dir() -> Path:
    """Where the plugin keeps its own files, inside llm's user directory."""
    path = llm.user_dir() / "lmstudio"
    path.mkdir(parents=True, exist_ok=True)
    return path


def debug() -> bool:
    return bool(os.environ.get("LLM_LMSTUDIO_DEBUG"))


def lmstudio_home() -> Path:
    """LM Studio's own home folder (`~/.lmstudio` unless $LMSTUDIO_HOME says otherwise)."""
    override = os.environ.get("LMSTUDIO_HOME")
    if override:
        return Path(override).expanduser()
    pointer = Path.home() / ".lmstudio-home-pointer"
    if pointer.is_file():
        try:
            text = pointer.read_text().strip()
        except OSError:
            text = ""
        if text:
            return Path(text).expanduser()
    return Path.home() / ".lmstudio"


def lmstudio_models_dir() -> Path:
    """The folder LM Studio downloads models into, honouring its configured location."""
    override = os.environ.get("LMSTUDIO_MODELS_DIR")
    if override:
        return Path(override).expanduser()
    home = lmstudio_home()
    settings_file = home / "settings.json"
    if settings_file.is_file():
        try:
            data = json.loads(settings_file.read_text())
        except (OSError, ValueError):
            data = {}
        folder = data.get("downloadsFolder") if isinstance(data, dict) else None
        if isinstance(folder, str) and folder:
            return Path(folder).expanduser()
    return home / "models"
