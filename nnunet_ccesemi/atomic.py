"""Write-then-rename for every file and folder the plugin writes, so that an interrupted run never
leaves a truncated file or a partial folder where a complete one (or none) is expected.

One naming scheme serves both: what is being written is ``tmp<pid>-<token>_<name>`` beside its final path,
a folder being replaced is set aside as ``old<pid>-<token>_<name>`` for the moment of the swap (``<token>``:
8 hex digits drawn once per process). Process id and token let :func:`remove_stale_temporaries` tell the
leftovers of a killed run from the work of a live one.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from typing import Iterator

# Drawn once per process: a container's entry point is PID 1 in every run, so the PID alone cannot tell
# this run's temporaries from those a killed earlier run left under the same PID.
_RUN_TOKEN = secrets.token_hex(4)
_TEMPORARY_NAME = re.compile(r"tmp(\d+)-([0-9a-f]{8})_(.+)")
_SET_ASIDE_NAME = re.compile(r"old(\d+)-([0-9a-f]{8})_(.+)")


def _sibling(path: str, prefix: str) -> str:
    folder, name = os.path.split(path)
    # keep the name (and its ending) last: writers like SimpleITK and matplotlib pick the format from it
    return os.path.join(folder, f"{prefix}{os.getpid()}-{_RUN_TOKEN}_{name}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path beside ``path`` (same folder, same file ending) and moves it onto
    ``path`` when the block succeeds; on an exception the temporary file is removed and ``path`` is
    untouched."""
    path = os.fspath(path)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[str]:
    """Yields an empty temporary folder beside ``path`` that replaces ``path`` only if the block succeeds.

    The temporary folder is on the same file system, so the final move is a rename. If the block
    raises (a bad input file, Ctrl-C) the temporary folder is removed and an existing ``path`` stays
    as it was. An existing ``path`` is renamed aside, the new folder renamed in and the old one
    deleted; if the second rename fails the old one is put back. A hard kill (SIGKILL, power loss)
    can leave a temporary folder, or the old one set aside, but never a partial folder under
    ``path``; :func:`remove_stale_temporaries` clears them up (and puts a set-aside folder back if its
    replacement never arrived). A caller that must not replace an existing folder checks before, after
    ``remove_stale_temporaries(parent, name)`` has put such a folder back.

    Raises:
        NotADirectoryError: ``path`` exists and is not a folder.
    """
    path = os.fspath(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{path} exists and is not a folder")
    tmp = _sibling(path, "tmp")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    os.mkdir(tmp)  # mkdir (not mkdtemp) so the final folder gets the usual permissions
    try:
        yield tmp
        _replace_folder(tmp, path)
    finally:
        if os.path.lexists(tmp):  # the block failed: its partial output goes (an error here must not hide that one)
            with contextlib.suppress(OSError):
                _remove(tmp)


def _replace_folder(tmp: str, path: str) -> None:
    aside = _sibling(path, "old") if os.path.lexists(path) else None
    try:  # from before the first rename: a Ctrl-C between the two must put the old folder back
        if aside is not None:
            os.rename(path, aside)
        os.rename(tmp, path)
    except BaseException:
        if aside is not None and os.path.lexists(aside) and not os.path.lexists(path):
            os.rename(aside, path)
        raise
    if aside is not None:
        # the new folder is in place: failing to delete the old one (read-only files, Ctrl-C) is no failed
        # write, and remove_stale_temporaries clears it later
        with contextlib.suppress(OSError):
            _remove(aside)


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[str]:
    """Clears up what :func:`atomic_path` and :func:`atomic_folder` left in ``folder`` when their process
    was killed; ``name`` limits it to the temporaries of that one file or folder.

    A kill (SIGKILL, a cluster's time limit) can land between writing ``tmp<pid>-<token>_<name>`` and moving it
    into place; the real file is intact, the temporary is garbage and is removed. A folder set aside
    as ``old<pid>-<token>_<name>`` is removed when ``<name>`` exists (its replacement is in place) and renamed
    back to ``<name>`` otherwise (the kill fell between the two renames). Only what processes that no
    longer run left is touched, so a concurrent writer keeps its own. Returns the paths removed or
    put back.

    "No longer runs" is asked of this machine: on a file system shared by several machines, do not
    write the same target from two of them at once (a live writer elsewhere looks dead from here).
    """
    changed = []
    if not os.path.isdir(folder):
        return changed
    for entry in sorted(os.listdir(folder)):
        temporary, set_aside = _TEMPORARY_NAME.fullmatch(entry), _SET_ASIDE_NAME.fullmatch(entry)
        match = temporary or set_aside
        if not match or (name is not None and match.group(3) != name) or _writer_alive(int(match.group(1)),
                                                                                          match.group(2)):
            continue
        path, final = os.path.join(folder, entry), os.path.join(folder, match.group(3))
        with contextlib.suppress(FileNotFoundError):
            if set_aside and not os.path.lexists(final):
                os.rename(path, final)
            else:
                _remove(path)
            changed.append(path)
    return changed


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def _writer_alive(pid: int, token: str) -> bool:
    if pid == os.getpid():
        return token == _RUN_TOKEN
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no process has such a number
        return False
    except PermissionError:  # another user's process
        return True
    return True
