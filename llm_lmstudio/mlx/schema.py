"""`--schema` for native MLX models: a logits processor that lets through only the tokens a JSON schema's grammar
allows next (llguidance), so the answer always parses and validates. Imports llguidance, mlx and numpy lazily."""

from __future__ import annotations


class SchemaConstraint:
    """Masks the logits of every token the schema does not allow at this point of the answer.

    mlx-lm calls a logits processor with the tokens seen so far (the prompt tokens it processed, then one
    more per step). With speculative decoding the tail can be rewound, so the grammar state is kept in
    step by rolling back to the longest prefix it shares with what mlx-lm passes, never by counting calls."""

    def __init__(self, grammar_tokenizer, schema: dict):
        import llguidance

        # Compact JSON: whitespace between tokens is never what a schema asks for, and unconstrained it
        # lets a model spend its whole token budget on indentation.
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        self.matcher = llguidance.LLMatcher(grammar_tokenizer, grammar)
        if self.matcher.is_error():
            raise ValueError(" ".join(line.strip() for line in self.matcher.get_error().splitlines()))
        self.vocab_size = grammar_tokenizer.vocab_size
        self.prompt_length: int | None = None
        self.consumed: list[int] = []

    def __call__(self, tokens, logits):
        import llguidance.numpy as ll_numpy
        import mlx.core as mx
        import numpy as np

        if self.prompt_length is None:
            self.prompt_length = tokens.size  # the first call sees only prompt tokens
        answer = tokens[self.prompt_length :].tolist() if tokens.size > self.prompt_length else []
        self._follow(answer)
        bitmask = ll_numpy.allocate_token_bitmask(1, self.vocab_size)
        ll_numpy.fill_next_token_bitmask(self.matcher, bitmask, 0)
        allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[: self.vocab_size].astype(bool)
        if logits.shape[-1] > self.vocab_size:  # embedding rows past the vocabulary are never valid tokens
            allowed = np.concatenate([allowed, np.zeros(logits.shape[-1] - self.vocab_size, dtype=bool)])
        return mx.where(mx.array(allowed[: logits.shape[-1]]), logits, mx.array(-mx.inf, logits.dtype))

    def _follow(self, answer: list[int]) -> None:
        keep = 0
        for ours, theirs in zip(self.consumed, answer):
            if ours != theirs:
                break
            keep += 1
        if keep < len(self.consumed):
            self.matcher.rollback(len(self.consumed) - keep)
            del self.consumed[keep:]
        new = answer[keep:]
        # A value that cannot go on (a closed object, the largest number allowed) stops the matcher by itself;
        # the end-of-text token mlx-lm feeds after it is then not the grammar's to judge.
        if new and not self.matcher.is_stopped():
            self.matcher.consume_tokens(new)
            self.consumed.extend(new)

    def complete(self) -> bool:
        """Whether the answer so far is a whole value of the schema."""
        return not self.matcher.is_error() and (self.matcher.is_accepting() or self.matcher.is_stopped())
