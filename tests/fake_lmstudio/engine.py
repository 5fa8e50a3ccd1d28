"""Real inference behind the stand-in: mlx-lm chat (prompt templates, sampling, scripted outputs, tool and
reasoning parsing) and mlx-embeddings. Knows nothing of HTTP; it must never invent text, counts or timings."""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Iterator

# One MLX computation at a time (MLX is not built to evaluate from several threads at once). LM Studio
# before 0.4 queues predictions, so the whole prediction holds the lock; 0.4 runs up to 4 at once by
# continuous batching (docs app/advanced/parallel-requests), so a parallel prediction takes it per token
# and concurrent streams interleave. (Seeded sampling stays reproducible only for predictions that do not
# overlap: mlx's random state is global.)
MLX_LOCK = threading.RLock()

THINK_START, THINK_END = "<think>", "</think>"
# LM Studio's "Default" tool-use fallback for models whose template has no native tool format.
FALLBACK_TOOL_START, FALLBACK_TOOL_END = "[TOOL_REQUEST]", "[END_TOOL_REQUEST]"


class ImageError(ValueError):
    """An image part is not a valid base64 data URI of a decodable image."""


def decode_image_data_uri(url: str):
    """Decode and verify a `data:image/...;base64,...` URI; returns a Pillow image."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(url, str) or not url.startswith("data:"):
        raise ImageError("Only base64 data URIs are supported for images (data:image/<type>;base64,...)")
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header or not header[5:].startswith("image/"):
        raise ImageError("Invalid image data URI: expected data:image/<type>;base64,<data>")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("Invalid image data URI: the payload is not valid base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageError(f"Invalid image: could not decode the image data ({exc})") from None
    return image


def image_marker(index: int, image) -> str:
    return f"<image {index}: {image.format or 'image'} {image.width}x{image.height}>"


@dataclass
class GenerationParams:
    max_tokens: int = 128
    temperature: float = 0.8
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    script: str | None = None  # forced output text (see ChatEngine._forcing_processor)
    parallel: bool = False  # interleave with other predictions token by token (LM Studio 0.4)
    broken_template: bool = False  # render with a template jinja cannot compile (the `template` fault)
    json_schema: dict | None = None  # constrain the output to this schema (llguidance), unless scripted


@dataclass
class Piece:
    kind: str  # "content" | "reasoning" | "tool_call"
    text: str = ""
    tool_call: dict | None = None  # {"id", "name", "arguments" (JSON string)}


@dataclass
class Finish:
    finish_reason: str  # OpenAI: "stop" | "length" | "tool_calls"
    stop_reason: str  # LM Studio stats: "eosFound" | "maxPredictedTokensReached" | "stopStringFound" | "userStopped"
    prompt_tokens: int
    completion_tokens: int
    tokens_per_second: float
    time_to_first_token: float
    generation_time: float
    text: str  # the raw generated text (after stop-string truncation)


class OutputSplitter:
    """Splits raw streamed text into content, reasoning and parsed tool calls, holding back partial markers."""

    def __init__(self, *, reasoning: bool, tool_markers: tuple[str, str] | None, tool_parser, tools):
        self.mode = "content"
        self.buffer = ""
        self.tool_text = ""
        self.reasoning = reasoning
        self.tool_markers = tool_markers
        self.tool_parser = tool_parser
        self.tools = tools
        self.tool_calls = 0

    def _starts(self) -> list[tuple[str, str]]:
        starts = []
        if self.reasoning:
            starts.append((THINK_START, "reasoning"))
        if self.tool_markers:
            starts.append((self.tool_markers[0], "tool"))
        return starts

    def _end_marker(self) -> str:
        return THINK_END if self.mode == "reasoning" else self.tool_markers[1]

    @staticmethod
    def _holdback(text: str, markers: list[str]) -> int:
        # Longest suffix of `text` that could be the start of a marker arriving in the next chunk.
        best = 0
        for marker in markers:
            for n in range(min(len(marker) - 1, len(text)), 0, -1):
                if text.endswith(marker[:n]):
                    best = max(best, n)
                    break
        return best

    def _emit(self, kind: str, text: str, out: list[Piece]) -> None:
        if not text:
            return
        if kind == "tool":
            self.tool_text += text
        else:
            out.append(Piece(kind, text))

    def _parse_tool(self, raw: str) -> list[Piece]:
        try:
            parsed = self.tool_parser(raw, self.tools)
            pieces = []
            for call in parsed if isinstance(parsed, list) else [parsed]:
                arguments = call.get("arguments", {})
                if not isinstance(arguments, str):
                    arguments = json.dumps(arguments)
                call_id = str(uuid.uuid4().int % 10**9)  # LM Studio uses short numeric ids
                pieces.append(Piece("tool_call", tool_call={"id": call_id, "name": call["name"], "arguments": arguments}))
        except Exception:
            # LM Studio: a tool call it cannot parse comes back as plain content.
            start, end = self.tool_markers
            return [Piece("content", f"{start}{raw}{end}")]
        self.tool_calls += len(pieces)
        return pieces

    def feed(self, text: str, *, final: bool = False) -> list[Piece]:
        out: list[Piece] = []
        self.buffer += text
        while True:
            if self.mode == "content":
                starts = self._starts()
                found = [(self.buffer.find(m), m, mode) for m, mode in starts if m in self.buffer]
                if found:
                    index, marker, mode = min(found)
                    self._emit("content", self.buffer[:index], out)
                    self.buffer = self.buffer[index + len(marker) :]
                    self.mode = mode
                    continue
                keep = 0 if final else self._holdback(self.buffer, [m for m, _ in starts])
                self._emit("content", self.buffer[: len(self.buffer) - keep], out)
                self.buffer = self.buffer[len(self.buffer) - keep :]
                break
            end = self._end_marker()
            if end in self.buffer:
                index = self.buffer.index(end)
                self._emit(self.mode, self.buffer[:index], out)
                self.buffer = self.buffer[index + len(end) :]
                if self.mode == "tool":
                    out.extend(self._parse_tool(self.tool_text))
                    self.tool_text = ""
                self.mode = "content"
                continue
            keep = 0 if final else self._holdback(self.buffer, [end])
            self._emit(self.mode, self.buffer[: len(self.buffer) - keep], out)
            self.buffer = self.buffer[len(self.buffer) - keep :]
            break
        if final and self.mode == "tool":
            # An unterminated tool call is returned as text, as LM Studio does when parsing fails.
            out.append(Piece("content", self.tool_markers[0] + self.tool_text))
            self.tool_text = ""
            self.mode = "content"
        return out


class ChatEngine:
    """A loaded mlx-lm model and tokenizer."""

    kind = "llm"

    def __init__(self, entry, context_length: int):
        from mlx_lm import load

        self.entry = entry
        self.context_length = context_length
        self._ll_tokenizer = None
        with MLX_LOCK:
            self.model, self.tokenizer = load(str(entry.path))

    # -- prompt -----------------------------------------------------------------------------
    @property
    def native_tools(self) -> bool:
        return bool(getattr(self.tokenizer, "has_tool_calling", False))

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _fallback_tool_prompt(self, tools: list[dict]) -> str:
        return (
            "You have access to the following tools:\n"
            + "\n".join(json.dumps(t) for t in tools)
            + f"\n\nTo call a tool, reply with {FALLBACK_TOOL_START}"
            + '{"name": "<tool name>", "arguments": {<arguments>}}'
            + f"{FALLBACK_TOOL_END}"
        )

    def build_prompt(self, messages: list[dict], tools: list[dict] | None = None, *, broken_template=False) -> list[int]:
        """Token ids of the templated conversation, ready for generation."""
        normalized = []
        for message in messages:
            message = dict(message)
            if message.get("content") is None:
                message["content"] = ""
            normalized.append(message)
        if tools and not self.native_tools:
            normalized.insert(0, {"role": "system", "content": self._fallback_tool_prompt(tools)})
            tools = None
        kwargs = {"tools": tools} if tools else {}
        if broken_template:
            # A template jinja rejects, so real jinja raises the way a model's faulty template does in
            # LM Studio ("Error rendering prompt with jinja template", lmstudio-bug-tracker#842).
            kwargs["chat_template"] = "{{ messages | no_such_filter }}"
        prompt = self.tokenizer.apply_chat_template(normalized, add_generation_prompt=True, **kwargs)
        if isinstance(prompt, str):
            prompt = self.tokenize(prompt)
        if len(prompt) >= self.context_length:
            raise ValueError(
                f"The number of tokens to keep from the initial prompt ({len(prompt)}) is greater than "
                f"the context length ({self.context_length})."
            )
        return list(prompt)

    # -- generation -------------------------------------------------------------------------
    def _forcing_processor(self, script: str, prompt_len: int):
        """A logits processor that makes the model emit exactly `script`, then EOS.

        The forward passes still run, so token counts and timings stay real."""
        import mlx.core as mx

        forced = self.tokenize(script) + [next(iter(self.tokenizer.eos_token_ids))]

        def process(tokens, logits):
            position = tokens.size - prompt_len
            target = forced[min(position, len(forced) - 1)]
            vocab = mx.arange(logits.shape[-1])
            forced_logits = mx.where(vocab == target, mx.array(0.0, logits.dtype), mx.array(-mx.inf, logits.dtype))
            return mx.broadcast_to(forced_logits, logits.shape)

        return process

    def _schema_processor(self, schema: dict, prompt_len: int):
        """A logits processor that masks every token the JSON schema's grammar does not allow next.

        LM Studio constrains MLX models with Outlines; llguidance gives the same guarantee here."""
        import llguidance
        import llguidance.hf
        import llguidance.numpy as ll_numpy
        import mlx.core as mx
        import numpy as np

        if self._ll_tokenizer is None:
            self._ll_tokenizer = llguidance.hf.from_tokenizer(self.tokenizer._tokenizer)
        # Compact JSON: a random-weight model would otherwise spend its whole budget on whitespace.
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        matcher = llguidance.LLMatcher(self._ll_tokenizer, grammar)
        if matcher.is_error():
            raise ValueError(f"Invalid JSON schema: {matcher.get_error()}")
        vocab = self._ll_tokenizer.vocab_size
        bitmask = ll_numpy.allocate_token_bitmask(1, vocab)
        consumed = 0

        def process(tokens, logits):
            nonlocal consumed
            generated = tokens.size - prompt_len
            while consumed < generated:
                matcher.consume_token(int(tokens[prompt_len + consumed].item()))
                consumed += 1
            ll_numpy.fill_next_token_bitmask(matcher, bitmask, 0)
            allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:vocab].astype(bool)
            if logits.shape[-1] > vocab:  # padded embedding rows are never valid tokens
                allowed = np.concatenate([allowed, np.zeros(logits.shape[-1] - vocab, dtype=bool)])
            return mx.where(mx.array(allowed), logits, mx.array(-mx.inf, logits.dtype))

        return process

    def generate_raw(self, prompt: list[int], params: GenerationParams, cancel: threading.Event | None = None):
        """Yield responses from mlx_lm.stream_generate, each step under MLX_LOCK (reentrant: a serial
        prediction already holds it for its whole run)."""
        with MLX_LOCK:
            steps = self._generator(prompt, params)
        while True:
            with MLX_LOCK:
                response = next(steps, None)
            if response is None:
                return
            yield response
            if cancel is not None and cancel.is_set():
                return

    def _generator(self, prompt: list[int], params: GenerationParams):
        import mlx.core as mx
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        # LM Studio samples with a random seed when a request sets none. The stand-in derives one from the prompt
        # instead, so that the same request gets the same answer and a test run is reproducible (its random-weight
        # models write arbitrary text either way; a test that needs particular text scripts it).
        mx.random.seed(params.seed if params.seed is not None else zlib.crc32(repr(prompt).encode()))
        sampler = make_sampler(
            temp=params.temperature,
            top_p=params.top_p or 0.0,
            min_p=params.min_p or 0.0,
            top_k=params.top_k or 0,
        )
        processors = make_logits_processors(
            repetition_penalty=params.repeat_penalty,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
        )
        if params.script is not None:
            processors = [self._forcing_processor(params.script, len(prompt))]
        elif params.json_schema is not None:
            processors = [*processors, self._schema_processor(params.json_schema, len(prompt))]
        max_tokens = params.max_tokens if params.max_tokens and params.max_tokens > 0 else self.context_length
        max_tokens = min(max_tokens, self.context_length - len(prompt))
        return stream_generate(
            self.model,
            self.tokenizer,
            mx.array(prompt),
            max_tokens=max_tokens,
            sampler=sampler,
            logits_processors=processors,
        )

    def chat(
        self,
        messages: list[dict],
        *,
        tools: list[dict] | None = None,
        params: GenerationParams | None = None,
        cancel: threading.Event | None = None,
        reasoning: bool | None = None,
    ) -> Iterator[Piece | Finish]:
        """Run one chat prediction: yields Pieces as they are produced, then one Finish."""
        params = params or GenerationParams()
        reasoning = self.entry.reasoning if reasoning is None else reasoning
        with contextlib.nullcontext() if params.parallel else MLX_LOCK:
            start = time.perf_counter()
            with MLX_LOCK:
                prompt = self.build_prompt(messages, tools, broken_template=params.broken_template)
            if tools and self.native_tools:
                markers = (self.tokenizer.tool_call_start, self.tokenizer.tool_call_end)
                parser = self.tokenizer.tool_parser
            elif tools:
                markers = (FALLBACK_TOOL_START, FALLBACK_TOOL_END)
                parser = lambda text, _tools: json.loads(text.strip())  # noqa: E731
            else:
                markers, parser = None, None
            splitter = OutputSplitter(reasoning=reasoning, tool_markers=markers, tool_parser=parser, tools=tools)
            stops = [s for s in params.stop if s]
            text = ""  # raw text generated so far, after stop truncation
            pending = ""  # generated text not yet released (could be the start of a stop string)
            first_token_at = None
            last = None
            stop_reason = None
            for response in self.generate_raw(prompt, params, cancel):
                last = response
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                pending += response.text
                hit = min(((pending.find(s), s) for s in stops if s in pending), default=None)
                if hit is not None:
                    pending = pending[: hit[0]]
                    stop_reason = "stopStringFound"
                keep = 0 if hit is not None or response.finish_reason else OutputSplitter._holdback(pending, stops)
                release, pending = pending[: len(pending) - keep], pending[len(pending) - keep :]
                text += release
                yield from splitter.feed(release)
                if stop_reason:
                    break
            if cancel is not None and cancel.is_set() and stop_reason is None:
                stop_reason = "userStopped"
            text += pending
            yield from splitter.feed(pending, final=True)
            end = time.perf_counter()
        generated = last.generation_tokens if last else 0
        if last is not None and stop_reason is None:
            if last.finish_reason == "stop":
                stop_reason = "eosFound"
                generated -= 1  # the EOS token itself is not part of the completion
            else:
                stop_reason = "maxPredictedTokensReached"
        stop_reason = stop_reason or "eosFound"
        first_token_at = first_token_at or end
        generation_time = max(end - first_token_at, 1e-9)
        finish_reason = "length" if stop_reason == "maxPredictedTokensReached" else "stop"
        if splitter.tool_calls:
            finish_reason = "tool_calls"
        yield Finish(
            finish_reason=finish_reason,
            stop_reason=stop_reason,
            prompt_tokens=len(prompt),
            completion_tokens=generated,
            tokens_per_second=(last.generation_tps if last else 0.0),
            time_to_first_token=first_token_at - start,
            generation_time=generation_time,
            text=text,
        )


class EmbeddingEngine:
    """A loaded mlx-embeddings model; returns normalized sentence embeddings."""

    kind = "embeddings"

    def __init__(self, entry, context_length: int):
        from mlx_embeddings import load

        self.entry = entry
        self.context_length = context_length
        with MLX_LOCK:
            self.model, self.tokenizer = load(str(entry.path))

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Embeddings for `texts` and the number of (non-padding) tokens processed."""
        with MLX_LOCK:
            inputs = self.tokenizer.batch_encode_plus(
                texts, return_tensors="mlx", padding=True, truncation=True, max_length=self.context_length
            )
            output = self.model(inputs["input_ids"], attention_mask=inputs["attention_mask"])
            vectors = output.text_embeds.tolist()
            tokens = int(inputs["attention_mask"].sum().item())
        return vectors, tokens


def load_engine(entry, context_length: int):
    if entry.type == "embeddings":
        return EmbeddingEngine(entry, context_length)
    return ChatEngine(entry, context_length)
