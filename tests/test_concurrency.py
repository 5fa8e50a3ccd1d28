"""Eight real `llm` processes prompting at once through the plugin (chat and router) against the stand-in, which
answers them in parallel as LM Studio 0.4 does: every prompt and answer lands in logs.db, every routed attempt in
router.db, none is lost, none hits "database is locked", all within bounded time. llm's own log write is run with its
lock taken first (tests/llm_immediate_log.py: llm 0.36 fails it otherwise, a bug of llm reported in docs/testing.md)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from llm.cli import cli

from llm_lmstudio.core import settings
from tests.fast_logs import logs_db  # noqa: F401 - a fixture

LLM_WITH_IMMEDIATE_LOG = [sys.executable, str(Path(__file__).with_name("llm_immediate_log.py"))]

LLAMA = "lmstudio/test-org/tiny-llama"
PROCESSES = 8
# Eight Python start-ups (llm imports ~4 s of CPU each) on a shared two-core machine, plus generation.
WALL_CLOCK_LIMIT = 180.0


@pytest.mark.slow  # eight llm processes
def test_eight_llm_processes_prompting_at_once_all_land_in_logs_db(lmstudio, user_path, logs_db):
    (user_path / "lmstudio-router.yaml").write_text("prefer:\n  creative: [tiny-llama]\n")
    # Cache the model list, as any earlier `llm` command would have: registration then needs no network.
    assert CliRunner().invoke(cli, ["models"]).exit_code == 0
    env = dict(
        os.environ,
        LLM_USER_PATH=str(user_path),
        LMSTUDIO_BASE_URL=lmstudio.base_url,
        LMSTUDIO_CACHE_TTL="600",
        LMSTUDIO_TIMEOUT="120",
    )
    prompts = [f"Write a poem about number {i}" for i in range(PROCESSES)]
    answers = [f"Answer number {i}" for i in range(PROCESSES)]
    lmstudio.script(*answers)  # one per prediction, in arrival order: each must land exactly once
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            # Half go straight to the model, half through the router (which also writes router.db).
            [*LLM_WITH_IMMEDIATE_LOG, "-m", LLAMA if i % 2 == 0 else "router", prompt],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i, prompt in enumerate(prompts)
    ]
    results = []
    for process in processes:
        remaining = max(WALL_CLOCK_LIMIT - (time.monotonic() - started), 1.0)
        try:
            stdout, stderr = process.communicate(timeout=remaining)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise AssertionError(f"the {PROCESSES} processes did not finish within {WALL_CLOCK_LIMIT:g} s")
        results.append((process.returncode, stdout, stderr))
    elapsed = time.monotonic() - started

    for code, stdout, stderr in results:
        assert "database is locked" not in stderr
        assert code == 0 and stdout.strip(), stderr
    logged = json.loads(CliRunner().invoke(cli, ["logs", "--json", "-n", "0"]).output)
    assert sorted(row["prompt"] for row in logged) == sorted(prompts)
    by_prompt = {row["prompt"]: row for row in logged}
    for prompt, (_, stdout, _) in zip(prompts, results):
        assert by_prompt[prompt]["response"].strip() == stdout.strip()
    assert sorted(row["response"].strip() for row in logged) == sorted(answers)
    routed = [row for row in logged if row["model"] == "lmstudio-router"]
    assert len(routed) == PROCESSES // 2 and all(row["resolved_model"] == LLAMA for row in routed)
    with sqlite3.connect(settings.plugin_dir() / "router.db") as conn:
        # Every answer is recorded (metrics count failures llm's log cannot hold); the router's own attempts
        # carry its turn id.
        routed_attempts = conn.execute(
            "select model, ok from lmstudio_attempts where router_turn_id is not null"
        ).fetchall()
        assert routed_attempts == [(LLAMA, 1)] * (PROCESSES // 2)
    assert elapsed < WALL_CLOCK_LIMIT
