from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from multiad_monai.utils import atomic_write, staged_dir


def _write_text(text: str):
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return write


def _half_write_then(error: BaseException):
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("half")
        raise error

    return write


@pytest.mark.parametrize("fsync", [False, True])
def test_atomic_write_creates_and_replaces(tmp_path, fsync):
    path = str(tmp_path / "sub" / "a.txt")
    assert atomic_write(path, _write_text("old"), fsync=fsync) == path
    atomic_write(path, _write_text("new"), fsync=fsync)
    assert open(path, encoding="utf-8").read() == "new"
    assert os.listdir(tmp_path / "sub") == ["a.txt"]


@pytest.mark.parametrize("error", [OSError("disk full"), ValueError("bad value"), KeyboardInterrupt()])
@pytest.mark.parametrize("old", ["old", None])
def test_failing_writer_leaves_old_file_and_no_temp(tmp_path, error, old):
    path = str(tmp_path / "a.txt")
    if old is not None:
        atomic_write(path, _write_text(old))
    with pytest.raises(type(error)):
        atomic_write(path, _half_write_then(error))
    assert os.listdir(tmp_path) == ([] if old is None else ["a.txt"])
    if old is not None:
        assert open(path, encoding="utf-8").read() == old


def test_temp_file_is_hidden_beside_the_target(tmp_path):
    seen = []

    def write(tmp: str) -> None:
        seen.append(tmp)
        open(tmp, "w", encoding="utf-8").close()

    atomic_write(str(tmp_path / "a.json"), write)
    folder, name = os.path.split(seen[0])
    assert folder == str(tmp_path) and name.startswith(".a.json.") and name.endswith(".tmp")


def test_writer_that_creates_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="did not create"):
        atomic_write(str(tmp_path / "a.npy"), lambda tmp: open(tmp + ".npy", "w", encoding="utf-8").close())
    # what the writer left under another name is its own; the target never appeared
    assert not os.path.exists(tmp_path / "a.npy")


def test_file_mode_follows_the_umask_as_a_plain_open_does(tmp_path):
    open(tmp_path / "plain", "w", encoding="utf-8").close()
    atomic_write(str(tmp_path / "atomic"), _write_text("x"))
    assert stat.S_IMODE(os.stat(tmp_path / "atomic").st_mode) == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)


@pytest.mark.parametrize("existing", [None, "empty"])
def test_staged_dir_appears_whole(tmp_path, existing):
    path = tmp_path / "out"
    if existing:
        path.mkdir()
    with staged_dir(str(path)) as staging:
        assert os.path.basename(staging).startswith(".out.") and staging.endswith(".tmp")
        assert not os.path.exists(path / "a.txt")
        (Path(staging) / "a.txt").write_text("a", encoding="utf-8")
    assert os.listdir(tmp_path) == ["out"] and os.listdir(path) == ["a.txt"]


@pytest.mark.parametrize("merge", [False, True])
def test_staged_dir_error_leaves_nothing(tmp_path, merge):
    with pytest.raises(KeyboardInterrupt), staged_dir(str(tmp_path / "out"), merge=merge) as staging:
        (Path(staging) / "a.txt").write_text("a", encoding="utf-8")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_staged_dir_refuses_a_non_empty_folder_before_the_work(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old", encoding="utf-8")
    with pytest.raises(FileExistsError, match="not an empty folder"), staged_dir(str(tmp_path / "out")):
        pytest.fail("the block must not run")
    assert os.listdir(tmp_path) == ["out"]


def test_staged_dir_merge_replaces_same_names_and_keeps_others(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep", encoding="utf-8")
    (out / "scores.csv").write_text("old", encoding="utf-8")
    with staged_dir(str(out), merge=True) as staging:
        (Path(staging) / "scores.csv").write_text("new", encoding="utf-8")
    assert (
        sorted(os.listdir(out)) == ["keep.txt", "scores.csv"]
        and (out / "scores.csv").read_text(encoding="utf-8") == "new"
    )
    assert os.listdir(tmp_path) == ["out"]
