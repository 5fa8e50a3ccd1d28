"""The LM Studio stand-in as tests see it: `FakeLMStudio` launches the server process and drives its control API.
It owns the child process's lifetime; it must never reach a real LM Studio, nor leave the process running
unless told to (`keep_running`, for `scripts/demo --keep`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


class FakeLMStudioError(RuntimeError):
    """The stand-in could not start, or its control API refused a request."""


class FakeLMStudio:
    """One stand-in server process on 127.0.0.1 with a random free port."""

    def __init__(self, models_dir: Path, *, startup_timeout: float = 60.0, keep_running: bool = False):
        self.models_dir = Path(models_dir)
        # Importing mlx-lm and mlx-embeddings takes seconds, and far longer on a busy shared machine.
        self.startup_timeout = startup_timeout
        self.keep_running = keep_running
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._client: httpx.Client | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return Path(self._workdir.name) / "server.log"

    def start(self) -> "FakeLMStudio":
        if self.process is not None:
            return self
        self._workdir = tempfile.TemporaryDirectory(prefix="fake-lmstudio-")
        ready = Path(self._workdir.name) / "ready.json"
        log = open(self.log_path, "wb")  # a file, not a pipe: a full pipe would stall the server
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        tether = [] if self.keep_running else ["--parent-pid", str(os.getpid())]
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "tests.fake_lmstudio",
                "--models-dir", str(self.models_dir),
                "--port", "0",
                "--ready-file", str(ready),
                *tether,
            ],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=self.keep_running,  # Ctrl-C in the demo's terminal must not stop a kept server
        )
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while not ready.is_file():
            if self.process.poll() is not None:
                output = self.log_path.read_text(errors="replace")
                status, self.process = self.process.returncode, None
                raise FakeLMStudioError(f"fake LM Studio exited with status {status} before it was ready:\n{output}")
            if time.monotonic() > deadline:
                self.stop()
                raise FakeLMStudioError(f"fake LM Studio did not become ready within {self.startup_timeout}s")
            time.sleep(0.02)
        self.port = json.loads(ready.read_text())["port"]
        self._client = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(60.0, connect=5.0))
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
            self.process = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- control API -------------------------------------------------------------------------
    def _control(self, method: str, path: str, body: dict | None = None) -> dict:
        response = self._client.request(method, f"/__fake__/{path}", json=body)
        if response.status_code >= 400:
            raise FakeLMStudioError(f"{method} /__fake__/{path} failed ({response.status_code}): {response.text}")
        return response.json()

    def reset(self, *, unload: bool = True) -> None:
        """Clear faults, scripts, the request log and config; unload every model; release hung requests."""
        self._control("POST", "reset", {"unload": unload})

    def configure(self, **settings) -> dict:
        """Set jit, auto_evict, default_jit_ttl, auth_token, load_fail, load_seconds, default_max_tokens, version ("0.3.5",
        "0.3.15" or "0.4": the LM Studio generation to act as), or a quirk of a release or bug (state.QUIRKS:
        responses_growth, responses_system, reasoning_whole, single_model_fallback, zero_input_on_repeat), until the
        next reset; returns them all."""
        return self._control("POST", "config", settings)

    def set_fault(self, kind: str, path: str = "/", *, method: str | None = None, times: int | None = None, **params) -> dict:
        """Arm a fault (hang, slow, status, malformed, cut, load_fail, template) for requests whose path starts with `path`."""
        return self._control("POST", "faults", {"kind": kind, "path": path, "method": method, "times": times, **params})

    def clear_faults(self) -> None:
        self._control("DELETE", "faults")

    def script(self, *outputs: str) -> list[str]:
        """Queue outputs that the next chat predictions will produce (one per prediction, in order)."""
        return self._control("POST", "script", {"outputs": list(outputs)})["outputs"]

    def requests(self) -> list[dict]:
        """The request log since the last reset (control requests excluded)."""
        return self._control("GET", "requests")["requests"]

    def clear_requests(self) -> None:
        self._control("DELETE", "requests")

    def generations(self) -> list[dict]:
        """What the model was given on each /v1/responses prediction since the last reset: {"messages": [...]}."""
        return self._control("GET", "generations")["generations"]

    def loaded(self) -> list[dict]:
        """Loaded instances: identifier, model, type, jit, ttl_seconds, ttl_remaining, context_length, status."""
        return self._control("GET", "state")["loaded"]

    def load(self, model: str, *, identifier: str | None = None, ttl: float | None = None,
             context_length: int | None = None, jit: bool = False) -> str:
        """Load an instance directly (like `lms load`), bypassing faults and auth; returns its identifier."""
        body = {"model": model, "identifier": identifier, "ttl": ttl, "context_length": context_length, "jit": jit}
        return self._control("POST", "load", body)["identifier"]

    def streamed(self) -> list[str]:
        """The completion id of every streamed chat chunk with content since the last reset, in the order the chunks
        went out on the wire."""
        return self._control("GET", "state")["streamed"]

    def age(self, seconds: float) -> list[str]:
        """As if `seconds` passed with no request: idle times grow, and instances whose TTL ran out are unloaded
        now (their identifiers returned). How a test checks a TTL without sleeping through it."""
        return self._control("POST", "age", {"seconds": seconds})["unloaded"]

    def set_variants(self, model: str, variants: list[str], selected: str | None = None) -> list[str]:
        """Give a downloaded model variants (`model@name` each, sharing its files) until the next reset."""
        return self._control("POST", "variants", {"model": model, "variants": variants, "selected": selected})["variants"]

    def downloads(self, **settings) -> dict:
        """Download knobs until the next reset: bytes_per_second, disk_free, fail_after_bytes; pause=/resume=JOB_ID."""
        return self._control("POST", "downloads", settings)

    def add_foreign_model(self, key: str, *, type: str, format: str) -> str:
        """List a model of a type or format the plugin does not know (e.g. format "openvino") until the next reset."""
        return self._control("POST", "foreign", {"key": key, "type": type, "format": format})["key"]

    def forget_responses(self) -> int:
        """Forget every stored /v1/responses answer, as a restarted LM Studio would; returns how many."""
        return self._control("DELETE", "responses")["forgotten"]
