"""One native MLX chat turn: llm's prompt through the model's chat template, mlx-lm's token stream as llm events
(text, reasoning, tool calls), usage and timings on the response. Imports mlx* only inside functions."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Iterator

import llm
from llm.parts import StreamEvent

from .chat import tool_specs
from .mlx_cache import fed_entry, reusable_prefix
from .mlx_load import NativeModelError, model_error
from .mlx_native import DEFAULT_MAX_TOKENS, ChatRuntime

# Used when neither the user nor the model's generation_config.json says otherwise; these are
# LM Studio's own defaults, so a model answers alike through the server and natively.
FALLBACK_SAMPLING = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05}


def chat_messages(prompt: llm.Prompt) -> list[dict]:
    """prompt.messages (the whole chain, also on `llm -c`) as chat-template messages."""
    from llm.parts import TextPart, ToolCallPart, ToolResultPart

    out: list[dict] = []
    current_system = None
    for message in prompt.messages:
        if message.role == "tool":
            for part in message.parts:
                if isinstance(part, ToolResultPart):
                    out.append({"role": "tool", "content": part.output, "name": part.name, "tool_call_id": part.tool_call_id})
            continue
        text = "".join(p.text for p in message.parts if isinstance(p, TextPart))
        if message.role == "system":
            if text == current_system:
                continue  # llm repeats an unchanged system prompt; templates want it once
            current_system = text
        entry: dict[str, Any] = {"role": message.role, "content": text}
        calls = [p for p in message.parts if isinstance(p, ToolCallPart)]
        if calls:
            entry["tool_calls"] = [
                {"id": c.tool_call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls
            ]
        out.append(entry)
    # `llm -c -s NEW` carries the new system prompt only in prompt.system.
    if prompt.system and prompt.system != current_system:
        out = [m for m in out if m["role"] != "system"]
        out.insert(0, {"role": "system", "content": prompt.system})
    return out


class Turn:
    """Runs one generation for `conversation` (an llm conversation id, or None) and records it on `response`."""

    def __init__(self, runtime: ChatRuntime, prompt: llm.Prompt, response, conversation: str | None):
        self.runtime = runtime
        self.prompt = prompt
        self.options = prompt.options
        self.response = response
        self.conversation = conversation
        self.local = runtime.local
        self.tokenizer = runtime.tokenizer
        self.tools = tool_specs(prompt.tools) if prompt.tools else None
        if self.tools and not self.tokenizer.has_tool_calling:
            raise NativeModelError(f"{self.local.model_id}: mlx-lm found no tool-call format in this model's chat template")
        try:
            self.tokens = runtime.render(chat_messages(prompt), self.tools)
        except Exception as exc:
            raise NativeModelError(f"{self.local.model_id}: its chat template failed on this conversation: {exc}") from exc
        self.layout = ""
        # The reply starts inside a reasoning block when the template opened one (Qwen3-style `<think>\n`).
        tokenizer = self.tokenizer
        self.segment = "normal"
        if tokenizer.has_thinking and tokenizer.rfind_think_start(self.tokens) > tokenizer.rfind_think_end(self.tokens):
            self.segment = "reasoning"
        self.tool_text = ""

    # ------------------------------------------------------------ generation

    def events(self) -> Iterator[StreamEvent]:
        import mlx.core as mx
        from mlx_lm import stream_generate
        from mlx_lm.generate import TextStateMachine, make_text_state_machine
        from mlx_lm.models.cache import make_prompt_cache

        sampler, processors = self._sampling()
        machine = make_text_state_machine(self.tokenizer)
        state = machine.make_state(self.segment)
        entry = self.runtime.caches.take(self.conversation)
        reused = reusable_prefix(entry, self.tokens, self.layout) if entry else 0
        cache = entry.cache if reused else make_prompt_cache(self.runtime.model)
        generated: list[int] = []
        last = first_token_at = None
        started = time.perf_counter()
        try:
            for gen in stream_generate(
                self.runtime.model,
                self.tokenizer,
                mx.array(self.tokens[reused:]),
                max_tokens=self.options.max_tokens or DEFAULT_MAX_TOKENS,
                sampler=sampler,
                logits_processors=processors or None,
                prompt_cache=cache,
            ):
                first_token_at = first_token_at or time.perf_counter()
                generated.append(gen.token)
                last = gen
                state, segments = TextStateMachine.split(state, gen.text)
                for segment, text in segments:
                    yield from self._segment(segment, text)
            state, rest, segment = TextStateMachine.flush(state)
            yield from self._segment(segment, rest)
            yield from self._segment(None, "")  # closes a tool call the reply ended inside
        except llm.ModelError:
            raise
        except Exception as exc:
            raise model_error(self.local, exc, "running") from exc
        # Only a finished generation's cache is kept: an interrupted one is half-written.
        kept = fed_entry(cache, self.tokens + generated, self.layout)
        if kept is not None:
            self.runtime.caches.keep(self.conversation, kept)
        self._record(last, reused, started, first_token_at)

    def _sampling(self):
        import mlx.core as mx
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        chosen = dict(FALLBACK_SAMPLING) | self.runtime.sampling_defaults
        for key in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty"):
            value = getattr(self.options, key)
            if value is not None:
                chosen[key] = value
        if self.options.seed is not None:
            mx.random.seed(self.options.seed)
        sampler = make_sampler(temp=chosen["temperature"], top_p=chosen["top_p"], min_p=chosen["min_p"], top_k=chosen["top_k"])
        return sampler, make_logits_processors(repetition_penalty=chosen.get("repeat_penalty"))

    def _record(self, last, reused: int, started: float, first_token_at: float | None) -> None:
        output_tokens = last.generation_tokens if last else 0
        prompt_tokens = len(self.tokens)
        self.response.set_usage(
            input=prompt_tokens, output=output_tokens, details={"cached_tokens": reused} if reused else None
        )
        self.response.response_json = {
            "engine": "mlx-lm",
            "path": str(self.local.path),
            "finish_reason": last.finish_reason if last else None,
            "prompt_tokens": prompt_tokens,
            "prompt_tokens_cached": reused,
            "prompt_tokens_processed": prompt_tokens - reused,
            "prompt_tps": round(last.prompt_tps, 2) if last else None,
            "generation_tokens": output_tokens,
            "generation_tps": round(last.generation_tps, 2) if last else None,
            "time_to_first_token_s": round(first_token_at - started, 4) if first_token_at else None,
            "total_s": round(time.perf_counter() - started, 4),
            "peak_memory_gb": round(last.peak_memory, 4) if last else None,
        }

    # ------------------------------------------------------------ text, reasoning and tool calls

    def _segment(self, segment: str | None, text: str) -> list[StreamEvent]:
        """Events for `text` in mlx-lm's `segment` state; None means the reply ended."""
        events = []
        if self.segment == "tool" and segment != "tool":
            events.extend(self._tool_calls(closed=segment is not None))  # None: max_tokens ended it inside the call
            self.tool_text = ""
        self.segment = segment
        if not text:
            return events
        if segment == "reasoning":
            events.append(StreamEvent(type="reasoning", chunk=text))
        elif segment == "tool":
            self.tool_text += text
        elif segment == "normal":
            events.append(StreamEvent(type="text", chunk=text))
        return events

    def _tool_calls(self, closed: bool) -> list[StreamEvent]:
        tokenizer = self.tokenizer
        raw = f"{tokenizer.tool_call_start}{self.tool_text}{(tokenizer.tool_call_end or '') if closed else ''}"
        if not self.tools:
            # Tools were not offered, so a tool-call block is just text the model wrote.
            return [StreamEvent(type="text", chunk=raw)]
        try:
            parsed = tokenizer.tool_parser(self.tool_text, self.tools)
        except (ValueError, KeyError, TypeError):
            return [StreamEvent(type="text", chunk=raw)]  # a malformed call stays visible instead of vanishing
        events = []
        for call in parsed if isinstance(parsed, list) else [parsed]:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                events.append(StreamEvent(type="text", chunk=raw))
                continue
            arguments = call.get("arguments") or {}
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    arguments = {"_raw": arguments}
            call_id = f"call_{uuid.uuid4().hex[:24]}"
            events.append(StreamEvent(type="tool_call_name", chunk=call["name"], tool_call_id=call_id))
            events.append(StreamEvent(type="tool_call_args", chunk=json.dumps(arguments), tool_call_id=call_id))
            self.response.add_tool_call(llm.ToolCall(name=call["name"], arguments=arguments, tool_call_id=call_id))
        return events
