"""Discovery of native MLX models on disk and the `llm lmstudio mlx add/remove/list` commands."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from llm.cli import cli

from llm_lmstudio.mlx import discovery
from tests.helpers import llm_cli as invoke


def fake_model(folder: Path, model_type="llama", architectures=("LlamaForCausalLM",), weights=1000, extra_files=()):
    """A model folder with a real-looking config and a weights file of `weights` bytes (never read)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": list(architectures)}))
    with open(folder / "model.safetensors", "wb") as handle:
        handle.truncate(weights)
    for name in extra_files:
        (folder / name).write_text("{}")
    return folder


def hf_repo(hub: Path, repo_id: str, revision="0123abcd", **kwargs) -> Path:
    """A Hugging Face cache entry: blobs, a snapshot of symlinks, refs/main."""
    org_repo = "models--" + repo_id.replace("/", "--")
    staging = fake_model(hub / org_repo / "blobs-staging", **kwargs)
    snapshot = hub / org_repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    blobs = hub / org_repo / "blobs"
    blobs.mkdir()
    for index, file in enumerate(sorted(staging.iterdir())):
        blob = blobs / f"blob{index}"
        file.rename(blob)
        (snapshot / file.name).symlink_to(blob)
    staging.rmdir()
    (hub / org_repo / "refs").mkdir()
    (hub / org_repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def roots(tmp_path, monkeypatch):
    lmstudio = tmp_path / "lms-models"
    hub = tmp_path / "hf-hub"
    lmstudio.mkdir()
    hub.mkdir()
    monkeypatch.setenv("LMSTUDIO_MODELS_DIR", str(lmstudio))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    discovery._MEMO.clear()
    return lmstudio, hub


def by_name(models):
    return {m.name: m for m in models}


def test_lmstudio_folder_models_are_found_with_publisher_layout(roots):
    lmstudio, _ = roots
    fake_model(lmstudio / "mlx-community" / "Qwen3-0.6B-4bit", model_type="qwen3", weights=4321)
    found = by_name(discovery.discover())
    model = found["qwen3-0.6b-4bit"]
    assert (model.kind, model.arch, model.size_bytes, model.source) == ("chat", "qwen3", 4321, "lmstudio")
    assert model.model_id == "mlx/qwen3-0.6b-4bit"
    assert model.path == lmstudio / "mlx-community" / "Qwen3-0.6B-4bit"


def test_honours_lmstudio_configured_download_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("LMSTUDIO_MODELS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hub"))
    custom = tmp_path / "elsewhere"
    fake_model(custom / "pub" / "Relocated-Model")
    home = Path(os.environ["HOME"]) / ".lmstudio"
    home.mkdir(parents=True)
    (home / "settings.json").write_text(json.dumps({"downloadsFolder": str(custom)}))
    discovery._MEMO.clear()
    assert "relocated-model" in by_name(discovery.discover())


