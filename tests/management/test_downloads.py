"""`llm lmstudio get` (downloads.py) against the stand-in's catalog and LM Studio-style download jobs, through the real
SDK (search) and real HTTP (jobs): candidates, progress, already-downloaded, resume after Ctrl-C, and each error."""

import functools
import json
import os
import signal
import subprocess

import pytest
from click.testing import CliRunner
from llm.cli import cli

from tests.conftest import llm_command, stderr_terminal
from tests.helpers import llm_cli
from tests.helpers import assert_one_line_error as one_line_error

MLX_REPO = "test-org/Tiny-Download-MLX"
MLX_KEY = "test-org/tiny-download-mlx"
GGUF_KEY = "test-org/tiny-download-gguf"
TOKEN = "sk-lm-abcdEFGH:a1B2c3D4e5F6g7H8i9J0"


get = functools.partial(llm_cli, "lmstudio", "get")  # `llm lmstudio get ARGS`
assert_one_line_error = functools.partial(one_line_error, progress=True)  # after the candidates and progress


def events(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def download_requests(lmstudio) -> list[dict]:
    return [r for r in lmstudio.requests() if r["path"] == "/api/v1/models/download"]


def test_candidates_show_size_format_and_fit_then_the_download_ends_with_the_model_id(lmstudio):
    lmstudio.downloads(bytes_per_second=400_000)
    result = get("tiny-download", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"lmstudio/{MLX_KEY}\n"
    err = result.stderr
    assert f"{MLX_REPO}:" in err
    lines = err.splitlines()
    header = next(line for line in lines if "QUANT" in line)
    assert header.split() == ["QUANT", "SIZE", "FORMAT", "FITS", "MEMORY", "FILE"]
    chosen = next(line for line in lines if line.startswith("*"))
    assert chosen.split()[:5] == ["*", "4bit", "584.9", "KB", "MLX"] and "yes (fully on GPU)" in chosen
    # Piped: a few quiet lines, not a redrawn bar.
    assert "\r" not in err and f"{MLX_REPO} 4bit: 100% of 584.9 KB" in err
    assert "Other matches (name one to get it instead): test-org/Tiny-Download-GGUF" in err
    assert err.rstrip().endswith(f"Downloaded {MLX_KEY}.")
    assert MLX_KEY in {m["key"] for m in json.loads(CliRunner().invoke(cli, ["lmstudio", "ls", "--json"]).stdout)["lmstudio"]}
    [request] = download_requests(lmstudio)
    assert request["model"] == f"https://huggingface.co/{MLX_REPO}"


def test_json_progress_events_are_json_lines(lmstudio):
    lmstudio.downloads(bytes_per_second=300_000)
    result = get("Tiny-Download-GGUF", "-q", "q8_0", "--yes", "--json")
    assert result.exit_code == 0, result.output
    stream = events(result)
    assert [e["event"] for e in stream[:2]] == ["candidates", "started"]
    candidates = stream[0]
    assert [o["quantization"] for o in candidates["options"]] == ["Q4_K_M", "Q8_0"] and candidates["chosen"] == 1
    assert candidates["others"] == []
    assert set(candidates["options"][0]) == {
        "repository", "source", "name", "quantization", "size_bytes", "format", "fit", "fits", "recommended",
    }
    assert candidates["options"][0]["format"] == "GGUF" and candidates["options"][0]["fits"] is True
    progress = [e for e in stream if e["event"] == "progress"]
    assert len(progress) >= 3
    assert set(progress[0]) == {"event", "job_id", "status", "downloaded_bytes", "total_bytes", "bytes_per_second", "eta_seconds"}
    done = [p["downloaded_bytes"] for p in progress]
    assert done == sorted(done) and done[-1] == progress[-1]["total_bytes"] == 584947
    assert any(p["bytes_per_second"] == 300_000 and p["eta_seconds"] is not None for p in progress)
    assert stream[-1] == {
        "event": "completed", "job_id": stream[1]["job_id"], "key": GGUF_KEY, "model_id": f"lmstudio/{GGUF_KEY}",
    }


def test_an_already_downloaded_model_says_so_and_downloads_nothing(lmstudio):
    result = get("test-org/tiny-llama")
    assert result.exit_code == 0, result.output
    assert result.stdout == "lmstudio/test-org/tiny-llama\n" and "Already downloaded" in result.stderr
    assert get("tiny-download", "--yes").exit_code == 0
    lmstudio.clear_requests()
    again = get("tiny-download", "--yes", "--json")
    assert events(again)[-1]["event"] == "already_downloaded" and events(again)[-1]["model_id"] == f"lmstudio/{MLX_KEY}"
    assert [r.get("model") for r in download_requests(lmstudio)] == [f"https://huggingface.co/{MLX_REPO}"]
    assert not any("/download/status/" in r["path"] for r in lmstudio.requests())


def test_get_with_server_prints_an_id_that_works_or_none(lmstudio, refused_url, monkeypatch):
    port = lmstudio.base_url.rsplit(":", 1)[1]
    result = get("test-org/tiny-llama", "--server", f"localhost:{port}")  # the configured 127.0.0.1, spelled otherwise
    assert result.exit_code == 0 and result.stdout == "lmstudio/test-org/tiny-llama\n"
    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)  # the stand-in is not configured at all
    result = get("test-org/tiny-llama", "--server", lmstudio.host_port)
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        f"To use it: 127.0.0.1:{port} is not in LMSTUDIO_BASE_URL, so llm cannot use its models yet: add it there "
        "(a comma-separated list) and `llm models` lists them")
    stream = events(get("test-org/tiny-llama", "--server", lmstudio.host_port, "--json"))
    assert stream[-1] == {"event": "already_downloaded", "job_id": None, "key": "test-org/tiny-llama", "model_id": None}


