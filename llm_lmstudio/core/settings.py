"""Every setting the plugin reads: server addresses, the API token, timeouts, file locations.
Reads environment, llm's key store and small files only; never touches the network."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import llm

DEFAULT_BASE_URL = "http://localhost:1234"
KEY_ALIAS = "lmstudio"
TOKEN_ENV = "LM_API_TOKEN"
# LM Studio's docs name $LM_API_TOKEN; the lmstudio SDK (1.6+) and lmstudio-js read $LMSTUDIO_API_TOKEN.
TOKEN_ENVS = (TOKEN_ENV, "LMSTUDIO_API_TOKEN")


class SettingsError(ValueError):
    """A setting is present but unusable; the message names it and says how to fix it, in one shape for every
    variable: `NAME='value' is not ...: set it to ..., or unset it` (see shown())."""


def shown(name: str, value: str) -> str:
    """How an unusable value is quoted: `NAME='value'` for an environment variable, `--option 'value'` or
    `option 'value'` for a command's option or an -o option."""
    return f"{name}={value!r}" if name.isupper() else f"{name} {value!r}"


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


URL_FORMS = "host:port or http(s)://host:port"


def normalize_base_url(value: str, source: str = "LMSTUDIO_BASE_URL") -> str:
    """Accept `host:port`, `host`, or an http(s) URL (with or without /v1); return scheme://host:port.
    `source` names where the value came from (the variable, or a command's --server), for the error."""
    raw = value.strip()
    quoted = shown(source, raw)
    if not raw:
        raise SettingsError(f"{quoted} is empty: set it to {URL_FORMS}")
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise SettingsError(f"{quoted} is not a valid address: use {URL_FORMS}") from None
    if parts.scheme not in ("http", "https"):
        raise SettingsError(f"{quoted} uses the scheme {parts.scheme!r}: only http and https are allowed ({URL_FORMS})")
    if not parts.hostname:
        raise SettingsError(f"{quoted} has no host name: use {URL_FORMS}")
    try:
        port = parts.port
    except ValueError:
        raise SettingsError(f"{quoted} has an invalid port: use a port from 1 to 65535 ({URL_FORMS})") from None
    if port == 0:
        raise SettingsError(f"{quoted} has an invalid port: use a port from 1 to 65535 ({URL_FORMS})")
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
    """The LM Studio API token: `llm keys set lmstudio` wins over $LM_API_TOKEN, then $LMSTUDIO_API_TOKEN."""
    return api_token_source()[0]


def api_token_source() -> tuple[str | None, str | None]:
    """The token and where it came from (`llm keys set lmstudio` or the variable's name), to report the source only."""
    stored = llm.get_key(alias=KEY_ALIAS)
    if stored:
        return stored, "llm keys set lmstudio"
    for name in TOKEN_ENVS:
        if os.environ.get(name):
            return os.environ[name], f"${name}"
    return None, None


