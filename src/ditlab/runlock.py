"""One writer per folder: an exclusive advisory lock on a run directory, latent cache or output folder.

Every command that writes a folder other processes may also write (``train`` its run directory,
``extract-latents`` its cache, ``sample-many`` / ``train-vae`` / ``scale`` their ``--out``) takes this lock
before it reads or writes anything there and holds it until it is done; a second writer is refused at
once with one line naming the holder::

    run directory 'runs/x' is in use by PID 4242 on node7 since 2025-06-01 12:00:03+02:00:
    stop that process or choose another --run_dir

How: ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``FOLDER/.ditlab.lock``. The kernel drops the lock when the
holder's last file descriptor closes, so a process killed by ``SIGKILL`` or the OOM killer never leaves a
stale lock: its lock file stays behind, and the next writer simply takes it and overwrites its content
(the holder's PID, host name and start time, JSON, written after the lock is taken; read only to word the
refusal). A clean release deletes the file while still holding the lock; a process that opened the old file
in that moment sees that the path no longer names what it locked and tries again.

Forked children: a ``flock`` belongs to the open file description, which ``fork()`` shares with the child,
so a DataLoader worker would keep the lock of a parent killed by ``SIGKILL`` until the worker notices
(seconds later). The descriptor is therefore closed in every forked child (``os.register_at_fork``; closing
a copy does not release the parent's lock) and opened ``O_CLOEXEC`` (never passed across ``exec``).

Where locks do not work: a file system that refuses ``flock`` (``ENOLCK``: NFSv3 without lockd/statd;
``ENOSYS``: Lustre mounted ``noflock``; ``EOPNOTSUPP``: some FUSE file systems) gets one warning and the
command goes on unlocked; so does a platform without ``fcntl`` (Windows). File systems that accept the call
but lock only within one machine (NFS ``nolock`` or ``local_lock=flock|all``, Lustre ``localflock``) cannot
be detected: there only writers on the same machine exclude each other. See README, "Resuming and failures"
and docs/reliability.md.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
import time
import warnings
import weakref
from pathlib import Path
from typing import Any

from ditlab.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".ditlab.lock"
# flock's "this file system does not do locks": warn and go on unlocked (see the module docstring).
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
_READ_TRIES, _READ_PAUSE = 25, 0.02  # a refused process waits up to 0.5 s for the holder to write its details
_HELD: weakref.WeakSet[FolderLock] = weakref.WeakSet()
_warned = False


class FolderInUseError(UserError):
    """Another process holds the folder's lock (a second writer of a run directory, cache or output)."""


