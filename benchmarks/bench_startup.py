"""What installing the plugin costs every `llm` command: fresh virtualenvs with llm alone, llm + numpy (the floor),
llm + this plugin's runtime install (the working tree, no test extra) and, unless --no-extra, with [mlx-embeddings],
measured interleaved in one run: median `llm --version` and `llm models` wall and CPU time, peak memory, install size,
and what the plugin's own modules take of it (`python -X importtime`).

Run: .venv/bin/python benchmarks/bench_startup.py [--runs 15] [--no-extra] [--reuse]   (writes benchmarks/out/startup.json)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine, median, ms, ratio, write_json

VENVS = ROOT / ".cache" / "bench-startup"  # ignored by git; --reuse keeps them between runs
COMMANDS = {"llm --version": ["--version"], "llm models": ["models"]}


def pip(venv: Path, *args: str) -> None:
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"pip install {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")


def build(name: str, requirements: list[str], reuse: bool) -> Path:
    venv = VENVS / name
    if reuse and (venv / "bin" / "llm").exists():
        local = [requirement for requirement in requirements if requirement.startswith(str(ROOT))]
        if local:  # the working tree's plugin as it is now, not as it was when the venv was built
            pip(venv, "--no-deps", "--force-reinstall", *local)
        return venv
    subprocess.run(["rm", "-rf", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    started = time.perf_counter()
    pip(venv, *requirements)
    print(f"  built {name}: pip install {' '.join(requirements)} ({time.perf_counter() - started:.0f} s)", flush=True)
    return venv


def site_packages_mb(venv: Path) -> float:
    total = 0
    for path in venv.glob("lib/python*/site-packages"):
        for root, _, files in os.walk(path):
            total += sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    return round(total / 1e6, 1)


def distributions(venv: Path) -> list[str]:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; "
                          "print('\\n'.join(sorted({d.metadata['Name'].lower() for d in m.distributions()})))"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def run(venv: Path, args: list[str], env: dict) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak resident MiB) of one command in a fresh process; os.wait4 gives that
    child's own rusage. CPU time is reported beside wall time: other processes on a shared machine stretch
    wall time at random, while the CPU time the command itself spends is what an install changes."""
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: wait4 must not wait on a full pipe
        started = time.perf_counter()
        proc = subprocess.Popen([str(venv / "bin" / "llm"), *args], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
        if proc.returncode != 0:
            stderr.seek(0)
            raise SystemExit(f"{venv.name}: llm {' '.join(args)} failed: {stderr.read().decode()[-2000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # Linux reports maxrss in KiB


def added(samples: list, baseline: list, index: int) -> float:
    """Median of the per-round differences (index 0 wall, 1 CPU): each round runs every venv back to back, so a
    spell of load from other work stretches both sides of a difference, where two separate medians would keep it."""
    return median(differences(samples, baseline, index))


def differences(samples: list, baseline: list, index: int) -> list[float]:
    return [sample[index] - base[index] for sample, base in zip(samples, baseline)]


def spread(values: list[float]) -> str:
    """The middle half of per-round differences, in ms: how far one run's figure can be trusted."""
    low, _, high = statistics.quantiles(values, n=4)
    return f"{low * 1000:+.0f}..{high * 1000:+.0f}"


def own_import_ms(venv: Path, args: list[str], env: dict, runs: int) -> tuple[float, list[str]]:
    """Median over `runs` of the import time of the plugin's own modules (self time of every llm_lmstudio.* line
    that `-X importtime` logs: the package itself is loaded by pluggy through importlib, which it does not log)."""
    totals, modules = [], set()
    for _ in range(runs):
        proc = subprocess.run([str(venv / "bin" / "python"), "-X", "importtime", str(venv / "bin" / "llm"), *args],
                              env=env, capture_output=True, text=True, check=True)
        lines = [line.split("|") for line in proc.stderr.splitlines() if line.startswith("import time:")]
        own = [(int(parts[0].split(":")[1]), parts[2].strip()) for parts in lines if parts[2].strip().startswith("llm_lmstudio")]
        totals.append(sum(us for us, _ in own) / 1000)
        modules |= {name for _, name in own}
    return median(totals), sorted(modules)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per command and venv, interleaved (medians reported)")
    parser.add_argument("--no-extra", action="store_true", help="skip the third venv with [mlx-embeddings]")
    parser.add_argument("--reuse", action="store_true", help="reuse venvs from an earlier run instead of building anew (the plugin itself is reinstalled from the working tree)")
    args = parser.parse_args()
    print(f"building virtualenvs under {VENVS.relative_to(ROOT)}:", flush=True)
    plugin = build("plugin", [str(ROOT)], args.reuse)
    llm_version = subprocess.run([str(plugin / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('llm'))"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    numpy_version = subprocess.run([str(plugin / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('numpy'))"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    # llm + numpy is the floor: mlx-lm needs numpy, and sqlite-utils imports it at `import llm` whenever it is installed.
    venvs = {"llm alone": build("llm", [f"llm=={llm_version}"], args.reuse),
             "llm + numpy": build("llm-numpy", [f"llm=={llm_version}", f"numpy=={numpy_version}"], args.reuse),
             "llm + plugin": plugin}
    if not args.no_extra:
        venvs["llm + plugin[mlx-embeddings]"] = build("plugin-embed", [f"{ROOT}[mlx-embeddings]"], args.reuse)

    sandbox = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    (sandbox / "no-lmstudio").mkdir()  # empty: a folder that does not exist is refused as a setting
    # A user's shell: no LD_PRELOAD from run_all, no LM Studio server (a closed port), no models on disk.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(sandbox), "LANG": "C.UTF-8",
           "LMSTUDIO_BASE_URL": "http://127.0.0.1:9", "LMSTUDIO_MODELS_DIR": str(sandbox / "no-lmstudio"),
           "HF_HUB_CACHE": str(sandbox / "no-hub")}
    envs = {name: dict(env, LLM_USER_PATH=str(sandbox / name.replace(" ", "_"))) for name in venvs}
    samples = {(name, command): [] for name in venvs for command in COMMANDS}
    load_before = os.getloadavg()[0]  # other work on the machine stretches every figure: printed beside them
    for rep in range(args.runs + 1):
        names = list(venvs)
        names = names[rep % len(names):] + names[: rep % len(names)]  # rotate, so no venv always runs first
        for name in names:
            for command, argv in COMMANDS.items():
                measured = run(venvs[name], argv, envs[name])
                if rep:  # the first round only warms the OS file cache
                    samples[(name, command)].append(measured)

    own = {command: own_import_ms(plugin, argv, envs["llm + plugin"], max(3, args.runs // 2)) for command, argv in COMMANDS.items()}

    base = "llm alone"
    rows = []
    for name, venv in venvs.items():
        row = {"venv": name, "site_packages_mb": site_packages_mb(venv), "distributions": len(distributions(venv))}
        for command in COMMANDS:
            for index, unit in ((0, "ms"), (1, "cpu ms")):
                value = median(s[index] for s in samples[(name, command)])
                baseline = median(s[index] for s in samples[(base, command)])
                row[f"{command} {unit}"] = ms(value)
                row[f"{command} added {unit}"] = ms(added(samples[(name, command)], samples[(base, command)], index))
                row[f"{command} {unit} ratio"] = ratio(value, baseline)
            row[f"{command} peak MiB"] = round(median(s[2] for s in samples[(name, command)]), 1)
        rows.append(row)
    heavy = sorted(set(distributions(plugin)) & {"pandas", "pyarrow", "datasets", "opencv-python", "scipy", "mlx-audio", "mlx-vlm"})

    load = f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}"
    print(f"{machine()}; llm {llm_version}; medians of {args.runs} interleaved runs, fresh process each; 1-min load average {load}")
    print("  (added: median of the per-round differences from llm alone; ratio: of the medians)")
    print(f"  {'':30s} {'wall ms (added, ratio)':>24s} {'CPU ms (added, ratio)':>24s} {'peak MiB':>9s}")
    for command in COMMANDS:
        print(f"  {command}")
        for row in rows:
            print(f"    {row['venv']:28s} {row[f'{command} ms']:7.0f} ({row[f'{command} added ms']:+5.0f}, "
                  f"x{row[f'{command} ms ratio']:.2f}) {row[f'{command} cpu ms']:9.0f} ({row[f'{command} added cpu ms']:+5.0f}, "
                  f"x{row[f'{command} cpu ms ratio']:.2f}) {row[f'{command} peak MiB']:9.0f}")
    print("  install: " + "; ".join(f"{row['venv']} {row['site_packages_mb']:.0f} MB in {row['distributions']} distributions"
                                    for row in rows))
    print(f"  heavy packages in the plugin's default install: {', '.join(heavy) or 'none'}")
    floor, default = rows[1], rows[2]
    spreads = {(name, base_name, command, index): spread(differences(samples[(name, command)], samples[(base_name, command)], index))
               for name, base_name in (("llm + plugin", base), ("llm + numpy", base), ("llm + plugin", "llm + numpy"))
               for command in COMMANDS for index in (0, 1)}
    print(f"  the plugin's default install adds {default['llm --version added ms']:.0f} ms wall "
          f"(middle half of rounds {spreads[('llm + plugin', base, 'llm --version', 0)]}), "
          f"{default['llm --version added cpu ms']:.0f} ms CPU to `llm --version` (target <= 120 ms); numpy alone adds "
          f"{floor['llm --version added ms']:.0f} ms wall ({spreads[('llm + numpy', base, 'llm --version', 0)]}), "
          f"{floor['llm --version added cpu ms']:.0f} ms CPU")
    over_floor = {f"{command} {unit}": ms(added(samples[("llm + plugin", command)], samples[("llm + numpy", command)], index))
                  for command in COMMANDS for index, unit in ((0, "ms"), (1, "cpu ms"))}
    print("  over llm + numpy, the plugin's default install adds " + "; ".join(
        f"{over_floor[f'{command} ms']:+.0f} ms wall ({spreads[('llm + plugin', 'llm + numpy', command, 0)]}), "
        f"{over_floor[f'{command} cpu ms']:+.0f} ms CPU ({spreads[('llm + plugin', 'llm + numpy', command, 1)]}) to `{command}`"
        for command in COMMANDS))
    for command, (value, modules) in own.items():
        print(f"  the plugin's own modules take {value:.1f} ms of `{command}` (-X importtime): {', '.join(modules)}")
    write_json("startup", {"benchmark": "startup", "machine": machine(), "llm": llm_version, "runs": args.runs,
                           "load_average": load, "results": rows, "plugin_over_numpy": over_floor,
                           "middle_half_of_round_differences_ms": {" / ".join(map(str, key[:3])) + (" cpu" if key[3] else " wall"): value
                                                                   for key, value in spreads.items()}, "heavy_in_default_install": heavy,
                           "own_import_ms": {command: {"ms": round(value, 1), "modules": modules}
                                             for command, (value, modules) in own.items()}})


if __name__ == "__main__":
    main()
