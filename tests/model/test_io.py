"""Atomic writes: complete or absent, with the mode a plain open() would give, never into a folder."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edgeyolo.errors import UsageError
from edgeyolo.fileio import atomic_write_bytes, atomic_write_text, current_umask, new_dir_mode


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=["022", "077", "002"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_atomic_write_honours_the_umask(tmp_path: Path, umask: int) -> None:
    assert current_umask() == umask
    new = atomic_write_bytes(tmp_path / "sub" / "model.onnx", b"\x08\x07")
    assert mode(new) == 0o666 & ~umask  # the temp file it came from was 0o600
    again = atomic_write_text(new, "replaced")  # replacing an existing file: a new file's mode too
    assert again.read_text() == "replaced" and mode(again) == 0o666 & ~umask
    assert new_dir_mode() == 0o777 & ~umask
    assert sorted(p.name for p in new.parent.iterdir()) == ["model.onnx"]


def test_atomic_write_into_a_folder_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "existing"
    folder.mkdir()
    with pytest.raises(UsageError, match=r"existing is a directory; the output is a file"):
        atomic_write_bytes(folder, b"x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match=r"file is a file, not a folder"):
        atomic_write_bytes(tmp_path / "file" / "out.json", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "file"] and not any(folder.iterdir())


def test_copied_dataset_images_and_staged_folders_get_the_umask_mode(tmp_path: Path, umask: int) -> None:
    from edgeyolo.data.convert import write_yolo_dataset
    from edgeyolo.data.types import Annotation, Sample
    from tests.badinput.test_corpus import image_bytes

    src = tmp_path / "a.jpg"
    src.write_bytes(image_bytes(".jpg", 32, 24))
    out = tmp_path / "ds"
    write_yolo_dataset({"train": [Sample(src, "a", 32, 24, Annotation.empty())], "val": [Sample(src, "a", 32, 24, Annotation.empty())]}, ["x"], out, link=False)
    assert mode(out) == 0o777 & ~umask
    for path in (out / "images" / "train" / "a.jpg", out / "data.yaml", out / "classes.names"):
        assert mode(path) == 0o666 & ~umask, path
