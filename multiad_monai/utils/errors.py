"""Errors a person can read: the last lines of a failed bundle run say what is wrong, not how MONAI parsed it.

``python -m monai.bundle run`` ends a failed run with the outermost exception, ``RuntimeError: Failed to
evaluate ConfigExpression`` and a dump of the expression; the real message (which names the file or key)
sits tens of lines above. :func:`readable_errors` installs an exception hook that still prints the whole
traceback (for the log), then repeats the message that matters as the last lines.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from types import TracebackType

__all__ = ["check_flags", "check_path", "check_writable", "error_reason", "readable_errors", "root_message"]

PARSER_HINT = (
    "the MONAI bundle parser rewrites '#' in config values to '::' and evaluates values that start with '$' as "
    "Python; a path with '#' cannot go through it: rename it or pass a symbolic link without '#', and write a "
    "path that starts with '$' as './$...'"
)

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _chain(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _raised_by_us(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__) if error.__traceback__ else []
    return bool(frames) and frames[-1].filename.startswith(_PACKAGE_DIR)


def error_reason(error: BaseException) -> str:
    """An error's message, never empty: a reader that runs out of memory (nibabel allocates what a file's header
    declares before reading) raises a bare ``MemoryError``."""
    if isinstance(error, MemoryError):
        return "its header declares more data than fits in memory (a damaged header?)"
    return str(error) or type(error).__name__


def root_message(error: BaseException) -> str:
    """The message that says what went wrong: the outermost error raised by this package (those name the file,
    key or value and the fix), else the innermost cause."""
    chain = _chain(error)
    ours = [e for e in chain if _raised_by_us(e)]
    chosen = ours[0] if ours else chain[-1]
    return f"{type(chosen).__name__}: {chosen}"


def check_path(path: str | None, key: str) -> str | None:
    """``path`` unchanged, or a ``ValueError`` naming ``key`` when the bundle parser has visibly mangled it."""
    if path and "::" in str(path) and not os.path.exists(path):
        raise ValueError(f"{key} {path!r} does not exist and holds '::': {PARSER_HINT}")
    return path


def check_writable(path: str, key: str, folder: bool = False) -> str:
    """``path`` unchanged when it can be written, else a ``ValueError`` naming ``key``: called before the work, so
    an output that cannot be written is not found out after it. Nothing is created: a missing folder is judged by
    its nearest existing parent.

    Args:
        path: a file to write, or with ``folder`` a folder to write into.
        key: the option that gave it (``--output``), for the message.
        folder: ``path`` is a folder.
    """
    if folder and os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"{key} {path} is a file, not a folder: pass another {key}")
    if not folder and os.path.isdir(path):
        raise ValueError(f"{key} {path} is a folder: pass a file name inside it")
    directory = path if folder else os.path.dirname(os.path.abspath(path))
    ancestor = os.path.abspath(directory)
    while not os.path.lexists(ancestor) and os.path.dirname(ancestor) != ancestor:
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f"{key} {path} cannot be written: {ancestor} is a file, not a folder; pass another {key}")
    try:
        with tempfile.NamedTemporaryFile(dir=ancestor, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(
            f"{key} {path} cannot be written ({e.strerror or e}): pass a {'folder' if folder else 'file'} in a place "
            "you can write to"
        ) from e
    return path


def check_flags(**flags: object) -> None:
    """A ``ValueError`` naming each on/off key whose value would silently count as on.

    The bundle command line (python-fire) reads only ``True``/``False`` as booleans: ``--resume false`` gives the
    string ``'false'``, which Python treats as true. ``'true'`` means what it says and passes.
    """
    wrong = [
        f"{name}={value!r}"
        for name, value in flags.items()
        if not isinstance(value, (bool, int)) and str(value).strip().lower() not in ("true", "yes", "on")
    ]
    if wrong:
        raise ValueError(
            f"{', '.join(wrong)}: on/off keys take True or False (with a capital letter on the command line; "
            "a string such as 'false' would count as on)"
        )


def _hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    traceback.print_exception(kind, error, tb)
    if isinstance(error, KeyboardInterrupt):
        return
    message = root_message(error)
    if message.startswith(("SyntaxError", "NameError")) and "ConfigExpression" in "".join(map(str, _chain(error))):
        message += f"\n  (a config value that starts with '$' is Python: {PARSER_HINT})"
    line = "-" * 100
    print(f"{line}\nerror: {message}\n(the full traceback is above)\n{line}", file=sys.stderr, flush=True)


def readable_errors() -> None:
    """Install the hook (idempotent). The bundles call it first thing in ``initialize``."""
    sys.excepthook = _hook
