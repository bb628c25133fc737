"""Atomic file writes: the content goes to a temporary file in the same directory, which is
renamed over the destination only once complete, so an interrupted write (a crash, Ctrl-C, a
full disk) never leaves a truncated file or destroys the previous one."""

from __future__ import annotations

import os
import tempfile
from typing import IO, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["atomic_write"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[IO], None], *, text: bool = False) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``.

    The file gets the permissions a plain ``open(path, "w")`` would give (``mkstemp`` makes it
    owner-only). Parent directories are created.

    Example:
        >>> atomic_write("out/results.json", lambda f: json.dump(doc, f), text=True)  # doctest: +SKIP
    """
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w" if text else "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
