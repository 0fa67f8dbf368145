"""Write-then-rename for every file the plugin writes, so that an interrupted run never leaves a
truncated file where a complete one (or none) is expected."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path beside ``path`` (same folder, same file ending) and moves it onto
    ``path`` when the block succeeds; on an exception the temporary file is removed and ``path`` is
    untouched."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    # keep the ending last: writers like SimpleITK and matplotlib pick the format from it
    tmp = os.path.join(folder, f"tmp{os.getpid()}_{name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
