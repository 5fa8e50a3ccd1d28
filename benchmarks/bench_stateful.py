"""Benchmark: turn 10 of a conversation continued server-side (/v1/responses with previous_response_id) against the
same turn with the full history (chat completions, `-o stateful false`), on the stand-in, in one run: request bytes
and client time to first token (streamed, Python API, warm process). Both conversations get the same scripted answers.
The stand-in rebuilds the whole conversation and prefills it either way (no KV-cache reuse), so the time saved here
is the client's and the wire's: encoding, sending and parsing the history, not the model's.

Then the same ten turns against a server that re-reads a chain doubling every continued turn (the stand-in's
`responses_growth` quirk, lmstudio-bug-tracker#2074): the input tokens the server reports at each turn, both ways. With
the plugin's guard the stateful conversation stops continuing server-side once the re-read shows, so its turn 10 costs
what resending the history costs (target: <= 1.1x).

Run: .venv/bin/python benchmarks/bench_stateful.py [--turns 10] [--chars 300] [--runs 7]   (writes benchmarks/out/stateful.json)
"""

from __future__ import annotations

import time

from _common import arguments, interleave, machine, median, ms, ratio, stand_in, write_json

MODEL = "lmstudio/test-org/tiny-llama"
MODES = {"stateful": True, "full_history": False}  # the `stateful` option of each path


def sentence(turn: int, chars: int, who: str) -> str:
    words = f"{who} {turn}: the quick brown fox jumps over the lazy dog and keeps on running through the field. "
    return (words * (chars // len(words) + 1))[:chars]


def conversation_at(model, server, turns: int, chars: int, stateful: bool):
    """A conversation whose first turns-1 turns are done, and the options each of its turns uses."""
    options = {"max_tokens": 8, "temperature": 0.0, "stateful": stateful}
    conversation = model.conversation()
    for turn in range(1, turns):
        server.script(sentence(turn, chars, "answer"))
        conversation.prompt(sentence(turn, chars, "user"), **options).text()
    return conversation, options


def last_turn(server, conversation, options, text: str) -> tuple[float, int, str]:
    """Client time to first token, request bytes and endpoint of one more turn, then forget that turn (the next
    run asks it again: with the same previous_response_id, or the same history)."""
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


def growth(server, model, turns: int, chars: int) -> dict:
    """Each path's server-reported input tokens and endpoint, turn by turn, under the #2074 re-read."""
    server.configure(responses_growth=True)
    found = {}
    for mode, stateful in MODES.items():
        server.clear_requests()
        conversation, reads = model.conversation(), []
        for turn in range(1, turns + 1):
            server.script(sentence(turn, chars, "answer"))
            response = conversation.prompt(sentence(turn, chars, "user"), max_tokens=8, temperature=0.0, stateful=stateful)
            response.text()
            reads.append(response.usage().input)
        paths = [r["path"] for r in server.requests() if r["path"] in ("/v1/responses", "/api/v0/chat/completions")]
        found[mode] = {"input_tokens": reads, "endpoints": paths}
    server.configure(responses_growth=False)
    return found


def main() -> None:
    args = arguments(__doc__, turns=(10, "measure this turn"), chars=(300, "characters per user turn and per answer"),
                     runs=(7, "timed repeats of the last turn, the two paths in turn"))
    with stand_in(include_minilm=False) as server:
        import llm

        model = llm.get_model(MODEL)
        text = sentence(args.turns, args.chars, "user")
        paths = {}
        for mode, stateful in MODES.items():
            conversation, options = conversation_at(model, server, args.turns, args.chars, stateful)
            paths[mode] = lambda c=conversation, o=options: last_turn(server, c, o, text)
        found = interleave(paths, args.runs)
        grown = growth(server, model, args.turns, args.chars)
    rows = {}
    for mode, runs in found.items():
        rows[mode] = {"endpoint": runs[0][2], "request_bytes": runs[0][1],
                      "ttft_ms": ms(median(r[0] for r in runs)), "ttft_max_ms": ms(max(r[0] for r in runs))}
        print(f"  turn {args.turns}, {mode:12s} {rows[mode]['endpoint']:26s} request {rows[mode]['request_bytes']:6d} B"
              f"   client TTFT {rows[mode]['ttft_ms']:6.1f} ms (max {rows[mode]['ttft_max_ms']} ms)", flush=True)
    ratios = {
        "request_bytes": ratio(rows["stateful"]["request_bytes"], rows["full_history"]["request_bytes"]),
        "ttft": ratio(rows["stateful"]["ttft_ms"], rows["full_history"]["ttft_ms"]),
    }
    print(f"  stateful / full history: request bytes {ratios['request_bytes']}x, client TTFT {ratios['ttft']}x")
    stateful, full = grown["stateful"], grown["full_history"]
    server_side = [n + 1 for n, path in enumerate(stateful["endpoints"]) if path == "/v1/responses"]
    for mode, run in grown.items():
        print(f"  #2074 re-read, {mode:12s} input tokens by turn: {run['input_tokens']}")
    turn_ratio = ratio(stateful["input_tokens"][-1], full["input_tokens"][-1])
    total_ratio = ratio(sum(stateful["input_tokens"]), sum(full["input_tokens"]))
    print(f"  #2074 re-read: server-side on turns {server_side}, then resent; turn {args.turns} input tokens stateful / "
          f"full history {turn_ratio}x (target <= 1.1), all {args.turns} turns {total_ratio}x")
    write_json("stateful", {"machine": machine(), "turn": args.turns, "chars_per_message": args.chars,
                            "runs": args.runs, "modes": rows, "stateful_over_full_history": ratios,
                            "growth_2074": {"modes": grown, "server_side_turns": server_side,
                                            "last_turn_input_ratio": turn_ratio, "all_turns_input_ratio": total_ratio}})


if __name__ == "__main__":
    main()