class FolderLock:
    """An exclusive lock on ``folder`` for one writing process; a context manager.

    Args:
        folder: the run directory / cache / output folder (created when missing).
        flag: the command-line flag that names it, for the messages (``--run_dir``, ``--out``).
        what: what the folder is, for the messages (``run directory``, ``latent cache``, ...).
    """

    def __init__(self, folder: str | os.PathLike, flag: str = "--run_dir", what: str = "run directory"):
        self.folder = Path(folder).expanduser()
        self.path = self.folder / LOCK_NAME
        self.flag, self.what = flag, what
        self.created = False  # True when acquiring created the folder
        self._fd: int | None = None
        self._taken = False  # acquired (held, or by rank 0 of a job, or unlocked where locks do not work)

    @property
    def held(self) -> bool:
        """True while this process holds the lock (False also where locks are not supported)."""
        return self._fd is not None

    def acquire(self) -> FolderLock:
        """Take the lock now or raise :class:`FolderInUseError` naming the holder (never waits for it)."""
        if self._taken:
            return self
        self._make_folder()
        fd = self._lock_file()
        self._taken = True
        if fd is None:  # no locks here: warned, go on
            return self
        self._fd = fd
        _HELD.add(self)
        started = datetime.datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "argv": sys.argv}
        try:  # only now: a refused process may be reading the previous holder's details until here
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError as err:
            self.release()
            raise self._unwritable(err) from None
        return self

    def _lock_file(self) -> int | None:
        """The open, flock-ed lock file; None (with a warning) where locks are not supported."""
        if fcntl is None:
            _warn_once(f"no file locks on this platform: nothing stops a second process from writing "
                       f"{self.what} '{self.folder}' at the same time; run one writer at a time")
            return None
        while True:
            try:  # never truncated here: that would wipe the holder's details
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as err:
                raise self._unwritable(err) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = self._read_holder()
                if holder is None:  # the file is gone: its holder released it just now
                    continue
                raise FolderInUseError(self._in_use_message(holder)) from None
            except OSError as err:
                os.close(fd)
                if err.errno not in _NO_LOCKS:
                    raise self._unwritable(err) from None
                _warn_once(f"the file system of {self.what} '{self.folder}' does not support locks "
                           f"(flock: {err.strerror}): nothing stops a second process from writing it at the "
                           f"same time; run one writer at a time")
                return None
            if _same_file(fd, self.path):
                return fd
            os.close(fd)  # locked a file that its holder deleted on release in the meantime: again

    def acquire_on_rank0(self) -> FolderLock:
        """The lock of a job of several ranks: every rank calls this; rank 0 takes the lock and the others
        learn its verdict through the initialised ``torch.distributed`` group, so that on a refusal every
        rank raises the same error (and exits with the same code). Held on rank 0 only; every rank releases
        it. Without a group of several processes this is :meth:`acquire`."""
        dist = sys.modules.get("torch.distributed")  # no group can exist unless torch is imported
        if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            return self.acquire()
        verdict: list[Any] = [None]
        failure: BaseException | None = None
        if dist.get_rank() == 0:
            try:
                self.acquire()
            except UserError as err:
                failure, verdict = err, [(type(err), str(err))]
            except BaseException as err:  # a bug: the others must not wait for a verdict that never comes
                failure, verdict = err, [(RuntimeError, f"rank 0 failed to lock '{self.folder}' (see its traceback)")]
        dist.broadcast_object_list(verdict, src=0)
        if failure is not None:
            raise failure
        if verdict[0] is not None:
            cls, message = verdict[0]
            raise cls(message)
        self._taken = True  # rank 0 holds it for this rank too: ``with`` must not lock again
        return self

    def release(self) -> None:
        """Delete the lock file (while still holding it) and release the lock; a no-op when not held."""
        fd, self._fd, self._taken = self._fd, None, False
        if fd is None:
            return
        _HELD.discard(self)
        try:
            if _same_file(fd, self.path):  # not a newer holder's file (say the folder was deleted meanwhile)
                os.unlink(self.path)
        except OSError:
            pass
        os.close(fd)  # the kernel releases the lock

    def __enter__(self) -> FolderLock:
        return self.acquire()  # a no-op when already taken (``with lock_folder(...)``)

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    # -------------------------------------------------------------------------------- helpers
    def _make_folder(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"{self.flag} {self.folder} is a file: pass a folder for the {self.what}")
        try:
            self.folder.mkdir(parents=True)
            self.created = True
        except FileExistsError:
            if not self.folder.is_dir():
                raise UserError(f"{self.flag} {self.folder} is a file: pass a folder for the {self.what}") from None
        except OSError as err:
            raise self._unwritable(err) from None

    def _unwritable(self, err: OSError) -> UserError:
        return UserError(f"cannot write {self.what} '{self.folder}' ({err.strerror or err}): "
                         f"choose a writable {self.flag}")

    def _read_holder(self) -> dict[str, Any] | None:
        """The holder's details; None when the lock file is gone. The holder writes them just after it took
        the lock, so an empty or partial file, or one still naming a dead process of this host, is read
        again for a moment; ``{}`` when they never become readable."""
        last: dict[str, Any] = {}
        for _ in range(_READ_TRIES):
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                return None
            except OSError:
                return last
            try:
                holder = json.loads(text)
            except ValueError:
                holder = None
            if isinstance(holder, dict) and {"pid", "host", "started"} <= holder.keys():
                last = holder  # a PID this host does not show may live in another PID namespace
                if holder["host"] != socket.gethostname() or _alive(holder["pid"]):
                    return holder
            time.sleep(_READ_PAUSE)
        return last

    def _in_use_message(self, holder: dict[str, Any]) -> str:
        who = (f"PID {holder['pid']} on {holder['host']} since {holder['started']}" if holder
               else "another process (which has not written its PID yet)")
        return f"{self.what} '{self.folder}' is in use by {who}: stop that process or choose another {self.flag}"


def lock_folder(folder: str | os.PathLike, *, flag: str = "--run_dir", what: str = "run directory") -> FolderLock:
    """Take the lock on ``folder`` in this process (see :class:`FolderLock`); release it, or use ``with``."""
    return FolderLock(folder, flag, what).acquire()


def lock_folder_on_rank0(folder: str | os.PathLike, *, flag: str = "--run_dir",
                         what: str = "run directory") -> FolderLock:
    """:meth:`FolderLock.acquire_on_rank0` of a new lock: every rank of the job calls it."""
    return FolderLock(folder, flag, what).acquire_on_rank0()


def _same_file(fd: int, path: Path) -> bool:
    """True when ``path`` still names the open file ``fd`` (not deleted, not replaced)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # another user's process, or not a PID we can judge: take the details as they are
    return True


def _warn_once(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(message, stacklevel=3)


def _close_in_child() -> None:
    """After ``fork()``: close the child's copies of held lock files, so that only the process that took a
    lock keeps it alive (closing a copy does not release the parent's lock)."""
    for lock in list(_HELD):
        if lock._fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock._fd)
            lock._fd = None
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)
