"""Model management as the commands see it: what is downloaded and loaded, estimates, loads and unloads, on one
server, over the SDK or LM Studio's REST API. It never imports `lmstudio`: every SDK call is in management_sdk.py."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from llm_lmstudio.core import settings
from llm_lmstudio.lmstudio import errors
from llm_lmstudio.management.models import (
    DownloadedModel,
    Estimate,
    LoadRefused,
    LoadResult,
    LoadSettings,
    LoadedInstance,
    ManagementError,
    UnknownModel,
    Unsupported,
    AmbiguousModel,
    format_size,
    instances_of,
    match_model,
    split_variant,
)


# ---------------------------------------------------------------- what the commands use


class Manager:
    """Model management on one LM Studio server, over the SDK, or over LM Studio 0.4's REST API when the
    server wants a token that the installed SDK cannot send. Use `with connect(...) as manager:`."""

    def __init__(self, target: settings.Server, token: str | None = None):
        self.server = target
        self.base_url = target.base_url
        self.token = token
        self.backend: Any = None
        self.via = "sdk"  # "sdk" | "rest"

    def open(self) -> "Manager":
        if self.base_url.startswith("https://"):
            raise ManagementError(
                f"LM Studio at {self.base_url} is served over https, which the lmstudio SDK cannot reach: "
                "model management needs LM Studio's plain http address (host:port)"
            )
        from llm_lmstudio.management.sdk import SdkSession

        session = SdkSession(self.server, self.token).open()
        if self.token and not session.token_sent:
            # This SDK cannot send the token: if the server insists on one, manage over REST with it.
            try:
                session.rpc("system", "listDownloadedModels")
            except errors.AuthRequired:
                session.close()
                from llm_lmstudio.management.rest import RestSession

                self.backend, self.via = RestSession(self.server, self.token), "rest"
                return self
            except Exception:
                session.close()
                raise
        self.backend = session
        return self

    @property
    def sets_ttl(self) -> bool:
        """Can a load here carry an idle TTL? Not over LM Studio's REST API: its load has no such field."""
        return self.via == "sdk"

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()

    def __enter__(self) -> "Manager":
        return self.open()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- queries -----------------------------------------------------------------------------

    def loaded(self) -> list[LoadedInstance]:
        return self.backend.loaded()

    def downloaded(self, namespace: str | None = None) -> list[DownloadedModel]:
        identifiers: dict[str, list[str]] = {}
        for instance in self.loaded():
            identifiers.setdefault(instance.model, []).append(instance.identifier)
        models = []
        for model in self.backend.downloaded():
            if namespace is not None and (model.type == "embedding") != (namespace == "embedding"):
                continue
            model.identifiers = identifiers.get(model.key, [])
            models.append(model)
        return models

    def variants(self, model: DownloadedModel) -> list[DownloadedModel]:
        """Each downloaded variant of `model` (`key@quant`), as LM Studio describes it."""
        if not model.variants:
            return []
        return self.backend.variants(model.key)

    def resolve(self, name: str) -> tuple[DownloadedModel, str]:
        """The downloaded model `name` means, and the key to load: `key@variant` picks a variant."""
        base, variant = split_variant(name)
        models = self.downloaded()
        key = match_model(base, [m.key for m in models])
        model = next(m for m in models if m.key == key)
        if variant is None:
            return model, model.key
        wanted = f"{model.key}@{variant}".lower()
        for candidate in model.variants:
            if candidate.lower() == wanted:
                return model, candidate
        known = ", ".join(v.partition("@")[2] for v in model.variants)
        raise UnknownModel(
            f"{model.key} has no variant {variant!r}; " + (f"downloaded: {known}" if known else "it has no variants")
        )

    # -- changes -----------------------------------------------------------------------------

    def estimate(self, name: str, load: LoadSettings) -> Estimate:
        model, key = self.resolve(name)
        load.check_for(model)
        return self.backend.estimate(key, model.namespace, load)

    def load(
        self, name: str, load: LoadSettings | None = None, on_progress: Callable[[float], Any] | None = None,
        new_instance: bool = False,
    ) -> LoadResult:
        """Load the model `name` matches, refusing first what LM Studio estimates will not fit. A model already
        loaded is left as it is (already_loaded) unless `new_instance` asks for another copy, as the SDK's
        load_new_instance does. Without a TTL it stays until unloaded, as with `lms load`."""
        load = load or LoadSettings()
        model, key = self.resolve(name)
        load.check_for(model)
        present = [] if new_instance else [i for i in self.loaded() if i.model == key]
        if present:
            return LoadResult(
                identifier=present[0].identifier, model=key, type=model.type, context_length=present[0].context_length,
                gpu=None, ttl=present[0].ttl, load_seconds=0.0, size_bytes=model.size_bytes, already_loaded=True,
            )
        try:
            estimate = self.backend.estimate(key, model.namespace, load)
        except (Unsupported, ManagementError):
            estimate = None  # an older LM Studio cannot estimate: its own guardrails still refuse at load time
        if estimate is not None and not estimate.fits:
            raise LoadRefused(refusal(estimate, model))
        started = time.perf_counter()
        identifier = self.backend.load(key, model.namespace, load, on_progress)
        seconds = time.perf_counter() - started
        instance = next((i for i in self.loaded() if i.identifier == identifier), None)
        return LoadResult(
            identifier=identifier,
            model=key,
            type=model.type,
            context_length=instance.context_length if instance else (load.context_length or 0),
            gpu=load.gpu,
            ttl=instance.ttl if instance and instance.ttl is not None else (float(load.ttl) if load.ttl else None),
            load_seconds=round(seconds, 3),
            size_bytes=model.size_bytes,
            config={k: v for k, v in asdict(load).items() if v is not None},
        )

    def find_loaded(self, name: str) -> list[LoadedInstance]:
        """The loaded instances `name` means: the instance with that identifier, else every instance of the model
        `load` takes `name` for (the same names: key, `lmstudio/` id, base name, unique part, `key@variant`)."""
        loaded = self.loaded()
        exact = [i for i in loaded if i.identifier == name]
        if exact:
            return exact
        names = ", ".join(i.identifier for i in loaded)
        try:
            model, key = self.resolve(name)
        except UnknownModel:
            if not loaded:
                raise UnknownModel(f"No loaded model matches {name!r}: nothing is loaded") from None
            raise UnknownModel(f"No loaded model matches {name!r}; loaded: {names}") from None
        found = instances_of(key, loaded, any_variant=key == model.key)
        if not found:
            raise UnknownModel(f"{key} is not loaded; " + (f"loaded: {names}" if loaded else "nothing is loaded"))
        return found

    def unload(self, name: str) -> LoadedInstance:
        """Unload what `name` means (see find_loaded); a model loaded several times must be named by identifier."""
        found = self.find_loaded(name)
        if len(found) > 1:
            identifiers = [i.identifier for i in found]
            raise AmbiguousModel(
                f"{found[0].model} is loaded {len(found)} times ({', '.join(identifiers)}): name one by its identifier, "
                "or use --all",
                identifiers,
            )
        [instance] = found
        self.backend.unload(instance.identifier, instance.namespace)
        return instance

    def unload_all(self) -> list[LoadedInstance]:
        unloaded = []
        for instance in self.loaded():
            try:
                self.backend.unload(instance.identifier, instance.namespace)
            except UnknownModel:
                continue  # its idle TTL ran out while we were unloading the others
            unloaded.append(instance)
        return unloaded


