"""Runs every benchmark of the project and writes benchmarks/RESULTS.md (used by benchmarks/run_all).

Discovers benchmarks/bench_*.py and benchmarks/eval_*.py, runs each with .venv's Python, a time
limit and, in the default quick mode, small sizes (QUICK_FLAGS below; a flag is passed only if the
script's source still defines it, and an unknown script that defines --quick gets --quick). Captures
what each prints, picks up the JSON files it wrote into benchmarks/out/ during its run, and renders
them generically: every list of flat objects (and every object whose values are all flat objects)
becomes a Markdown table. A script that fails or times out gets a line saying so; the run goes on.

The optimised-BLAS setting of docs/mlx-cpu.md is applied to every script when the system OpenBLAS is
installed (LD_PRELOAD of it, OPENBLAS_NUM_THREADS=1); --no-blas-fix runs with the wheel's own BLAS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
OUT = BENCH / "out"
RESULTS = BENCH / "RESULTS.md"
OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)

# Quick-mode flags per script: small enough that the whole run takes a few minutes on 2 cores.
QUICK_FLAGS: dict[str, list[str]] = {
    "bench_lmstudio.py": ["--runs", "2", "--request-runs", "10"],
    "bench_embed.py": ["--docs", "128", "--runs", "2"],
    "bench_mlx_chat.py": ["--reps", "2", "--tokens", "24"],
    "bench_mlx_embed.py": ["--docs", "32", "--reps", "2"],
    "bench_mlx_matmul.py": ["--quick"],
    "bench_stats.py": ["--repeat", "5", "--attempts", "100"],
    # The embedding part did not finish within 5 minutes on 2 loaded cores (first use embeds every exemplar
    # per fresh LLM_USER_PATH); drop --no-embedding here once it is quick. --full runs it.
    "bench_router.py": ["--runs", "10", "--no-embedding"],
    "eval_router.py": ["--timing-prompts", "5"],
}
MAX_TABLES_PER_JSON = 12
MAX_ROWS = 40


# ---------------------------------------------------------------- machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info(python: str) -> dict[str, str]:
    cpuinfo = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = _read("/proc/meminfo")
    mem = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M)
    os_release = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', _read("/etc/os-release"), re.M)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    versions = subprocess.run(
        [python, "-c", "import importlib.metadata as m, platform\n"
         "def v(d):\n    try: return m.version(d)\n    except Exception: return 'not installed'\n"
         "print(platform.python_version(), *(v(d) for d in ('mlx', 'mlx-lm', 'mlx-embeddings', 'llm', 'numpy')))"],
        capture_output=True, text=True,
    ).stdout.split()
    names = ("Python", "mlx", "mlx-lm", "mlx-embeddings", "llm", "numpy")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    info = {
        "CPU": (model.group(1).strip() if model else platform.processor() or platform.machine()),
        "Cores": f"{os.cpu_count()} logical, {usable} usable by this process",
        "Memory": f"{int(mem.group(1)) / 1024 / 1024:.1f} GiB" if mem else "unknown",
        "OS": f"{os_release.group(1) if os_release else platform.system()}, kernel {platform.release()}, "
              f"{platform.machine()}",
        "Load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    info.update({name: value for name, value in zip(names, versions)})
    info["Commit"] = (commit.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty else "")
    info["Date"] = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return info


# ---------------------------------------------------------------- rendering


def _cell(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            text = f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"
        else:
            text = f"{value:.3g}"
        return text
    if isinstance(value, (list, tuple)):
        text = ", ".join(_cell(v) for v in value[:8]) + (", ..." if len(value) > 8 else "")
        return text.replace("|", "\\|")
    return str(value).replace("|", "\\|").replace("\n", " ")


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _is_flat(obj) -> bool:
    """A flat object: a dict whose values are scalars or short lists of scalars."""
    return isinstance(obj, dict) and bool(obj) and all(
        _is_scalar(v) or (isinstance(v, list) and len(v) <= 8 and all(_is_scalar(x) for x in v)) for v in obj.values()
    )


def _table(rows: list[dict], key_name: str | None = None, keys: list[str] | None = None) -> list[str]:
    columns: list[str] = []
    for row in rows:
        for column in row:
            if column not in columns:
                columns.append(column)
    if key_name:  # a member that only repeats the row's key (e.g. "name") is left out
        columns = [c for c in columns if not all(str(row.get(c)) == str(k) for row, k in zip(rows, keys))]
    header = ([key_name] if key_name else []) + columns
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows[:MAX_ROWS]):
        cells = ([_cell(keys[i])] if key_name else []) + [_cell(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) > MAX_ROWS:
        lines.append(f"\n({len(rows) - MAX_ROWS} more rows in the JSON)")
    return lines


def _scalar_part(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if _is_scalar(v) and not (isinstance(v, str) and len(v) > 100)}


def _common_columns(rows: list[dict]) -> set:
    """Scalar members every row has: rows without one in common are not one table."""
    common = None
    for row in rows:
        keys = set(_scalar_part(row))
        common = keys if common is None else common & keys
    return common or set()


def render_json(data, path: str = "") -> tuple[list[list[str]], list[str]]:
    """(tables, scalar lines). A table for every list of objects and every object whose values are all
    objects (2 or more), from their scalar members; nested members are rendered the same way, below.
    Other objects give one `path: k=v, ...` line of their scalar members."""
    tables: list[list[str]] = []
    scalars: list[str] = []
    label = f"`{path or '(top level)'}`"
    if isinstance(data, list):
        dicts = [x for x in data if isinstance(x, dict)]
        if dicts and len(dicts) == len(data) and _common_columns(dicts):
            tables.append([label, ""] + _table([_scalar_part(x) for x in dicts]))
            children = [(f"{path}[{_row_label(x, i)}]", x) for i, x in enumerate(dicts) if not _is_flat(x)]
        else:
            children = [(f"{path}[{i}]", x) for i, x in enumerate(data[:MAX_ROWS]) if isinstance(x, (dict, list))]
        for where, item in children:
            nested = {k: v for k, v in item.items() if not _is_scalar(v)} if isinstance(item, dict) else item
            t, sc = render_json(nested, where)
            tables += t
            scalars += sc
    elif isinstance(data, dict):
        values = list(data.values())
        if len(values) >= 2 and all(isinstance(v, dict) for v in values) and _common_columns(values):
            tables.append([label, ""] + _table([_scalar_part(v) for v in values], "key", list(data.keys())))
            for key, value in data.items():
                nested = {k: v for k, v in value.items() if not _is_scalar(v)}
                if nested:
                    t, sc = render_json(nested, f"{path}.{key}" if path else str(key))
                    tables += t
                    scalars += sc
            return tables, scalars
        plain = _scalar_part(data)
        if plain:
            scalars.append(f"{label}: " + ", ".join(f"{k}={_cell(v)}" for k, v in plain.items()))
        for key, value in data.items():
            if isinstance(value, (dict, list)) and not (isinstance(value, list) and all(_is_scalar(x) for x in value)):
                t, sc = render_json(value, f"{path}.{key}" if path else str(key))
                tables += t
                scalars += sc
    return tables, scalars


def _row_label(row: dict, index: int) -> str:
    names = [str(v) if len(str(v)) <= 40 else str(v)[:37] + "..." for v in row.values()
             if isinstance(v, (str, int)) and not isinstance(v, bool)][:3]
    return ",".join(names) or str(index)


_RATIO = re.compile(r"(^|[^a-z])ratio([^a-z]|$)", re.I)  # "ratio", "ratio_to_direct", not "generation"


def ratios(data, path: str = "") -> list[tuple[str, float]]:
    """Every numeric leaf whose key mentions 'ratio', with its path (rows named by their first string)."""
    found: list[tuple[str, float]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and _RATIO.search(str(key)):
                found.append((where, float(value)))
            elif isinstance(value, (dict, list)):
                found += ratios(value, where)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            label = _row_label(item, i) if isinstance(item, dict) else str(i)
            found += ratios(item, f"{path}[{label}]")
    return found


# ---------------------------------------------------------------- running


def quick_flags(script: Path) -> list[str]:
    """QUICK_FLAGS for the script, keeping only the flags its source still defines (read, not run: a
    script that ignored --help would run in full); an unknown script that defines --quick gets it."""
    try:
        source = script.read_text()
    except OSError:
        return []
    wanted = QUICK_FLAGS.get(script.name)
    if wanted is None:
        return ["--quick"] if re.search(r"[\"']--quick[\"']", source) else []
    flags: list[str] = []
    i = 0
    while i < len(wanted):
        flag = wanted[i]
        takes_value = i + 1 < len(wanted) and not wanted[i + 1].startswith("--")
        if re.search(rf"[\"']{re.escape(flag)}[\"']", source):
            flags += wanted[i:i + 2] if takes_value else [flag]
        i += 2 if takes_value else 1
    return flags


def _belongs_to(json_path: Path, script: Path, stdout: str) -> bool:
    """A JSON file written during the script's run is the script's if the script printed its name or it is
    named after the script (bench_lmstudio.py -> lmstudio.json or bench_lmstudio.json). Other files that
    changed meanwhile were written by something else running in the same tree."""
    short = re.sub(r"^(bench|eval)_", "", script.stem)
    return json_path.name in stdout or json_path.stem in (script.stem, short)


def run_script(python: str, script: Path, flags: list[str], env: dict, limit: float) -> dict:
    cmd = [python, str(script.relative_to(ROOT))] + flags
    started_wall = time.time()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the script and whatever servers it started
            stdout, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
    elapsed = time.perf_counter() - started
    jsons = [p for p in sorted(OUT.glob("*.json")) if p.stat().st_mtime >= started_wall - 1
             and _belongs_to(p, script, stdout or "")] if OUT.is_dir() else []
    return {"cmd": cmd, "rc": proc.returncode, "timed_out": timed_out, "seconds": elapsed,
            "stdout": stdout or "", "stderr": stderr or "", "jsons": jsons}


def section(script: Path, result: dict, limit: float) -> list[str]:
    lines = [f"## {script.stem}", ""]
    command = " ".join(["python"] + result["cmd"][1:])
    if result["timed_out"]:
        status = f"**timed out** after {limit:.0f} s (output so far below)"
    elif result["rc"] != 0:
        status = f"**failed** with exit code {result['rc']}"
    else:
        status = "ok"
    lines += [f"`{command}` — {status}, {result['seconds']:.1f} s", ""]
    out = result["stdout"].strip()
    if out:
        lines += ["```text", out, "```", ""]
    if result["rc"] != 0 or result["timed_out"]:
        err = "\n".join(result["stderr"].strip().splitlines()[-15:])
        if err:
            lines += ["stderr (last lines):", "", "```text", err, "```", ""]
    for path in result["jsons"]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            lines += [f"`{path.relative_to(ROOT)}`: unreadable ({exc})", ""]
            continue
        tables, scalars = render_json(data)
        lines += [f"### {path.relative_to(ROOT)}", ""]
        for table in tables[:MAX_TABLES_PER_JSON]:
            lines += table + [""]
        if len(tables) > MAX_TABLES_PER_JSON:
            lines += [f"({len(tables) - MAX_TABLES_PER_JSON} more tables in the JSON)", ""]
        if scalars:
            lines += [f"- {s}" for s in scalars[:20]] + [""]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/run_all", description="Run every benchmark and write "
                                     "benchmarks/RESULTS.md.")
    parser.add_argument("--full", action="store_true", help="run each script with its own defaults (slow) instead "
                        "of the quick flags")
    parser.add_argument("--timeout", type=float, default=300, help="time limit per script in seconds (default 300)")
    parser.add_argument("--only", metavar="SUBSTR", action="append", help="run only scripts whose name contains "
                        "SUBSTR (repeatable)")
    parser.add_argument("--no-blas-fix", action="store_true", help="do not preload the system OpenBLAS into the "
                        "scripts (see docs/mlx-cpu.md)")
    parser.add_argument("--output", default=str(RESULTS), help="report path (default benchmarks/RESULTS.md)")
    args = parser.parse_args()

    python = str(ROOT / ".venv" / "bin" / "python")
    if not os.path.exists(python):
        python = sys.executable
    scripts = sorted(BENCH.glob("bench_*.py")) + sorted(BENCH.glob("eval_*.py"))
    if args.only:
        scripts = [s for s in scripts if any(o in s.name for o in args.only)]

    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    openblas = next((p for p in OPENBLAS_CANDIDATES if os.path.exists(p)), None)
    if args.no_blas_fix:
        blas_note = "off (--no-blas-fix): mlx uses the reference BLAS bundled in the mlx[cpu] wheel"
    elif openblas:
        env["LD_PRELOAD"] = " ".join(p for p in (openblas, env.get("LD_PRELOAD", "")) if p)
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        blas_note = (f"LD_PRELOAD={openblas}, OPENBLAS_NUM_THREADS={env['OPENBLAS_NUM_THREADS']} "
                     "(see docs/mlx-cpu.md)")
    else:
        blas_note = ("not available (apt-get install libopenblas0-pthread): mlx uses the reference BLAS bundled in "
                     "the mlx[cpu] wheel")

    started = time.perf_counter()
    info = machine_info(python)
    info["BLAS setting"] = blas_note
    info["Mode"] = "full (each script's defaults)" if args.full else "quick (small sizes; `benchmarks/run_all --full` for defaults)"
    print(f"run_all: {len(scripts)} scripts, limit {args.timeout:.0f} s each; BLAS: {blas_note}", flush=True)

    sections: list[list[str]] = []
    summary: list[str] = []
    key_ratios: list[str] = []
    for script in scripts:
        flags = [] if args.full else quick_flags(script)
        print(f"--> {script.name} {' '.join(flags)}", flush=True)
        result = run_script(python, script, flags, env, args.timeout)
        if result["timed_out"]:
            state = f"timed out after {args.timeout:.0f} s"
        elif result["rc"] != 0:
            state = f"failed (exit {result['rc']})"
        else:
            state = "ok"
        print(f"    {state} in {result['seconds']:.1f} s; JSON: "
              f"{', '.join(p.name for p in result['jsons']) or 'none'}", flush=True)
        summary.append(f"| [{script.stem}](#{script.stem}) | {state} | {result['seconds']:.1f} |")
        if state != "ok":
            summary[-1] = summary[-1].replace(f"| {state} |", f"| **{state}** |")
        for path in result["jsons"]:
            try:
                found = ratios(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
            key_ratios += [f"| {script.stem} | `{path.name}: {_cell(where).replace(chr(96), chr(39))}` | {_cell(value)} |"
                           for where, value in found]
        sections.append(section(script, result, args.timeout))

    total = time.perf_counter() - started
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `benchmarks/run_all{' --full' if args.full else ''}` in {total:.0f} s. Each script prints its "
        "figures: medians over repeated runs and the ratio against its direct-path baseline (which way a ratio "
        "reads, time or rate, is in the script's own text). Tables are rendered from the JSON each script wrote "
        "into `benchmarks/out/` during this run. A script that failed or timed out says so in the Scripts table.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ] + [f"| {k} | {_cell(v)} |" for k, v in info.items()] + [
        "",
        "## Scripts",
        "",
        "| script | result | seconds |",
        "|---|---|---|",
    ] + summary + [""]
    if not scripts:
        lines += ["No benchmark scripts found.", ""]
    if key_ratios:
        lines += ["## All ratios", "", "Every figure named `*ratio*` in the JSON files, as written by the script.", "",
                  "| script | where | ratio |", "|---|---|---|"] + key_ratios[:80] + [""]
    for sec in sections:
        lines += sec
    Path(args.output).write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {args.output} in {total:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
