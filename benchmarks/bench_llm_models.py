"""Benchmark: the plugin's share of a whole `llm models` process, as a user pays it.

Paired runs in one loop: `llm models` with the plugins loaded, and the same command with `LLM_LOAD_PLUGINS=` (llm
loads no plugin, and so also skips its scan of installed plugins' entry points, ~30 ms here, which the plugin's
share therefore includes). Each pair runs back to back with the LM Studio server down (connection refused) and
hung (accepts, never answers), with the model-list cache fresh (what a user has between commands) and with none
(the first command after installing, or after the cache expired). Reported: the median of the per-pair
differences, wall and CPU, beside the baseline's median; target: the plugin's share <= 60 ms.

Run: .venv/bin/python benchmarks/bench_llm_models.py [--runs N]   (writes benchmarks/out/llm_models.json)
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from _common import LLM, arguments, machine, median, ms, write_json

from tests.fake_lmstudio.faults import HungServer, RefusedPort


def run_once(env: dict) -> tuple[float, float]:
    """Wall and CPU seconds (the child's user + system time) of one `llm models`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([LLM, "models"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"llm models failed: {proc.stderr.strip()[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def end_refresh_workers(user_dir: str) -> int:
    """End the detached model-list workers a run left for this user directory (a server never listed before is
    listed in the background after a short wait): their start-up would otherwise run during the next baseline."""
    ended = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            if b"llm_lmstudio.lmstudio.refresh_worker" not in command:
                continue
            if f"LLM_USER_PATH={user_dir}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
                ended += 1
        except (OSError, ProcessLookupError):
            continue
    return ended


def paired(url: str, cache: str, runs: int) -> dict:
    with tempfile.TemporaryDirectory() as user_dir:
        env = dict(os.environ, LLM_USER_PATH=user_dir, LMSTUDIO_BASE_URL=url)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed plugin runs from bytecode
        baseline_env = dict(env, LLM_LOAD_PLUGINS="")
        run_once(env)  # writes bytecode and, with a fresh cache, the model-list cache
        plugin_wall, plugin_cpu, base_wall, base_cpu = [], [], [], []
        for _ in range(runs):
            if cache == "none":
                for name in ("catalog.json", "catalog.refreshing"):
                    (Path(user_dir) / "lmstudio" / name).unlink(missing_ok=True)
            wall, cpu = run_once(env)
            plugin_wall.append(wall)
            plugin_cpu.append(cpu)
            end_refresh_workers(user_dir)
            wall, cpu = run_once(baseline_env)
            base_wall.append(wall)
            base_cpu.append(cpu)
    added_wall = [p - b for p, b in zip(plugin_wall, base_wall)]
    added_cpu = [p - b for p, b in zip(plugin_cpu, base_cpu)]
    return {
        "baseline_wall_ms": ms(median(base_wall)),
        "added_wall_ms": ms(median(added_wall)),
        "added_cpu_ms": ms(median(added_cpu)),
        "ratio_wall": round(median(plugin_wall) / median(base_wall), 3),
    }


def main():
    args = arguments(__doc__, runs=15)
    print(f"{machine()}; load average {os.getloadavg()[0]:.2f}; {args.runs} pairs each")
    refused, hung = RefusedPort(), HungServer()
    rows = []
    try:
        for state, url in (("down", refused.url), ("hung", hung.url)):
            for cache in ("fresh", "none"):
                row = {"server": state, "cache": cache, **paired(url, cache, args.runs)}
                rows.append(row)
                print(f"  server {state:4s} cache {cache:5s}: llm models alone {row['baseline_wall_ms']:7.1f} ms; "
                      f"plugin adds {row['added_wall_ms']:6.1f} ms wall, {row['added_cpu_ms']:6.1f} ms CPU "
                      f"({row['ratio_wall']}x)", flush=True)
    finally:
        refused.close()
        hung.close()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    write_json("llm_models", {"machine": machine(), "runs": args.runs, "rows": rows})


if __name__ == "__main__":
    main()
