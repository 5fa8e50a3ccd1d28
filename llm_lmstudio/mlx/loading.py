"""Loading native MLX weights (chat and embeddings): once per process, refused up front when they cannot fit in
memory, every failure as one line. Imports mlx* only inside functions; never touches the network."""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import click
import llm

from llm_lmstudio.core import settings
from llm_lmstudio.mlx.discovery import LocalModel, LocalModelError, inspect_folder, tokenizer_problem

_LOAD_LOCK = threading.Lock()

# The kinds (call_history.error_kind) of failures caused by the request or the set-up, not the model: as for LM Studio
# models, the router's history never counts them against the model (store/reliability.py, docs/router.md).
REFUSED = "RequestFailed"  # an option, setting or schema this model cannot take as given
GONE = "ModelNotFound"  # the folder is gone or broken since `mlx add`


class NativeModelError(llm.ModelError, click.ClickException):
    """A one-line model error. Also a ClickException because `llm embed` lets ModelError escape as a
    traceback (llm 0.36 catches it only around prompts); click prints this one as `Error: ...`."""

    def __init__(self, message: str, kind: str | None = None):
        click.ClickException.__init__(self, message)
        if kind:
            self.kind = kind  # call_history.error_kind: otherwise the class name, a fault of the model


def model_error(local: LocalModel, exc: BaseException, doing: str, engine: str = "mlx-lm") -> NativeModelError:
    """Turn whatever mlx raised into one line that says what happened and what to do."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if text.endswith(":") and len(lines) > 1:  # a list follows (transformers' "...from one of:"): keep it, on one line
        text = " ".join(lines)
    lowered = text.lower()
    if isinstance(exc, MemoryError) or any(
        marker in lowered for marker in ("out of memory", "bad_alloc", "resource limit", "[metal::malloc]", "failed to allocate")
    ):
        return NativeModelError(
            f"Out of memory {doing} {local.model_id} ({gigabytes(local.size_bytes)} of weights): "
            "close other models or use a smaller quantization"
        )
    quantize = re.search(r"group size (\d+)\. However the provided +matrix has shape \(([\d, ]+)\)", text)
    if quantize and doing == "running":  # the only quantizing a turn does is -o kv_bits
        group, width = quantize.group(1), quantize.group(2).split(",")[-1].strip()
        return NativeModelError(
            f"{local.model_id} cannot quantize its KV cache: mlx-lm quantizes in groups of {group} values and this "
            f"model's attention heads hold {width}: run it without -o kv_bits", kind=REFUSED
        )
    if "not supported" in lowered and "model type" in lowered:
        from importlib.metadata import version

        # `llm install` puts the upgrade into the environment llm runs in, wherever pip would point.
        return NativeModelError(
            f"{local.model_id} uses the '{local.arch}' architecture, which {engine} {version(engine)} "
            f"cannot run: try `llm install -U {engine}`"
        )
    return NativeModelError(f"{local.model_id} failed while {doing} ({local.path}): {text}")


def gigabytes(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def available_memory() -> tuple[int, str] | None:
    """(bytes a new model can use, what that figure is), or None where this platform gives no honest figure.

    Linux: the kernel's MemAvailable (free plus reclaimable page cache). macOS: Metal's recommended working set,
    the bound beyond which mlx itself warns that a model will page (Apple Silicon shares memory with the GPU)."""
    if sys.platform.startswith("linux"):
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "memory available"
        except (OSError, ValueError, IndexError):
            return None
        return None
    if sys.platform == "darwin":
        import mlx.core as mx

        info = mx.device_info()
        size = info.get("max_recommended_working_set_size")
        return (int(size), "GPU working set recommended") if size else None
    return None


def check_fits(local: LocalModel) -> None:
    """Refuse weights larger than the memory available: loading them would swap for minutes or be killed."""
    try:
        if not settings.mlx_memory_check():
            return
    except settings.SettingsError as exc:
        raise NativeModelError(f"{local.model_id} is not available: {exc}", kind=REFUSED) from None
    available = available_memory()
    if available is None or local.size_bytes <= available[0]:
        return
    raise NativeModelError(
        f"{local.model_id} needs {gigabytes(local.size_bytes)} for its weights but only {gigabytes(available[0])} "
        f"of {available[1]}: close other programs or models, use a smaller quantization, "
        "or set LMSTUDIO_MLX_MEMORY_CHECK=off to load it anyway"
    )


def _check_folder(local: LocalModel) -> None:
    if local.problem:
        raise NativeModelError(f"{local.model_id}: {local.problem} (remove it with `llm lmstudio mlx remove {local.name}`)", kind=GONE)
    try:
        inspect_folder(local.path)
    except LocalModelError as exc:
        raise NativeModelError(f"{local.model_id}: {exc}", kind=GONE) from None
    problem = tokenizer_problem(local.path)  # else transformers' multi-line "Couldn't instantiate the backend tokenizer"
    if problem:
        raise NativeModelError(f"{local.model_id}: {problem}", kind=GONE)


def load_once(loaded: dict, local: LocalModel, engine: str, make: Callable[[], Any]):
    """loaded[local.path], built by make() on first use; it stays loaded for the life of the process.
    Shared by chat and embeddings so that two threads never load the same weights twice."""
    key = str(local.path)
    runtime = loaded.get(key)
    if runtime is not None:
        return runtime
    with _LOAD_LOCK:
        runtime = loaded.get(key)
        if runtime is not None:
            return runtime
        _check_folder(local)
        check_fits(local)
        try:
            runtime = make()
        except Exception as exc:  # mlx and transformers raise many types; all become one line
            raise model_error(local, exc, "loading", engine) from exc
        loaded[key] = runtime
        return runtime

