"""Getting models into LM Studio (`llm lmstudio get`): the files a search offers, then LM Studio's own download job
(v1 REST `/api/v1/models/download` + `/download/status`), followed until done. It never writes model files itself."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from llm_lmstudio.core import files
from llm_lmstudio.lmstudio import transport
from llm_lmstudio.core import settings
from llm_lmstudio.management.manager import Manager
from llm_lmstudio.management.models import UnknownModel, display_format, match_model

HF_PREFIX = "https://huggingface.co/"
POLL_SECONDS = 0.5
JOBS_FILE = "downloads.json"  # job ids by server and request, so an interrupted `get` can come back to its job
# lmstudio-python ModelSearchResultDownloadOptionData.fitEstimation -> what people read.
FIT_TEXT = {
    "fullGPUOffload": "yes (fully on GPU)",
    "partialGPUOffload": "yes (partly on GPU)",
    "fitWithoutGPU": "yes (without GPU)",
    "willNotFit": "no",
}


class DownloadError(transport.LMStudioError):
    """A download that LM Studio reports failed, paused, or that cannot start; one line."""


@dataclass
class Option:
    """One file a search result offers."""

    repository: str  # the search result's name, e.g. lmstudio-community/Qwen3-4B-GGUF
    source: dict  # its identifier: {"type": "catalog" | "hf", "identifier": ...}
    name: str
    quantization: str | None
    size_bytes: int
    format: str  # "GGUF" | "MLX"
    fit: str  # a FIT_TEXT key, or "unknown"
    recommended: bool

    @property
    def fits(self) -> bool | None:
        return None if self.fit not in FIT_TEXT else self.fit != "willNotFit"

    def request(self) -> dict:
        """The body of LM Studio's download request: catalog ids as they are, Hugging Face repos as links with the
        quantization (docs: developer/rest/download, `quantization` only for Hugging Face links)."""
        if self.source.get("type") == "catalog":
            return {"model": self.source["identifier"]}
        body = {"model": HF_PREFIX + str(self.source.get("identifier"))}
        if self.quantization:
            body["quantization"] = self.quantization
        return body

    def to_json(self) -> dict:
        return asdict(self) | {"fits": self.fits}


def _format(raw: dict, name: str) -> str:
    """GGUF or MLX: a download option's required `compatibilityType` says (lmstudio-js ModelSearch.ts); only an
    older server's option without it is told by its file and repository name."""
    kind = raw.get("compatibilityType")
    if isinstance(kind, str) and kind:
        return display_format(kind).upper()
    return "GGUF" if "gguf" in name.lower() else "MLX"


def refuse_catalog_quantization(model: str, quantization: str | None) -> None:
    """LM Studio takes a quantization for Hugging Face links only (docs: developer/rest/download); for a catalog id
    0.4.0 and 0.4.1 answer `not_implemented` (lmstudio-bug-tracker#1438) or, through the SDK, it would be dropped."""
    if quantization and not model.startswith(HF_PREFIX):
        raise DownloadError(
            f"LM Studio downloads the catalog model {model} in the quantization it picks: -q {quantization} works "
            "only with a Hugging Face link (lmstudio-bug-tracker#1438); drop -q, or give "
            f"https://huggingface.co/<publisher>/<repository> with -q"
        )


def search(manager: Manager, query: str, limit: int = 10) -> tuple[list[Option], list[str]]:
    """Every file the best search result for `query` offers (an exact match first, as LM Studio ranks it),
    and the names of the other results, which a more precise query can pick."""
    results = [r for r in manager.backend.search(query, limit) if isinstance(r.get("identifier"), dict)]
    if not results:
        raise UnknownModel(f"No model in LM Studio's catalog or on Hugging Face matches {query!r}: try another search")
    best = next((r for r in results if r.get("exact")), results[0])
    options = []
    for raw in manager.backend.download_options(best["identifier"]):
        name = str(raw.get("name") or "")
        options.append(
            Option(
                repository=str(best.get("name") or best["identifier"].get("identifier")),
                source=best["identifier"],
                name=name,
                quantization=raw.get("quantization") if isinstance(raw.get("quantization"), str) else None,
                size_bytes=int(raw.get("sizeBytes") or 0),
                format=_format(raw, name + " " + str(best.get("name"))),
                fit=str(raw.get("fitEstimation") or "unknown"),
                recommended=raw.get("recommended") is True,
            )
        )
    if not options:
        raise UnknownModel(f"{best.get('name')} offers no file LM Studio can download")
    others = [str(r.get("name")) for r in results if r is not best and r.get("name")]
    return options, others


def pick(options: list[Option], quantization: str | None) -> Option:
    if options[0].source.get("type") == "catalog":
        refuse_catalog_quantization(str(options[0].source.get("identifier")), quantization)
    if quantization:
        for option in options:
            if (option.quantization or "").lower() == quantization.lower():
                return option
        known = ", ".join(o.quantization or o.name for o in options)
        raise UnknownModel(f"{options[0].repository} has no {quantization!r} quantization; it has: {known}")
    return next((o for o in options if o.recommended), options[0])


