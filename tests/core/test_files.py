"""files.py: the plugin's files are replaced whole or not at all."""

import threading

import pytest

from llm_lmstudio.core import files


def test_write_text_creates_the_folder_and_replaces_the_file_whole(tmp_path):
    path = tmp_path / "deeper" / "cache.json"
    files.write_text(path, "first")
    files.write_text(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["cache.json"]  # no temporary file left behind


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "plugin" / "models.json"
    files.write_text(path, "old")
    with pytest.raises(RuntimeError):
        with files.replacing(path) as temporary:
            temporary.write_text("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["models.json"]


def test_writers_in_two_threads_never_share_a_temporary_file(tmp_path):
    path = tmp_path / "plugin" / "jobs.json"
    seen, both_open = [], threading.Barrier(2)

    def write(text):
        with files.replacing(path) as temporary:
            seen.append(temporary)
            temporary.write_text(text)
            both_open.wait(timeout=10)  # both temporaries exist at once

    threads = [threading.Thread(target=write, args=(text,)) for text in ("a" * 1000, "b" * 1000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 2
    assert path.read_text() in ("a" * 1000, "b" * 1000)
    assert [p.name for p in path.parent.iterdir()] == ["jobs.json"]
