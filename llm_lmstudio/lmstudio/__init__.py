"""LM Studio models for llm: catalog, chat, embeddings, stateful continuation, LM Studio's error shapes.
Imports only store and core."""