def llm_process(lmstudio, user_path, *args):
    env = dict(os.environ, LLM_USER_PATH=str(user_path), LMSTUDIO_BASE_URL=lmstudio.base_url)
    # Ctrl-C as a terminal's foreground process gets it: a runner that started this suite in the background (a
    # non-interactive shell's `&`) leaves SIGINT ignored, and an ignored signal stays ignored across exec.
    return subprocess.Popen(
        [llm_command(), "lmstudio", "get", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.slow  # a real llm process interrupted, then a second one
def test_ctrl_c_leaves_the_job_running_and_get_again_follows_it(lmstudio, user_path):
    lmstudio.downloads(bytes_per_second=50_000)  # about 12 s for the whole model
    process = llm_process(lmstudio, user_path, MLX_REPO, "--yes", "--json")
    started = None
    for line in process.stdout:
        if json.loads(line)["event"] == "progress":
            started = json.loads(line)
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert json.loads(out.splitlines()[-1]) == {"event": "interrupted", "job_id": started["job_id"]}
    assert "LM Studio keeps downloading; run the same `llm lmstudio get` again" in err and "Traceback" not in err
    lmstudio.downloads(bytes_per_second=2_000_000)
    result = get(MLX_REPO, "--yes", "--json")
    assert result.exit_code == 0, result.output
    stream = events(result)
    assert stream[1]["event"] == "resumed" and stream[1]["job_id"] == started["job_id"]
    assert stream[-1]["event"] == "completed" and stream[-1]["model_id"] == f"lmstudio/{MLX_KEY}"
    assert len(download_requests(lmstudio)) == 1  # the second run asked LM Studio for the job, not a new download


def test_a_job_paused_in_lm_studio_is_reported_in_one_line(lmstudio):
    import httpx

    lmstudio.downloads(bytes_per_second=20_000)
    job = httpx.post(f"{lmstudio.base_url}/api/v1/models/download", json={"model": GGUF_KEY}).json()
    lmstudio.downloads(pause=job["job_id"])  # as the app's downloads panel would
    assert_one_line_error(get("Tiny-Download-GGUF", "--yes"), "LM Studio has paused the download", job["job_id"], "resume it in LM Studio")


def test_a_failed_download_is_one_line_with_how_far_it_got(lmstudio):
    lmstudio.downloads(bytes_per_second=1_000_000, fail_after_bytes=300_000)
    assert_one_line_error(get("tiny-download", "--yes"), "download of test-org/Tiny-Download-MLX 4bit failed at", "disk space")


def test_no_disk_space_is_one_line(lmstudio):
    lmstudio.downloads(disk_free=1000)
    assert_one_line_error(get("tiny-download", "--yes"), "Not enough disk space")
    assert MLX_KEY not in [e["model"] for e in lmstudio.loaded()]


def test_unknown_model_and_unknown_quantization_are_one_line(lmstudio):
    assert_one_line_error(get("no-such-model-anywhere", "--yes"), "No model in LM Studio's catalog or on Hugging Face matches")
    assert_one_line_error(get("tiny-download", "-q", "q2_k", "--yes"), "has no 'q2_k' quantization; it has: 4bit, 8bit")
    assert download_requests(lmstudio) == []


def test_offline_server_and_missing_token_are_one_line(lmstudio, refused_url, monkeypatch):
    lmstudio.configure(auth_token=TOKEN)
    assert_one_line_error(get("tiny-download", "--yes"), "requires an API token")
    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)
    assert_one_line_error(get("tiny-download", "--yes"), f"LM Studio is not reachable at {refused_url}")


def test_with_a_token_get_works_whichever_sdk_is_installed(lmstudio, monkeypatch):
    # An SDK that can send the token searches; an older one goes straight to the REST download with the id given.
    lmstudio.configure(auth_token=TOKEN)
    monkeypatch.setenv("LM_API_TOKEN", TOKEN)
    result = get(MLX_KEY, "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"lmstudio/{MLX_KEY}\n" and TOKEN not in result.output
    assert all(r["authorization"] for r in download_requests(lmstudio))


def test_a_script_must_say_yes(lmstudio):
    assert_one_line_error(get("tiny-download"), "add --yes")
    assert download_requests(lmstudio) == []


def test_the_progress_line_on_a_terminal_has_bytes_speed_and_eta(monkeypatch):
    from llm_lmstudio.cli import get as commands

    terminal = stderr_terminal(monkeypatch)
    progress = commands._DownloadProgress("qwen3-4b Q4_K_M", json_=False)
    progress.update({"job_id": "job_1", "status": "downloading", "total_size_bytes": 4_000_000_000,
                     "downloaded_bytes": 1_000_000_000, "bytes_per_second": 50_000_000})
    progress.finish()
    drawn = terminal.getvalue()
    assert drawn.startswith("\rqwen3-4b Q4_K_M   25%  1.0 GB / 4.0 GB  50.0 MB/s  ETA 1m") and drawn.endswith("\n")


def test_a_catalog_result_is_downloaded_by_its_catalog_id(lmstudio):
    result = get("tiny-catalog-chat", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert events(result)[-1]["model_id"] == "lmstudio/test-org/tiny-catalog-chat"
    [request] = download_requests(lmstudio)
    assert request["model"] == "test-org/tiny-catalog-chat"  # catalog ids as they are, no quantization
    # Formats from each option's compatibilityType: these option names say neither GGUF nor MLX.
    options = events(result)[0]["options"]
    assert [(o["name"], o["format"]) for o in options] == [
        ("tiny-catalog-chat-4bit", "MLX"), ("tiny-catalog-chat-Q4_K_M", "GGUF"),
    ]


@pytest.mark.parametrize("path", ["sdk", "rest"])
def test_a_quantization_for_a_catalog_id_is_refused_in_one_line(lmstudio, monkeypatch, path):
    if path == "rest":  # a server that wants a token this SDK cannot send: `get` goes straight to the REST download
        from llm_lmstudio.management import sdk

        lmstudio.configure(auth_token=TOKEN)
        monkeypatch.setenv("LM_API_TOKEN", TOKEN)
        monkeypatch.setattr(sdk, "sdk_supports_token", lambda: False)
    query = "tiny-catalog-chat" if path == "sdk" else "test-org/tiny-catalog-chat"
    result = get(query, "-q", "Q4_K_M", "--yes")
    # LM Studio 0.4.0/0.4.1 answer `not_implemented` (lmstudio-bug-tracker#1438); through the SDK it would be dropped.
    assert_one_line_error(result, "-q Q4_K_M works only with a Hugging Face link", "lmstudio-bug-tracker#1438")
    assert "QUANT" not in result.output and "*" not in result.output  # never shown as the chosen file
    assert download_requests(lmstudio) == []


def test_a_job_lm_studio_no_longer_knows_is_started_again(lmstudio):
    from llm_lmstudio.management import downloads

    body = {"model": f"https://huggingface.co/{MLX_REPO}", "quantization": "4bit"}
    downloads.remember_job(lmstudio.base_url, body, "job_from_before_a_restart")
    result = get(MLX_REPO, "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert [e["event"] for e in events(result)][1] == "started" and events(result)[-1]["event"] == "completed"
    assert any(r["path"].endswith("/job_from_before_a_restart") for r in lmstudio.requests())  # asked: a 404
    assert len(download_requests(lmstudio)) == 1


def test_the_printed_id_works_with_llm_at_once(lmstudio):
    # `llm models` was cached before the download; `get` refreshes it so the new id resolves straight away.
    assert CliRunner().invoke(cli, ["models"]).exit_code == 0
    model_id = get("tiny-download", "--yes").stdout.strip()
    lmstudio.script("Fresh model answer")
    result = CliRunner().invoke(cli, ["-m", model_id, "hello", "-o", "max_tokens", "32"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "Fresh model answer"