def test_gguf_pytorch_and_incomplete_folders_are_not_native_models(roots):
    lmstudio, _ = roots
    gguf = lmstudio / "lmstudio-community" / "Llama-GGUF"
    gguf.mkdir(parents=True)
    (gguf / "model-Q4_K_M.gguf").write_bytes(b"GGUF")
    torch_only = lmstudio / "org" / "torch-only"
    torch_only.mkdir(parents=True)
    (torch_only / "config.json").write_text('{"model_type": "llama"}')
    (torch_only / "pytorch_model.bin").write_bytes(b"x")
    partial = fake_model(lmstudio / "org" / "partial")
    (partial / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    fake_model(lmstudio / "org" / "complete")
    assert [m.name for m in discovery.discover()] == ["complete"]


@pytest.mark.parametrize(
    "config,files,kind",
    [
        ({"model_type": "bert", "architectures": ["BertModel"]}, (), "embedding"),
        ({"model_type": "xlm-roberta", "architectures": ["XLMRobertaModel"]}, (), "embedding"),
        ({"model_type": "nomic_bert", "architectures": ["NomicBertModel"]}, (), "embedding"),
        # Qwen3-Embedding is a decoder; only the sentence-transformers files give it away.
        ({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}, ("modules.json",), "embedding"),
        ({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}, (), "chat"),
        ({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"]}, (), "chat"),
    ],
)
def test_embedding_models_are_told_apart_from_chat_models(roots, config, files, kind):
    lmstudio, _ = roots
    fake_model(
        lmstudio / "pub" / "m", model_type=config["model_type"], architectures=config["architectures"], extra_files=files
    )
    assert by_name(discovery.discover())["m"].kind == kind


def test_hf_cache_snapshot_named_after_repo_and_sized_through_symlinks(roots):
    _, hub = roots
    snapshot = hf_repo(hub, "mlx-community/Llama-3.2-1B-Instruct-4bit", weights=777)
    (hub / "datasets--someone--data").mkdir()
    model = by_name(discovery.discover())["llama-3.2-1b-instruct-4bit"]
    assert (model.source, model.path, model.size_bytes) == ("hf-cache", snapshot, 777)


def test_same_repo_in_lmstudio_and_hf_cache_is_listed_once(roots):
    lmstudio, hub = roots
    fake_model(lmstudio / "mlx-community" / "Phi-4-mini")
    hf_repo(hub, "mlx-community/Phi-4-mini")
    models = discovery.discover()
    assert [(m.name, m.source) for m in models] == [("phi-4-mini", "lmstudio")]


def test_clashing_names_are_qualified_by_publisher_deterministically(roots):
    lmstudio, hub = roots
    fake_model(lmstudio / "alpha" / "Shared-Name")
    hf_repo(hub, "beta/Shared-Name")
    first = [(m.name, m.source) for m in discovery.discover()]
    discovery._MEMO.clear()
    second = [(m.name, m.source) for m in discovery.discover()]
    assert first == second == [("shared-name", "lmstudio"), ("beta--shared-name", "hf-cache")]


def test_discovery_reads_only_small_metadata_files(roots):
    lmstudio, hub = roots
    for index in range(5):
        fake_model(lmstudio / "pub" / f"model-{index}", weights=50_000_000)
    hf_repo(hub, "org/cached", weights=50_000_000)
    opened = []

    def audit(event, args):
        if event == "open" and isinstance(args[0], str):
            opened.append(args[0])

    sys.addaudithook(audit)  # audit hooks cannot be removed; the list stops mattering after this test
    discovery.discover()
    snapshot = list(opened)
    opened.clear()
    read = [p for p in snapshot if str(roots[0]) in p or str(roots[1]) in p]
    assert read, "discovery should read each model's config.json"
    assert all(Path(p).name.endswith(".json") or Path(p).name == "main" for p in read), read


def test_discovery_is_memoised_and_notices_new_folders(roots):
    # How fast discovery is belongs to the start-up benchmark; here: a second call reads no config again.
    lmstudio, hub = roots
    for index in range(60):
        fake_model(lmstudio / f"pub{index % 6}" / f"model-{index}")
    for index in range(20):
        hf_repo(hub, f"org/cached-{index}")
    assert len(discovery.discover()) == 80
    opened = []
    recording = [True]

    def audit(event, args):
        if recording[0] and event == "open" and isinstance(args[0], str):
            opened.append(args[0])

    sys.addaudithook(audit)  # audit hooks cannot be removed; `recording` switches this one off
    discovery.discover()
    recording[0] = False
    assert not [p for p in opened if p.endswith("config.json")], "a memoised discovery re-read config files"
    fake_model(lmstudio / "pub0" / "model-new")
    assert len(discovery.discover()) == 81  # the memo notices a new folder


def test_plugin_import_and_registration_do_not_import_mlx(tmp_path, tiny_llama_path):
    (tmp_path / "lms").mkdir(exist_ok=True)
    env = dict(os.environ, LMSTUDIO_MODELS_DIR=str(tmp_path / "lms"), LMSTUDIO_BASE_URL="http://127.0.0.1:9")
    target = tmp_path / "lms" / "pub" / "tiny"
    shutil.copytree(tiny_llama_path, target)
    code = (
        "import sys, llm\n"
        "ids = [m.model_id for m in llm.get_models()]\n"
        "assert 'mlx/tiny' in ids, ids\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm', 'mlx_embeddings', 'transformers'))\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------- commands


def test_add_list_remove_round_trip(roots, tiny_llama_path):
    added = invoke("lmstudio", "mlx", "add", str(tiny_llama_path), "--name", "my-tiny")
    assert added.exit_code == 0, added.output
    assert "mlx/my-tiny" in added.output and "llama" in added.output
    listed = json.loads(invoke("lmstudio", "mlx", "list", "--json").output)
    assert [(m["model_id"], m["source"], m["kind"], m["path"]) for m in listed] == [
        ("mlx/my-tiny", "user", "chat", str(tiny_llama_path.resolve()))
    ]
    assert "mlx/my-tiny" in invoke("models").output
    table = invoke("lmstudio", "mlx", "list").output
    assert table.splitlines()[0].split() == ["MODEL", "KIND", "ARCH", "SIZE", "SOURCE", "PATH"]
    removed = invoke("lmstudio", "mlx", "remove", "mlx/my-tiny")
    assert removed.exit_code == 0 and "Removed mlx/my-tiny" in removed.output
    assert json.loads(invoke("lmstudio", "mlx", "list", "--json").output) == []
    assert tiny_llama_path.is_dir()  # files are never deleted


def test_add_defaults_name_to_folder_name_and_hf_repo_name(roots, tiny_llama_path, tmp_path):
    copy = shutil.copytree(tiny_llama_path, tmp_path / "My Model")
    assert discovery.add(copy).name == "my-model"
    snapshot = hf_repo(tmp_path / "private-hub", "org/Snap-Model", extra_files=("tokenizer.json",))
    assert discovery.add(snapshot).name == "snap-model"


def test_add_rejects_non_model_folders_in_one_line(roots, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (empty, tmp_path / "missing"):
        result = CliRunner().invoke(cli, ["lmstudio", "mlx", "add", str(target)])
        assert result.exit_code == 1
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output


def test_add_refuses_to_silently_repoint_a_name(roots, tiny_llama_path, tiny_qwen_tools_path):
    assert invoke("lmstudio", "mlx", "add", str(tiny_llama_path), "--name", "x").exit_code == 0
    result = CliRunner().invoke(cli, ["lmstudio", "mlx", "add", str(tiny_qwen_tools_path), "--name", "x"])
    assert result.exit_code == 1 and "already points at" in result.output


def test_remove_explains_discovered_models_cannot_be_removed(roots):
    lmstudio, _ = roots
    fake_model(lmstudio / "pub" / "found-here")
    result = CliRunner().invoke(cli, ["lmstudio", "mlx", "remove", "found-here"])
    assert result.exit_code == 1 and "not added by path" in result.output
    result = CliRunner().invoke(cli, ["lmstudio", "mlx", "remove", "nope"])
    assert result.exit_code == 1 and "no user-added MLX model named 'nope'" in result.output


def test_user_model_whose_folder_vanished_stays_listed_with_its_problem(roots, tiny_llama_path, tmp_path):
    copy = shutil.copytree(tiny_llama_path, tmp_path / "doomed")
    discovery.add(copy, "doomed")
    shutil.rmtree(copy)
    model = discovery.find("mlx/doomed")
    assert model is not None and model.problem and "is not a folder" in model.problem


def test_add_and_remove_take_json_and_remove_never_names_a_deleted_folder(roots, tiny_llama_path, tmp_path):
    added = invoke("lmstudio", "mlx", "add", str(tiny_llama_path), "--name", "my-tiny", "--json")
    assert added.exit_code == 0, added.output
    [listed] = json.loads(invoke("lmstudio", "mlx", "list", "--json").output)
    assert json.loads(added.output) == listed  # the shape of `mlx list --json`
    removed = json.loads(invoke("lmstudio", "mlx", "remove", "my-tiny", "--json").output)
    assert removed == {"removed": {"model_id": "mlx/my-tiny", "name": "my-tiny", "path": str(tiny_llama_path.resolve()),
                                   "folder_exists": True}}
    copy = shutil.copytree(tiny_llama_path, tmp_path / "doomed")
    invoke("lmstudio", "mlx", "add", str(copy), "--name", "doomed")
    shutil.rmtree(copy)
    result = invoke("lmstudio", "mlx", "remove", "doomed")
    assert result.output == "Removed mlx/doomed (its folder had already been deleted)\n"


def registry_asides(user_path):
    return sorted((user_path / "lmstudio").glob("mlx-models.json.corrupt-*"))


def test_a_damaged_registry_is_moved_aside_and_the_version_before_restored(roots, tiny_llama_path, tiny_qwen_tools_path,
                                                                          user_path):
    invoke("lmstudio", "mlx", "add", str(tiny_llama_path), "--name", "first")
    invoke("lmstudio", "mlx", "add", str(tiny_qwen_tools_path), "--name", "second")
    registry = user_path / "lmstudio" / "mlx-models.json"
    registry.write_text("[not json")
    listed = CliRunner().invoke(cli, ["lmstudio", "mlx", "list", "--json"])
    assert listed.exit_code == 0
    assert [m["model_id"] for m in json.loads(listed.stdout)] == ["mlx/first"]  # as it was before `add second`
    [aside] = registry_asides(user_path)
    assert aside.read_text() == "[not json"
    assert listed.stderr.splitlines() == [
        f"llm-lmstudio-mlx: warning: {registry} was damaged (not JSON: Expecting value: line 1 column 2 (char 1)) and has "
        f"been moved to {aside}; restored the version before its last change from {registry}.bak"
    ]
    assert invoke("lmstudio", "mlx", "add", str(tiny_qwen_tools_path), "--name", "second").exit_code == 0
    assert {m["model_id"] for m in json.loads(invoke("lmstudio", "mlx", "list", "--json").output)} == {"mlx/first", "mlx/second"}


def test_a_damaged_registry_without_a_version_before_is_kept_aside_never_overwritten(roots, tiny_llama_path,
                                                                                    tiny_qwen_tools_path, user_path):
    invoke("lmstudio", "mlx", "add", str(tiny_llama_path), "--name", "only")  # the first write keeps no backup
    registry = user_path / "lmstudio" / "mlx-models.json"
    damaged = registry.read_text()[:-10]
    registry.write_text(damaged)
    listed = CliRunner().invoke(cli, ["lmstudio", "mlx", "list"])
    assert listed.exit_code == 0 and listed.stdout.startswith("No native MLX models found.")
    [warning] = listed.stderr.splitlines()
    [aside] = registry_asides(user_path)
    assert warning.startswith(f"llm-lmstudio-mlx: warning: {registry} was damaged (not JSON: ")
    assert warning.endswith(f"moved to {aside}; no earlier version to restore: add its models again with "
                            "`llm lmstudio mlx add`")
    assert invoke("lmstudio", "mlx", "add", str(tiny_qwen_tools_path), "--name", "new").exit_code == 0
    assert aside.read_text() == damaged  # what was there is still there to recover by hand


# ---------------------------------------------------------------- names a user cannot take, folders that cannot be run


def test_add_refuses_the_name_of_a_model_found_in_lm_studios_folder(roots, tiny_llama_path, tmp_path):
    lmstudio, _ = roots
    found = shutil.copytree(tiny_llama_path, lmstudio / "test-org" / "tiny-reasoner")
    other = shutil.copytree(tiny_llama_path, tmp_path / "other" / "tiny-reasoner")
    before = json.loads(invoke("lmstudio", "mlx", "list", "--json").output)
    for args in (["--name", "tiny-reasoner"], ["--name", "Tiny-Reasoner"], []):  # the default name is the folder's
        result = CliRunner().invoke(cli, ["lmstudio", "mlx", "add", str(other), *args])
        assert (result.exit_code, result.output) == (1, (
            f"Error: mlx/tiny-reasoner is already the name of {found} (in LM Studio's models folder): "
            "choose another --name\n"))
    assert json.loads(invoke("lmstudio", "mlx", "list", "--json").output) == before  # nobody renamed
    assert invoke("lmstudio", "mlx", "add", str(other), "--name", "my-reasoner").exit_code == 0
    # the very folder LM Studio has, added under its own name, takes nothing from anyone
    assert invoke("lmstudio", "mlx", "add", str(found)).exit_code == 0
    assert {m["model_id"]: m["path"] for m in json.loads(invoke("lmstudio", "mlx", "list", "--json").output)} == {
        "mlx/my-reasoner": str(other.resolve()), "mlx/tiny-reasoner": str(found.resolve())}


def test_names_are_lower_case_so_two_spellings_are_one_name(roots, tiny_llama_path, tiny_qwen_tools_path):
    added = invoke("lmstudio", "mlx", "add", str(tiny_llama_path), "--name", "TL")
    assert added.exit_code == 0 and added.output.startswith("Added mlx/tl: chat model")
    result = CliRunner().invoke(cli, ["lmstudio", "mlx", "add", str(tiny_qwen_tools_path), "--name", "tl"])
    assert (result.exit_code, result.output) == (
        1, f"Error: mlx/tl already points at {tiny_llama_path.resolve()}; remove it first or choose another --name\n")
    assert invoke("lmstudio", "mlx", "add", str(tiny_llama_path), "--name", "Tl").exit_code == 0  # the same, again
    assert [m["model_id"] for m in json.loads(invoke("lmstudio", "mlx", "list", "--json").output)] == ["mlx/tl"]
    assert discovery.find("mlx/TL").name == "tl"
    removed = invoke("lmstudio", "mlx", "remove", "mlx/TL")
    assert removed.exit_code == 0 and removed.output.startswith("Removed mlx/tl ")
    assert json.loads(invoke("lmstudio", "mlx", "list", "--json").output) == []


def test_add_refuses_a_folder_without_tokenizer_files_in_one_line(roots, tiny_llama_path, tmp_path):
    folder = shutil.copytree(tiny_llama_path, tmp_path / "notok")
    for file in folder.glob("tokenizer*"):
        file.unlink()
    result = CliRunner().invoke(cli, ["lmstudio", "mlx", "add", str(folder)])
    assert (result.exit_code, result.output) == (1, (
        f"Error: {folder} has no tokenizer: none of tokenizer.json, tokenizer.model, vocab.json or vocab.txt is there; "
        "copy the tokenizer files (with tokenizer_config.json) from the model's repository\n"))
    assert json.loads(invoke("lmstudio", "mlx", "list", "--json").output) == []
