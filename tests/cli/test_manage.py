"""`llm lmstudio load|unload|ps|ls|status` run through click against the stand-in with the real SDK:
output for people, the documented --json shapes, JIT + TTL in ps, several instances, --all, and each error."""

import functools
import json
import re
import subprocess
import sys

import httpx
import lmstudio as lms
import pytest
from click.testing import CliRunner
from llm.cli import cli

from llm_lmstudio.lmstudio import catalog
from tests import helpers
from tests.conftest import stderr_terminal
from tests.helpers import llm_cli

LLAMA = "test-org/tiny-llama"
QWEN = "test-org/tiny-qwen-tools"
EMBEDDING = "test-org/text-embedding-all-minilm-l6-v2"
TOKEN = "sk-lm-abcdEFGH:a1B2c3D4e5F6g7H8i9J0"


run = functools.partial(llm_cli, "lmstudio")  # `llm lmstudio ARGS`


def assert_one_line_error(result, *fragments):
    assert "ws://" not in helpers.assert_one_line_error(result, *fragments)  # the SDK's transport stays out of sight


def chat_with_ttl(base_url, model, ttl):
    response = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "ttl": ttl},
        timeout=60,
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("command", ["load", "unload", "ps", "ls", "get", "status"])
def test_every_command_has_help_with_an_example(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output and f"llm lmstudio {command}" in result.output


def test_every_command_takes_json():
    from llm_lmstudio.cli.group import lmstudio_group

    def leaves(group, path):
        for name in group.list_commands(None):
            command = group.get_command(None, name)
            yield from leaves(command, path + [name]) if hasattr(command, "list_commands") else [(path + [name], command)]

    found = {" ".join(path): command for path, command in leaves(lmstudio_group, [])}
    assert {"mlx add", "mlx remove", "mlx list", "cache stats", "cache clear", "load", "unload", "ps", "ls", "get",
            "status", "stats", "route"} == set(found)
    assert [name for name, command in found.items() if "--json" not in {o for p in command.params for o in p.opts}] == []


def test_llm_registers_the_group_without_importing_its_commands():
    # Every `llm` command registers `llm lmstudio`; its commands (and what they import) load only when it runs.
    code = ("import sys; sys.argv = ['llm', '--help']\nfrom llm.cli import cli\ntry: cli()\nexcept SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('llm_lmstudio')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    help_text, _, loaded = result.stdout.rstrip().rpartition("\n")
    assert re.search(r"lmstudio +Manage LM Studio and native MLX models", help_text)
    assert loaded == "['llm_lmstudio', 'llm_lmstudio.cli', 'llm_lmstudio.cli.group']"  # the package holds a docstring only


def test_the_group_lists_its_commands_and_one_line_setting_errors(monkeypatch):
    listed = run("--help")
    assert listed.exit_code == 0
    assert {"load", "unload", "ps", "ls", "get", "status", "mlx", "route", "cache", "stats"} <= set(
        re.findall(r"^  ([a-z]+) ", listed.output.split("Commands:")[1], re.M))
    monkeypatch.setenv("LMSTUDIO_BASE_URL", "ftp://example")  # read by `ls` itself, outside any management session
    assert_one_line_error(run("ls"), "LMSTUDIO_BASE_URL='ftp://example'")


# ---------------------------------------------------------------- load


def test_load_prints_the_identifier_and_the_load_time(lmstudio):
    result = run("load", "tiny-llama", "--ttl", "600", "-c", "1024")
    assert result.exit_code == 0, result.output
    assert re.search(r"Loaded test-org/tiny-llama in \d+\.\d\d s \(.*context 1024, idle TTL 10m\)", result.stdout)
    assert 'Identifier: "test-org/tiny-llama"' in result.stdout
    assert f"llm -m lmstudio/{LLAMA}" in result.stdout
    [loaded] = lmstudio.loaded()
    assert (loaded["model"], loaded["context_length"], loaded["ttl_seconds"], loaded["jit"]) == (LLAMA, 1024, 600, False)


def test_load_json_is_the_documented_shape_without_a_progress_bar(lmstudio):
    result = run("load", LLAMA, "--identifier", "scripted", "--gpu", "max", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    data = json.loads(result.stdout)
    assert set(data) == {
        "identifier", "model", "model_id", "type", "context_length", "gpu", "ttl", "load_seconds", "size_bytes", "server",
        "config", "already_loaded",
    }
    assert data["already_loaded"] is False
    assert data["config"] == {"identifier": "scripted", "gpu": 1.0}
    assert (data["identifier"], data["model"], data["model_id"], data["type"]) == ("scripted", LLAMA, f"lmstudio/{LLAMA}", "llm")
    assert (data["gpu"], data["ttl"], data["server"]) == (1.0, None, lmstudio.base_url)
    assert data["load_seconds"] > 0 and data["size_bytes"] > 0 and data["context_length"] > 0


def test_load_options_reach_lm_studio_as_load_config(lmstudio):
    assert run("load", LLAMA, "--gpu", "off", "--context-length", "512", "--identifier", "cfg").exit_code == 0
    with lms.Client(lmstudio.host_port) as client:
        config = client.llm.model("cfg").get_load_config()
    assert (config.context_length, config.gpu.ratio) == (512, 0.0)


def test_every_load_setting_reaches_lm_studio(lmstudio):
    result = run(
        "load", LLAMA, "-c", "1024", "--gpu", "0.5", "--flash-attention", "--eval-batch-size", "256",
        "--num-experts", "2", "--no-offload-kv-cache", "--ttl", "60", "--identifier", "tuned", "--json",
    )
    assert result.exit_code == 0, result.output
    [state] = lmstudio.loaded()
    assert (state["identifier"], state["context_length"], state["gpu_ratio"], state["ttl_seconds"]) == ("tuned", 1024, 0.5, 60)
    assert state["config"] == {"flash_attention": True, "eval_batch_size": 256, "num_experts": 2, "offload_kv_cache_to_gpu": False}
    with lms.Client(lmstudio.host_port) as client:
        config = client.llm.model("tuned").get_load_config()
    assert (config.flash_attention, config.eval_batch_size, config.num_experts, config.offload_kv_cache_to_gpu) == (True, 256, 2, False)
    assert json.loads(result.stdout)["config"]["num_experts"] == 2


def test_estimate_only_prints_the_estimate_and_loads_nothing(lmstudio):
    result = run("load", LLAMA, "-c", "2048", "--gpu", "max", "--estimate-only")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == [f"Model: {LLAMA}", "Context Length: 2,048", "GPU Offload: 100%"]
    assert re.search(r"^Estimated GPU Memory: +[\d.]+ [KMG]?B$", result.stdout, re.M)
    assert re.search(r"^Estimated Total Memory: [\d.]+ [KMG]?B \(model .*, context .*\)$", result.stdout, re.M)
    assert lines[-1] == "Estimate: this model may be loaded under LM Studio's resource guardrails."
    data = json.loads(run("load", LLAMA, "-c", "2048", "--estimate-only", "--json").stdout)
    assert set(data) == {
        "model", "context_length", "gpu", "total_bytes", "model_bytes", "context_bytes", "gpu_bytes", "confidence", "fits",
    }
    assert data["fits"] is True and data["total_bytes"] == data["model_bytes"] + data["context_bytes"]
    assert lmstudio.loaded() == []


def test_a_load_that_would_not_fit_is_refused_before_loading(lmstudio):
    small = json.loads(run("load", LLAMA, "-c", "256", "--estimate-only", "--json").stdout)
    lmstudio.configure(memory_limit=small["total_bytes"])
    assert "will fail to load" in run("load", LLAMA, "-c", "4096", "--estimate-only").stdout
    assert_one_line_error(
        run("load", LLAMA, "-c", "4096"), f"{LLAMA} would need about", "nothing was loaded", "lower --context-length"
    )
    assert lmstudio.loaded() == []
    assert run("load", LLAMA, "-c", "256").exit_code == 0


@pytest.mark.minilm  # uses the stand-in's MiniLM embedding model
def test_llm_only_settings_for_an_embedding_model_are_one_line(lmstudio):
    assert_one_line_error(run("load", EMBEDDING, "--flash-attention"), "--flash-attention only apply to language models")
    assert lmstudio.loaded() == []


def test_load_progress_bar_follows_sdk_progress_on_a_terminal(monkeypatch):
    from llm_lmstudio.cli import manage as commands

    terminal = stderr_terminal(monkeypatch)
    progress = commands._LoadProgress("Loading tiny-llama", enabled=terminal.isatty())
    for fraction in (0.0, 0.5, 1.0):
        progress.update(fraction)
    progress.finish()
    drawn = terminal.getvalue()
    assert "Loading tiny-llama" in drawn and "50%" in drawn and "100%" in drawn


def test_load_rejects_a_bad_gpu_value_before_connecting():
    result = run("load", LLAMA, "--gpu", "lots")
    assert result.exit_code == 2 and "'lots' is not off, max or a number between 0 and 1" in result.output


def test_load_ambiguous_name_lists_the_candidates(lmstudio):
    assert_one_line_error(run("load", "tiny"), "'tiny' matches several models", LLAMA, QWEN)
    assert lmstudio.loaded() == []


def test_load_unknown_name_lists_what_there_is(lmstudio):
    assert_one_line_error(run("load", "no-such-model"), "No model matches 'no-such-model'", LLAMA)


def test_load_duplicate_identifier_fails(lmstudio):
    lmstudio.load(LLAMA, identifier="taken")
    assert_one_line_error(run("load", QWEN, "--identifier", "taken"), 'Model with identifier "taken" already loaded')


def test_load_refused_by_lm_studio_shows_its_message(lmstudio):
    lmstudio.set_fault("load_fail", message="Model loading was stopped due to insufficient system resources.")
    assert_one_line_error(
        run("load", LLAMA), "LM Studio refused to load the model: Model loading was stopped due to insufficient"
    )


def test_load_and_unload_refresh_the_model_list_cache(lmstudio):
    def cached_llama():
        entry = catalog.read_cache()[lmstudio.base_url]
        return next(m for m in entry["models"] if m["key"] == LLAMA)

    assert run("load", LLAMA).exit_code == 0
    assert cached_llama()["loaded"] is True
    assert run("unload", LLAMA).exit_code == 0
    assert cached_llama()["loaded"] is False


# ---------------------------------------------------------------- unload


def test_unload_by_identifier_keeps_the_others(lmstudio):
    lmstudio.load(LLAMA, identifier="one")
    lmstudio.load(LLAMA, identifier="two")
    result = run("unload", "one")
    assert result.exit_code == 0 and result.stdout == f'Unloaded "one" ({LLAMA}).\n'
    assert [i["identifier"] for i in lmstudio.loaded()] == ["two"]


@pytest.mark.minilm  # uses the stand-in's MiniLM embedding model
def test_unload_all(lmstudio):
    lmstudio.load(LLAMA)
    lmstudio.load(QWEN)
    lmstudio.load(EMBEDDING)
    result = run("unload", "--all", "--json")
    assert result.exit_code == 0, result.output
    unloaded = json.loads(result.stdout)["unloaded"]
    assert sorted(i["identifier"] for i in unloaded) == sorted([LLAMA, QWEN, EMBEDDING])
    assert lmstudio.loaded() == []


def test_unload_json_rows_have_the_shape_of_ps_rows(lmstudio):
    lmstudio.load(LLAMA)
    ps_rows = json.loads(run("ps", "--json").stdout)
    result = run("unload", LLAMA, "--json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)["unloaded"]
    assert set(row) == set(ps_rows[0])
    assert (row["identifier"], row["server"], row["status"]) == (LLAMA, lmstudio.base_url, "unloaded")


def test_unload_without_identifier_takes_the_only_loaded_model(lmstudio):
    lmstudio.load(QWEN)
    result = run("unload")
    assert result.exit_code == 0 and QWEN in result.stdout
    assert lmstudio.loaded() == []
    assert run("unload").stdout == "No models are loaded.\n"


def test_unload_without_identifier_refuses_to_guess_among_several(lmstudio):
    lmstudio.load(LLAMA)
    lmstudio.load(QWEN)
    assert_one_line_error(run("unload"), "Several models are loaded", "--all")
    assert len(lmstudio.loaded()) == 2


def test_unload_unknown_identifier_names_the_loaded_ones(lmstudio):
    lmstudio.load(LLAMA, identifier="here")
    assert_one_line_error(run("unload", "elsewhere"), "No loaded model matches 'elsewhere'; loaded: here")
    assert_one_line_error(run("unload", QWEN), f"{QWEN} is not loaded; loaded: here")


@pytest.mark.parametrize("name", ["tiny-llama", LLAMA, f"lmstudio/{LLAMA}", "TEST-ORG/Tiny-Llama", "llama"])
def test_unload_takes_every_name_load_takes(lmstudio, name):
    assert run("load", name).exit_code == 0
    result = run("unload", name)
    assert result.exit_code == 0, result.output
    assert result.stdout == f'Unloaded "{LLAMA}" ({LLAMA}).\n' and lmstudio.loaded() == []


def test_unload_by_name_finds_a_variant_and_refuses_to_guess_between_copies(lmstudio):
    lmstudio.set_variants(LLAMA, ["q4_k_m", "q8_0"])
    assert run("load", "tiny-llama@q8_0").exit_code == 0
    assert run("unload", "tiny-llama").exit_code == 0 and lmstudio.loaded() == []
    lmstudio.load(LLAMA)
    lmstudio.load(LLAMA, identifier="second")
    assert_one_line_error(run("unload", "tiny-llama"), f"{LLAMA} is loaded 2 times ({LLAMA}, second): name one by its "
                          "identifier, or use --all")
    assert_one_line_error(run("unload", "tiny"), "'tiny' matches several models", LLAMA, QWEN)  # as `load tiny` says
    assert run("unload", "second").exit_code == 0
    assert [i["identifier"] for i in lmstudio.loaded()] == [LLAMA]


def test_unload_identifier_and_all_together_is_a_usage_error():
    result = run("unload", "x", "--all")
    assert result.exit_code == 2 and "not both" in result.output


# ---------------------------------------------------------------- ps


def test_ps_shows_jit_ttl_counting_down_and_manual_loads_without_ttl(lmstudio):
    lmstudio.load(QWEN, identifier="manual")
    chat_with_ttl(lmstudio.base_url, LLAMA, 90)
    result = run("ps")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["IDENTIFIER", "MODEL", "TYPE", "SIZE", "CONTEXT", "TTL", "STATUS"]
    jit_row = next(line for line in lines if line.startswith(LLAMA))
    assert re.search(r"  (1m \d+s|1m|\d+s) / 1m 30s  ", jit_row), jit_row  # remaining / total
    manual_row = next(line for line in lines if line.startswith("manual"))
    assert " - " in manual_row and QWEN in manual_row


@pytest.mark.minilm  # uses the stand-in's MiniLM embedding model
def test_ps_json_is_the_documented_shape(lmstudio):
    chat_with_ttl(lmstudio.base_url, LLAMA, 120)
    lmstudio.load(EMBEDDING)
    result = run("ps", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["identifier"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {LLAMA, EMBEDDING}
    for row in rows.values():
        assert set(row) == {
            "identifier", "model", "type", "format", "size_bytes", "context_length", "max_context_length",
            "ttl", "ttl_remaining", "status", "server",
        }
        assert row["server"] == lmstudio.base_url
    assert (rows[LLAMA]["type"], rows[LLAMA]["ttl"]) == ("llm", 120.0)
    assert 0 < rows[LLAMA]["ttl_remaining"] <= 120
    assert (rows[EMBEDDING]["type"], rows[EMBEDDING]["ttl"], rows[EMBEDDING]["ttl_remaining"]) == ("embedding", None, None)


def test_ps_lists_several_instances_of_one_model(lmstudio):
    assert run("load", LLAMA).exit_code == 0
    assert run("load", LLAMA, "--new-instance").exit_code == 0
    assert run("load", LLAMA, "--identifier", "third", "--new-instance").exit_code == 0
    rows = json.loads(run("ps", "--json").stdout)
    assert [(r["identifier"], r["model"]) for r in rows] == [(LLAMA, LLAMA), (f"{LLAMA}:2", LLAMA), ("third", LLAMA)]


def test_load_of_a_model_loaded_just_in_time_says_so_and_loads_nothing(lmstudio):
    chat_with_ttl(lmstudio.base_url, LLAMA, 600)  # a request loaded it (JIT)
    result = run("load", "tiny-llama", "-c", "2048")
    assert result.exit_code == 0, result.output
    [state] = lmstudio.loaded()
    assert result.stdout == (f'{LLAMA} is already loaded as "{LLAMA}" (context {state["context_length"]}): nothing was '
                             "loaded; --new-instance loads another copy\n")
    data = json.loads(run("load", LLAMA, "--json").stdout)
    assert (data["already_loaded"], data["identifier"], data["load_seconds"]) == (True, LLAMA, 0.0)
    assert len(lmstudio.loaded()) == 1
    copy = json.loads(run("load", LLAMA, "--new-instance", "--json").stdout)
    assert (copy["already_loaded"], copy["identifier"]) == (False, f"{LLAMA}:2")
    assert len(lmstudio.loaded()) == 2


def test_a_context_longer_than_the_model_takes_is_refused_before_estimating_or_loading(lmstudio):
    limit = next(m for m in json.loads(run("ls", "--json").stdout)["lmstudio"] if m["key"] == LLAMA)["max_context_length"]
    for extra in (["--estimate-only"], ["--estimate-only", "--json"], []):
        assert_one_line_error(
            run("load", "tiny-llama", "-c", "999999", *extra),
            f"--context-length 999,999 is more than {LLAMA} takes ({limit:,} tokens, as LM Studio lists it): nothing "
            "was loaded; lower --context-length",
        )
    assert lmstudio.loaded() == []
    assert run("load", "tiny-llama", "-c", str(limit), "--estimate-only").exit_code == 0


def test_ps_lists_every_configured_server_with_a_column_naming_it(lmstudio, refused_url, monkeypatch):
    lmstudio.load(LLAMA)
    port = lmstudio.base_url.rsplit(":", 1)[1]
    # The stand-in under a second address: to the plugin, a second LM Studio server.
    monkeypatch.setenv("LMSTUDIO_BASE_URL", f"{lmstudio.base_url},localhost:{port}")
    result = run("ps")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["IDENTIFIER", "MODEL", "TYPE", "SIZE", "CONTEXT", "TTL", "STATUS", "SERVER"]
    assert [row.split()[-1] for row in rows] == [f"127.0.0.1:{port}", f"localhost:{port}"]
    servers = [row["server"] for row in json.loads(run("ps", "--json").stdout)]
    assert servers == [lmstudio.base_url, f"http://localhost:{port}"]
    only = json.loads(run("ps", "--json", "--server", f"localhost:{port}").stdout)
    assert [row["server"] for row in only] == [f"http://localhost:{port}"]
    monkeypatch.setenv("LMSTUDIO_BASE_URL", f"{lmstudio.base_url},{refused_url}")
    partial = run("ps", "--json")
    assert partial.exit_code == 1  # the list is incomplete, and says which server is missing
    assert [row["identifier"] for row in json.loads(partial.stdout)] == [LLAMA]
    assert partial.stderr.splitlines() == [f"Error: LM Studio is not reachable at {refused_url} — is the server running? "
                                           "Start it with `lms server start` or from the LM Studio app"]


def test_ps_with_nothing_loaded(lmstudio):
    result = run("ps")
    assert result.exit_code == 0 and result.stdout == "No models are currently loaded.\n"
    assert json.loads(run("ps", "--json").stdout) == []


def test_jit_model_evicted_by_the_next_jit_load_disappears_from_ps(lmstudio):
    chat_with_ttl(lmstudio.base_url, LLAMA, 60)
    chat_with_ttl(lmstudio.base_url, QWEN, 60)
    assert [r["identifier"] for r in json.loads(run("ps", "--json").stdout)] == [QWEN]


# ---------------------------------------------------------------- ls


@pytest.mark.minilm  # uses the stand-in's MiniLM embedding model
def test_ls_lists_llms_and_embeddings_with_a_loaded_marker(lmstudio):
    lmstudio.load(LLAMA)
    lmstudio.load(LLAMA, identifier="again")
    result = run("ls")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("You have 5 models, taking up ")
    assert re.search(r"^LLM\s+TYPE\s+FORMAT\s+PARAMS\s+ARCH\s+SIZE$", out, re.M)
    assert re.search(r"^EMBEDDING\s+TYPE", out, re.M)
    assert re.search(rf"^{LLAMA}\s+llm\s+mlx\s+1M\s+llama\s+\S+ KB\s+LOADED ×2$", out, re.M)
    assert re.search(r"^test-org/tiny-vision\s+vlm\s+mlx", out, re.M)
    assert re.search(rf"^{QWEN}\s+llm\s+mlx\s+1M\s+qwen2\s+\S+ KB$", out, re.M)


@pytest.mark.minilm  # uses the stand-in's MiniLM embedding model
def test_ls_filters_and_json_shape_include_native_mlx_models(lmstudio, lmstudio_models_dir, monkeypatch):
    # Point the native-MLX scan at the stand-in's folder, as if LM Studio's models were on this disk.
    monkeypatch.setenv("LMSTUDIO_MODELS_DIR", str(lmstudio_models_dir))
    lmstudio.load(EMBEDDING)
    data = json.loads(run("ls", "--embedding", "--json").stdout)
    assert set(data) == {"lmstudio", "native"}
    [model] = data["lmstudio"]
    assert set(model) == {
        "key", "type", "format", "display_name", "params", "arch", "size_bytes", "max_context_length", "path",
        "tool_use", "identifiers", "loaded", "variants", "selected_variant",
    }
    assert (model["key"], model["type"], model["loaded"], model["identifiers"]) == (EMBEDDING, "embedding", True, [EMBEDDING])
    assert data["native"] and all(n["kind"] == "embedding" for n in data["native"])
    llms = json.loads(run("ls", "--llm", "--json").stdout)
    assert EMBEDDING not in {m["key"] for m in llms["lmstudio"]}
    assert "mlx/tiny-llama" in {n["model_id"] for n in llms["native"]}
    assert set(llms["native"][0]) == {"model_id", "name", "kind", "arch", "size_bytes", "source", "path"}
    text = run("ls", "--llm").stdout
    assert "native MLX" in text and "mlx/tiny-llama" in text


def test_ls_with_lm_studio_down_still_lists_the_native_models(lmstudio_models_dir, refused_url, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_MODELS_DIR", str(lmstudio_models_dir))
    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)
    error = (f"Error: LM Studio is not reachable at {refused_url} — is the server running? "
             "Start it with `lms server start` or from the LM Studio app")
    result = run("ls", "--llm")
    assert result.exit_code == 1 and result.stderr.splitlines() == [error]  # the LM Studio part is missing
    assert result.stdout.splitlines()[1] == "native MLX (run inside llm, not by LM Studio)"
    assert "mlx/tiny-llama" in result.stdout and "You have" not in result.stdout
    data = run("ls", "--json")
    assert data.exit_code == 1 and data.stderr.splitlines() == [error]
    listed = json.loads(data.stdout)
    assert listed["lmstudio"] == [] and "mlx/tiny-llama" in {n["model_id"] for n in listed["native"]}


def test_ls_variants_lists_each_variant_under_its_model(lmstudio):
    lmstudio.set_variants(LLAMA, ["q4_k_m", "q8_0"], selected="q8_0")
    plain = run("ls").stdout
    assert re.search(rf"^{LLAMA} \(2 variants\)\s+llm\s+mlx", plain, re.M) and "@q8_0" not in plain
    out = run("ls", "--variants").stdout
    assert re.search(rf"^ \* {LLAMA}@q8_0\s+mlx", out, re.M), out
    assert re.search(rf"^   {LLAMA}@q4_k_m\s+mlx", out, re.M), out
    data = json.loads(run("ls", "--variants", "--json").stdout)
    llama = next(m for m in data["lmstudio"] if m["key"] == LLAMA)
    assert (llama["variants"], llama["selected_variant"]) == ([f"{LLAMA}@q4_k_m", f"{LLAMA}@q8_0"], f"{LLAMA}@q8_0")
    assert [v["key"] for v in llama["variant_details"]] == llama["variants"]
    qwen = next(m for m in data["lmstudio"] if m["key"] == QWEN)
    assert (qwen["variants"], qwen["selected_variant"], qwen["variant_details"]) == ([], None, [])


def test_load_picks_a_variant_with_key_at_variant(lmstudio):
    lmstudio.set_variants(LLAMA, ["q4_k_m", "q8_0"])
    result = run("load", "tiny-llama@Q8_0", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["model"], data["model_id"]) == (f"{LLAMA}@q8_0", f"lmstudio/{LLAMA}@q8_0")
    assert [i["model"] for i in lmstudio.loaded()] == [f"{LLAMA}@q8_0"]
    assert_one_line_error(run("load", "tiny-llama@q2_k"), "has no variant 'q2_k'; downloaded: q4_k_m, q8_0")
    assert_one_line_error(run("load", "tiny-qwen-tools@q8_0"), "has no variant 'q8_0'; it has no variants")


def test_chat_with_a_variant_runs_that_variant(lmstudio):
    lmstudio.set_variants(LLAMA, ["q4_k_m", "q8_0"])
    lmstudio.script("Variant answer")
    result = CliRunner().invoke(cli, ["-m", f"lmstudio/{LLAMA}@q4_k_m", "hello", "-o", "max_tokens", "8"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "Variant answer"
    assert [i["model"] for i in lmstudio.loaded()] == [f"{LLAMA}@q4_k_m"]


def test_ls_shows_models_of_unknown_formats_and_types_and_load_refuses_them_in_one_line(lmstudio):
    lmstudio.add_foreign_model("intel/qwen-ov", type="llm", format="openvino")
    lmstudio.add_foreign_model("pub/painter", type="image-gen", format="safetensors")
    result = run("ls")
    assert result.exit_code == 0, result.output
    assert re.search(r"^intel/qwen-ov\s+llm\s+openvino", result.stdout, re.M)
    assert re.search(r"^OTHER\s+TYPE", result.stdout, re.M) and re.search(r"^pub/painter\s+image-gen\s+mlx", result.stdout, re.M)
    assert "(types this plugin cannot load or chat with; LM Studio lists them)" in result.stdout
    assert_one_line_error(run("load", "pub/painter"), "'image-gen' model, which llm cannot load")


def test_ls_llm_and_embedding_together_is_a_usage_error():
    assert run("ls", "--llm", "--embedding").exit_code == 2


# ---------------------------------------------------------------- errors shared by the SDK commands


@pytest.mark.parametrize("args", [("load", LLAMA), ("unload", "--all"), ("ps",), ("ls",)])
def test_lm_studio_not_running_is_one_line_naming_the_address(args, refused_url, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)
    assert_one_line_error(run(*args), f"LM Studio is not reachable at {refused_url}")


def test_server_wanting_a_token_says_so_and_works_once_one_is_set(lmstudio, monkeypatch):
    lmstudio.configure(auth_token=TOKEN)
    lmstudio.load(LLAMA)
    assert_one_line_error(run("ps"), "requires an API token: run `llm keys set lmstudio`")
    monkeypatch.setenv("LM_API_TOKEN", TOKEN)
    result = run("ps", "--json")
    assert result.exit_code == 0, result.output
    assert [row["identifier"] for row in json.loads(result.stdout)] == [LLAMA]
    assert TOKEN not in result.output


def test_server_option_picks_the_server_to_manage(lmstudio, refused_url, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", f"{refused_url},{lmstudio.base_url}")
    lmstudio.load(LLAMA)
    assert_one_line_error(run("unload", "--all"), refused_url)  # the first configured server by default
    assert_one_line_error(run("ps", "--server", refused_url), refused_url)
    result = run("ps", "--server", lmstudio.host_port)
    assert result.exit_code == 0 and LLAMA in result.stdout


def test_load_with_server_prints_an_id_that_works_or_says_how_to_use_the_server(lmstudio, refused_url, monkeypatch):
    port = lmstudio.base_url.rsplit(":", 1)[1]
    # The configured server (127.0.0.1) named by another spelling: the id is the configured one's.
    result = run("load", LLAMA, "--server", f"localhost:{port}")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"Use it with: llm -m lmstudio/{LLAMA}"
    # A server that is not in LMSTUDIO_BASE_URL at all: no id (none would work), but what to do.
    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)
    result = run("load", QWEN, "--server", lmstudio.host_port)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == (
        f"To use it: 127.0.0.1:{port} is not in LMSTUDIO_BASE_URL, so llm cannot use its models yet: add it there "
        "(a comma-separated list) and `llm models` lists them")
    data = json.loads(run("load", QWEN, "--server", lmstudio.host_port, "--new-instance", "--json").stdout)
    assert (data["model"], data["model_id"]) == (QWEN, None)


# ---------------------------------------------------------------- status


@pytest.mark.minilm  # the stand-in's downloads include MiniLM
def test_status_reachable_server_exits_zero(lmstudio):
    lmstudio.load(LLAMA)
    result = run("status")
    assert result.exit_code == 0, result.output
    assert re.match(
        rf"{re.escape(lmstudio.base_url)}  reachable \([\d.]+ ms\)  token: not required  models: 5 downloaded, 1 loaded$",
        result.stdout.splitlines()[0],
    )


@pytest.mark.minilm  # the stand-in's downloads include MiniLM
@pytest.mark.parametrize("token_support", [False, True], ids=["sdk-without-tokens", "sdk-with-tokens"])
def test_status_json_is_the_documented_shape(lmstudio, monkeypatch, token_support):
    monkeypatch.setattr(lms, "Client", helpers.sdk_client(token_support))
    result = run("status", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert set(data) == {"servers", "sdk", "conflicts"}
    [server] = data["servers"]
    assert set(server) == {
        "base_url", "reachable", "latency_ms", "requires_token", "token_configured", "token_source", "token_accepted",
        "downloaded", "loaded", "error",
    }
    assert (server["base_url"], server["reachable"], server["downloaded"], server["loaded"]) == (lmstudio.base_url, True, 5, 0)
    assert data["sdk"] == {"installed": True, "version": lms.__version__, "token_support": token_support}


def test_status_of_lmstudio_0_3_5_is_healthy(lmstudio):
    lmstudio.configure(version="0.3.5")
    result = run("status")
    assert result.exit_code == 0, result.output
    assert re.match(
        rf"{re.escape(lmstudio.base_url)}  reachable \([\d.]+ ms\)  token: not required  models: not counted \(no /api/v0 "
        r"listing before LM Studio 0\.3\.6; `llm lmstudio ls` lists them\)$",
        result.stdout.splitlines()[0],
    )
    assert result.stdout.splitlines()[1] == "API token: none configured"
    [server] = json.loads(run("status", "--json").stdout)["servers"]
    assert (server["reachable"], server["requires_token"], server["downloaded"], server["loaded"], server["error"]) == (
        True, False, None, None, None)


@pytest.mark.minilm  # the stand-in's downloads include MiniLM
@pytest.mark.parametrize("version", ["0.3.15", "0.4"])
def test_status_counts_models_on_each_generation(lmstudio, version):
    lmstudio.configure(version=version)
    lmstudio.load(LLAMA)
    result = run("status")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].endswith("  token: not required  models: 5 downloaded, 1 loaded")
    assert result.stdout.splitlines()[1] == "API token: none configured"
    [server] = json.loads(run("status", "--json").stdout)["servers"]
    assert (server["downloaded"], server["loaded"], server["error"]) == (5, 1, None)


def test_status_exits_non_zero_when_any_server_is_unreachable(lmstudio, refused_url, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", f"{lmstudio.base_url},{refused_url}")
    result = run("status", "--json")
    assert result.exit_code == 1
    reachable = {s["base_url"]: s["reachable"] for s in json.loads(result.stdout)["servers"]}
    assert reachable == {lmstudio.base_url: True, refused_url: False}
    text = run("status")
    assert text.exit_code == 1 and f"{refused_url}  unreachable: LM Studio is not reachable" in text.stdout


def test_status_server_checks_only_that_server(lmstudio, refused_url, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", f"{lmstudio.base_url},{refused_url}")
    result = run("status", "--server", lmstudio.host_port, "--json")
    assert result.exit_code == 0, result.output
    assert [(s["base_url"], s["reachable"]) for s in json.loads(result.stdout)["servers"]] == [(lmstudio.base_url, True)]
    down = run("status", "--server", refused_url)
    assert down.exit_code == 1 and down.stdout.splitlines()[0].startswith(f"{refused_url}  unreachable: LM Studio is not reachable")
    monkeypatch.setenv("LMSTUDIO_BASE_URL", refused_url)  # a server not configured can be checked too
    assert run("status", "--server", lmstudio.base_url).exit_code == 0
    assert_one_line_error(run("status", "--server", "ftp://x"), "--server 'ftp://x' uses the scheme 'ftp'")


@pytest.mark.minilm  # the stand-in's downloads include MiniLM
@pytest.mark.parametrize("token_support", [False, True], ids=["sdk-without-tokens", "sdk-with-tokens"])
def test_status_explains_a_token_requirement(lmstudio, monkeypatch, token_support):
    monkeypatch.setattr(lms, "Client", helpers.sdk_client(token_support))
    lmstudio.configure(auth_token=TOKEN)
    result = run("status")
    assert result.exit_code == 1  # a health check: this server cannot be used as configured
    assert "token: required, none configured" in result.stdout
    monkeypatch.setenv("LM_API_TOKEN", TOKEN)
    result = run("status")
    assert "API token: from $LM_API_TOKEN" in result.stdout and TOKEN not in result.stdout
    assert "token: required, ours accepted  models: 5 downloaded" in result.stdout
    # Only an SDK without token support falls back to the REST API, and says what that costs.
    fallback = [line for line in result.stdout.splitlines() if "cannot send API tokens" in line]
    assert fallback == ([] if token_support else [
        f"SDK: lmstudio {lms.__version__} cannot send API tokens: load/unload/ps/ls use LM Studio's REST API instead "
        "(no --gpu, --ttl, --identifier or estimates); lmstudio 1.6+ can do those"
    ])


@pytest.mark.parametrize("how", ["keys", "LM_API_TOKEN", "LMSTUDIO_API_TOKEN"])
def test_status_says_where_the_token_came_from(lmstudio, monkeypatch, how):
    if how == "keys":
        assert CliRunner().invoke(cli, ["keys", "set", "lmstudio", "--value", TOKEN]).exit_code == 0
    else:
        monkeypatch.setenv(how, TOKEN)
    data = json.loads(run("status", "--json").stdout)
    source = "llm keys set lmstudio" if how == "keys" else f"${how}"
    assert data["servers"][0]["token_source"] == source
    text = run("status").stdout
    assert f"API token: from {source}" in text and TOKEN not in text and TOKEN[:10] not in text
