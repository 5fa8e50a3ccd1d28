"""One native MLX chat turn: llm's prompt through the model's chat template, mlx-lm's token stream as llm events
(text, reasoning, tool calls), usage and timings on the response. Imports mlx* only inside functions."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Iterator

import llm
from llm.parts import StreamEvent

from llm_lmstudio.core.messages import EMPTY_PROMPT, model_text, tool_specs
from llm_lmstudio.mlx.prompt_cache import fed_entry, reusable_prefix
from llm_lmstudio.mlx.loading import REFUSED, NativeModelError, model_error
from llm_lmstudio.mlx.discovery import LocalModel
from llm_lmstudio.mlx.runtime import DEFAULT_MAX_TOKENS, ChatRuntime, load_chat

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
        if message.role == "assistant":
            text = model_text(text)  # an LM Studio answer cut off earlier in the conversation: without the marker
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


# Prompt chunk size: Python regains control (Ctrl-C, a consumer that went away) between chunks. mlx-lm's
# default of 2048 meant ~30 s on a CPU before Ctrl-C acted; 512 is mlx-lm's own choice for speculative decoding.
PREFILL_STEP = 512


class Abandoned(Exception):
    """The async consumer went away; the worker stops between prompt chunks."""


def _check_utf8(model_id: str, messages: list[dict]) -> None:
    """Binary input (llm decodes stdin with surrogate escapes) gets one line, never a tokenizer's type error."""
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str):
            continue
        try:
            content.encode("utf-8")
        except UnicodeEncodeError as exc:
            byte = ord(content[exc.start]) & 0xFF  # a surrogate escape carries the undecodable byte
            raise NativeModelError(
                f"{model_id}: the prompt is not valid UTF-8 text (it contains the byte 0x{byte:02X} at character "
                f"{exc.start}): convert it first (e.g. `iconv -t UTF-8`)", kind="BadPrompt"
            ) from None


def _schema_constraint(runtime: ChatRuntime, schema: dict):
    from llm_lmstudio.mlx.schema import SchemaConstraint

    try:
        return SchemaConstraint(runtime.grammar_tokenizer(), schema)
    except ValueError as exc:
        raise NativeModelError(f"{runtime.local.model_id}: the schema cannot be enforced: {exc}", kind=REFUSED) from None


def _disk_caches(model_id: str):
    """The disk store for prompt caches, or None when the user turned it off."""
    from llm_lmstudio.core import settings
    from llm_lmstudio.mlx.prompt_cache import DiskCaches

    try:
        budget = settings.mlx_prompt_cache_bytes()
    except settings.SettingsError as exc:
        raise NativeModelError(f"{model_id}: {exc}", kind=REFUSED) from None
    return DiskCaches(settings.plugin_dir() / "mlx-prompt-cache", budget) if budget else None


