"""Another distribution claiming the `llm_lmstudio` module or the `lmstudio` plugin name (the unrelated
`llm-lmstudio` on PyPI) is found from installed metadata and named by `llm lmstudio status` in one line."""

import json

from click.testing import CliRunner
from llm.cli import cli

from llm_lmstudio.core import installation as install_check

# What the other plugin's wheel (llm-lmstudio 0.3.1 on PyPI) installs as metadata: a single module llm_lmstudio.py.
OTHER = {
    "METADATA": "Metadata-Version: 2.4\nName: llm-lmstudio\nVersion: 0.3.1\n",
    "top_level.txt": "llm_lmstudio\n",
    "entry_points.txt": "[llm]\nlmstudio = llm_lmstudio\n",
    "RECORD": "llm_lmstudio.py,,\n",
}
OURS = {
    "METADATA": "Metadata-Version: 2.4\nName: llm-lmstudio-mlx\nVersion: 0.1.0\n",
    "top_level.txt": "llm_lmstudio\n",
    "entry_points.txt": "[llm]\nlmstudio = llm_lmstudio\n",
}


def install(site, folder, files):
    info = site / folder
    info.mkdir(parents=True)
    for name, text in files.items():
        (info / name).write_text(text)


def test_the_other_plugin_is_found_beside_this_one(tmp_path):
    install(tmp_path, "llm_lmstudio_mlx-0.1.0.dist-info", OURS)
    install(tmp_path, "llm_lmstudio-0.3.1.dist-info", OTHER)
    assert install_check.conflicting_distributions([str(tmp_path)]) == [("llm-lmstudio", "0.3.1")]


def test_this_plugin_alone_and_unrelated_plugins_are_no_conflict(tmp_path):
    install(tmp_path, "llm_lmstudio_mlx-0.1.0.dist-info", OURS)
    install(tmp_path, "llm_ollama-0.9.dist-info", {
        "METADATA": "Metadata-Version: 2.1\nName: llm-ollama\nVersion: 0.9\n",
        "top_level.txt": "llm_ollama\n",
        "entry_points.txt": "[llm]\nollama = llm_ollama\n\n[console_scripts]\nlmstudio = other:main\n",
    })
    assert install_check.conflicting_distributions([str(tmp_path)]) == []


def test_either_the_module_name_or_the_plugin_name_is_a_conflict(tmp_path):
    install(tmp_path, "module_only-1.0.dist-info", {
        "METADATA": "Metadata-Version: 2.1\nName: module-only\nVersion: 1.0\n", "top_level.txt": "llm_lmstudio\n"})
    install(tmp_path, "entry_only-2.0.dist-info", {
        "METADATA": "Metadata-Version: 2.1\nName: entry_only\nVersion: 2.0\n",
        "entry_points.txt": "[llm]\n lmstudio = something_else\n"})
    assert install_check.conflicting_distributions([str(tmp_path)]) == [("entry_only", "2.0"), ("module-only", "1.0")]


def test_status_names_the_other_plugin_in_one_line_and_in_json(lmstudio, tmp_path, monkeypatch):
    install(tmp_path, "llm_lmstudio-0.3.1.dist-info", OTHER)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(cli, ["lmstudio", "status"])
    assert result.exit_code == 0, result.output  # a health check: the conflict is reported, not a failure
    lines = [line for line in result.output.splitlines() if "llm-lmstudio 0.3.1" in line]
    assert lines == [
        "Also installed: llm-lmstudio 0.3.1, with the same `llm_lmstudio` module and `lmstudio` plugin name as "
        "llm-lmstudio-mlx: only one of them can work; remove it with `llm uninstall llm-lmstudio -y`"
    ]
    data = json.loads(CliRunner().invoke(cli, ["lmstudio", "status", "--json"]).output)
    assert {"name": "llm-lmstudio", "version": "0.3.1"} in data["conflicts"]
