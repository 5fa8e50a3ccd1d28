"""Model management over LM Studio 0.4's v1 REST API (`/api/v1/models`, `/load`, `/unload`) with the Bearer token,
for servers that require a token the installed SDK cannot send. All HTTP goes through server.Client; never the SDK."""

from __future__ import annotations

from typing import Any

from llm_lmstudio.lmstudio import transport
from llm_lmstudio.core import settings
from llm_lmstudio.management.models import (
    DownloadedModel,
    LoadedInstance,
    LoadSettings,
    Unsupported,
    display_format,
    model_type,
)

# Settings the REST load has no field for (docs: developer/rest/load): only the SDK can send them.
SDK_ONLY = {"gpu": "--gpu", "ttl": "--ttl", "identifier": "--identifier"}


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _models(body: Any) -> list[dict]:
    items = body.get("models") if isinstance(body, dict) else None
    return [m for m in items if isinstance(m, dict) and isinstance(m.get("key"), str)] if isinstance(items, list) else []


def _type(item: dict) -> str:
    capabilities = item.get("capabilities") if isinstance(item.get("capabilities"), dict) else {}
    return model_type(item.get("type"), capabilities.get("vision") is True)


def model_from_v1(item: dict) -> DownloadedModel:
    """One `/api/v1/models` entry (docs: developer/rest/list); unknown types and formats are kept as they come."""
    capabilities = item.get("capabilities") if isinstance(item.get("capabilities"), dict) else {}
    variants = item.get("variants")
    selected = item.get("selected_variant")
    return DownloadedModel(
        key=item["key"],
        type=_type(item),
        format=display_format(item.get("format")),
        display_name=str(item.get("display_name") or item["key"]),
        params=item.get("params_string") if isinstance(item.get("params_string"), str) else None,
        arch=item.get("architecture") if isinstance(item.get("architecture"), str) else None,
        size_bytes=_int(item.get("size_bytes")),
        max_context_length=_int(item.get("max_context_length")),
        path="",  # the REST listing does not say where a model lives
        tool_use=capabilities.get("trained_for_tool_use") is True,
        variants=[v for v in variants if isinstance(v, str)] if isinstance(variants, list) else [],
        selected_variant=selected if isinstance(selected, str) else None,
    )


class RestSession:
    """The same operations as management_sdk.SdkSession, over HTTP."""

    def __init__(self, target: settings.Server, token: str | None):
        self.server = target
        self.client = transport.Client(target, token=token)

    def close(self) -> None:
        pass  # server.Client keeps its connection pool for the process

    def _listing(self) -> list[dict]:
        return _models(self.client.get_json("/api/v1/models"))

    def loaded(self) -> list[LoadedInstance]:
        instances = []
        for item in self._listing():
            kind = _type(item)
            for raw in item.get("loaded_instances") if isinstance(item.get("loaded_instances"), list) else []:
                if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
                    continue
                config = raw.get("config") if isinstance(raw.get("config"), dict) else {}
                instances.append(
                    LoadedInstance(
                        identifier=raw["id"],
                        model=item["key"],
                        type=kind,
                        format=display_format(item.get("format")),
                        size_bytes=_int(item.get("size_bytes")),
                        context_length=_int(config.get("context_length")),
                        max_context_length=_int(item.get("max_context_length")),
                        ttl=None,  # the REST listing does not report idle TTLs
                        ttl_remaining=None,
                        status="loaded",
                    )
                )
        return instances

    def downloaded(self) -> list[DownloadedModel]:
        return [model_from_v1(item) for item in self._listing()]

    def variants(self, key: str) -> list[DownloadedModel]:
        # The REST listing names the variants but does not describe them; each inherits its model's facts.
        model = next((m for m in self.downloaded() if m.key == key), None)
        if model is None:
            return []
        return [
            DownloadedModel(**{**model.__dict__, "key": variant, "variants": [], "selected_variant": None, "identifiers": []})
            for variant in model.variants
        ]

    def estimate(self, key: str, namespace: str, load: LoadSettings):
        raise Unsupported(
            f"LM Studio at {self.server.base_url} requires an API token, which the installed lmstudio SDK cannot send, "
            "and its REST API has no memory estimate: install lmstudio 1.6 or later (`llm install -U --pre lmstudio`)"
        )

    def search(self, term: str, limit: int) -> list[dict]:
        raise Unsupported(
            f"LM Studio at {self.server.base_url} requires an API token, which the installed lmstudio SDK cannot send, "
            "and its REST API cannot search: give a catalog id (publisher/model) or a Hugging Face link, or install "
            "lmstudio 1.6 or later (`llm install -U --pre lmstudio`)"
        )

    def load(self, key: str, namespace: str, load: LoadSettings, on_progress) -> str:
        wanted = [flag for name, flag in SDK_ONLY.items() if getattr(load, name) is not None]
        if wanted:
            raise Unsupported(
                f"{', '.join(wanted)} cannot be sent: LM Studio at {self.server.base_url} requires an API token, "
                "which the installed lmstudio SDK cannot send, and its REST load has no such setting: "
                "install lmstudio 1.6 or later (`llm install -U --pre lmstudio`)"
            )
        body = {"model": key, "echo_load_config": True, **load.rest_fields()}
        # The REST load answers once the model is loaded (docs: developer/rest/load): no progress to follow.
        try:
            answer = self.client.post_json("/api/v1/models/load", body)
        except transport.ModelNotFound:
            if "@" not in key:
                raise
            # LM Studio 0.4.1 lists variants but its REST load takes base keys only (lmstudio-bug-tracker#1462);
            # asked anyway, so that a release that fixes it just works.
            raise Unsupported(
                f"LM Studio at {self.server.base_url} cannot load the variant {key} over its REST API "
                "(lmstudio-bug-tracker#1462), and the installed lmstudio SDK, which can, cannot send the API token: "
                "install lmstudio 1.6 or later (`llm install -U --pre lmstudio`), or pick the variant in LM Studio"
            ) from None
        if on_progress is not None:
            on_progress(1.0)
        instance_id = answer.get("instance_id") if isinstance(answer, dict) else None
        if not isinstance(instance_id, str):
            raise transport.BadResponse(f"LM Studio at {self.server.base_url} answered the load without an instance_id")
        return instance_id

    def unload(self, identifier: str, namespace: str) -> None:
        self.client.post_json("/api/v1/models/unload", {"instance_id": identifier})