class Turn:
    """Runs one generation for `conversation` (an llm conversation id, or None) and records it on `response`.

    Everything that can be refused is refused here, before any token goes through the model."""

    def __init__(self, local: LocalModel, prompt: llm.Prompt, response, conversation: str | None, stop=None):

        self.local = local
        self.options = prompt.options
        self.response = response
        self.conversation = conversation
        self.stop = stop  # a threading.Event set when the consumer has gone (async)
        model_id = local.model_id
        messages = chat_messages(prompt)
        if not messages:  # a chat template cannot render an empty conversation; not the model's fault
            raise NativeModelError(f"{model_id}: {EMPTY_PROMPT}", kind="EmptyPrompt")
        _check_utf8(model_id, messages)  # before loading: a binary prompt should not wait on the weights
        self.runtime = runtime = load_chat(local)
        self.tokenizer = runtime.tokenizer
        self.tools = tool_specs(prompt.tools) if prompt.tools else None
        if self.tools and not self.tokenizer.has_tool_calling:
            raise NativeModelError(f"{model_id}: mlx-lm found no tool-call format in this model's chat template", kind=REFUSED)
        try:
            self.tokens = runtime.render(messages, self.tools)
        except Exception as exc:
            raise NativeModelError(f"{model_id}: its chat template failed on this conversation: {exc}") from exc
        window = runtime.context_length
        if window and len(self.tokens) > window:
            # LM Studio refuses such a prompt before it starts, and so do we: mlx-lm would otherwise spend
            # minutes and gigabytes on a prompt the model cannot attend to.
            raise NativeModelError(
                f"{model_id}: the prompt is {len(self.tokens)} tokens but the model's context window is {window}: "
                "shorten it (or start a new conversation instead of -c)", kind="PromptTooLong"
            )
        if self.options.kv_bits and self.options.max_kv_size:
            raise NativeModelError(f"{model_id}: mlx-lm cannot quantize a size-bounded KV cache: use kv_bits or max_kv_size, not both", kind=REFUSED)
        self.draft = self._draft()
        self.schema = _schema_constraint(runtime, prompt.schema) if prompt.schema else None
        self.layout = json.dumps(
            {"draft": self.draft.fingerprint if self.draft else None, "max_kv_size": self.options.max_kv_size,
             "kv_bits": self.options.kv_bits}
        )
        # The reply starts inside a reasoning block when the template opened one (Qwen3-style `<think>\n`),
        # unless a schema holds it to JSON from the first token.
        tokenizer = self.tokenizer
        self.segment = "normal"
        if (
            not self.schema
            and tokenizer.has_thinking
            and tokenizer.rfind_think_start(self.tokens) > tokenizer.rfind_think_end(self.tokens)
        ):
            self.segment = "reasoning"
        self.tool_text = ""
        self.prefilled = 0  # prompt tokens processed so far, for Ctrl-C between chunks

    def _draft(self) -> ChatRuntime | None:
        name = self.options.draft_model
        if not name:
            return None
        from llm_lmstudio.mlx import discovery

        model_id = self.local.model_id
        draft_id = "mlx/" + name.removeprefix("mlx/")
        local = discovery.find(draft_id)
        if local is None or local.kind != "chat":
            raise NativeModelError(f"{model_id}: draft model {draft_id} is not a native chat model here (see `llm lmstudio mlx list`)",
                                   kind=REFUSED)
        if self.options.max_kv_size:
            raise NativeModelError(
                f"{model_id}: speculative decoding rewinds the KV cache, which -o max_kv_size makes impossible: drop one of them", kind=REFUSED
            )
        draft = load_chat(local)
        ours, theirs = self.tokenizer.get_vocab(), draft.tokenizer.get_vocab()
        if ours != theirs:
            differ = len(ours) != len(theirs)
            how = f"{len(theirs)} tokens against {len(ours)}" if differ else "the same size, other token ids"
            raise NativeModelError(
                f"{model_id}: draft model {draft_id} has a different tokenizer ({how}), so its drafts would be "
                "meaningless: pick a smaller model of the same family", kind=REFUSED
            )
        return draft

    # ------------------------------------------------------------ generation

    def events(self) -> Iterator[StreamEvent]:
        import mlx.core as mx
        from mlx_lm import stream_generate
        from mlx_lm.generate import TextStateMachine, make_text_state_machine

        sampler, processors = self._sampling()
        machine = make_text_state_machine(self.tokenizer)
        state = machine.make_state(self.segment)
        disk = _disk_caches(self.local.model_id) if self.conversation else None
        started = time.perf_counter()  # loading a cache from disk counts towards the time to first token
        cache, reused, source = self._prompt_cache(disk)
        generated: list[int] = []
        drafted = 0
        last = first_token_at = None
        try:
            for gen in stream_generate(
                self.runtime.model,
                self.tokenizer,
                mx.array(self.tokens[reused:]),
                max_tokens=self.options.max_tokens or DEFAULT_MAX_TOKENS,
                draft_model=self.draft.model if self.draft else None,
                sampler=sampler,
                logits_processors=processors or None,
                prompt_cache=cache,
                prefill_step_size=PREFILL_STEP,
                prompt_progress_callback=self._prefill_progress,
                kv_bits=self.options.kv_bits,
                quantized_kv_start=0,  # -o kv_bits means the whole cache, not only past mlx-lm's 5000th token
            ):
                first_token_at = first_token_at or time.perf_counter()
                generated.append(gen.token)
                drafted += bool(gen.from_draft)
                last = gen
                state, segments = TextStateMachine.split(state, gen.text)
                for segment, text in segments:
                    yield from self._segment(segment, text)
            state, rest, segment = TextStateMachine.flush(state)
            yield from self._segment(segment, rest)
            yield from self._segment(None, "")  # closes a tool call the reply ended inside
        except (llm.ModelError, Abandoned):
            raise
        except Exception as exc:
            raise model_error(self.local, exc, "running") from exc
        # Only a finished generation's cache is kept: an interrupted one is half-written.
        saved_s = None
        kept = fed_entry(cache, self.tokens + generated, self.layout)
        if kept is not None:
            self.runtime.caches.keep(self.conversation, kept)
            if disk is not None:
                saving = time.perf_counter()
                disk.save(self.runtime.fingerprint, self.conversation, kept)
                saved_s = round(time.perf_counter() - saving, 4)
        self._record(last, reused, started, first_token_at)
        self.response.response_json |= {"prompt_cache": source, "prompt_cache_save_s": saved_s}
        if self.draft:
            self.response.response_json |= {"draft_model": self.draft.local.model_id, "draft_tokens_accepted": drafted}
        if self.schema and not self.schema.complete():
            from llm_lmstudio.core.errors import warn_json_cut  # the same words as for LM Studio models

            warn_json_cut(self.response)

    def _prompt_cache(self, disk) -> tuple[list, int, str | None]:
        """(cache, leading tokens it already holds, where it came from: "memory", "disk" or None)."""
        from mlx_lm.models.cache import KVCache, RotatingKVCache, make_prompt_cache

        entry, source = self.runtime.caches.take(self.conversation), "memory"
        if entry is None and disk is not None:
            entry, source = disk.load(self.runtime.fingerprint, self.conversation), "disk"
        reused = reusable_prefix(entry, self.tokens, self.layout) if entry else 0
        if reused:
            return entry.cache, reused, source
        cache = make_prompt_cache(self.runtime.model, max_kv_size=self.options.max_kv_size)
        if self.options.max_kv_size:
            # mlx-lm applies max_kv_size only to models without a make_cache() of their own (llama has one,
            # for sliding-window variants): bound every plain layer cache here, keeping the first 4 tokens as it does.
            cache = [
                RotatingKVCache(max_size=self.options.max_kv_size, keep=4) if type(layer) is KVCache else layer
                for layer in cache
            ]
        if self.draft:
            cache += make_prompt_cache(self.draft.model)  # mlx-lm takes the draft model's layers after the model's
        return cache, 0, None

    def _prefill_progress(self, processed: int, total: int) -> None:
        # mlx-lm calls this between prompt chunks: Python runs here, so Ctrl-C (KeyboardInterrupt) lands here
        # rather than after the whole prompt, and an async consumer that went away stops the work.
        self.prefilled = processed
        if self.stop is not None and self.stop.is_set():
            raise Abandoned()

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
        processors = make_logits_processors(repetition_penalty=chosen.get("repeat_penalty"))
        return sampler, processors + [self.schema] if self.schema else processors

    def _record(self, last, reused: int, started: float, first_token_at: float | None) -> None:
        output_tokens = last.generation_tokens if last else 0
        prompt_tokens = len(self.tokens)
        self.response.set_usage(
            input=prompt_tokens, output=output_tokens, details={"cached_tokens": reused} if reused else None
        )
        self.response.set_resolved_model(self.local.model_id)
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
