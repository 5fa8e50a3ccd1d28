"""What every benchmark shares: the repo on sys.path, a throw-away llm sandbox, timing with medians, JSON output.
Holds no figures and no benchmark logic; never reads outside the repository."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
LLM = str(Path(sys.executable).parent / "llm")  # the llm of the Python running the benchmark
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so that `from tests import model_factory` and `llm_lmstudio` resolve


def sandbox(prefix: str) -> Path:
    """A fresh llm user dir with no LM Studio server, no LM Studio models folder and no hub cache, set in
    os.environ; call it before llm is imported (the plugin reads these on every lookup)."""
    path = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))
    os.environ.update(
        LLM_USER_PATH=str(path / "llm"),
        LMSTUDIO_MODELS_DIR=str(path / "no-lmstudio"),
        HF_HUB_CACHE=str(path / "no-hub"),
        LMSTUDIO_BASE_URL="http://127.0.0.1:9",  # a closed port: only native models get registered
    )
    return path


def median(values) -> float:
    return statistics.median(list(values))


def ms(seconds: float, digits: int = 1) -> float:
    return round(seconds * 1000, digits)


def ratio(value: float, baseline: float) -> float:
    return round(value / baseline, 3)


class Clock:
    """Wall and CPU seconds of a `with` block. CPU time is reported beside wall time because on a shared
    machine other processes stretch wall time at random, while this process's CPU time is what the
    plugin's own overhead would change."""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def samples(fn, runs: int, warmup: int = 1) -> list[float]:
    """Wall seconds of fn() over `runs` calls, after `warmup` calls that are not counted."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def time_command(args: list[str], env: dict | None = None) -> float:
    """Wall seconds of one command; a failing command stops the benchmark with its stderr."""
    started = time.perf_counter()
    proc = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return elapsed


def machine() -> str:
    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def write_json(name: str, result: dict) -> Path:
    """benchmarks/out/<name>.json (run_all picks it up); prints where it went."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return path