def refusal(estimate: Estimate, model: DownloadedModel) -> str:
    size = format_size
    parts = f"model {size(estimate.model_bytes)} + context {size(estimate.context_bytes)}"
    advice = "lower --context-length"
    if estimate.gpu is None or estimate.gpu > 0:
        advice += ", lower --gpu"
    if len(model.variants) > 1:
        advice += ", pick a smaller variant (`llm lmstudio ls --variants`)"
    return (
        f"{estimate.model} would need about {size(estimate.total_bytes)} ({parts}), more than LM Studio's "
        f"resource guardrails allow: nothing was loaded; {advice}, or relax the guardrails in LM Studio's settings"
    )


def _addresses(host: str) -> set[str]:
    """The addresses a host name stands for; every loopback address counts as one ("localhost" = "127.0.0.1")."""
    import ipaddress
    import socket

    try:
        found = [host.strip("[]")]
        ipaddress.ip_address(found[0])
    except ValueError:
        try:
            found = [info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)]
        except (OSError, UnicodeError):
            return {host}
    result = set()
    for address in found:
        ip = ipaddress.ip_address(address.split("%")[0])
        result.add("loopback" if ip.is_loopback else str(ip))
    return result


def _same_server(url: str, other: str) -> bool:
    a, b = urlsplit(url), urlsplit(other)
    if (a.scheme, a.port) != (b.scheme, b.port):
        return False
    return a.hostname == b.hostname or bool(_addresses(a.hostname or "") & _addresses(b.hostname or ""))


def pick_server(address: str | None = None) -> settings.Server:
    """The configured server that `address` names (host:port or URL, any spelling of the same address); the first
    configured one by default."""
    servers = settings.servers()
    if not address:
        return servers[0]
    url = settings.normalize_base_url(address, source="--server")
    for candidate in servers:
        if candidate.base_url == url:
            return candidate
    for candidate in servers:
        if _same_server(candidate.base_url, url):
            return settings.Server(base_url=url, prefix=candidate.prefix)  # asked as spelled, named as configured
    # Not configured: its models are not registered with llm, but it can still be managed.
    return settings.Server(base_url=url, prefix=f"lmstudio@{urlsplit(url).netloc}")


def model_id(server: settings.Server, key: str) -> str | None:
    """The `llm -m` id of a model on `server`, or None when the server is not in LMSTUDIO_BASE_URL (no id works)."""
    if server.prefix not in {s.prefix for s in settings.servers()}:
        return None
    return server.model_id(key)


def not_configured(server: settings.Server) -> str:
    """What to do about a server that is managed (--server) but not in LMSTUDIO_BASE_URL."""
    return (f"{server.host_port} is not in LMSTUDIO_BASE_URL, so llm cannot use its models yet: add it there "
            "(a comma-separated list) and `llm models` lists them")


@contextmanager
def connect(address: str | None = None) -> Iterator[Manager]:
    """An open management session to the server `address` names, with the configured token."""
    manager = Manager(pick_server(address), token=settings.api_token())
    with manager:
        yield manager


def refresh_catalog() -> None:
    """Re-read the model list so `llm models` is right at once after a load or unload."""
    from llm_lmstudio.lmstudio import catalog

    try:
        catalog.refresh()
    except errors.LMStudioError:
        pass  # a stale list corrects itself when its cache expires
