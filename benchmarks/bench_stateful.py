"""Benchmark: turn 10 of a conversation continued server-side (/v1/responses with previous_response_id) against the
same turn with the full history (chat completions, `-o stateful false`), on the stand-in, in one run: request bytes
and client time to first token (streamed, Python API, warm process). Both conversations get the same scripted answers.
The stand-in rebuilds the whole conversation and prefills it either way (no KV-cache reuse), so the time saved here
is the client's and the wire's: encoding, sending and parsing the history, not the model's.

Run: .venv/bin/python benchmarks/bench_stateful.py [--turns 10] [--chars 300] [--runs 7]   (writes benchmarks/out/stateful.json)
"""

from __future__ import annotations

import argparse
import os
import time

from _common import machine, median, ms, ratio, sandbox, write_json

MODEL = "lmstudio/test-org/tiny-llama"


def sentence(turn: int, chars: int, who: str) -> str:
    words = f"{who} {turn}: the quick brown fox jumps over the lazy dog and keeps on running through the field. "
    return (words * (chars // len(words) + 1))[:chars]


def conversation_at(model, server, turns: int, chars: int, stateful: bool):
    """A conversation whose first turns-1 turns are done; returns it and the options each turn uses."""
    options = {"max_tokens": 8, "temperature": 0.0, "stateful": stateful}
    conversation = model.conversation()
    for turn in range(1, turns):
        server.script(sentence(turn, chars, "answer"))
        conversation.prompt(sentence(turn, chars, "user"), **options).text()
    return conversation, options


def last_turn(server, conversation, options, text: str) -> tuple[float, int, str]:
    """Client time to first token and request bytes of one more turn, then forget it (the next run asks it again)."""
    server.script("ok " * 6)
    server.clear_requests()
    started = time.perf_counter()
    chunks = iter(conversation.prompt(text, stream=True, **options))
    next(chunks)
    ttft = time.perf_counter() - started
    for _ in chunks:
        pass
    conversation.responses.pop()
    [request] = [r for r in server.requests() if r["path"] in ("/v1/responses", "/api/v0/chat/completions")]
    return ttft, request["body_size"], request["path"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=10, help="measure this turn (default 10)")
    parser.add_argument("--chars", type=int, default=300, help="characters per user turn and per answer (default 300)")
    parser.add_argument("--runs", type=int, default=7, help="timed repeats of the last turn (default 7)")
    args = parser.parse_args()
    root = sandbox("stateful")
    import llm

    from tests.fake_lmstudio import FakeLMStudio
    from tests.fake_lmstudio.models_dir import build_models_dir

    with FakeLMStudio(build_models_dir(root / "models")) as server:
        os.environ["LMSTUDIO_BASE_URL"] = server.base_url
        model = llm.get_model(MODEL)
        rows = {}
        for mode, stateful in (("stateful", True), ("full_history", False)):
            conversation, options = conversation_at(model, server, args.turns, args.chars, stateful)
            text = sentence(args.turns, args.chars, "user")
            last_turn(server, conversation, options, text)  # warm-up
            runs = [last_turn(server, conversation, options, text) for _ in range(args.runs)]
            rows[mode] = {
                "endpoint": runs[0][2],
                "request_bytes": runs[0][1],
                "ttft_ms": ms(median(r[0] for r in runs)),
                "ttft_max_ms": ms(max(r[0] for r in runs)),
            }
            print(f"  turn {args.turns}, {mode:12s} {rows[mode]['endpoint']:26s} request {rows[mode]['request_bytes']:6d} B"
                  f"   client TTFT {rows[mode]['ttft_ms']:6.1f} ms (max {rows[mode]['ttft_max_ms']} ms)", flush=True)
    ratios = {
        "request_bytes": ratio(rows["stateful"]["request_bytes"], rows["full_history"]["request_bytes"]),
        "ttft": ratio(rows["stateful"]["ttft_ms"], rows["full_history"]["ttft_ms"]),
    }
    print(f"  stateful / full history: request bytes {ratios['request_bytes']}x, client TTFT {ratios['ttft']}x")
    write_json("stateful", {"machine": machine(), "turn": args.turns, "chars_per_message": args.chars,
                            "runs": args.runs, "modes": rows, "stateful_over_full_history": ratios})


if __name__ == "__main__":
    main()
