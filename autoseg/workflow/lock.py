"""One writer per fold folder: an exclusive lock on ``<fold folder>/writer.lock`` while a process trains or
validates the fold.

The lock is ``flock`` on the open lock file: the kernel drops it when the holder dies however it dies (a killed run
never leaves a stale lock, nothing to clean up by hand), a second open of the file conflicts even within one process,
reading the file does not release it (as it would a POSIX record lock), and the Linux NFS client carries it to the
server (a second ``train --cluster`` run on another node sees the first). Forked children (data-loader and
validation workers) close their inherited copy at once, so that a worker outliving a killed trainer does not keep
the fold locked. The holder writes its pid, host and start time into the file, so that a second writer can say who
holds it.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import socket
import sys
import time
import weakref
from pathlib import Path

from autoseg.errors import AutosegError

#: The lock file's name inside the fold folder.
LOCK_NAME = "writer.lock"
#: ``flock`` on a file system that has no locks (NFS without lockd, some FUSE mounts).
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


class FolderLock:
    """The held lock of one folder (:func:`writer_lock`); ``fd`` is ``None`` where the file system has no locks.

    Attributes
    ----------
    folder
        The locked folder.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        self._acquire()

    def _acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            held = e.errno in (errno.EACCES, errno.EAGAIN)
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() if held else ""
            os.close(fd)
            if held:
                raise AutosegError(f"{self.folder}: another process is writing this fold folder "
                                   f"({holder or 'holder not yet recorded'}); a fold folder has one writer at a "
                                   f"time: wait for it to end or stop it") from None
            if e.errno in _NO_LOCKS:
                print(f"{self.folder}: note: this file system has no file locks ({e.strerror}); nothing keeps a "
                      f"second process from writing the fold folder at the same time", file=sys.stderr, flush=True)
                return
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self.fd = fd
        # a forked child shares the locked file description: it closes its copy, so only this process holds it
        os.register_at_fork(after_in_child=functools.partial(_close_in_child, weakref.ref(self)))

    def ensure(self) -> None:
        """Lock again if the lock file was removed while held (``--overwrite`` empties the fold folder, the lock
        file with it: the lock then guards a file nobody else can open)."""
        if self.fd is None:
            return
        try:
            same = os.path.samestat(os.fstat(self.fd), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(self.fd)
            self.fd = None
            self._acquire()

    def release(self) -> None:
        """Unlock (closing the file drops the lock)."""
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _close_in_child(ref: "weakref.ref[FolderLock]") -> None:
    lock = ref()
    if lock is not None and lock.fd is not None:
        os.close(lock.fd)
        lock.fd = None


def writer_lock(folder: Path) -> FolderLock:
    """Take the writer lock of ``folder`` (created when missing), as a context manager.

    Raises
    ------
    AutosegError
        Another process holds it: one line naming the folder and the holder (pid, host, since when).
    """
    return FolderLock(folder)
