"""Benchmark: mlx CPU matrix products against numpy, on the same machine in the same run.

For each size (square n x n @ n x n) and dtype, times `mx.eval(a @ b)` on the mlx CPU device and
`a @ b` in numpy (numpy has no float16 BLAS and no bfloat16, so the 16-bit rows compare against numpy
float32, the product you would actually use). Warm-up first, then the median over --repeats. Also
times a tiny op (1-element add + eval) to show the fixed per-eval overhead, and optionally an
`mx.compile`d matmul (--compile).

The ratio is mlx / numpy: above 1 means mlx is slower. See docs/mlx-cpu.md for the cause (mlx[cpu]'s
Linux wheel bundles the reference, unoptimised netlib BLAS, so float32 matmul runs at ~1 GFLOP/s) and
the fix (an optimised BLAS loaded first: LD_PRELOAD, or --preload here; --compare-openblas measures
both in one run). On a shared machine set OPENBLAS_NUM_THREADS=1, or numpy's threaded OpenBLAS baseline
is erratic.

Run: OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_mlx_matmul.py [--sizes 256,512,1024]
       [--repeats N] [--compile] [--compare-openblas] [--quick]
     (results also in benchmarks/out/mlx_matmul.json)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out" / "mlx_matmul.json"
# Optimised BLAS libraries exporting the unprefixed CBLAS/LAPACK symbols mlx's libmlx.so needs
# (Debian/Ubuntu: apt-get install libopenblas0-pthread). The first that exists is used by --compare-openblas.
OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)
mx = None  # imported in main(), after an optional --preload


def find_openblas() -> str | None:
    return next((p for p in OPENBLAS_CANDIDATES if os.path.exists(p)), None)


def median_time(fn, repeats: int, warmup: int = 1, budget_s: float = 20.0) -> float:
    """Median seconds of fn() over `repeats` runs after `warmup` runs; stops early past budget_s."""
    for _ in range(warmup):
        fn()
    times = []
    started = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - started > budget_s and len(times) >= 3:
            break
    return statistics.median(times)


def loaded_blas() -> list[str]:
    """BLAS/LAPACK shared libraries mapped into this process (Linux only)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    libs = set()
    for line in maps.splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        name = os.path.basename(path).lower()
        if any(key in name for key in ("blas", "lapack", "mkl", "blis")):
            libs.add(path)
    return sorted(libs)


def mlx_blas_label(preload: str | None) -> str:
    """Which library mlx's cblas_sgemm binds to: a library loaded into the global scope first wins."""
    first = [p for p in os.environ.get("LD_PRELOAD", "").replace(":", " ").split() if p] + ([preload] if preload else [])
    blas = [p for p in first if any(k in os.path.basename(p).lower() for k in ("blas", "mkl", "blis"))]
    return os.path.basename(blas[0]) if blas else "bundled reference BLAS"


def bench(args, sizes, dtypes, blas_label) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        a_np = rng.standard_normal((n, n), dtype=np.float32)
        b_np = rng.standard_normal((n, n), dtype=np.float32)
        np_s = median_time(lambda: a_np @ b_np, max(args.repeats, 5))
        gflops_np = 2 * n**3 / np_s / 1e9
        for dtype in dtypes:
            a = mx.array(a_np).astype(getattr(mx, dtype))
            b = mx.array(b_np).astype(getattr(mx, dtype))
            mx.eval(a, b)
            mlx_s = median_time(lambda: mx.eval(a @ b), args.repeats)
            row = {
                "n": n,
                "dtype": dtype,
                "mlx_blas": blas_label if dtype == "float32" else "mlx's own kernel",
                "mlx_ms": round(mlx_s * 1000, 2),
                "numpy_f32_ms": round(np_s * 1000, 2),
                "ratio": round(mlx_s / np_s, 2),
                "mlx_gflops": round(2 * n**3 / mlx_s / 1e9, 1),
                "numpy_gflops": round(gflops_np, 1),
            }
            if args.compile:
                mm = mx.compile(lambda x, y: x @ y)
                row["compiled_ms"] = round(median_time(lambda: mx.eval(mm(a, b)), args.repeats) * 1000, 2)
            rows.append(row)
            extra = f", compiled {row['compiled_ms']:8.2f} ms" if "compiled_ms" in row else ""
            print(f"  {n:5d}^2 {dtype:8s}: mlx {row['mlx_ms']:9.2f} ms ({row['mlx_gflops']:6.1f} GFLOP/s)  "
                  f"numpy f32 {row['numpy_f32_ms']:8.2f} ms ({row['numpy_gflops']:6.1f} GFLOP/s)  "
                  f"ratio {row['ratio']:7.2f}x  [{row['mlx_blas']}]{extra}", flush=True)
    return rows


