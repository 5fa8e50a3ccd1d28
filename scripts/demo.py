"""The demo behind scripts/demo: a stand-in LM Studio on a generated model, driven through the real `llm` CLI.
`--keep` leaves the stand-in running and the user folder in place, and says how to use and stop them."""

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_lmstudio import FakeLMStudio  # noqa: E402
from tests.fake_lmstudio.models_dir import build_models_dir  # noqa: E402

BIN = Path(sys.executable).parent
QUERY = "select model, resolved_model, input_tokens, output_tokens, duration_ms from turns"


def step(program: str, *args: str, env: dict) -> None:
    """Print the command as a user would type it, then run exactly that."""
    print(f"\n$ {program} {shlex.join(args)}", flush=True)
    subprocess.run([str(BIN / program), *args], env=env, check=True)


def demo(work: Path, keep: bool) -> None:
    print("Generating tiny test models (random weights: the text is gibberish, the plumbing is real)...")
    models = build_models_dir(work / "models", include_minilm=False)
    server = FakeLMStudio(models, keep_running=keep).start()
    try:
        user = work / "llm"
        env = dict(os.environ, LMSTUDIO_BASE_URL=server.base_url, LLM_USER_PATH=str(user))
        print(f"LM Studio stand-in listening at {server.base_url}")
        step("llm", "models", "-q", "lmstudio", env=env)
        step("llm", "-m", "lmstudio/test-org/tiny-llama", "Hello", "-o", "max_tokens", "12", "-u", env=env)
        step("llm", "lmstudio", "ps", env=env)
        step("llm", "lmstudio", "route", "Write a Python function that reverses a list", env=env)
        step("llm", "-m", "router", "Write a Python function that reverses a list", "-o", "max_tokens", "12", env=env)
        step("llm", "logs", "-n", "2", "--short", env=env)
        step("sqlite-utils", str(user / "logs.db"), QUERY, "--table", env=env)
    finally:
        if not keep:
            server.stop()
    if keep:
        print(
            f"\nThe stand-in keeps running (process {server.process.pid}) and the user folder stays in {user}.\n"
            "Explore with:\n"
            f"  export LMSTUDIO_BASE_URL={server.base_url} LLM_USER_PATH={shlex.quote(str(user))}\n"
            f"  {shlex.quote(str(BIN / 'llm'))} chat -m lmstudio/test-org/tiny-llama\n"
            f"Stop it and clean up with:\n  kill {server.process.pid}; rm -rf {shlex.quote(str(work))}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/demo")
    parser.add_argument("--keep", action="store_true", help="leave the stand-in running and the user folder in place")
    args, _ = parser.parse_known_args()
    work = Path(tempfile.mkdtemp(prefix="llm-lmstudio-demo-"))
    try:
        demo(work, args.keep)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
