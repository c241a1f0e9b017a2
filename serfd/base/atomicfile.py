"""Replace a small file atomically and durably (the keyring file, the tags file).

``replace_file(path, data, mode)`` writes ``data`` to a temporary file next to ``path``
(``.<name>.tmp<pid>``), sets its mode (``O_CREAT``'s mode does not apply to a leftover
temporary file), fsyncs it, renames it over ``path`` and fsyncs the directory so the
rename itself survives a crash. A reader sees the old file or the new one, never a part.
On any failure the temporary file is removed and the error raised; ``path`` is untouched.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["replace_file"]


def replace_file(path: Path, data: bytes, mode: int) -> None:
    """Atomically replace ``path`` with ``data`` (file mode ``mode``); OSError on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the data is safe; only the rename's durability
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