def downloaded_key(manager: Manager, before: set[str], hint: str) -> str | None:
    """The model key a finished download added (or, when it was already there, the one the request names)."""
    keys = [m.key for m in manager.downloaded()]
    new = [k for k in keys if k not in before]
    if len(new) == 1:
        return new[0]
    name = hint.removeprefix(HF_PREFIX).rstrip("/")
    for candidate in (name, name.rsplit("/", 1)[-1], name.rsplit("/", 1)[-1].lower().removesuffix("-gguf").removesuffix("-mlx")):
        try:
            return match_model(candidate, keys)
        except UnknownModel:
            continue
    return None


# ---------------------------------------------------------------- LM Studio's download jobs


def _jobs_path():
    return settings.plugin_dir() / JOBS_FILE


def _request_key(base_url: str, body: dict) -> str:
    return f"{base_url} {body.get('model')} {body.get('quantization') or ''}"


def _jobs() -> dict:
    """The remembered jobs; a damaged file is moved aside with a warning (a download in progress is then asked
    for again, and LM Studio answers with its job)."""
    return files.read_json(_jobs_path(), then="downloads in progress are looked up again") or {}


def remembered_job(base_url: str, body: dict) -> str | None:
    try:
        jobs = _jobs()
    except OSError:
        return None
    job = jobs.get(_request_key(base_url, body))
    return job if isinstance(job, str) else None


def remember_job(base_url: str, body: dict, job_id: str | None) -> None:
    path = _jobs_path()
    jobs = _jobs()
    if job_id:
        jobs[_request_key(base_url, body)] = job_id
    else:
        jobs.pop(_request_key(base_url, body), None)
    files.write_text(path, json.dumps(jobs, indent=2))


def _seconds_until(iso: Any) -> float | None:
    from datetime import datetime, timezone

    if not isinstance(iso, str):
        return None
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())


def progress_event(status: dict) -> dict:
    total = int(status.get("total_size_bytes") or 0)
    done = int(status.get("downloaded_bytes") or 0)
    speed = status.get("bytes_per_second")
    speed = float(speed) if isinstance(speed, (int, float)) else None
    eta = _seconds_until(status.get("estimated_completion"))
    if eta is None and speed:
        eta = (total - done) / speed
    return {
        "event": "progress",
        "job_id": status.get("job_id"),
        "status": status.get("status"),
        "downloaded_bytes": done,
        "total_bytes": total,
        "bytes_per_second": speed,
        "eta_seconds": round(eta, 1) if eta is not None else None,
    }


class Jobs:
    """Starts and follows download jobs on one server."""

    def __init__(self, manager: Manager):
        self.base_url = manager.base_url
        self.client = transport.Client(manager.server, token=manager.token)

    def status(self, job_id: str) -> dict | None:
        try:
            body = self.client.get_json(f"/api/v1/models/download/status/{job_id}")
        except transport.LMStudioError as exc:
            if exc.status == 404:  # whatever its `type`: LM Studio no longer knows the job (restarted, another server)
                return None
            raise
        return body if isinstance(body, dict) else None

    def start(self, body: dict) -> tuple[dict, bool]:
        """The job for `body`: the one an earlier, interrupted `get` started if LM Studio still runs it, else a new one.
        Returns (status, resumed)."""
        earlier = remembered_job(self.base_url, body)
        if earlier:
            status = self.status(earlier)
            if status and status.get("status") in ("downloading", "paused", "completed"):
                return status, True
        status = self.client.post_json("/api/v1/models/download", body)
        if not isinstance(status, dict) or not status.get("status"):
            raise transport.BadResponse(f"LM Studio at {self.base_url} answered the download request with an unexpected shape")
        remember_job(self.base_url, body, status.get("job_id"))
        return status, False

    def follow(self, status: dict, poll: float = POLL_SECONDS) -> Iterator[dict]:
        """Each status until the job is no longer downloading (completed, failed or paused)."""
        yield status
        while status.get("status") == "downloading":
            time.sleep(poll)
            status = self.status(str(status.get("job_id"))) or {**status, "status": "failed"}
            yield status

    def forget(self, body: dict) -> None:
        remember_job(self.base_url, body, None)


def finished(status: dict, what: str) -> None:
    """Raise for a job that ended badly; one line that says what to do."""
    state = status.get("status")
    if state in ("completed", "already_downloaded"):
        return
    done, total = int(status.get("downloaded_bytes") or 0), int(status.get("total_size_bytes") or 0)
    share = f" at {100 * done / total:.0f}%" if total else ""
    job = status.get("job_id")
    if state == "paused":
        raise DownloadError(
            f"LM Studio has paused the download of {what}{share} (job {job}): resume it in LM Studio, "
            "then run the same `llm lmstudio get` to follow it"
        )
    raise DownloadError(
        f"LM Studio's download of {what} failed{share} (job {job}): check free disk space and the network, "
        "then run `llm lmstudio get` again"
    )
