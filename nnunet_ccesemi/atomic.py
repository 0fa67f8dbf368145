"""Write-then-rename for every file the plugin writes, so that an interrupted run never leaves a
truncated file where a complete one (or none) is expected."""
from __future__ import annotations

import contextlib
import os
import re
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


_TEMPORARY_NAME = re.compile(r"tmp(\d+)_.+")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Removes the temporary files :func:`atomic_path` left in ``folder`` when its process was killed.

    A kill (SIGKILL, a cluster's time limit) can land between writing ``tmp<pid>_<name>`` and moving it
    into place; the real file is intact, the temporary is garbage. Only files of processes that no
    longer run are removed, so a concurrent writer keeps its own. Returns the removed paths.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        match = _TEMPORARY_NAME.fullmatch(name)
        if match and not _process_alive(int(match.group(1))):
            path = os.path.join(folder, name)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