def compare_other_blas(args, label: str) -> list[dict]:
    """float32 rows again in a child process with the other BLAS: the system OpenBLAS if this process
    uses the bundled reference BLAS, else the bundled one (LD_PRELOAD stripped)."""
    child_env = dict(os.environ, OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    cmd = [sys.executable, __file__, "--sizes", args.sizes, "--dtypes", "float32", "--repeats", str(args.repeats)]
    if label == "bundled reference BLAS":
        openblas = find_openblas()
        if not openblas:
            print("--compare-openblas: no system OpenBLAS found (apt-get install libopenblas0-pthread)")
            return []
        cmd += ["--preload", openblas]
        what = f"{openblas} preloaded, OPENBLAS_NUM_THREADS={child_env['OPENBLAS_NUM_THREADS']}"
    else:
        child_env.pop("LD_PRELOAD", None)
        what = "the bundled reference BLAS (no LD_PRELOAD)"
    print(f"float32 again with {what}:", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        child_out = Path(tmp) / "child.json"
        proc = subprocess.run(cmd + ["--out", str(child_out)], env=child_env, stdout=subprocess.PIPE, text=True)
        print("\n".join(line for line in proc.stdout.splitlines() if "^2" in line), flush=True)
        if proc.returncode != 0:
            print(f"  (child run failed, exit {proc.returncode})")
            return []
        return json.loads(child_out.read_text())["matmul"]


def main() -> int:
    global mx
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512,1024", help="comma-separated square sizes (default 256,512,1024)")
    parser.add_argument("--dtypes", default="float32,float16,bfloat16", help="mlx dtypes (default float32,float16,bfloat16)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per figure, median reported (default 7)")
    parser.add_argument("--compile", action="store_true", help="also time an mx.compile'd matmul (no gain measured)")
    parser.add_argument("--preload", metavar="LIB", help="load LIB (e.g. an OpenBLAS) with RTLD_GLOBAL before importing "
                        "mlx, so mlx's BLAS/LAPACK calls bind to it (same effect as LD_PRELOAD=LIB)")
    parser.add_argument("--compare-openblas", action="store_true", help="then rerun the float32 rows in a child process "
                        "with the other BLAS: the system OpenBLAS preloaded (if installed), or, when an optimised BLAS "
                        "is already preloaded, the bundled reference one")
    parser.add_argument("--quick", action="store_true", help="for benchmarks/run_all: --repeats 3, float32 and bfloat16 "
                        "only, plus --compare-openblas")
    parser.add_argument("--out", default=str(OUT), help="JSON output path")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.dtypes, args.compare_openblas = 3, "float32,bfloat16", True

    if args.preload:
        ctypes.CDLL(args.preload, mode=ctypes.RTLD_GLOBAL)
    import mlx.core

    mx = mlx.core
    sizes = [int(s) for s in args.sizes.split(",") if s]
    dtypes = [d for d in args.dtypes.split(",") if d]
    mx.set_default_device(mx.cpu)
    env_keys = ("LD_PRELOAD", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    env = {k: os.environ[k] for k in env_keys if k in os.environ}
    label = mlx_blas_label(args.preload)
    print(f"mlx {mx.__version__} on {mx.default_device()}, numpy {np.__version__}, python {platform.python_version()}")
    print(f"env: {env or '(none of ' + ', '.join(env_keys) + ')'}; mlx float32 matmul via: {label}")

    # Fixed cost of one graph evaluation, independent of the matmul.
    one = mx.array([1.0])
    tiny_us = median_time(lambda: mx.eval(one + 1), repeats=200, warmup=20) * 1e6
    print(f"tiny op (1-element add + mx.eval): {tiny_us:.1f} us")

    rows = bench(args, sizes, dtypes, label)

    if args.compare_openblas:
        rows += compare_other_blas(args, label)

    blas = loaded_blas()
    print("BLAS libraries loaded in this process:")
    for lib in blas:
        print(f"  {lib}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "mlx": mx.__version__,
        "numpy": np.__version__,
        "env": env,
        "tiny_eval_us": round(tiny_us, 1),
        "blas_loaded": blas,
        "matmul": rows,
    }, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
