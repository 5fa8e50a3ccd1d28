"""llm hook implementations for LM Studio and native MLX models.
Only hooks live here; registering must stay cheap, never wait on the network beyond a fixed budget, never raise."""

import llm


@llm.hookimpl
def register_models(register):
    from . import availability

    with availability.guard("LM Studio chat models"):
        from .chat import LMStudioAsyncChat, LMStudioChat

        models = availability.catalog_models("chat")
        for entry in models:
            if not entry.is_embedding:
                register(LMStudioChat(entry, _server(entry)), LMStudioAsyncChat(entry, _server(entry)))
        availability.register_unavailable(register, "chat", models)
    with availability.guard("native MLX chat models"):
        _register_native(register, "chat")
    with availability.guard("the LM Studio router"):
        from .router_model import ROUTER_ALIASES, Router

        register(Router(), aliases=ROUTER_ALIASES)


@llm.hookimpl
def register_embedding_models(register):
    from . import availability

    with availability.guard("LM Studio embedding models"):
        from .embeddings import LMStudioEmbedding

        models = availability.catalog_models("embedding")
        for entry in models:
            if entry.is_embedding:
                register(LMStudioEmbedding(entry, _server(entry)))
        availability.register_unavailable(register, "embedding", models)
    with availability.guard("native MLX embedding models"):
        _register_native(register, "embedding")


def _server(entry):
    from . import settings

    return settings.Server(base_url=entry.base_url, prefix=entry.prefix)


def _register_native(register, kind):
    """Native MLX models found on disk, registered as mlx/<name>; discovery reads small files only."""
    from . import local_models

    found = [local for local in local_models.discover() if local.kind == kind]
    if not found:
        return
    from . import mlx_embed, mlx_native  # only once there is a native model to register

    for local in found:
        if kind == "chat":
            register(mlx_native.MLXChatModel(local), mlx_native.MLXAsyncChatModel(local))
        else:
            register(mlx_embed.MLXEmbeddingModel(local))


@llm.hookimpl
def register_commands(cli):
    # The group alone (it imports only click): its commands and what they need load when `llm lmstudio` runs.
    from .cli_group import lmstudio_group

    cli.add_command(lmstudio_group)
