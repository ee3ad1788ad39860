"""A run folder's life: created on demand, locked while a run uses it, removed if a run fails before saving."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from ..errors import UserError
from .runlog import LAST

LOCK = ".lock"

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None


class RunFolder:
    """The folder one ``densenets train`` writes to.

    ``open()`` creates it (and any missing parents) and takes an exclusive ``flock`` on
    ``.lock`` inside it, held until ``close()``. The kernel drops the lock when the process
    dies, however it dies, so a lock left by a crashed run is never in the way.
    ``close(failed=True)`` removes the folders ``open()`` created when no checkpoint
    was written, so a run that fails before it saved anything leaves nothing behind.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._created: list[Path] = []  # folders this object made, deepest first
        self._lock_file = None

    def open(self) -> None:
        missing = []
        for folder in (self.path, *self.path.parents):
            if folder.exists():
                break
            missing.append(folder)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create run folder {self.path}: {exc.strerror or exc}") from exc
        self._created = missing
        self._lock()

    def _lock(self) -> None:
        if fcntl is None:
            return
        path = self.path / LOCK
        try:
            handle = open(path, "a+")  # noqa: SIM115 -- held open for the run's life: the lock
        except OSError as exc:
            raise UserError(f"cannot create {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise UserError(
                f"{self.path} is in use by another densenets train (process {holder}); "
                "wait for it to finish or choose another --run-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def close(self, failed: bool = False) -> None:
        """Release the lock; after a failure, remove the folders ``open()`` created if they hold no checkpoint."""
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None
        if failed and self._created and not (self.path / LAST).exists():
            shutil.rmtree(self.path, ignore_errors=True)
            for folder in self._created[1:]:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty
        self._created = []
