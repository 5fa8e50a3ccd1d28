"""The demo behind scripts/demo: a stand-in LM Studio on a generated model, driven through the real `llm` CLI."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_lmstudio import FakeLMStudio  # noqa: E402
from tests.fake_lmstudio.models_dir import build_models_dir  # noqa: E402

LLM = str(Path(sys.executable).parent / "llm")


def step(*args, env):
    print(f"\n$ llm {' '.join(args)}", flush=True)
    subprocess.run([LLM, *args], env=env, check=True)


def main():
    with tempfile.TemporaryDirectory(prefix="llm-lmstudio-demo-") as work:
        print("Generating tiny test models (random weights: the text is gibberish, the plumbing is real)...")
        models = build_models_dir(Path(work) / "models", include_minilm=False)
        with FakeLMStudio(models) as server:
            env = dict(os.environ, LMSTUDIO_BASE_URL=server.base_url, LLM_USER_PATH=str(Path(work) / "llm"))
            print(f"LM Studio stand-in listening at {server.base_url}")
            step("models", "-q", "lmstudio", env=env)
            step("-m", "lmstudio/test-org/tiny-llama", "Hello", "-o", "max_tokens", "12", "-u", env=env)
            step("lmstudio", "ps", env=env)
            step("lmstudio", "route", "Write a Python function that reverses a list", env=env)
            step("-m", "router", "Write a Python function that reverses a list", "-o", "max_tokens", "12", env=env)
            step("logs", "-n", "2", "--short", env=env)
            print("\n$ sqlite3 logs.db 'select model, resolved_model, input_tokens, output_tokens, duration_ms from turns'")
            import sqlite_utils

            db = sqlite_utils.Database(Path(work) / "llm" / "logs.db")
            for row in db.query("select model, resolved_model, input_tokens, output_tokens, duration_ms from turns"):
                print(row)


if __name__ == "__main__":
    main()
