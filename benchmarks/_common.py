"""What every benchmark shares: the repo on sys.path, flags, a throw-away llm sandbox or stand-in server, interleaved
timing with medians, JSON output. Holds no figures and no benchmark logic; never reads outside the repository."""

from __future__ import annotations

import argparse
import contextlib
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


def arguments(doc: str, **flags) -> argparse.Namespace:
    """The command line: each keyword is a flag (`dry_run` is --dry-run), given as its default or (default, help);
    its type is the default's, a False default makes a switch, a None default takes a string."""
    parser = argparse.ArgumentParser(description=doc.strip().split("\n\n")[0])
    for name, spec in flags.items():
        default, help = spec if isinstance(spec, tuple) else (spec, None)
        flag = "--" + name.replace("_", "-")
        if default is False:
            parser.add_argument(flag, action="store_true", help=help)
        else:
            parser.add_argument(flag, type=str if default is None else type(default), default=default, help=help)
    return parser.parse_args()


def sandbox(prefix: str) -> Path:
    """A fresh llm user dir with no LM Studio server, no LM Studio models folder and no hub cache, set in
    os.environ; call it before llm is imported (the plugin reads these on every lookup)."""
    path = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))
    (path / "no-lmstudio").mkdir()  # empty: a folder that does not exist is refused as a setting
    os.environ.update(
        LLM_USER_PATH=str(path / "llm"),
        LMSTUDIO_MODELS_DIR=str(path / "no-lmstudio"),
        HF_HUB_CACHE=str(path / "no-hub"),
        LMSTUDIO_BASE_URL="http://127.0.0.1:9",  # a closed port: only native models get registered
    )
    return path


@contextlib.contextmanager
def stand_in(include_minilm: bool = True):
    """The LM Studio stand-in (tests/fake_lmstudio) on loopback with its generated models, and a fresh llm user
    dir, both set in os.environ for the rest of the process."""
    from tests.fake_lmstudio import FakeLMStudio
    from tests.fake_lmstudio.models_dir import build_models_dir

    with tempfile.TemporaryDirectory() as work, FakeLMStudio(build_models_dir(Path(work) / "models", include_minilm=include_minilm)) as server:
        os.environ.update(LLM_USER_PATH=str(Path(work) / "llm"), LMSTUDIO_BASE_URL=server.base_url)
        yield server


def median(values) -> float:
    return statistics.median(list(values))


def medians(rows: list[dict]) -> dict:
    """Each key's median over rows of figures."""
    return {key: median(row[key] for row in rows) for key in rows[0]}


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


def clocked(fn) -> Clock:
    with Clock() as clock:
        fn()
    return clock


def interleave(paths: dict, runs: int, warmup: bool = True) -> dict[str, list]:
    """{name: what fn() returned on each run} for each of paths' functions, called in turn run after run (after a
    warm-up call each: lazy imports, model loads, connections), so that load from other processes on a shared
    machine hits every path alike."""
    for fn in paths.values() if warmup else ():
        fn()
    found = {name: [] for name in paths}
    for _ in range(runs):
        for name, fn in paths.items():
            found[name].append(fn())
    return found


def seconds(fn) -> float:
    """Wall seconds of one fn() call."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def samples(fn, runs: int, warmup: int = 1) -> list[float]:
    """Wall seconds of fn() over `runs` calls, after `warmup` calls that are not counted."""
    for _ in range(warmup):
        fn()
    return [seconds(fn) for _ in range(runs)]


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
