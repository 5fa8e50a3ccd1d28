"""Command line entry of the stand-in server: `python -m tests.fake_lmstudio [--models-dir DIR] [--port 1234]`.
Starts one uvicorn server on loopback and reports its port; it must never bind beyond 127.0.0.1 or outlive its parent."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path


def _exit_with_parent(parent_pid: int) -> None:
    # A crashed test run must not leave a server behind holding a port and memory.
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(0)


def _warm_imports() -> None:
    # Import the engines before serving: transformers' lazy module is not thread-safe, and a load
    # importing mlx_embeddings while another thread imports mlx_lm fails with an ImportError.
    import mlx_embeddings  # noqa: F401
    import mlx_lm  # noqa: F401


class _ExpectedCutFilter(logging.Filter):
    # The `cut` fault drops connections on purpose; uvicorn's complaint about it is not news.
    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


async def _serve(args) -> None:
    import uvicorn

    from .app import create_app
    from .state import LMStudioState

    _warm_imports()
    state = LMStudioState(Path(args.models_dir), generation=args.lmstudio_version)
    app = create_app(state)
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and an accepted socket
    # inherits this one's. Without it every response whose body follows its headers in a second write waited ~40 ms
    # for the client's delayed ACK (Nagle), which no real server makes its clients wait.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level=args.log_level, lifespan="off", timeout_graceful_shutdown=1, access_log=False
    )
    server = uvicorn.Server(config)
    logging.getLogger("uvicorn.error").addFilter(_ExpectedCutFilter())
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
            raise SystemExit("uvicorn exited before it started")
        await asyncio.sleep(0.01)
    if args.ready_file:
        ready = Path(args.ready_file)
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": port, "pid": os.getpid()}))
        tmp.replace(ready)  # atomic: the launcher never reads a half-written file
    print(f"fake LM Studio listening on http://{args.host}:{port}", file=sys.stderr, flush=True)
    await task
    state.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_lmstudio")
    parser.add_argument(
        "--models-dir", help="an LM Studio-style models folder (default: the tiny test models, generated into a temporary folder)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument(
        "--lmstudio-version",
        choices=("0.3.5", "0.3.15", "0.4"),
        default=os.environ.get("FAKE_LMSTUDIO_VERSION", "0.4"),
        help="the LM Studio generation to act as (see state.GENERATIONS); also $FAKE_LMSTUDIO_VERSION",
    )
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost"):
        parser.error("the stand-in only listens on loopback")
    if args.parent_pid:
        threading.Thread(target=_exit_with_parent, args=(args.parent_pid,), daemon=True).start()
    if not args.models_dir:
        import tempfile

        from .models_dir import build_models_dir

        print("generating the tiny test models (seconds; cached for next time)...", file=sys.stderr, flush=True)
        args.models_dir = str(build_models_dir(Path(tempfile.mkdtemp(prefix="fake-lmstudio-models-"))))
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
