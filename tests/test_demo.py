"""The ways to try the plugin without LM Studio: `scripts/demo.py` (and `--keep`, which leaves the stand-in and
the llm user folder running), and the stand-in started by hand with `python -m tests.fake_lmstudio`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_keep_leaves_a_working_stand_in_and_user_folder_and_shows_what_it_runs(spawned):
    result = subprocess.run(
        [sys.executable, "scripts/demo.py", "--keep"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    pid = int(re.search(r"kill (\d+);", result.stdout).group(1))
    try:
        # What it prints is what it ran: the query is run with sqlite-utils, as printed.
        assert re.search(r"^\$ sqlite-utils \S+/llm/logs\.db 'select model, resolved_model", result.stdout, re.M)
        assert re.search(r"^lmstudio-router +lmstudio/test-org/\S+ ", result.stdout, re.M)
        exports = re.search(r"export LMSTUDIO_BASE_URL=(\S+) LLM_USER_PATH=(\S+)", result.stdout)
        base_url, user = exports.groups()
        assert httpx.get(f"{base_url}/lmstudio-greeting", timeout=10).json() == {"lmstudio": True}
        assert (Path(user) / "logs.db").is_file()
    finally:
        os.kill(pid, signal.SIGTERM)
        assert spawned.wait(pid, timeout=30), "the kept stand-in did not stop on SIGTERM"
        work = re.search(r"rm -rf (\S+)", result.stdout)
        if work:
            shutil.rmtree(work.group(1), ignore_errors=True)


@pytest.mark.slow
def test_the_stand_in_started_by_hand_generates_its_models_and_serves_them(tmp_path):
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_lmstudio", "--port", "0", "--ready-file", str(ready)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.is_file():
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the stand-in did not start within 120 s"
            time.sleep(0.1)
        port = json.loads(ready.read_text())["port"]
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
        assert {"test-org/tiny-llama", "test-org/tiny-qwen-tools"} <= {m["id"] for m in models["data"]}
    finally:
        process.terminate()
        process.wait(timeout=10)
