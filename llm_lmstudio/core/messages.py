"""OpenAI-style messages from llm's prompt: the chat history, image parts and tool specs every backend sends
(LM Studio's chat completions and /v1/responses, native MLX chat templates). Never does I/O."""

from __future__ import annotations

import json
from typing import Any

import llm
from llm.parts import AttachmentPart, TextPart, ToolCallPart, ToolResultPart

# The key under which this plugin keeps its provider_metadata on llm's message parts (llm stores and returns it).
PROVIDER_METADATA_KEY = "lmstudio"


IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})

# What a model's answer ends with when its stream was cut off: shown and logged after what arrived (lmstudio/chat.py),
# never sent back as the model's own words when the conversation goes on (model_text).
CUT_MARKER = "\n[response cut off: {reason}]\n"
_CUT_START, _CUT_END = CUT_MARKER.split("{reason}")


# When a prompt leaves nothing to send (no text, system prompt, attachment or history): said before any request.
EMPTY_PROMPT = "the prompt is empty: write a prompt, or give a system prompt (-s) or an attachment (-a)"


def model_text(text: str) -> str:
    """An earlier answer as the model produced it: without the plugin's cut-off marker at its end."""
    if text.endswith(_CUT_END):
        start = text.rfind(_CUT_START)
        if start != -1:
            return text[:start]
    return text


def _attachment_item(attachment: llm.Attachment) -> dict:
    mime = attachment.resolve_type()
    if mime not in IMAGE_TYPES:
        raise llm.ModelError(f"LM Studio accepts image attachments only, not {mime}")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{attachment.base64_content()}"}}


def build_messages(prompt: llm.Prompt, chain: list | None = None) -> list[dict]:
    """Translate llm's message chain (prompt.messages, or the part of it given) into OpenAI chat messages."""
    messages: list[dict] = []
    for message in prompt.messages if chain is None else chain:
        text: list[str] = []
        images: list[dict] = []
        tool_calls: list[dict] = []
        for part in message.parts:
            if isinstance(part, TextPart):
                text.append(part.text)
            elif isinstance(part, AttachmentPart) and part.attachment is not None:
                images.append(_attachment_item(part.attachment))
            elif isinstance(part, ToolCallPart):
                tool_calls.append(
                    {
                        "id": part.tool_call_id,
                        "type": "function",
                        "function": {"name": part.name, "arguments": json.dumps(part.arguments)},
                    }
                )
            elif isinstance(part, ToolResultPart):
                messages.append({"role": "tool", "tool_call_id": part.tool_call_id, "content": part.output})
        if message.role == "tool":
            continue
        joined = "".join(text)
        if message.role == "assistant":
            joined = model_text(joined)
        if message.role == "system":
            if not joined or (messages and messages[0]["role"] == "system" and messages[0]["content"] == joined):
                continue
        entry: dict[str, Any] = {"role": message.role}
        if images:
            entry["content"] = ([{"type": "text", "text": joined}] if joined else []) + images
        else:
            entry["content"] = joined
        if tool_calls:
            entry["tool_calls"] = tool_calls
            if not joined:
                entry["content"] = None
        elif not joined and not images and message.role != "assistant":
            continue
        messages.append(entry)
    # `llm -c -s NEW` puts the new system prompt only in prompt.system: it replaces the old one.
    if prompt.system and not any(m["role"] == "system" and m["content"] == prompt.system for m in messages):
        messages = [m for m in messages if m["role"] != "system"]
        messages.insert(0, {"role": "system", "content": prompt.system})
    return messages


def tool_specs(tools: list[llm.Tool]) -> list[dict]:
    """llm's tools as OpenAI function specs: LM Studio's request field, and what chat templates render (native MLX)."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description or "",
                "parameters": tool.input_schema or {"type": "object", "properties": {}},
            },
        }
        for tool in tools
    ]