def _float_env(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    accepted = f"set it to a number of seconds greater than 0 (default {default:g}), or unset it"
    try:
        result = float(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not a number: {accepted}") from None
    # "inf" would be an unbounded wait; "nan" compares false with everything, so it never fires either.
    if not math.isfinite(result) or result <= 0:
        raise SettingsError(f"{name}={value!r} is not usable: {accepted}")
    return result


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        result = int(value)
    except ValueError:
        result = 0
    if result < 1:
        raise SettingsError(f"{name}={value!r} is not usable: set it to a whole number of at least 1 (default {default}), or unset it")
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


def embed_batch_size() -> int:
    """Texts per embedding request (`llm embed-multi --batch-size` also applies)."""
    return _int_env("LMSTUDIO_EMBED_BATCH_SIZE", 64)


def check() -> None:
    """Read every LM Studio setting once; raise the first unusable one as a SettingsError."""
    servers()
    timeouts()
    cache_ttl()
    embed_batch_size()
    _switch("LLM_LMSTUDIO_DEBUG", False)


def listing_digest(server: Server) -> str:
    """What a server's model list depends on besides its address: the token. A short hash of it, so a
    cached list (or cached failure) is not reused after the token changes, and the token is never stored."""
    import hashlib

    return hashlib.sha256(f"{server.base_url}\0{api_token() or ''}".encode()).hexdigest()[:16]


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9}


def parse_duration(text: str, what: str = "duration") -> float:
    """`90s`, `10m`, `1h`, `7d` (or bare seconds) as seconds; `0` and `off` as 0."""
    value = str(text).strip().lower()
    if value in ("0", "off", "no", "false"):
        return 0.0
    number, unit = (value[:-1], value[-1]) if value[-1:] in _DURATION_UNITS else (value, "s")
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        raise SettingsError(f"{shown(what, text)} is not a duration: use a number with s, m, h or d, like 30m or 7d") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise SettingsError(f"{shown(what, text)} is not usable: use a positive number with s, m, h or d, like 30m or 7d")
    return seconds


MAX_CACHE_DAYS = 36500  # 100 years: any longer and an expiry soon passes year 9999, which no date can hold


def cache_duration(text: str, what: str = "cache") -> float:
    """How long the response cache keeps an answer (`-o cache`, $LMSTUDIO_RESPONSE_CACHE): a duration of at most
    100 years."""
    seconds = parse_duration(text, what)
    if seconds > MAX_CACHE_DAYS * _DURATION_UNITS["d"]:
        raise SettingsError(f"{shown(what, text)} is too long: keep an answer at most 100 years ({MAX_CACHE_DAYS}d)")
    return seconds


def response_cache_ttl() -> float:
    """Seconds the response cache keeps answers for every model ($LMSTUDIO_RESPONSE_CACHE); 0 when off.
    Per model or for the router, `llm models options set MODEL cache 1h` does the same through llm."""
    value = os.environ.get("LMSTUDIO_RESPONSE_CACHE")
    return cache_duration(value, "LMSTUDIO_RESPONSE_CACHE") if value and value.strip() else 0.0


def parse_size(text: str, name: str) -> int:
    """`200MB`, `2GB`, `64KB` (decimal units, as disks are sold) or bare bytes, for the variable `name`."""
    value = text.strip().lower().replace(" ", "")
    digits = value.rstrip("kmgb")
    try:
        size = int(float(digits) * _SIZE_UNITS[value[len(digits):]])
    except (ValueError, KeyError, OverflowError):
        raise SettingsError(f"{shown(name, text)} is not a size: use a number with KB, MB or GB, like 200MB") from None
    if size < 0:
        raise SettingsError(f"{shown(name, text)} is not usable: use a size of 0 or more with KB, MB or GB, like 200MB")
    return size


def response_cache_max_bytes() -> int:
    """The response cache's size cap ($LMSTUDIO_RESPONSE_CACHE_SIZE, e.g. 200MB; default 100MB)."""
    value = os.environ.get("LMSTUDIO_RESPONSE_CACHE_SIZE") or "100MB"
    size = parse_size(value, "LMSTUDIO_RESPONSE_CACHE_SIZE")
    if size < 1:
        raise SettingsError(
            f"{shown('LMSTUDIO_RESPONSE_CACHE_SIZE', value)} is not usable: use a size greater than 0 "
            "with KB, MB or GB, like 200MB (default 100MB)"
        )
    return size


def plugin_dir() -> Path:
    """Where the plugin keeps its own files, inside llm's user directory."""
    path = llm.user_dir() / "lmstudio"
    path.mkdir(parents=True, exist_ok=True)
    return path


_ON = ("1", "on", "true", "yes")
_OFF = ("0", "off", "false", "no")


def _switch(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if value.lower() in _ON + _OFF:
        return value.lower() in _ON
    raise SettingsError(
        f"{shown(name, value)} is neither on nor off: set it to on or off (1 or 0), or unset it "
        f"(default {'on' if default else 'off'})"
    )


def debug() -> bool:
    """LLM_LMSTUDIO_DEBUG: say more about failures. An unusable value counts as on here (it is asked for where
    failures are reported, which must not fail in turn); check() refuses it, naming it."""
    try:
        return _switch("LLM_LMSTUDIO_DEBUG", False)
    except SettingsError:
        return True


def _folder_env(name: str, what: str) -> Path | None:
    """A folder named by the variable `name`; refused when it names none (a typo would silently find nothing)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise SettingsError(f"{shown(name, value)} is not a folder: set it to {what}, or unset it")
    return path


def lmstudio_home() -> Path:
    """LM Studio's own home folder (`~/.lmstudio` unless $LMSTUDIO_HOME says otherwise)."""
    override = _folder_env("LMSTUDIO_HOME", "LM Studio's home folder (default ~/.lmstudio)")
    if override:
        return override
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
    override = _folder_env("LMSTUDIO_MODELS_DIR", "the folder LM Studio downloads models into")
    if override:
        return override
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


# ---------------------------------------------------------------- native MLX

MLX_PROMPT_CACHE_DEFAULT = "2GB"  # a few long conversations of a 7B model (~60 KB of fp16 KV per token)


def mlx_prompt_cache_bytes() -> int:
    """Disk budget for native MLX prompt caches kept across processes ($LMSTUDIO_MLX_PROMPT_CACHE); 0 when off."""
    value = os.environ.get("LMSTUDIO_MLX_PROMPT_CACHE") or MLX_PROMPT_CACHE_DEFAULT
    return 0 if value.strip().lower() in _OFF else parse_size(value, "LMSTUDIO_MLX_PROMPT_CACHE")


def mlx_memory_check() -> bool:
    """Whether native MLX models too large for the memory available are refused before loading."""
    return _switch("LMSTUDIO_MLX_MEMORY_CHECK", True)


# ---------------------------------------------------------------- local models

LOCAL_PREFIXES = ("lmstudio/", "lmstudio@", "mlx/")


def is_local_model_id(model_id: str) -> bool:
    """Models this plugin runs on the user's own LM Studio servers or in-process."""
    return model_id.startswith(LOCAL_PREFIXES)
