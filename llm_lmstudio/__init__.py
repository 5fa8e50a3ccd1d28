"""llm hook implementations for LM Studio and native MLX models.
Only hooks live here; registering must stay cheap and never wait on the network beyond a fixed budget."""

import llm


def _lmstudio_entries():
    from . import catalog, settings

    for entry in catalog.models_for_registration():
        yield entry, settings.Server(base_url=entry.base_url, prefix=entry.prefix)


@llm.hookimpl
def register_models(register):
    from .chat import LMStudioAsyncChat, LMStudioChat

    for entry, server in _lmstudio_entries():
        if not entry.is_embedding:
            register(LMStudioChat(entry, server), LMStudioAsyncChat(entry, server))
    _register_native(register, "chat")
    from .router import ROUTER_ALIASES, Router

    register(Router(), aliases=ROUTER_ALIASES)


@llm.hookimpl
def register_embedding_models(register):
    from .embeddings import LMStudioEmbedding

    for entry, server in _lmstudio_entries():
        if entry.is_embedding:
            register(LMStudioEmbedding(entry, server))
    _register_native(register, "embedding")


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
    from .cli import lmstudio_group

    cli.add_command(lmstudio_group)
