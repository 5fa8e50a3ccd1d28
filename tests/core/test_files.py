"""files.py: the plugin's files are replaced whole or not at all."""

import re
import threading
from pathlib import Path

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


# ---------------------------------------------------------------- damaged files


def asides(path):
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


def test_a_damaged_json_file_is_moved_aside_with_one_warning_naming_both_paths(tmp_path, capsys):
    path = tmp_path / "plugin" / "jobs.json"
    path.parent.mkdir()
    path.write_text("[not json")
    assert files.read_json(path) is None
    [aside] = asides(path)
    assert aside.read_text() == "[not json" and not path.exists()
    assert re.fullmatch(r"jobs\.json\.corrupt-\d{8}T\d{6}Z", aside.name)
    [line] = capsys.readouterr().err.splitlines()
    assert line == (f"llm-lmstudio-mlx: warning: {path} was damaged (not JSON: Expecting value: line 1 column 2 (char 1))"
                    f" and has been moved to {aside}; a new one is built in its place")
    assert files.read_json(path) is None and capsys.readouterr().err == ""  # told once: the file is gone


@pytest.mark.parametrize("text, reason", [("", "empty"), ('["a list"]', "not the JSON this plugin writes there"),
                                          ("\xff\xfe", "not JSON")])
def test_empty_foreign_and_binary_files_are_damaged_too(tmp_path, capsys, text, reason):
    path = tmp_path / "verdicts.json"
    path.write_bytes(text.encode("latin-1"))
    assert files.read_json(path) is None
    assert len(asides(path)) == 1 and f"was damaged ({reason}" in capsys.readouterr().err


def test_a_sound_file_and_a_missing_one_are_left_alone(tmp_path, capsys):
    path = tmp_path / "ok.json"
    assert files.read_json(path) is None
    path.write_text('{"a": 1}')
    assert files.read_json(path) == {"a": 1}
    assert asides(path) == [] and capsys.readouterr().err == ""


def test_a_damaged_file_is_restored_from_the_version_before(tmp_path, capsys):
    path, backup = tmp_path / "registry.json", tmp_path / "registry.json.bak"
    files.write_text(path, '{"models": {"a": 1}}', backup=backup)
    assert not backup.exists()  # nothing to keep yet
    files.write_text(path, '{"models": {"a": 1, "b": 2}}', backup=backup)
    assert backup.read_text() == '{"models": {"a": 1}}'
    path.write_text('{"models": {"a": 1, "b"')  # torn by hand or by a disk
    assert files.read_json(path, backup=backup) == {"models": {"a": 1}}
    assert path.read_text() == '{"models": {"a": 1}}'
    [aside] = asides(path)
    assert aside.read_text() == '{"models": {"a": 1, "b"'
    assert f"; restored the version before its last change from {backup}" in capsys.readouterr().err


def test_a_file_rebuilt_by_another_process_meanwhile_is_not_moved(tmp_path, capsys):
    path = tmp_path / "router.db"
    path.write_text("damaged")
    seen = path.stat()
    path.unlink()
    path.write_text("rebuilt by someone else")
    assert files.set_aside(path, "file is not a database", seen=seen) is None
    assert path.read_text() == "rebuilt by someone else" and asides(path) == []
    assert capsys.readouterr().err == ""


def test_companions_move_with_the_file_and_two_in_one_second_both_stay(tmp_path, capsys):
    path = tmp_path / "responses.db"
    for _ in range(2):
        path.write_text("junk")
        Path(f"{path}-wal").write_text("wal")
        assert files.set_aside(path, "file is not a database", companions=files.SQLITE_COMPANIONS, now=1e9) is not None
    first, second = asides(path)[0], path.with_name(f"{path.name}.corrupt-20010909T014640Z-2")
    assert first.name == "responses.db.corrupt-20010909T014640Z" and second.exists()
    assert Path(f"{first}-wal").read_text() == "wal" == Path(f"{second}-wal").read_text()
    assert not path.exists() and not Path(f"{path}-wal").exists()
    assert len(capsys.readouterr().err.splitlines()) == 2


def test_only_the_three_most_recent_damaged_copies_are_kept_with_their_companions(tmp_path, capsys):
    folder = tmp_path / "plugin"
    folder.mkdir()
    path = folder / "responses.db"
    days = (0, 1, 2, 3, 4, 4)  # 2001-09-09 onwards; the last two in the same second
    for day in days:
        path.write_text("junk")
        Path(f"{path}-wal").write_text(f"wal {day}")
        files.set_aside(path, "file is not a database", companions=files.SQLITE_COMPANIONS, now=1e9 + day * 86400)
    assert sorted(p.name for p in folder.iterdir()) == [
        "responses.db.corrupt-20010912T014640Z", "responses.db.corrupt-20010912T014640Z-wal",
        "responses.db.corrupt-20010913T014640Z", "responses.db.corrupt-20010913T014640Z-2",
        "responses.db.corrupt-20010913T014640Z-2-wal", "responses.db.corrupt-20010913T014640Z-wal",
    ]
    assert Path(folder / "responses.db.corrupt-20010913T014640Z-2-wal").read_text() == "wal 4"
    assert len(capsys.readouterr().err.splitlines()) == len(days)  # each still said once
