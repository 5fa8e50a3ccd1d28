"""`llm lmstudio get`: search through LM Studio, pick a file, follow LM Studio's download job with progress for people
(terminal line, quiet piped lines) or JSON lines for scripts. Work happens in downloads.py; this module only talks."""

import sys

import click

from llm_lmstudio.cli.common import (
    SERVER_OPTION,
    echo_table,
    format_seconds,
    managing,
    size,
)


class _DownloadProgress:
    """Download progress: a redrawn line on a terminal (bytes, speed, ETA), a few plain lines when piped,
    JSON lines on stdout with --json."""

    def __init__(self, what: str, json_: bool):
        self.what = what
        self.json = json_
        self.terminal = not json_ and sys.stderr.isatty()
        self.last_quarter = -1

    def event(self, data: dict) -> None:
        if self.json:
            import json

            click.echo(json.dumps(data))

    def update(self, status: dict) -> None:
        from llm_lmstudio.management.downloads import progress_event

        data = progress_event(status)
        self.event(data)
        if self.json or not data["total_bytes"]:
            return
        share = data["downloaded_bytes"] / data["total_bytes"]
        if self.terminal:
            speed = f"{size(data['bytes_per_second'])}/s" if data["bytes_per_second"] else "-"
            eta = format_seconds(data["eta_seconds"]) if data["eta_seconds"] is not None else "-"
            line = (f"{self.what}  {share:4.0%}  {size(data['downloaded_bytes'])} / {size(data['total_bytes'])}"
                    f"  {speed}  ETA {eta}")
            click.echo("\r" + line.ljust(78), nl=False, err=True)
        elif int(share * 4) > self.last_quarter:  # piped: one quiet line per quarter
            self.last_quarter = int(share * 4)
            click.echo(f"{self.what}: {share:.0%} of {size(data['total_bytes'])}", err=True)

    def finish(self) -> None:
        if self.terminal:
            click.echo("", err=True)


def _echo_options(options, chosen) -> None:
    from llm_lmstudio.management.downloads import FIT_TEXT

    click.echo(f"{options[0].repository}:", err=True)
    headings = ["", "QUANT", "SIZE", "FORMAT", "FITS MEMORY", "FILE"]
    rows = [
        ("*" if o is chosen else "", o.quantization or "-", size(o.size_bytes), o.format, FIT_TEXT.get(o.fit, "unknown"), o.name)
        for o in options
    ]
    echo_table(headings, rows, err=True)


@click.command(name="get")
@click.argument("query")
@click.option("-q", "--quantization", help="The quantization to download, e.g. Q4_K_M or 4bit (default: LM Studio's pick)")
@click.option("-y", "--yes", is_flag=True, help="Download without asking")
@SERVER_OPTION
@click.option("json_", "--json", is_flag=True, help="Progress as JSON lines on stdout (candidates, progress, completed)")
def get_command(query, quantization, yes, address, json_):
    """Download a model into LM Studio

    Searches LM Studio's catalog and Hugging Face through LM Studio, shows the files on offer with their
    size, format and whether they fit this machine's memory, has LM Studio download the chosen one, and
    ends with its `lmstudio/<key>` id. If interrupted, LM Studio keeps downloading: run the same command
    again to follow the job. With a token the installed SDK cannot send, QUERY must be a catalog id
    (publisher/model) or a Hugging Face link.

    \b
    Examples:
        llm lmstudio get qwen3-4b
        llm lmstudio get qwen3-4b --quantization Q8_0 --yes
        llm lmstudio get https://huggingface.co/lmstudio-community/Qwen3-4B-GGUF -q Q4_K_M --yes --json
    """
    from llm_lmstudio.management import downloads
    from llm_lmstudio.management import manager as management

    progress = _DownloadProgress(query, json_)
    with managing(address) as manager:
        models = manager.downloaded()
        present = next((m for m in models if m.key.lower() == query.lower().removeprefix("lmstudio/")), None)
        if present is not None:
            _get_done(manager, present.key, "already_downloaded", progress)
            return
        if manager.via == "sdk":
            options, others = downloads.search(manager, query)
            chosen = downloads.pick(options, quantization)
            progress.what = f"{chosen.repository} {chosen.quantization or ''}".strip()
            progress.event({"event": "candidates", "query": query, "options": [o.to_json() for o in options],
                            "chosen": options.index(chosen), "others": others})
            if not json_:
                _echo_options(options, chosen)
                if others:
                    click.echo(f"Other matches (name one to get it instead): {', '.join(others)}", err=True)
            body = chosen.request()
            question = f"Download {progress.what} ({size(chosen.size_bytes)})?"
            if chosen.fits is False:
                click.echo(f"Warning: {progress.what} will not fit this machine's memory, LM Studio estimates", err=True)
        else:
            downloads.refuse_catalog_quantization(query, quantization)
            body = {"model": query, **({"quantization": quantization} if quantization else {})}
            question = f"Download {query}?"
        if not yes:
            if not sys.stdin.isatty():
                raise click.ClickException("Not downloading without confirmation: add --yes to download from a script")
            if not click.confirm(question, default=True, err=True):
                raise click.ClickException("Nothing downloaded")
        jobs = downloads.Jobs(manager)
        status, resumed = jobs.start(body)
        if status.get("status") == "already_downloaded":
            key = downloads.downloaded_key(manager, {m.key for m in models}, body["model"])
            _get_done(manager, key, "already_downloaded", progress)
            return
        progress.event({"event": "resumed" if resumed else "started", "job_id": status.get("job_id"),
                        "model": body["model"], "total_bytes": status.get("total_size_bytes")})
        if resumed and not json_:
            click.echo(f"Following LM Studio's download job {status.get('job_id')}, started earlier", err=True)
        try:
            for status in jobs.follow(status):
                progress.update(status)
        except KeyboardInterrupt:
            progress.finish()
            progress.event({"event": "interrupted", "job_id": status.get("job_id")})
            click.echo(
                f"Stopped following job {status.get('job_id')}: LM Studio keeps downloading; run the same "
                "`llm lmstudio get` again to follow it", err=True,
            )
            raise SystemExit(130) from None
        progress.finish()
        try:
            downloads.finished(status, progress.what)
        except downloads.DownloadError as exc:
            raise click.ClickException(str(exc)) from None
        jobs.forget(body)
        key = downloads.downloaded_key(manager, {m.key for m in models}, body["model"])
        _get_done(manager, key, "completed", progress, job_id=status.get("job_id"))
    management.refresh_catalog()


def _get_done(manager, key, outcome, progress, job_id=None) -> None:
    from llm_lmstudio.management import manager as management

    model_id = management.model_id(manager.server, key) if key else None
    progress.event({"event": outcome, "job_id": job_id, "key": key, "model_id": model_id})
    if not progress.json:
        if outcome == "already_downloaded":
            click.echo(f"Already downloaded{': ' + key if key else ''}; nothing to do.", err=True)
        else:
            click.echo(f"Downloaded {key or progress.what}.", err=True)
        if model_id:
            click.echo(model_id)
        elif key:
            click.echo(f"To use it: {management.not_configured(manager.server)}", err=True)
