"""Runs every benchmark (benchmarks/bench_*.py, eval_*.py) and writes benchmarks/RESULTS.md: the machine, then each
script's command, outcome and printed figures. Used by benchmarks/run_all; measures nothing itself."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"  # docs/mlx-cpu.md

# Quick mode: sizes small enough for a few minutes on 2 cores; a script not listed here that defines --quick gets it.
QUICK_FLAGS: dict[str, list[str]] = {
    "bench_lmstudio.py": ["--runs", "3", "--request-runs", "10"],
    "bench_llm_models.py": ["--runs", "7"],
    "bench_embed.py": ["--docs", "128", "--runs", "2"],
    "bench_mlx_chat.py": ["--reps", "2", "--tokens", "24", "--cli-reps", "1", "--cache-reps", "1"],
    "bench_mlx_embed.py": ["--docs", "32", "--reps", "2"],
    "bench_startup.py": ["--reuse", "--runs", "7"],
    "bench_stats.py": ["--repeat", "5", "--attempts", "100"],
    "bench_stateful.py": ["--runs", "5"],
    # The embedding part did not finish within 5 minutes on 2 loaded cores; --full runs it.
    "bench_router.py": ["--runs", "10", "--no-embedding"],
    "eval_router.py": [],  # MiniLM vectors of the prompts are cached in benchmarks/out after the first run
}
# Building the virtualenvs takes about fifteen minutes here the first time (later runs reuse them); the LM Studio
# and MLX chat benchmarks passed 300 s on 2 cores under a load average of 10.
TIME_LIMITS = {"bench_startup.py": 1800, "bench_lmstudio.py": 600, "bench_mlx_chat.py": 600}


def quick_flags(script: Path) -> list[str]:
    if script.name in QUICK_FLAGS:
        return QUICK_FLAGS[script.name]
    return ["--quick"] if re.search(r"[\"']--quick[\"']|\bquick=", script.read_text()) else []


def machine(python: str, blas: str) -> list[tuple[str, str]]:
    cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M) if os.path.exists("/proc/cpuinfo") else None
    versions = subprocess.run(
        [python, "-c", "import importlib.metadata as m, platform\nfor d in ('llm', 'mlx', 'mlx-lm', 'mlx-embeddings', "
         "'numpy'):\n    try: print(d, m.version(d))\n    except m.PackageNotFoundError: print(d, 'not installed')\n"
         "print('Python', platform.python_version())"],
        capture_output=True, text=True).stdout.splitlines()
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return [
        ("CPU", f"{cpu.group(1).strip() if cpu else platform.machine()}, {os.cpu_count()} logical cores"),
        ("OS", f"{platform.system()} {platform.release()} {platform.machine()}"),
        ("Load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("Versions", ", ".join(versions)),
        ("Commit", commit.stdout.strip() or "unknown"),
        ("Date", dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
        ("BLAS setting", blas),
    ]


def run(cmd: list[str], env: dict, limit: float) -> tuple[str, str, str]:
    """(outcome, stdout, stderr) of one script in its own process group, killed whole past `limit` seconds."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
        return ("ok" if proc.returncode == 0 else f"**failed** (exit {proc.returncode})"), out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and whatever servers it started
        out, err = proc.communicate()
        return f"**timed out** after {limit:.0f} s", out, err


def main() -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/run_all", description="Run every benchmark; write RESULTS.md.")
    parser.add_argument("--full", action="store_true", help="each script with its own defaults (slow)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per script (default 300)")
    parser.add_argument("--only", metavar="SUBSTR", action="append", help="only scripts whose name contains SUBSTR")
    parser.add_argument("--no-blas-fix", action="store_true", help="keep mlx on its bundled reference BLAS")
    parser.add_argument("--output", default=str(BENCH / "RESULTS.md"))
    args = parser.parse_args()

    python = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
    scripts = [s for s in sorted(BENCH.glob("bench_*.py")) + sorted(BENCH.glob("eval_*.py"))
               if not args.only or any(o in s.name for o in args.only)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    if args.no_blas_fix or not os.path.exists(OPENBLAS):
        blas = "mlx's bundled reference BLAS" + ("" if args.no_blas_fix else " (apt-get install libopenblas0-pthread)")
    else:
        env.update(LD_PRELOAD=" ".join(filter(None, (OPENBLAS, env.get("LD_PRELOAD")))), OPENBLAS_NUM_THREADS="1")
        blas = f"LD_PRELOAD={OPENBLAS}, OPENBLAS_NUM_THREADS=1 (docs/mlx-cpu.md)"
    info = machine(python, blas)

    started = time.perf_counter()
    summary, sections = [], []
    for script in scripts:
        flags = [] if args.full else quick_flags(script)
        limit = max(args.timeout, TIME_LIMITS.get(script.name, 0))
        print(f"--> {script.name} {' '.join(flags)}", flush=True)
        began = time.perf_counter()
        outcome, out, err = run([python, str(script.relative_to(ROOT)), *flags], env, limit)
        seconds = time.perf_counter() - began
        print(f"    {outcome} in {seconds:.0f} s", flush=True)
        summary.append(f"| [{script.stem}](#{script.stem}) | {outcome} | {seconds:.0f} |")
        sections += [f"## {script.stem}", "", "`" + " ".join(["python", str(script.relative_to(ROOT)), *flags]) + "`", ""]
        sections += ["```text", out.strip() or "(no output)", "```", ""]
        if outcome != "ok" and err.strip():
            sections += ["stderr (last lines):", "", "```text", *err.strip().splitlines()[-15:], "```", ""]

    lines = [
        "# Benchmark results", "",
        f"Generated by `benchmarks/run_all{' --full' if args.full else ''}` in {time.perf_counter() - started:.0f} s. "
        "Each script prints medians over repeated runs and the ratio against its direct path measured in the same run; "
        "the JSON it wrote is in `benchmarks/out/`.", "",
        "| machine | |", "|---|---|", *(f"| {k} | {v} |" for k, v in info), "",
        "| script | result | seconds |", "|---|---|---|", *summary, "",
        *sections,
    ]
    Path(args.output).write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
