"""llm hook implementations for LM Studio and native MLX models.
Only hooks live here; registering must stay cheap, never wait on the network beyond a fixed budget, never raise."""

import llm


@llm.hookimpl
def register_models(register):
    from llm_lmstudio.lmstudio import unavailable

    with unavailable.guard("LM Studio chat models"):
        from llm_lmstudio.lmstudio.chat import LMStudioAsyncChat, LMStudioChat

        models = unavailable.catalog_models("chat")
        for entry in models:
            if not entry.is_embedding:
                register(LMStudioChat(entry, _server(entry)), LMStudioAsyncChat(entry, _server(entry)))
        unavailable.register_unavailable(register, "chat", models)
    with unavailable.guard("native MLX chat models"):
        _register_native(register, "chat")
    with unavailable.guard("the LM Studio router"):
        from llm_lmstudio.router.config import ROUTER_ALIASES
        from llm_lmstudio.router.model import Router

        register(Router(), aliases=ROUTER_ALIASES)


@llm.hookimpl
def register_embedding_models(register):
    from llm_lmstudio.lmstudio import unavailable

    with unavailable.guard("LM Studio embedding models"):
        from llm_lmstudio.lmstudio.embeddings import LMStudioEmbedding

        models = unavailable.catalog_models("embedding")
        for entry in models:
            if entry.is_embedding:
                register(LMStudioEmbedding(entry, _server(entry)))
        unavailable.register_unavailable(register, "embedding", models)
    with unavailable.guard("native MLX embedding models"):
        _register_native(register, "embedding")


def _server(entry):
    from llm_lmstudio.core import settings

    return settings.Server(base_url=entry.base_url, prefix=entry.prefix)


def _register_native(register, kind):
    """Native MLX models found on disk, registered as mlx/<name>; discovery reads small files only."""
    from llm_lmstudio.mlx import registration

    registration.register(register, kind)


@llm.hookimpl
def register_commands(cli):
    # The group alone (it imports only click): its commands and what they need load when `llm lmstudio` runs.
    from llm_lmstudio.cli.group import lmstudio_group

    cli.add_command(lmstudio_group)
