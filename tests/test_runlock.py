"""The folder lock (``ditlab.runlock``): one writer per run directory, latent cache or output folder.

The commands' use of it, with real processes (a second trainer, ``kill -9``, two extractions, torchrun),
is tested in ``tests/reliability/test_one_writer.py``.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import warnings

import pytest

from ditlab import runlock
from ditlab.errors import UserError
from ditlab.runlock import LOCK_NAME, FolderInUseError, FolderLock, lock_folder

HOST = socket.gethostname()
MESSAGE = re.compile(r"run directory '(?P<dir>.+)' is in use by PID (?P<pid>\d+) on (?P<host>\S+) since "
                     r"(?P<since>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d): "
                     r"stop that process or choose another --run_dir")


def test_lock_creates_the_folder_names_its_holder_and_refuses_a_second(tmp_path):
    run = tmp_path / "runs" / "x"
    with lock_folder(run) as lock:
        assert lock.created and lock.held
        holder = json.loads((run / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == HOST
        with pytest.raises(FolderInUseError) as refused:  # another open file: refused even in this process
            lock_folder(run)
        m = MESSAGE.fullmatch(str(refused.value))
        assert m, refused.value
        assert (m["dir"], int(m["pid"]), m["host"], m["since"]) == (str(run), os.getpid(), HOST, holder["started"])
        assert isinstance(refused.value, UserError) and refused.value.exit_code == 2
        other = FolderLock(run, flag="--out", what="latent cache")
        with pytest.raises(FolderInUseError, match=r"^latent cache '.+' is in use by PID .+ choose another --out$"):
            other.acquire()
        assert not other.held
        other.release()  # not held: nothing happens, the holder keeps its lock
        assert (run / LOCK_NAME).is_file()
    assert not lock.held and not (run / LOCK_NAME).exists()  # released and deleted
    with lock_folder(run) as again:
        assert not again.created


def test_released_when_the_block_fails(tmp_path):
    with pytest.raises(KeyError), lock_folder(tmp_path):
        raise KeyError("a failure inside")
    lock_folder(tmp_path).release()


def test_the_file_a_killed_holder_left_is_taken_over(tmp_path):
    """SIGKILL leaves the lock file with a dead process's details, but no lock (the kernel dropped it)."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(gone.stdout), "host": HOST, "started": "2020-01-01 00:00:00+00:00"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale) + "\n")
    with lock_folder(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def _hold_raw(path, content: str) -> int:
    """Lock ``path`` as a holder that has not finished writing its details (``content``)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, content.encode())
    return fd


@pytest.mark.parametrize("content", ["", '{"pid": 12', "not json"])
def test_holder_details_not_written_yet(tmp_path, monkeypatch, content):
    monkeypatch.setattr(runlock, "_READ_PAUSE", 0.001)
    fd = _hold_raw(tmp_path / LOCK_NAME, content)
    try:
        with pytest.raises(FolderInUseError, match=r"^run directory '.+' is in use by another process \(which has "
                                                   r"not written its PID yet\): stop that process or choose"):
            lock_folder(tmp_path)
    finally:
        os.close(fd)


def test_holder_on_another_machine_is_named_as_written(tmp_path):
    holder = {"pid": 7, "host": "node-b", "started": "2025-06-01 12:00:03+02:00"}
    fd = _hold_raw(tmp_path / LOCK_NAME, json.dumps(holder))
    try:
        with pytest.raises(FolderInUseError, match=r"in use by PID 7 on node-b since 2025-06-01 12:00:03\+02:00: "):
            lock_folder(tmp_path)
    finally:
        os.close(fd)


def test_a_file_deleted_between_open_and_flock_is_not_trusted(tmp_path, monkeypatch):
    """A holder releases (deletes the file) right after this process opened it: lock the new file instead."""
    path = tmp_path / LOCK_NAME

    class Racing:
        LOCK_EX, LOCK_NB, calls = fcntl.LOCK_EX, fcntl.LOCK_NB, 0

        def flock(self, fd, op):
            Racing.calls += 1
            if Racing.calls == 1:
                path.unlink()
            fcntl.flock(fd, op)

    monkeypatch.setattr(runlock, "fcntl", Racing())
    with lock_folder(tmp_path) as lock:
        assert Racing.calls == 2 and runlock._same_file(lock._fd, path)


def test_release_leaves_a_newer_holders_file_alone(tmp_path):
    run = tmp_path / "out"
    first = lock_folder(run)
    shutil.rmtree(run)  # say train-vae cleaning up after a failure, while it still holds the lock
    with lock_folder(run):  # a new folder, a new lock file
        first.release()
        assert (run / LOCK_NAME).is_file()


@pytest.mark.parametrize("err", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP])
def test_file_system_without_locks_warns_once_and_goes_on(tmp_path, monkeypatch, err):
    class NoLocks:
        LOCK_EX, LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_NB

        def flock(self, fd, op):
            raise OSError(err, os.strerror(err))

    monkeypatch.setattr(runlock, "fcntl", NoLocks())
    monkeypatch.setattr(runlock, "_warned", False)
    with pytest.warns(UserWarning, match=r"does not support locks \(flock: .+\): nothing stops a second process"):
        lock = lock_folder(tmp_path / "a")
    assert not lock.held
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lock_folder(tmp_path / "b").release()  # once per process
    lock.release()


def test_platform_without_fcntl_warns(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "fcntl", None)
    monkeypatch.setattr(runlock, "_warned", False)
    with pytest.warns(UserWarning, match="no file locks on this platform"):
        assert not lock_folder(tmp_path).held


def test_unusable_folders(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"^--out .+file is a file: pass a folder for the latent cache$"):
        lock_folder(tmp_path / "file", flag="--out", what="latent cache")
    with pytest.raises(UserError, match=r"^cannot write run directory '.+' \(Not a directory\): choose a writable"):
        lock_folder(tmp_path / "file" / "run")
    with pytest.raises(UserError, match=r"\(Operation not permitted\): choose a writable --run_dir$"):
        lock_folder("/sys/ditlab-runlock-test")  # refused even to root


def test_no_group_means_a_plain_lock(tmp_path):
    with runlock.lock_folder_on_rank0(tmp_path, flag="--out", what="output folder") as lock:
        assert lock.held


class _Group:
    """A stand-in for ``torch.distributed`` seen from one rank; ``verdict`` is what rank 0 broadcasts."""

    def __init__(self, rank: int, verdict=None):
        self.rank, self.verdict, self.sent = rank, verdict, []

    def is_available(self):
        return True

    def is_initialized(self):
        return True

    def get_world_size(self):
        return 2

    def get_rank(self):
        return self.rank

    def broadcast_object_list(self, objects, src):
        assert src == 0
        if self.rank == 0:
            self.sent.append(list(objects))
        else:
            objects[0] = self.verdict


def test_rank0_takes_the_lock_and_tells_the_others(tmp_path, monkeypatch):
    group = _Group(rank=0)
    monkeypatch.setitem(sys.modules, "torch.distributed", group)
    with runlock.lock_folder_on_rank0(tmp_path) as lock:  # ``with`` does not lock a second time
        assert lock.held and group.sent == [[None]]
        with pytest.raises(FolderInUseError) as refused:
            runlock.lock_folder_on_rank0(tmp_path)
        assert group.sent[1] == [(FolderInUseError, str(refused.value))]


def test_other_ranks_follow_rank0s_verdict_without_touching_the_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.distributed", _Group(rank=1, verdict=None))
    with runlock.lock_folder_on_rank0(tmp_path / "run") as lock:  # rank 0 holds it
        assert not lock.held and not (tmp_path / "run").exists()
    message = "run directory 'r' is in use by PID 7 on node-b since 2025-06-01 12:00:03+02:00: stop that process"
    monkeypatch.setitem(sys.modules, "torch.distributed", _Group(rank=1, verdict=(FolderInUseError, message)))
    with pytest.raises(FolderInUseError, match=f"^{re.escape(message)}$"):
        runlock.lock_folder_on_rank0(tmp_path / "run")


_FORK_AND_WAIT = """
import fcntl, multiprocessing, os, sys, time
from ditlab.runlock import LOCK_NAME, lock_folder
how, folder = sys.argv[1:]
if how == "ditlab":
    lock = lock_folder(folder)
else:  # a bare flock, as a DataLoader worker would inherit it
    fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,))  # as DataLoader workers
child.start()
print(child.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("how", ["ditlab", "bare"])
def test_forked_children_do_not_keep_a_killed_parents_lock(tmp_path, how):
    """flock belongs to the open file description, which fork() shares: a bare lock outlives its SIGKILLed
    holder while a forked child (a DataLoader worker) lives on; ditlab's lock closes it in children."""
    parent = subprocess.Popen([sys.executable, "-c", _FORK_AND_WAIT, how, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    child = int(parent.stdout.readline())
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        os.kill(child, 0)  # the child still runs
        if how == "ditlab":
            lock_folder(tmp_path).release()  # free at once
        else:
            with pytest.raises(FolderInUseError):
                lock_folder(tmp_path)
    finally:
        os.kill(child, signal.SIGKILL)
        parent.stdout.close()
