"""Write files and folders so that a reader sees the old version or the new one, never half of one.

Both helpers write under a temporary name beside the target (same folder, so the final ``os.replace`` is an
atomic rename on one file system). Temporary names start with ``.`` and end with ``.tmp``, so the dataset
indexers skip them, and they are removed on any error, including ``KeyboardInterrupt``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["atomic_write", "staged_dir"]


def _temp_beside(path: str) -> str:
    """``{folder}/.{name}.{random}.tmp`` beside ``path``; the caller creates it, so the umask sets its mode."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[str], None], fsync: bool = False) -> str:
    """Call ``write(tmp)`` to create a temporary file beside ``path``, then rename it over ``path``.

    ``path`` then holds the old content or the new one; when ``write`` raises, the old file is untouched and
    the temporary file is removed. ``write`` must create exactly the path it is given: pass an open file to
    writers that append an extension (``np.save``), or a ``format`` to those that guess it from the name.

    Args:
        path: the target file; its folder is created when missing.
        write: writes the whole new content to the path it receives,
            e.g. ``lambda tmp: figure.savefig(tmp, format="png")``.
        fsync: flush the file and the folder to disk before returning (survives a power loss, not only a crash).

    Returns:
        ``path``.

    Raises:
        FileNotFoundError: when ``write`` returned without creating the file it was given.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _temp_beside(path)
    try:
        write(tmp)
        if not os.path.isfile(tmp):
            raise FileNotFoundError(f"the writer of {path} did not create the temporary file {tmp} it was given")
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise
    if fsync and os.name == "posix":
        _fsync(os.path.dirname(os.path.abspath(path)))
    return path


@contextmanager
def staged_dir(path: str, merge: bool = False) -> Iterator[str]:
    """Yield an empty temporary folder beside ``path`` that becomes ``path`` when the block ends without error.

    On any error the temporary folder and all it holds are removed and ``path`` is untouched.

    Args:
        path: the final folder; its parent is created when missing.
        merge: ``False``: the staged folder is renamed to ``path`` in one atomic step, so ``path`` must be
            missing or empty (checked before the block runs). ``True``: each entry of the staged folder is
            moved into ``path`` (created when missing), replacing a file of the same name and keeping the
            others; each file is replaced atomically, the set of them is not.

    Raises:
        FileExistsError: ``merge=False`` and ``path`` is a file or a non-empty folder.
    """
    if not merge and os.path.lexists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise FileExistsError(f"{path} already exists and is not an empty folder: remove it or pick another")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    staging = _temp_beside(path)
    os.mkdir(staging)
    try:
        yield staging
        if merge:
            os.makedirs(path, exist_ok=True)
            for name in sorted(os.listdir(staging)):
                os.replace(os.path.join(staging, name), os.path.join(path, name))
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
